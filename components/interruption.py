"""Telling an interrupted step from a finished one.

A step that was cut short from outside — a termination signal to its process, a timeout,
or a child process it supervises (a sandbox model server, a tuning worker) killed by
someone else — has not finished its work, so it must not publish a verdict, positive or
negative. It raises `StepInterrupted`; the launcher records the execution FAILED,
publishes nothing and so caches nothing.

A child that exits by itself (a non-zero exit code, or a crash signal such as SIGSEGV or
SIGABRT raised by its own code) has finished: that outcome is evidence about the work
(e.g. a model that crashes the server) and may become a verdict.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time

# Signals that come from outside the process (an operator, `make down`, Airflow, the OOM
# killer) rather than from a fault in the code the process ran.
EXTERNAL_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP,
                              signal.SIGQUIT})


class StepInterrupted(RuntimeError):
    """The step's work was cut short from outside; it publishes nothing and is not cached."""


def killed_from_outside(returncode: int | None) -> bool:
    """True when `returncode` (as `subprocess.Popen.returncode` gives it: -N for signal N)
    says the child was ended by an external signal (SIGTERM, SIGKILL, SIGINT, SIGHUP,
    SIGQUIT). Shells report signal N as 128 + N; that form counts too."""
    if returncode is None:
        return False
    number = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    return number in {int(s) for s in EXTERNAL_SIGNALS}


def check_child_exit(returncode: int | None, what: str) -> None:
    """Raises StepInterrupted if the child `what` (e.g. "the sandbox model server, pid 42")
    was killed from outside; returns otherwise."""
    if killed_from_outside(returncode):
        number = -returncode if returncode < 0 else returncode - 128
        raise StepInterrupted(f"{what} was killed by {signal.Signals(number).name} from outside "
                              f"the step; no verdict is published — re-run the step")


# Termination signals this process received, (time.monotonic(), number): recorded by the
# handlers pipelines.interrupts installs, read by the launcher before it publishes and by
# components whose effects leave their staging directory (the Pusher) before they act.
_received: list[tuple[float, int]] = []


# time.monotonic() at which each step now running in this process began (the launcher's
# `running_step`): code deep inside a step (a Beam DoFn reading examples) has no Step, yet
# must see a signal that arrived before it began, e.g. during the step's TensorFlow import.
_running_starts: list[float] = []
_running_lock = threading.Lock()


@contextlib.contextmanager
def running_step(started: float):
    """Marks a step begun at `started` (time.monotonic()) as running while inside."""
    with _running_lock:
        _running_starts.append(started)
    try:
        yield
    finally:
        with _running_lock:
            _running_starts.remove(started)


def earliest_running_step(default: float) -> float:
    """When the earliest step still running in this process began; `default` if none."""
    with _running_lock:
        return min(_running_starts, default=default)


def record_signal(number: int) -> None:
    _received.append((time.monotonic(), number))


def signal_since(started: float) -> str:
    """The name of the first termination signal received at or after `started` (a
    time.monotonic() value), or ""."""
    for at, number in list(_received):
        if at >= started:
            return signal.Signals(number).name
    return ""


def check_not_interrupted(started: float, what: str) -> None:
    """Raises StepInterrupted if a termination signal arrived since `started`, before
    `what` (e.g. "the push into the serving directory") takes effect."""
    name = signal_since(started)
    if name:
        raise StepInterrupted(f"{name} arrived while the step ran; {what} is not done")
