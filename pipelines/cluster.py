"""The cluster mode behind `make up-cluster`: the services of `make up` as a small cluster on
one machine, everything on 127.0.0.1 and under the pipeline home.

- PostgreSQL (pipelines/postgres_server.py): Airflow's metadata database and Celery's
  result backend;
- Redis (pipelines/redis_server.py): the Celery broker;
- MariaDB (pipelines/mariadb_server.py): ML Metadata's store (PIPEWRIGHT_METADATA=mysql://…);
- the Airflow api-server, scheduler, dag-processor and triggerer with the CeleryExecutor;
- two Celery workers (`airflow celery worker`, concurrency 1 each), each reporting its own
  hostname (`worker-1`, `worker-2`) on the task instances it runs, as separate machines
  would.

Each runs as its own process group with a pid file (pid and start time) and its state under
`<home>/services/`; the databases' data stay there between runs. A service that does not
start stops `up` with its own log line, and everything already started is stopped again.
`down` stops the Airflow components and workers first (every process, task processes
included), then the databases, each with its own clean-shutdown signal.

    python -m pipelines.cluster up [--home DIR] [--no-first-run]
    python -m pipelines.cluster down [--home DIR]       # `make down` does this too
    python -m pipelines.cluster status [--home DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from pipelines import mariadb_server, postgres_server, redis_server
from pipelines.home import Home
from pipelines.services import (ADMIN_USER, AIRFLOW_SERVICES, HOST, MODEL_SERVER, ServiceError,
                                Services, _has_version, _with_descendants)

WORKERS = ("worker-1", "worker-2")
DATABASES = ("postgres", "redis", "mariadb")  # started in this order, stopped in reverse
STATE_FILE = "cluster.json"
# Celery redelivers a task its worker has not acknowledged after this long; it must exceed
# the longest task (the DAGs' execution timeout is two hours).
VISIBILITY_TIMEOUT_S = 6 * 3600


def worker_hostname() -> str:
    """`[core] hostname_callable` of the cluster: a worker's name (the host a task instance
    reports), the machine's name for the other components."""
    return os.environ.get("PIPEWRIGHT_WORKER_HOSTNAME") or socket.getfqdn()


def started_here(home: Home) -> bool:
    """Whether `up` of the cluster mode ran in this home (and `down` has not)."""
    return os.path.exists(os.path.join(home.root, "services", STATE_FILE))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _first_mariadb_error(log: Path) -> str | None:
    """The first [ERROR] line of the last start in MariaDB's error log (the last one is only
    "[ERROR] Aborting")."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    starts = [i for i, line in enumerate(lines) if "Starting MariaDB" in line]
    return next((line.strip() for line in lines[starts[-1] if starts else 0:]
                 if "[ERROR]" in line), None)


@dataclass
class ClusterServices(Services):
    postgres_port: int = 0  # 0: a free port, chosen at `up`
    redis_port: int = 0
    mariadb_port: int = 0
    workers: tuple[str, ...] = WORKERS
    worker_concurrency: int = 1
    _state: dict[str, Any] | None = field(default=None, init=False, repr=False)

    # -- state ---------------------------------------------------------------------------------
    @property
    def state_file(self) -> str:
        return os.path.join(self.state_dir, STATE_FILE)

    def database_dir(self, name: str) -> str:
        return os.path.join(self.state_dir, name)

    def state(self) -> dict[str, Any]:
        """Ports and the JWT secret the components share, written by `up`."""
        if self._state is None:
            with open(self.state_file) as fh:
                self._state = json.load(fh)
        return self._state

    def _write_state(self) -> None:
        previous = {}
        if os.path.exists(self.state_file):
            with open(self.state_file) as fh:
                previous = json.load(fh)
        self._state = {
            "postgres_port": self.postgres_port or _free_port(),
            "redis_port": self.redis_port or _free_port(),
            "mariadb_port": self.mariadb_port or _free_port(),
            "jwt_secret": previous.get("jwt_secret") or secrets.token_urlsafe(32),
        }
        fd = os.open(self.state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self._state, fh)

    def _password(self, database: str) -> str:
        return Path(self.database_dir(database), "password").read_text().strip()

    @property
    def metadata_uri(self) -> str:
        """ML Metadata's store: the MariaDB database `mlmd` (PIPEWRIGHT_METADATA)."""
        return (f"mysql://pipewright:{self._password('mariadb')}@{HOST}:"
                f"{self.state()['mariadb_port']}/mlmd")

    @property
    def postgres_uri(self) -> str:
        return (f"postgresql://airflow:{self._password('postgres')}@{HOST}:"
                f"{self.state()['postgres_port']}/airflow")

    @property
    def broker_url(self) -> str:
        return f"redis://:{self._password('redis')}@{HOST}:{self.state()['redis_port']}/0"

    # -- configuration -------------------------------------------------------------------------
    @property
    def service_names(self) -> tuple[str, ...]:
        # The model server of `make up` too, should one run in this home.
        return (*AIRFLOW_SERVICES, *self.workers, MODEL_SERVER)

    def environment(self) -> dict[str, str]:
        env = super().environment()
        postgres = self.postgres_uri.split("://", 1)[1]
        env.update({
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(len(self.workers) * self.worker_concurrency),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "pipelines.cluster.worker_hostname",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{postgres}",
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{postgres}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT":
                str(VISIBILITY_TIMEOUT_S),
            "AIRFLOW__API_AUTH__JWT_SECRET": self.state()["jwt_secret"],
            "PIPEWRIGHT_METADATA": self.metadata_uri,
        })
        env.update(self.extra_env)
        return env

    def commands(self) -> dict[str, list[str]]:
        commands = {name: command for name, command in super().commands().items()
                    if name != MODEL_SERVER}
        airflow = str(self.bin_dir / "airflow")
        for name in self.workers:
            # Workers share AIRFLOW_HOME's log folder with the API server: no log server.
            commands[name] = [
                shutil.which("env") or "/usr/bin/env", f"PIPEWRIGHT_WORKER_HOSTNAME={name}",
                airflow, "celery", "worker", "--celery-hostname", f"{name}@%h",
                "--concurrency", str(self.worker_concurrency), "--skip-serve-logs",
                "--without-mingle", "--without-gossip"]
        return commands

    # -- up ------------------------------------------------------------------------------------
    def up(self, *, first_run: bool = True, timeout_s: float = 240,
           echo=lambda line: print(line, flush=True)) -> None:
        running = self.running()
        if running:
            echo(f"already running: {', '.join(sorted(running))} (stop with `make down`)")
            return
        self._check_ports_free()
        self._install_missing(echo)
        os.makedirs(os.path.dirname(self.log_file("x")), exist_ok=True)
        try:
            self._write_state()
            self._start_databases(echo)
            password = self.password()
            echo(f"Airflow home {self.airflow_home}: migrating its database on PostgreSQL")
            self._airflow_cli("db", "migrate")
            for name, command in self.commands().items():
                self._start(name, command)
                echo(f"started {name} (pid {self._read_pid(name)['pid']}), "
                     f"log {self.log_file(name)}")
            self.wait_ready(timeout_s)
            dag_ids = self.unpause_dags()
        except BaseException:
            self.down(echo=echo)
            raise
        echo(f"DAGs unpaused: {', '.join(dag_ids)}")
        for dag_id, run_id in self.fail_interrupted_runs(dag_ids):
            echo(f"run {run_id} of {dag_id} was interrupted by the last `make down`: marked failed")
        if first_run and self.model_name in dag_ids and not _has_version(self.model_base_path):
            run = self.trigger(self.model_name, {})
            echo(f"no model is pushed yet: triggered a first {self.model_name} run "
                 f"({run['dag_run_id']})")
        from pipelines.metadata import redact_uri

        echo("")
        echo(f"Airflow UI      {self.api_url}   login: {ADMIN_USER} / {password}")
        echo(f"workers         {', '.join(self.workers)} (CeleryExecutor, concurrency "
             f"{self.worker_concurrency} each)")
        echo(f"Airflow DB      {redact_uri(self.postgres_uri)}")
        echo(f"Celery broker   {redact_uri(self.broker_url)}")
        echo(f"ML Metadata     {redact_uri(self.metadata_uri)} (PIPEWRIGHT_METADATA)")
        echo(f"artifacts       {self.home.root} (every worker must see it at this path)")
        echo("stop everything `make down`")

    def _check_ports_free(self) -> None:
        """The API server's port (the databases report a taken port in their own logs)."""
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, self.api_port))
            except OSError:
                raise ServiceError(f"port {self.api_port} on {HOST} (Airflow api-server) is "
                                   f"already in use; stop what uses it or set AIRFLOW_PORT") \
                    from None

    def _install_missing(self, echo) -> None:
        try:
            if redis_server.binary() is None:
                echo(f"installing {redis_server.APT_PACKAGE} with apt-get")
                redis_server.install()
            if mariadb_server.binaries() is None:
                echo(f"installing {mariadb_server.APT_PACKAGE} with apt-get")
                mariadb_server.install()
        except (redis_server.RedisUnavailable, mariadb_server.MariaDBUnavailable) as exc:
            raise ServiceError(str(exc)) from None
        if postgres_server.bin_dir() is None:
            raise ServiceError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: "
                               f"apt-get install {postgres_server.APT_PACKAGE}")

    def _start_databases(self, echo) -> None:
        state = self.state()
        for name in DATABASES:
            directory = self.database_dir(name)
            try:
                if name == "postgres":
                    server = postgres_server.start(directory, state["postgres_port"])
                elif name == "redis":
                    server = redis_server.start(directory, state["redis_port"])
                else:
                    server = mariadb_server.start(directory, port=state["mariadb_port"],
                                                  die_with_parent=False)
            except (postgres_server.PostgresUnavailable, redis_server.RedisUnavailable) as exc:
                raise ServiceError(f"{name} did not start: {exc}") from None
            except mariadb_server.MariaDBUnavailable as exc:
                log = Path(directory, "error.log")
                line = _first_mariadb_error(log) or str(exc)
                raise ServiceError(f"mariadb did not start: {line} (log {log})") from None
            except OSError as exc:  # its directory: a file there, not writable, disk full
                raise ServiceError(f"{name} did not start: {exc.strerror or exc}: "
                                   f"{exc.filename or directory}") from None
            record = {"pid": server.pid, "create_time": psutil.Process(server.pid).create_time(),
                      "command": [name, directory]}
            with open(self.pid_file(name), "w") as fh:
                json.dump(record, fh)
            echo(f"started {name} (pid {server.pid}) on {HOST}:{server.port}, data {directory}")

    def wait_ready(self, timeout_s: float) -> None:
        """Airflow healthy (Services.wait_ready), then every worker connected to the broker;
        a component that exits is reported with its log's last line."""
        import time

        deadline = time.monotonic() + timeout_s
        try:
            super().wait_ready(timeout_s)
            waiting = list(self.workers)
            while waiting and time.monotonic() < deadline:
                for name in list(waiting):
                    if self._process(name) is None:
                        raise ServiceError(f"{name} exited while starting; see "
                                           f"{self.log_file(name)}")
                    with open(self.log_file(name), errors="replace") as fh:
                        if f"{name}@" in (log := fh.read()) and " ready." in log:
                            waiting.remove(name)
                time.sleep(1)
            if waiting:
                raise ServiceError(f"workers not ready after {timeout_s:.0f}s: {waiting}")
        except ServiceError as exc:
            dead = [name for name in self.commands() if self._process(name) is None]
            lines = "; ".join(f"{name}: {postgres_server.last_line(Path(self.log_file(name)))}"
                              for name in dead)
            raise ServiceError(f"{exc}{' — ' + lines if lines else ''}") from None

    # -- status and down -----------------------------------------------------------------------
    def running(self) -> dict[str, int]:
        found = super().running()
        found.update({name: p.pid for name in DATABASES if (p := self._process(name))})
        return found

    def down(self, *, timeout_s: float = 15, echo=lambda line: print(line, flush=True)) -> int:
        """The Airflow components and workers (Services.down), then the databases in reverse
        order of start, each with its clean shutdown: PostgreSQL SIGINT (fast shutdown),
        MariaDB and Redis SIGTERM; SIGKILL to whatever of theirs is left after 30 s."""
        stopped = super().down(timeout_s=timeout_s, echo=echo)
        for name in reversed(DATABASES):
            process = self._process(name)
            if process is not None:
                echo(f"stopping {name} (pid {process.pid})")
                tree = _with_descendants([process])
                try:
                    process.send_signal(signal.SIGINT if name == "postgres" else signal.SIGTERM)
                except psutil.Error:
                    pass
                _, alive = psutil.wait_procs(tree, timeout=30)
                for left in _with_descendants(alive):
                    echo(f"killing pid {left.pid} ({name})")
                    try:
                        left.kill()
                    except psutil.Error:
                        pass
                psutil.wait_procs(alive, timeout=10)
                stopped += len(tree)
            if os.path.exists(self.pid_file(name)):
                os.remove(self.pid_file(name))
        if os.path.exists(self.state_file):
            os.remove(self.state_file)
        self._state = None
        return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--home", help="pipeline home (default $PIPEWRIGHT_HOME or .pipewright/)")
    parser.add_argument("--no-first-run", action="store_true",
                        help="do not trigger a first training run when no model is pushed yet")
    parser.add_argument("--api-port", type=int, default=int(os.environ.get("AIRFLOW_PORT", 8080)))
    args = parser.parse_args(argv)
    cluster = ClusterServices(Home.resolve(args.home), api_port=args.api_port)
    try:
        if args.action == "up":
            cluster.up(first_run=not args.no_first_run)
        elif args.action == "down":
            cluster.down()
        else:
            running = cluster.running()
            for name in (*DATABASES, *cluster.service_names):
                print(f"{name:<14} {'pid ' + str(running[name]) if name in running else 'stopped'}")
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
