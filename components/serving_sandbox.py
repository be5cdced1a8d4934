"""A model server for one candidate model, in a throwaway directory: launched as a child
process on free loopback ports, waited on until the model is AVAILABLE, stopped by PID.

Three servers speak the same protocol and take the same flags: our own `pipewright serve`
(`python -m serving`), a real `tensorflow_model_server` on PATH, or the TF Serving docker
image when a docker engine answers.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_KINDS = ("auto", "pipewright", "tensorflow_model_server", "docker")
TF_SERVING_BINARY = "tensorflow_model_server"
AVAILABLE, END = 30, 50  # tensorflow.serving.ModelVersionStatus.State
POLL_INTERVAL_S = 0.5
STOP_GRACE_S = 20


class ModelNotAvailable(Exception):
    """The server never served the model: it failed to load, timed out, or the server died."""


def docker_engine_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def choose_server(preference: str) -> tuple[str, str]:
    """The server kind to run and, when it differs from the preference, why."""
    if preference not in SERVER_KINDS:
        raise ValueError(f"serving_binary must be one of {SERVER_KINDS}, got {preference!r}")
    if preference == "docker" and not docker_engine_available():
        kind, note = choose_server("auto")
        return kind, f"no docker engine answers `docker info`; using {kind} instead"
    if preference == "tensorflow_model_server" and shutil.which(TF_SERVING_BINARY) is None:
        raise ValueError(f"serving_binary {TF_SERVING_BINARY!r} is not on PATH")
    if preference == "auto":
        return ("tensorflow_model_server" if shutil.which(TF_SERVING_BINARY) else "pipewright"), ""
    return preference, ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SandboxServer:
    """One server process serving `base_path` (holding `<version>/` SavedModels) as
    `model_name`. Use as a context manager: leaving it always stops the process."""

    def __init__(self, kind: str, *, model_name: str, base_path: str, log_path: str,
                 docker_image: str = ""):
        self.kind = kind
        self.model_name = model_name
        self.base_path = os.path.abspath(base_path)
        self.log_path = log_path
        self.docker_image = docker_image
        self.grpc_port = free_port()
        self.rest_port = free_port()
        self.process: subprocess.Popen | None = None
        self.pid: int | None = None
        self._container = f"pipewright-infra-{uuid.uuid4().hex[:12]}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def command(self) -> list[str]:
        # No load retries: a model that fails once fails validation at once.
        if self.kind == "docker":
            # The image's entrypoint serves $MODEL_BASE_PATH/$MODEL_NAME on 8500 and 8501.
            return ["docker", "run", "--rm", "--name", self._container,
                    "-p", f"127.0.0.1:{self.grpc_port}:8500",
                    "-p", f"127.0.0.1:{self.rest_port}:8501",
                    "-v", f"{self.base_path}:/models/{self.model_name}:ro",
                    "-e", f"MODEL_NAME={self.model_name}", "-e", "MODEL_BASE_PATH=/models",
                    self.docker_image, "--max_num_load_retries=0"]
        flags = [f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}",
                 f"--model_name={self.model_name}", f"--model_base_path={self.base_path}",
                 "--max_num_load_retries=0"]
        if self.kind == TF_SERVING_BINARY:
            return [shutil.which(TF_SERVING_BINARY) or TF_SERVING_BINARY, *flags]
        return [sys.executable, "-m", "serving", *flags]

    def __enter__(self) -> "SandboxServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2",
                   TF_USE_LEGACY_KERAS="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.pid = self.process.pid

    def wait_until_available(self, deadline_s: float, version: int | None = None) -> int:
        """Polls GetModelStatus until `version` (default: any version) is AVAILABLE;
        returns the version."""
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        if version is not None:
            request.model_spec.version.value = version
        deadline = time.monotonic() + deadline_s
        last_seen = "no answer from the server yet"
        # Retry connecting often: by default gRPC backs off for seconds after a refusal.
        options = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
                   ("grpc.max_reconnect_backoff_ms", 1000)]
        with grpc.insecure_channel(self.grpc_target, options=options) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            while True:
                exit_code = self.process.poll()
                if exit_code is not None:
                    raise ModelNotAvailable(f"the server exited with code {exit_code} before the "
                                            f"model was AVAILABLE; its log ends:\n{self.log_tail()}")
                try:
                    response = stub.GetModelStatus(request, timeout=5)
                except grpc.RpcError as error:
                    # UNAVAILABLE: not listening yet; NOT_FOUND: the version not yet seen on disk.
                    if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                                            grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise ModelNotAvailable(f"GetModelStatus failed: {error.code().name}: "
                                                f"{error.details()}") from None
                    last_seen = f"GetModelStatus: {error.code().name} {error.details() or ''}".strip()
                else:
                    for status in response.model_version_status:
                        if status.state == AVAILABLE:
                            return status.version
                        if status.state == END and status.status.error_code:
                            raise ModelNotAvailable(
                                f"the model failed to load (version {status.version}): "
                                f"{status.status.error_message}")
                    last_seen = "states " + ", ".join(
                        f"version {s.version}: {s.state}" for s in response.model_version_status)
                if time.monotonic() >= deadline:
                    raise ModelNotAvailable(f"the model was not AVAILABLE within {deadline_s:g} s "
                                            f"(last: {last_seen})")
                time.sleep(POLL_INTERVAL_S)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; the child is reaped either way."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.kind == "docker":
            subprocess.run(["docker", "rm", "-f", self._container], capture_output=True, timeout=60)
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return "".join(fh.readlines()[-lines:]).rstrip()
        except OSError:
            return "(no log)"
