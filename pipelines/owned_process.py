"""What the servers a test or `make up-cluster` starts from Debian's packages (MariaDB,
PostgreSQL, Redis) share: installing the package, and stopping the process they own."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable


def apt_install(package: str, installed: Callable[[], bool], error: type[Exception],
                what: str, timeout_s: float = 900) -> float:
    """`apt-get install` of `package` (no recommended packages; waits for another apt's
    lock); returns the seconds it took. Needs root. Raises `error` naming the command and
    the tail of its output when it fails or times out, or when `installed()` is still false
    afterwards (`what` names the binaries in that message).

    Installs by processes of this machine (the test suite's parallel workers) take turns
    on APT_TURN_LOCK (flock), so two never run apt-get at once, and one that finds the
    package installed by the one before it returns without running it."""
    started = time.monotonic()
    with open(APT_TURN_LOCK, "a") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        if installed():
            return time.monotonic() - started
        return _apt_install(package, installed, error, what, timeout_s, started)


APT_TURN_LOCK = "/tmp/pipewright-apt-install.lock"


def _apt_install(package: str, installed: Callable[[], bool], error: type[Exception],
                 what: str, timeout_s: float, started: float) -> float:
    lock = "-o DPkg::Lock::Timeout=600"  # other developers may be installing packages too
    command = (f"apt-get {lock} update -q && apt-get {lock} install -y -q "
               f"--no-install-recommends {package}")
    if os.geteuid() != 0:
        raise error(f"{what} not installed and `{command}` needs root "
                    f"(running as uid {os.geteuid()})")
    try:
        done = subprocess.run(command, shell=True, capture_output=True, text=True,
                              timeout=timeout_s,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except subprocess.TimeoutExpired:
        raise error(f"`{command}` did not finish in {timeout_s:.0f} s") from None
    if done.returncode != 0:
        raise error(f"`{command}` failed (exit {done.returncode}):\n"
                    f"{(done.stdout + done.stderr)[-2000:]}")
    if not installed():
        raise error(f"`{command}` succeeded but {what} still not installed")
    return time.monotonic() - started


def stop(process: subprocess.Popen, first: int = signal.SIGTERM, timeout_s: float = 30,
         kill_group: bool = False) -> None:
    """Sends `first` (the server's clean-shutdown signal), then SIGKILL — to the process
    group with `kill_group` — after `timeout_s` seconds. Idempotent."""
    if process.poll() is not None:
        return
    process.send_signal(first)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        if kill_group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait(timeout=30)


def last_line(log: Path, markers: tuple[str, ...] = ("FATAL", "PANIC", "ERROR")) -> str:
    """The log's last line carrying one of `markers`, else its last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return f"(no log at {log})"
    for line in reversed(lines):
        if any(marker in line for marker in markers):
            return line
    return lines[-1] if lines else f"(empty log {log})"
