"""A model server for one candidate model, in a throwaway directory: launched as a child
process on free loopback ports, waited on until the model is AVAILABLE, stopped by PID.

Three servers speak the same protocol and take the same flags, and they do not prove the
same thing:

- "tensorflow_model_server": TF Serving's C++ binary found on PATH;
- "docker": the TF Serving docker image (the release production serves with, when it uses
  that image) under a docker engine;
- "pipewright": our own `pipewright serve` (`python -m serving`), which loads the SavedModel
  with the Python TensorFlow of this environment — the one that exported it.

Which one runs is `choose_server`'s answer, never a silent substitute: a server that is
asked for and missing is an error unless a fallback was asked for too, and the choice says
why it differs from the request.

The server must run until the step stops it. When it ends before that because something
outside stopped it (a termination signal, or a clean exit, which is how `pipewright serve`
answers SIGTERM), the step was cut short: `StepInterrupted`, no verdict. When it ends by
itself (an error exit, a crash), that is evidence about the model.
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
from dataclasses import dataclass
from pathlib import Path

from components.interruption import StepInterrupted, check_child_exit

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_KINDS = ("auto", "pipewright", "tensorflow_model_server", "docker")
# What a blessing records as the server that validated: every kind but "auto".
SERVERS = ("tensorflow_model_server", "docker", "pipewright")
TF_SERVING_BINARY = "tensorflow_model_server"
AVAILABLE, END = 30, 50  # tensorflow.serving.ModelVersionStatus.State
POLL_INTERVAL_S = 0.5
STOP_GRACE_S = 20
# What TF Serving logs when a version starts loading (tensorflow_serving/core/
# loader_harness.cc, LoaderHarness::Load); `pipewright serve` logs the same line.
LOADING_MARK = b"Loading servable version {name: "
# How long a server may take to reach that line: its own start-up (process start, Python and
# TensorFlow imports for pipewright serve, container start for docker), which says nothing
# about the model. It is much longer than a load on a quiet machine (10-20 s) because on a
# loaded 2-core machine pipewright serve's imports alone have taken 110 s.
STARTUP_DEADLINE_S = 600.0


class ModelNotAvailable(Exception):
    """The server never served the model: it failed to load, timed out, or the server died."""


# What a server logs when it cannot bind a port it was given: TF Serving's server.cc and
# pipewright serve (gRPC), and the OS's EADDRINUSE text (REST). Ports are picked free, but
# another process can take one before a slow server binds it.
# (Compared lowercased: uvloop writes "address already in use".)
PORT_NOT_BOUND_MARKS = (b"failed to buildandstart grpc server", b"address already in use")


class ServerStartFailed(Exception):
    """The server never got to serve the model for a reason that is not the model's (a port
    it could not bind, a start-up too slow): no verdict, so the step fails."""


class ServerStartTimeout(ServerStartFailed):
    """The server did not begin loading the model within its start-up deadline: a fault of
    the machine or the server, not evidence about the model, so the step fails (no verdict)."""


def docker_engine_problem() -> str:
    """Why no docker engine can run a container here, or "" when `docker info` answers."""
    if shutil.which("docker") is None:
        return "no `docker` command on PATH"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 15 s"
    except OSError as error:
        return f"`docker info` could not run: {error}"
    if info.returncode != 0:
        said = (info.stderr or info.stdout).decode(errors="replace").strip().splitlines()
        return (f"`docker info` exited with code {info.returncode}"
                + (f": {said[-1]}" if said else ""))
    return ""


def docker_engine_available() -> bool:
    return not docker_engine_problem()


def server_problem(kind: str) -> str:
    """Why the server `kind` cannot run here, or "" when it can."""
    if kind == "docker":
        return docker_engine_problem()
    if kind == TF_SERVING_BINARY and shutil.which(TF_SERVING_BINARY) is None:
        return f"{TF_SERVING_BINARY} is not on PATH"
    return ""


@dataclass(frozen=True)
class ServerChoice:
    """The server that will validate (`kind`, one of SERVERS), what was asked for
    (`requested`, one of SERVER_KINDS), and when the two differ, why (`why`); `fallback` is
    true when the requested server was missing and the fallback the user named runs."""

    kind: str
    requested: str
    why: str = ""
    fallback: bool = False

    def describe(self) -> str:
        if self.kind == self.requested:
            return self.kind
        if self.fallback:
            return f"{self.kind}, FALLBACK for the requested {self.requested}: {self.why}"
        return f"{self.kind} (requested {self.requested}: {self.why})"


def choose_server(preference: str, fallback: str = "") -> ServerChoice:
    """The server to run for `serving_binary=preference`. "auto" is tensorflow_model_server
    when it is on PATH, else pipewright. A requested server that cannot run here raises
    ValueError naming the fix, unless `fallback` (a kind of SERVER_KINDS) names what to run
    instead; the choice then says so."""
    if preference not in SERVER_KINDS:
        raise ValueError(f"serving_binary must be one of {SERVER_KINDS}, got {preference!r}")
    if fallback and fallback not in SERVER_KINDS:
        raise ValueError(f"fallback_serving_binary must be '' or one of {SERVER_KINDS}, "
                         f"got {fallback!r}")
    if preference == "auto":
        if shutil.which(TF_SERVING_BINARY):
            return ServerChoice(TF_SERVING_BINARY, "auto", f"{TF_SERVING_BINARY} is on PATH")
        return ServerChoice("pipewright", "auto", f"no {TF_SERVING_BINARY} on PATH")
    problem = server_problem(preference)
    if not problem:
        return ServerChoice(preference, preference)
    if not fallback or fallback == preference:
        alternatives = {
            "docker": "start a docker engine (or point DOCKER_HOST at one)",
            TF_SERVING_BINARY: f"install TF Serving's {TF_SERVING_BINARY} on PATH",
        }[preference]
        raise ValueError(
            f"serving_binary={preference!r} cannot run: {problem} — to fix: {alternatives}; "
            f"or choose another serving_binary ('auto', 'pipewright', ...); or set "
            f"fallback_serving_binary='auto' to validate with another server when "
            f"{preference} is missing (the blessing then records the substitute)")
    # No second fallback: a fallback that cannot run fails the step too.
    fallback_problem = server_problem(fallback)
    if fallback_problem:
        raise ValueError(f"serving_binary={preference!r} cannot run: {problem}; nor can "
                         f"fallback_serving_binary={fallback!r}: {fallback_problem}")
    chosen = choose_server(fallback)
    return ServerChoice(chosen.kind, preference, problem, fallback=True)


# The server gets SIGTERM when the thread that started it ends, e.g. when the runner is
# SIGKILLed (prctl PR_SET_PDEATHSIG, set by util-linux's setpriv before it execs the server):
# otherwise it outlives a killed runner, serving forever. Without setpriv, the `stop` in
# SandboxServer.__exit__ is all there is.
_DIES_WITH_PARENT = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []


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
        self._log_start = 0  # where this server's output begins in the (appended) log
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
            return [*_DIES_WITH_PARENT, shutil.which(TF_SERVING_BINARY) or TF_SERVING_BINARY,
                    *flags]
        return [*_DIES_WITH_PARENT, sys.executable, "-m", "serving", *flags]

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
            self._log_start = log.tell()
            self.process = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.pid = self.process.pid

    def wait_until_available(self, deadline_s: float, version: int | None = None,
                             startup_deadline_s: float | None = None) -> int:
        """Polls GetModelStatus until `version` (default: any version) is AVAILABLE;
        returns the version.

        `deadline_s` (seconds) counts from when the server begins loading (its "Loading
        servable version" log line, LOADING_MARK), or from this call when it already has:
        like TFX's `max_loading_time_seconds`, it judges the model's load, not the server's
        start-up. The start-up has `startup_deadline_s` (default STARTUP_DEADLINE_S).

        Raises ModelNotAvailable (a verdict: the load failed, missed `deadline_s`, or the
        server exited by itself), ServerStartTimeout (no verdict: the server never began
        loading within `startup_deadline_s`), StepInterrupted (stopped from outside)."""
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        if version is not None:
            request.model_spec.version.value = version
        if startup_deadline_s is None:
            startup_deadline_s = STARTUP_DEADLINE_S
        startup_deadline = time.monotonic() + startup_deadline_s
        load_deadline = None
        last_seen = "no answer from the server yet"
        # Retry connecting often: by default gRPC backs off for seconds after a refusal.
        options = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
                   ("grpc.max_reconnect_backoff_ms", 1000)]
        with grpc.insecure_channel(self.grpc_target, options=options) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            while True:
                exit_code = self.process.poll()
                if exit_code is not None:
                    self._check_exit_is_a_verdict()
                    raise ModelNotAvailable(f"the server exited with code {exit_code} before the "
                                            f"model was AVAILABLE; its log ends:\n{self.log_tail()}")
                if load_deadline is None and self.began_loading():
                    load_deadline = time.monotonic() + deadline_s
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
                now = time.monotonic()
                if load_deadline is not None and now >= load_deadline:
                    raise ModelNotAvailable(f"the model was not AVAILABLE within {deadline_s:g} s "
                                            f"of the server beginning to load it (last: "
                                            f"{last_seen})")
                if load_deadline is None and now >= startup_deadline:
                    raise ServerStartTimeout(
                        f"{self.what} did not begin loading the model within "
                        f"{startup_deadline_s:g} s of its start (no {LOADING_MARK.decode()!r}... "
                        f"line in {self.log_path}): the machine or the server is too slow to "
                        f"start, which says nothing about the model, so no verdict is "
                        f"published; its log ends:\n{self.log_tail()}")
                time.sleep(POLL_INTERVAL_S)

    def began_loading(self) -> bool:
        """Whether this server's log holds TF Serving's "Loading servable version" line."""
        return LOADING_MARK in self._own_log()

    def _check_exit_is_a_verdict(self) -> None:
        """For a server that has exited: raises unless the exit says something about the
        model (StepInterrupted: stopped from outside; ServerStartFailed: a port not bound)."""
        self.check_not_stopped_from_outside()
        self.check_ports_were_bound()

    def check_ports_were_bound(self) -> None:
        """Raises ServerStartFailed when the server's log says it could not bind a port."""
        output = self._own_log().lower()
        if any(mark in output for mark in PORT_NOT_BOUND_MARKS):
            raise ServerStartFailed(
                f"{self.what} could not bind its port (gRPC {self.grpc_port}, REST "
                f"{self.rest_port}): another process took it after it was picked; that says "
                f"nothing about the model, so no verdict is published — re-run the step; its "
                f"log ends:\n{self.log_tail()}")

    def _own_log(self) -> bytes:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                return log.read()
        except FileNotFoundError:
            return b""

    @property
    def what(self) -> str:
        return f"the sandbox model server ({self.kind}, pid {self.pid})"

    def check_not_stopped_from_outside(self) -> None:
        """Raises StepInterrupted when the server has exited because something outside the
        step stopped it: an external signal (SIGTERM, SIGKILL, ...; for docker, the 128 + N
        exit code of a signalled container), or a clean exit (code 0), which a server never
        makes by itself before it is asked to stop — `pipewright serve` exits 0 on SIGTERM.
        Returns when it still runs or exited by itself (an error exit, a crash)."""
        code = self.process.poll() if self.process is not None else None
        if code is None:
            return
        check_child_exit(code, self.what)
        if code == 0:
            raise StepInterrupted(f"{self.what} exited cleanly (code 0) before the step stopped "
                                  f"it: something outside the step stopped it (pipewright serve "
                                  f"exits 0 on SIGTERM); no verdict is published — re-run the "
                                  f"step")

    def settle(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """After a failed request: tells a server that is up (the failure is the model's)
        from one that is going away. Returns None when the server still answers
        GetModelStatus; otherwise waits up to `grace_s` for it to exit, raises
        StepInterrupted if it was stopped from outside, ServerStartFailed if it could not
        bind a port, and returns its exit code (None if it still runs, unresponsive)."""
        if self.process is None:
            return None
        if self.process.poll() is None and self._answers():
            return None
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            return None
        self._check_exit_is_a_verdict()
        return self.process.returncode

    def _answers(self) -> bool:
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        with grpc.insecure_channel(self.grpc_target) as channel:
            try:
                model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=5)
            except grpc.RpcError as error:
                return error.code() not in (grpc.StatusCode.UNAVAILABLE,
                                            grpc.StatusCode.DEADLINE_EXCEEDED,
                                            grpc.StatusCode.CANCELLED)
        return True

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
