"""Finds pipelines by name: every `pipelines/<name>/pipeline.py` that defines
`create_pipeline()`, or a path to such a file. Importing one must stay cheap."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from pipelines.pipeline import Pipeline

PIPELINES_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    return sorted(p.parent.name for p in PIPELINES_DIR.glob("*/pipeline.py"))


def load(name_or_path: str) -> Pipeline:
    if name_or_path.endswith(".py") or os.sep in name_or_path:
        path = Path(name_or_path).resolve()
        if not path.is_file():
            raise LookupError(f"pipeline file {path} does not exist")
        module = _imported_from(path)
        if module is None:
            spec = importlib.util.spec_from_file_location(f"pipewright_user_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # so its components' annotations can be resolved
            spec.loader.exec_module(module)
    elif name_or_path in names():
        module = importlib.import_module(f"pipelines.{name_or_path}.pipeline")
    else:
        raise LookupError(f"unknown pipeline {name_or_path!r}; known pipelines: {names()} "
                          f"(or give the path of a pipeline.py)")
    if not callable(getattr(module, "create_pipeline", None)):
        raise LookupError(f"{module.__file__} defines no create_pipeline()")
    pipeline = module.create_pipeline()
    if not isinstance(pipeline, Pipeline):
        raise LookupError(f"create_pipeline() in {module.__file__} returned "
                          f"{type(pipeline).__name__}, not a pipelines.pipeline.Pipeline")
    return pipeline


def _imported_from(path: Path):
    """The module already imported from `path`, if any: executing the file again would
    define its component and artifact classes a second time, and the second definitions
    would replace the first in the artifact registry."""
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() == path:
            return module
    return None
