"""TensorFlow's start-up noise goes to the step's log file, not the console or task log.

Importing TensorFlow 2.16 on a machine without a GPU prints, from C++ straight to file
descriptor 2, lines such as "E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:
Unable to register cuDNN factory: Attempting to register factory for plugin cuDNN when one
has already been registered" (and cuFFT, cuBLAS). TF_CPP_MIN_LOG_LEVEL=2 does not hide them
(they are ERROR level); 3 would hide real errors too. So the first import of TensorFlow in a
process happens here, with descriptor 2 pointed at the step's log file for its duration.
Python's own stderr writes in that window (another thread's console line) go there too; the
window is the import alone, a few seconds once per process.
"""
from __future__ import annotations

import os
import sys
import threading

_lock = threading.Lock()


def import_tensorflow_quietly(log_path: str) -> None:
    """Imports tensorflow (once per process) with native stderr appended to `log_path`."""
    if "tensorflow" in sys.modules:
        return
    with _lock:
        if "tensorflow" in sys.modules:
            return
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(log_path, "ab") as log:
                log.write(b"--- TensorFlow's start-up output (native stderr) ---\n")
                log.flush()
                os.dup2(log.fileno(), 2)
                import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
