"""Test helper: send SIGTERM to a child process the moment it appears, as `make down` does
to whatever is running."""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Callable, Iterable, Iterator

import psutil


@contextlib.contextmanager
def sigterm_first_seen(find: Callable[[], Iterable[psutil.Process]]) -> Iterator[dict]:
    """While the block runs, polls `find()` every 50 ms and sends SIGTERM to the first
    process it returns. Yields a dict that then holds its "pid" (empty if none was seen)."""
    killed: dict = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for process in find():
                killed["pid"] = process.pid
                process.send_signal(signal.SIGTERM)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield killed
    finally:
        done.set()
        watcher.join()
