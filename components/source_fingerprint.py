"""Code fingerprints that cover a component's helper modules, not only its class body:
a change to how ExampleGen parses CSV must invalidate its cached outputs too."""
from __future__ import annotations

import hashlib
import sys

from components.base import fingerprint_path


def with_modules(class_fingerprint: str, *module_names: str) -> str:
    digest = hashlib.sha256(class_fingerprint.encode())
    for name in module_names:
        module = sys.modules.get(name) or __import__(name, fromlist=["_"])
        digest.update(name.encode())
        digest.update(fingerprint_path(module.__file__).encode())
    return digest.hexdigest()
