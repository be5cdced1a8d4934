"""Code fingerprints: what a step's cache key knows of the code that runs.

A change to code that decides a step's result must re-run the step: the Evaluator's
verdict helper, the canary checks of the InfraValidator, the user module's helpers.
So a fingerprint covers a Python file together with every module it imports that belongs
to the project — at module level or inside a function (heavy imports live inside
`execute`), transitively. Imports are found by reading the files (`ast`), not by
importing them, so the closure is the same before and after a step ran.

Which imports count ("of the project"): those that resolve to a `.py` file (or a package's
`__init__.py`) under one of the search directories given; anything else — the standard
library, site-packages (pinned by uv.lock) — is left out. Absolute imports are looked up
in the search directories; relative ones next to the importing file.
"""
from __future__ import annotations

import ast
import hashlib
import os
import threading
from pathlib import Path

# CPython 3.11 cannot run `ast` parsing in two threads at once ("AST constructor recursion
# depth mismatch", gh-106905), and steps are fingerprinted from several threads.
_PARSE_LOCK = threading.Lock()
_FILE_CACHE: dict[tuple[str, int, int], tuple[str, list[tuple[int, str, list[str]]]]] = {}

PROJECT_ROOT = str(Path(__file__).resolve().parents[1])  # holds components/, pipelines/, serving/


def _read(path: str) -> tuple[str, list[tuple[int, str, list[str]]]]:
    """(sha256 of the bytes, the imports as (level, module, names)) of one file, memoized
    by path, mtime and size."""
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    cached = _FILE_CACHE.get(key)
    if cached is not None:
        return cached
    with open(path, "rb") as fh:
        data = fh.read()
    imports: list[tuple[int, str, list[str]]] = []
    try:
        with _PARSE_LOCK:
            tree = ast.parse(data, filename=path)
    except (SyntaxError, ValueError):
        tree = None  # the bytes alone are fingerprinted; importing it will fail loudly
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.Import):
            imports += [(0, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.level, node.module or "", [a.name for a in node.names]))
    result = (hashlib.sha256(data).hexdigest(), imports)
    _FILE_CACHE[key] = result
    return result


def _module_files(base: str, dotted: str) -> list[str]:
    """The files that importing `dotted` below directory `base` runs: each package's
    __init__.py on the way, then the module itself. Empty when it is not there."""
    files, directory = [], base
    parts = [p for p in dotted.split(".") if p]
    for index, part in enumerate(parts):
        package_init = os.path.join(directory, part, "__init__.py")
        module_file = os.path.join(directory, part + ".py")
        if os.path.isfile(package_init):
            files.append(package_init)
            directory = os.path.join(directory, part)
        elif index == len(parts) - 1 and os.path.isfile(module_file):
            files.append(module_file)
        else:
            return []
    return files


def _imported_files(path: str, search_dirs: list[str]) -> list[str]:
    found: list[str] = []
    for level, module, names in _read(path)[1]:
        if level:
            base = os.path.dirname(path)
            for _ in range(level - 1):
                base = os.path.dirname(base)
            bases = [base]
        else:
            bases = search_dirs
        for base in bases:
            files = _module_files(base, module) if module else []
            if not module or (files and files[-1].endswith("__init__.py")):
                # `from package import name`: name may be a submodule.
                package = os.path.join(base, *module.split(".")) if module else base
                for name in names:
                    submodule = _module_files(package, name)
                    files += submodule[-1:]
            if files:
                found += files
                break
    return found


def source_closure(path: str, search_dirs: list[str]) -> list[str]:
    """`path` and every file of the modules it imports, transitively, that resolve under
    `search_dirs` (absolute imports) or next to the importing file (relative imports);
    sorted. Raises OSError when `path` cannot be read."""
    path = os.path.abspath(path)
    search_dirs = [os.path.abspath(d) for d in search_dirs]
    seen: set[str] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += [f for f in _imported_files(current, search_dirs) if f not in seen]
    return sorted(seen)


def fingerprint_sources(path: str, search_dirs: list[str]) -> str:
    """sha256 over the relative path and content of every file in `source_closure`."""
    digest = hashlib.sha256()
    root = os.path.commonpath([os.path.dirname(os.path.abspath(path)),
                               *[os.path.abspath(d) for d in search_dirs]])
    for file in source_closure(path, search_dirs):
        digest.update(os.path.relpath(file, root).encode())
        digest.update(_read(file)[0].encode())
    return digest.hexdigest()
