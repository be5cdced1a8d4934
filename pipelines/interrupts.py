"""Termination signals received by this process, so the launcher never publishes the work
of a step that was interrupted while it ran.

`watch()` (called from the main thread by the local runner and by each Airflow task)
records SIGTERM, SIGINT and SIGHUP — and SIGALRM when a handler for it is already set,
as Airflow's `execution_timeout` does — then hands the signal on: to the handler that was
there before (Airflow's raises AirflowTaskTerminated / AirflowTaskTimeout in the task),
or, where there was none, by raising `StepInterrupted` in the main thread. Step threads
keep running, but `since(t)` tells the launcher a signal arrived after the step started,
and it fails the step instead of publishing (components.interruption explains why).
Python runs handlers in the main thread only, so a main thread that waits on steps wakes
up often (the local runner: every POLL_S) to record a signal the kernel gave a step thread.
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Any

from components.interruption import StepInterrupted

_WATCHED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_received: list[tuple[float, int]] = []  # (time.monotonic(), signal number)
_previous: dict[int, Any] = {}
_lock = threading.Lock()
POLL_S = 0.2


def _on_signal(number: int, frame: Any) -> None:
    _received.append((time.monotonic(), number))
    previous = _previous.get(number)
    if callable(previous):
        previous(number, frame)
        return
    if number == signal.SIGALRM:
        return
    raise StepInterrupted(f"interrupted by {signal.Signals(number).name}")


def watch() -> bool:
    """Installs the recording handlers (once per process); returns False when called off
    the main thread, where Python cannot install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        return False
    with _lock:
        numbers = list(_WATCHED)
        if callable(signal.getsignal(signal.SIGALRM)):
            numbers.append(signal.SIGALRM)
        for number in numbers:
            current = signal.getsignal(number)
            if current is _on_signal:
                continue
            _previous[number] = current if callable(current) else None
            signal.signal(number, _on_signal)
    return True


def since(started: float) -> str:
    """The name of the first termination signal received at or after `started`
    (a time.monotonic() value), or ""."""
    for at, number in list(_received):
        if at >= started:
            return signal.Signals(number).name
    return ""


def clear() -> None:
    """Forgets received signals (tests that send themselves signals use this)."""
    _received.clear()
