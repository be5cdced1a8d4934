"""Test harness for the serving tests: ServedModel and `python -m serving` subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass
class ServedModel:
    name: str
    base_path: Path                 # <base>/<version>/ SavedModels
    version: int                    # the version the server will serve
    instances: list                 # valid :predict row-format instances for serving_default
    classify: dict | None = None    # {"signature_name":..., "examples": [...]} or None
    regress: dict | None = None
    extra: dict = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m serving` in a subprocess on free loopback ports, stopped by PID."""

    def __init__(self, args: list[str], log_dir: Path, name: str = "server"):
        self.grpc_port = free_port()
        self.rest_port = free_port()
        self.args = [f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}"] + args
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 120) -> "ServerProcess":
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "serving", *self.args], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=self._log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if b"ready" in line:
                return self
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"server did not start; log:\n{self.log_path.read_text()[-4000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        self.proc = None


def copy_model_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
