"""TensorFlow's start-up noise goes to the step's log file, not the console or task log.

Importing TensorFlow 2.16 on a machine without a GPU prints, from C++ straight to file
descriptor 2, lines such as "E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:
Unable to register cuDNN factory: Attempting to register factory for plugin cuDNN when one
has already been registered" (and cuFFT, cuBLAS). TF_CPP_MIN_LOG_LEVEL=2 does not hide them
(they are ERROR level); 3 would hide real errors too. So the first import of TensorFlow in a
process happens here, with descriptor 2 pointed at the step's log file for its duration.
Python's own stderr writes in that window go there too, except the lines written with
`to_console` (the local runner's console lines, such as the notice that a Ctrl-C was
received): they reach the console through the descriptor saved for the import. The window is
the import alone, once per process, and 15-40 s on a loaded machine.
"""
from __future__ import annotations

import os
import sys
import threading

_lock = threading.Lock()
_console = {"fd": None}  # the console's descriptor 2, saved while the import holds fd 2
_console_lock = threading.Lock()


def to_console(line: str) -> None:
    """Writes `line` to stderr, and to the console even while TensorFlow's import has
    descriptor 2 pointed at a step's log. When the console is gone (`pipewright run ... |
    head` ended), later lines are dropped: the run goes on and its exit code still says
    how it ended, instead of dying half-recorded on BrokenPipeError."""
    with _console_lock:
        try:
            if _console["fd"] is None:
                print(line, file=sys.stderr, flush=True)
            else:
                os.write(_console["fd"], (line + "\n").encode())
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, _console["fd"] if _console["fd"] is not None
                    else sys.stderr.fileno())
            os.close(devnull)


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
                with _console_lock:
                    os.dup2(log.fileno(), 2)
                    _console["fd"] = saved
                import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            with _console_lock:
                os.dup2(saved, 2)
                _console["fd"] = None
            os.close(saved)
