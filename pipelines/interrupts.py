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

The local runner watches in `record_only` mode: the first signal is only recorded (the
runner stops scheduling, the running steps fail when they end, the run is recorded
failed); a second one ends the process at once with the signal's default action (its
running executions are then recorded failed by the next run, "process died").
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from components.interruption import StepInterrupted, record_signal, signal_since

_WATCHED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_previous: dict[int, Any] = {}
_lock = threading.Lock()
_mode = {"record_only": False}
POLL_S = 0.2


def _on_signal(number: int, frame: Any) -> None:
    earlier = signal_since(0.0)
    record_signal(number)
    if _mode["record_only"] and number != signal.SIGALRM:
        if earlier:  # a second signal: stop now
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
        return
    previous = _previous.get(number)
    if callable(previous):
        previous(number, frame)
        return
    if number == signal.SIGALRM:
        return
    raise StepInterrupted(f"interrupted by {signal.Signals(number).name}")


def watch(record_only: bool | None = None) -> bool:
    """Installs the recording handlers (once per process); `record_only` (None: as it
    was) chooses the mode above. Returns False when called off the main thread, where
    Python cannot install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        return False
    with _lock:
        if record_only is not None:
            _mode["record_only"] = record_only
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
    return signal_since(started)


def clear() -> None:
    """Forgets received signals (tests that send themselves signals use this)."""
    from components import interruption

    interruption._received.clear()
