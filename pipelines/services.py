"""Starts and stops the local system behind `make up` / `make down`: Airflow 3 (api-server,
scheduler, dag-processor, triggerer; SQLite, LocalExecutor) with the repo's DAGs, and the
model server on the push directory. Everything binds to 127.0.0.1.

Each service runs as its own process group, recorded in a pid file under
`<home>/services/` together with its start time (a recycled pid is never signalled).
Stopping signals every process of every service, including the task processes Airflow
started in their own process groups, and waits until none is left.

    python -m pipelines.services up [--home DIR] [--no-first-run]
    python -m pipelines.services down [--home DIR]
    python -m pipelines.services status [--home DIR]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from pipelines.home import HOME_ID_ENV, REPO_ROOT, Home

HOST = "127.0.0.1"
AIRFLOW_SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
MODEL_SERVER = "model-server"
ALL_SERVICES = (*AIRFLOW_SERVICES, MODEL_SERVER)
ADMIN_USER = "admin"


class ServiceError(RuntimeError):
    """A service could not start (port taken, crashed, not ready in time)."""


@dataclass
class Services:
    home: Home
    api_port: int = 8080
    grpc_port: int = 8500
    rest_port: int = 8501
    model_name: str = "penguin"
    parallelism: int = 2
    dags_folder: str = str(REPO_ROOT / "dags")
    extra_env: dict[str, str] = field(default_factory=dict)
    dag_ids: list[str] | None = None  # the DAGs to wait for and unpause; default: registered
    # How long the model server writes one request-log file before closing it (the
    # TrafficMonitor reads closed files only); None: the server's default (300 s).
    request_log_max_file_age_seconds: float | None = None
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    _token: tuple[str, float] | None = field(default=None, init=False, repr=False)

    # -- paths -------------------------------------------------------------------------------
    @property
    def airflow_home(self) -> str:
        return os.path.join(self.home.root, "airflow")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.home.root, "services")

    @property
    def model_base_path(self) -> str:
        return os.path.join(self.home.serving_dir, self.model_name)

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    def pid_file(self, name: str) -> str:
        return os.path.join(self.state_dir, f"{name}.pid")

    def log_file(self, name: str) -> str:
        return os.path.join(self.state_dir, "logs", f"{name}.log")

    @property
    def passwords_file(self) -> str:
        return os.path.join(self.airflow_home, "simple_auth_manager_passwords.json")

    # -- configuration -------------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        """The environment of every service: Airflow's settings, the pipeline home."""
        env = dict(os.environ)
        env.update({
            "PIPEWRIGHT_HOME": self.home.root,
            # What each task expects in the home's marker (Home.check_shared).
            HOME_ID_ENV: self.home.identity or "",
            # Where a Rollout step reads the served versions' live evidence.
            "PIPEWRIGHT_MODEL_SERVER_REST": f"http://{HOST}:{self.rest_port}",
            "TF_USE_LEGACY_KERAS": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "AIRFLOW_HOME": self.airflow_home,
            "AIRFLOW__CORE__DAGS_FOLDER": self.dags_folder,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": self.passwords_file,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        })
        env.update(self.extra_env)
        return env

    def password(self) -> str:
        """The admin password, made once and kept in Airflow's passwords file."""
        os.makedirs(self.airflow_home, exist_ok=True)
        try:
            with open(self.passwords_file) as fh:
                passwords = json.load(fh)
        except (OSError, ValueError):
            passwords = {}
        if ADMIN_USER not in passwords:
            passwords[ADMIN_USER] = secrets.token_urlsafe(12)
            fd = os.open(self.passwords_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(passwords, fh)
        return passwords[ADMIN_USER]

    def commands(self) -> dict[str, list[str]]:
        airflow = str(self.bin_dir / "airflow")
        commands = {
            "api-server": [airflow, "api-server", "--host", HOST, "--port", str(self.api_port)],
            "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
            "dag-processor": [airflow, "dag-processor"],
            "triggerer": [airflow, "triggerer", "--skip-serve-logs"],
        }
        if importlib.util.find_spec("serving.cli") is None:
            return commands  # no model server in this checkout
        # TF Serving's MonitoringConfig: Prometheus (its metrics, and the served versions'
        # data quality, serving/data_quality.py) at /monitoring/prometheus/metrics.
        monitoring = os.path.join(self.state_dir, "monitoring.config")
        os.makedirs(self.state_dir, exist_ok=True)
        with open(monitoring, "w") as fh:
            fh.write('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
        commands[MODEL_SERVER] = [
            str(self.bin_dir / "pipewright"), "serve", "--model_name", self.model_name,
            "--model_base_path", self.model_base_path, "--port", str(self.grpc_port),
            "--rest_api_port", str(self.rest_port),
            "--request_log_dir", os.path.join(self.home.root, "request_logs"),
            "--request_log_sampling_rate", "1.0", "--monitoring_config_file", monitoring]
        if self.request_log_max_file_age_seconds is not None:
            commands[MODEL_SERVER] += ["--request_log_max_file_age_seconds",
                                       str(self.request_log_max_file_age_seconds)]
        return commands

    # -- up ----------------------------------------------------------------------------------
    def up(self, *, first_run: bool = True, timeout_s: float = 180,
           echo=lambda line: print(line, flush=True)) -> None:
        running = self.running()
        if running:
            echo(f"already running: {', '.join(sorted(running))} (stop with `make down`)")
            return
        self._check_ports_free()
        os.makedirs(os.path.dirname(self.log_file("x")), exist_ok=True)
        os.makedirs(self.model_base_path, exist_ok=True)
        password = self.password()
        echo(f"Airflow home {self.airflow_home}: migrating its database")
        self._airflow_cli("db", "migrate")
        try:
            for name, command in self.commands().items():
                self._start(name, command)
                pid = self._read_pid(name)["pid"]
                echo(f"started {name} (pid {pid}), log {self.log_file(name)}")
            self.wait_ready(timeout_s)
            dag_ids = self.unpause_dags()
        except BaseException:
            self.down(echo=echo)
            raise
        echo(f"DAGs unpaused: {', '.join(dag_ids)}")
        for dag_id, run_id in self.fail_interrupted_runs(dag_ids):
            echo(f"run {run_id} of {dag_id} was interrupted by the last `make down`: marked "
                 f"failed (its steps published nothing; the next run executes them)")
        if first_run and self.model_name in dag_ids and not _has_version(self.model_base_path):
            run = self.trigger(self.model_name, {})
            echo(f"no model is served yet: triggered a first {self.model_name} run "
                 f"({run['dag_run_id']}); predictions answer once it has pushed")
        echo("")
        echo(f"Airflow UI      {self.api_url}   login: {ADMIN_USER} / {password}")
        echo(f"model server    REST http://{HOST}:{self.rest_port}  gRPC {HOST}:{self.grpc_port}"
             f"  (model {self.model_name!r} from {self.model_base_path})")
        echo(f"predict         {self.prediction_command()}")
        echo("stop everything `make down`")

    def prediction_command(self) -> str:
        example = {"island": "Biscoe", "bill_length_mm": 48.6, "bill_depth_mm": 16.0,
                   "flipper_length_mm": 230.0, "body_mass_g": 5800.0, "sex": "male"}
        # serving_raw takes the raw features by name (serving_default a serialized tf.Example).
        body = json.dumps({"signature_name": "serving_raw", "instances": [example]})
        return (f"curl -s -X POST http://{HOST}:{self.rest_port}/v1/models/{self.model_name}"
                f":predict -d '{body}'")

    def _check_ports_free(self) -> None:
        for name, port in (("Airflow api-server", self.api_port), ("model server gRPC",
                           self.grpc_port), ("model server REST", self.rest_port)):
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((HOST, port))
                except OSError:
                    raise ServiceError(f"port {port} on {HOST} ({name}) is already in use; "
                                       f"stop what uses it or choose another port") from None

    def _airflow_cli(self, *args: str) -> None:
        log = self.log_file("airflow-cli")
        with open(log, "a") as out:
            done = subprocess.run([str(self.bin_dir / "airflow"), *args], env=self.environment(),
                                  stdout=out, stderr=subprocess.STDOUT)
        if done.returncode:
            raise ServiceError(f"`airflow {' '.join(args)}` failed (exit {done.returncode}); "
                               f"see {log}")

    def _start(self, name: str, command: list[str]) -> None:
        with open(self.log_file(name), "a") as out:
            process = subprocess.Popen(command, env=self.environment(), cwd=str(REPO_ROOT),
                                       stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        record = {"pid": process.pid, "create_time": psutil.Process(process.pid).create_time(),
                  "command": command}
        with open(self.pid_file(name), "w") as fh:
            json.dump(record, fh)

    def wait_ready(self, timeout_s: float) -> None:
        """Until Airflow's health endpoint reports every component healthy and the model
        server answers; a service that exits meanwhile is an error naming its log."""
        deadline = time.monotonic() + timeout_s
        waiting = "services"
        while time.monotonic() < deadline:
            for name in self.commands():
                if self._process(name) is None:
                    raise ServiceError(f"{name} exited while starting; see {self.log_file(name)}")
            health = _get_json(f"{self.api_url}/api/v2/monitor/health")
            unhealthy = [part for part in ("metadatabase", "scheduler", "triggerer",
                                           "dag_processor")
                         if not health or (health.get(part) or {}).get("status") != "healthy"]
            model_server_up = MODEL_SERVER not in self.commands() or (
                _port_open(HOST, self.rest_port) and _port_open(HOST, self.grpc_port))
            if not unhealthy and model_server_up:
                return
            waiting = ", ".join(unhealthy + ([] if model_server_up else [MODEL_SERVER]))
            time.sleep(1)
        raise ServiceError(f"not ready after {timeout_s:.0f}s: {waiting}; logs in "
                           f"{os.path.dirname(self.log_file('x'))}")

    # -- the REST API ------------------------------------------------------------------------
    def token(self) -> str:
        """A JWT for the REST API (reused for a few minutes)."""
        if self._token is None or time.monotonic() - self._token[1] > 300:
            reply = self.api("POST", "/auth/token", {"username": ADMIN_USER,
                                                     "password": self.password()}, auth=False)
            self._token = (reply["access_token"], time.monotonic())
        return self._token[0]

    def api(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        """One REST API call. GET and PATCH (idempotent) are retried, up to 4 times with a
        growing pause, on Airflow's HTTP 500 "Database error": on SQLite a write of the API
        server's own audit log can meet the scheduler's lock (seen once in 20 runs). A GET is
        retried on any HTTP 500: Airflow 3.3.2's GET /api/v2/assets/events fails validating
        an event whose created run is still queued (its start_date is None) until it starts."""
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        for attempt in range(5):
            request = urllib.request.Request(
                self.api_url + path, method=method, headers=headers,
                data=None if body is None else json.dumps(body).encode())
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    text = response.read().decode()
                return json.loads(text) if text else None
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:1000]
                if exc.code == 500 and attempt < 4 and (
                        method == "GET" or (method == "PATCH" and "Database error" in detail)):
                    time.sleep(0.5 * 2 ** attempt)
                    continue
                raise ServiceError(f"{method} {path}: HTTP {exc.code}: {detail}") from None

    def pipewright_dag_ids(self, timeout_s: float = 90) -> list[str]:
        """The DAG ids of the registered pipelines, once the DAG processor has stored them."""
        from pipelines import registry

        expected = set(registry.names() if self.dag_ids is None else self.dag_ids)
        deadline = time.monotonic() + timeout_s
        while True:
            found = {d["dag_id"] for d in self.api("GET", "/api/v2/dags?limit=1000")["dags"]}
            if expected <= found or time.monotonic() > deadline:
                missing = expected - found
                if missing:
                    raise ServiceError(f"DAGs {sorted(missing)} did not appear; see "
                                       f"{self.log_file('dag-processor')} and "
                                       f"`airflow dags list-import-errors`")
                return sorted(expected)
            time.sleep(1)

    def unpause_dags(self) -> list[str]:
        dag_ids = self.pipewright_dag_ids()
        for dag_id in dag_ids:
            self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        return dag_ids

    def fail_interrupted_runs(self, dag_ids: list[str]) -> list[tuple[str, str]]:
        """Marks failed the DAG runs still "running" when the services start: no task of
        theirs survived the previous `down`, and with max_active_runs=1 such a run would
        hold back new runs until Airflow's heartbeat timeout noticed. Returns (dag, run)."""
        failed = []
        for dag_id in dag_ids:
            runs = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns?state=running&limit=100")
            for run in runs["dag_runs"]:
                path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run['dag_run_id'])}"
                self.api("PATCH", path, {"state": "failed"})
                failed.append((dag_id, run["dag_run_id"]))
        return failed

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
        return self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns",
                        {"logical_date": None, "conf": conf})

    # -- down --------------------------------------------------------------------------------
    def _read_pid(self, name: str) -> dict[str, Any] | None:
        try:
            with open(self.pid_file(name)) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def _process(self, name: str) -> psutil.Process | None:
        """The service's process, if the pid file's process is still that one."""
        record = self._read_pid(name)
        if not record:
            return None
        try:
            process = psutil.Process(record["pid"])
            if abs(process.create_time() - record["create_time"]) > 1 or \
                    process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process
        except psutil.Error:
            return None

    @property
    def service_names(self) -> tuple[str, ...]:
        """The services `running` reports and `down` stops (the cluster mode adds its own)."""
        return ALL_SERVICES

    def running(self) -> dict[str, int]:
        return {name: p.pid for name in self.service_names if (p := self._process(name))}

    def down(self, *, timeout_s: float = 15, echo=lambda line: print(line, flush=True)) -> int:
        """Stops every service and everything it started; returns how many processes.
        What has not exited `timeout_s` after SIGTERM is killed: a task killed mid-step
        publishes nothing, and the next run records its execution as failed."""
        roots = {name: p for name in self.service_names if (p := self._process(name))}
        tree = _with_descendants(roots.values())
        # Every process is asked to stop at once: the services, their workers, and the tasks
        # (which run in process groups of their own).
        for name, process in roots.items():
            echo(f"stopping {name} (pid {process.pid})")
            _signal_group(process, signal.SIGTERM)
        for process in tree:
            _send(process, signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=timeout_s)
        stubborn = _with_descendants(alive)
        for process in stubborn:
            echo(f"killing pid {process.pid} ({_describe(process)})")
            _send(process, signal.SIGKILL)
        psutil.wait_procs(stubborn, timeout=10)
        for name in self.service_names:
            if os.path.exists(self.pid_file(name)):
                os.remove(self.pid_file(name))
        echo(f"stopped {len(tree)} process(es)" if tree else "nothing was running")
        return len(tree)


def _with_descendants(processes) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for process in processes:
        try:
            found[process.pid] = process
            for child in process.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            continue
    return list(found.values())


def _signal_group(process: psutil.Process, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # started with start_new_session: group id == pid
    except (ProcessLookupError, PermissionError):
        try:
            process.send_signal(sig)
        except psutil.Error:
            pass


def _send(process: psutil.Process, sig: int) -> None:
    try:
        process.send_signal(sig)
    except psutil.Error:
        pass


def _describe(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())[:80]
    except psutil.Error:
        return "gone"


def _has_version(base_path: str) -> bool:
    return os.path.isdir(base_path) and any(v.isdigit() for v in os.listdir(base_path))


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read().decode())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.services", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--home", help="pipeline home (default $PIPEWRIGHT_HOME or .pipewright/)")
    parser.add_argument("--no-first-run", action="store_true",
                        help="do not trigger a first training run when no model is served yet")
    parser.add_argument("--api-port", type=int, default=int(os.environ.get("AIRFLOW_PORT", 8080)))
    parser.add_argument("--parallelism", type=int, default=2,
                        help="Airflow tasks run at once (each loads TensorFlow)")
    args = parser.parse_args(argv)
    if args.action != "up":
        from pipelines import cluster

        if cluster.started_here(Home.resolve(args.home)):  # `make up-cluster` runs there
            return cluster.main([args.action] + (["--home", args.home] if args.home else []))
    services = Services(Home.resolve(args.home), api_port=args.api_port,
                        parallelism=args.parallelism)
    try:
        if args.action == "up":
            services.up(first_run=not args.no_first_run)
        elif args.action == "down":
            services.down()
        else:
            running = services.running()
            for name in ALL_SERVICES:
                print(f"{name:<14} {'pid ' + str(running[name]) if name in running else 'stopped'}")
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
