"""A PostgreSQL server in a directory of its own, on 127.0.0.1: Airflow's metadata database
(and Celery's result backend) in the cluster mode, `make up-cluster`.

`start(directory, port)` initialises `directory/data` with `initdb` once (a later start
reuses it), runs `postgres` in the foreground as its own process group with its log in
`directory/postgres.log`, creates the database on first use, and returns once the user can
connect over TCP. A server that exits or does not answer is stopped and reported with the
log's own FATAL line. The binaries are Debian's (`/usr/lib/postgresql/<version>/bin`, the
newest version installed). PostgreSQL refuses to run as root: as root the server runs as
the `postgres` system user, which then owns `directory` and must be able to reach it.
Nothing here imports Airflow.
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.owned_process import last_line, stop as stop_process

APT_PACKAGE = "postgresql"
SYSTEM_USER = "postgres"  # Debian's package creates it


class PostgresUnavailable(RuntimeError):
    """The binaries are missing, or the server did not start; names the log line."""


def bin_dir() -> Path | None:
    """Debian's newest /usr/lib/postgresql/<version>/bin holding initdb and postgres."""
    found = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")
             if os.access(os.path.join(d, "postgres"), os.X_OK)
             and os.access(os.path.join(d, "initdb"), os.X_OK)]
    return max(found, key=lambda d: float(d.parent.name), default=None)


@dataclass
class PostgresServer:
    directory: Path
    port: int
    user: str
    password: str
    database: str
    process: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    def sqlalchemy_uri(self, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def stop(self, timeout_s: float = 30) -> None:
        """SIGINT to the postmaster (PostgreSQL's fast shutdown), SIGKILL to its group after
        `timeout_s`. Idempotent."""
        stop_process(self.process, signal.SIGINT, timeout_s, kill_group=True)


def _run_as() -> dict:
    """Popen arguments: as root, the `postgres` system user (initdb and postgres refuse
    root); otherwise nothing (the server runs as the user)."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresUnavailable(f"PostgreSQL refuses to run as root and there is no "
                                  f"{SYSTEM_USER!r} user to run it as") from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _own(path: Path, run_as: dict) -> None:
    if run_as:
        os.chown(path, run_as["user"], run_as["group"])


def start(directory: str | os.PathLike, port: int, *, user: str = "airflow",
          database: str = "airflow", timeout_s: float = 60) -> PostgresServer:
    """Starts `postgres` on `directory` (data directory initialised on first use) listening
    on 127.0.0.1:`port` only (no unix socket). The password is made once and kept in
    `directory/password`. Raises PostgresUnavailable naming the failing log line."""
    binaries = bin_dir()
    if binaries is None:
        raise PostgresUnavailable(f"no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: "
                                  f"apt-get install {APT_PACKAGE}")
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    run_as = _run_as()
    _own(root, run_as)
    data = root / "data"
    secret = root / "password"
    if not (data / "PG_VERSION").exists():
        password = secrets.token_hex(12)
        _initdb(binaries, root, data, user, password, run_as)
        secret.write_text(password)
        secret.chmod(0o600)
    password = secret.read_text().strip()
    log = root / "postgres.log"
    with open(log, "a") as out:
        _own(log, run_as)
        process = subprocess.Popen(
            [str(binaries / "postgres"), "-D", str(data), "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
             "-c", "max_connections=200", "-c", "shared_buffers=32MB",
             "-c", "fsync=on", "-c", "logging_collector=off"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=root,
            start_new_session=True, **run_as)
    server = PostgresServer(root, port, user, password, database, process)
    try:
        _wait_and_create_database(server, log, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _initdb(binaries: Path, root: Path, data: Path, user: str, password: str,
            run_as: dict) -> None:
    pwfile = root / "initdb.pw"
    pwfile.write_text(password)
    _own(pwfile, run_as)
    if data.exists():  # half-initialised by an interrupted attempt
        subprocess.run(["rm", "-rf", str(data)], check=True)
    log = root / "initdb.log"
    with open(log, "w") as out:
        done = subprocess.run(
            [str(binaries / "initdb"), "-D", str(data), f"--username={user}",
             f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8",
             "--locale=C.UTF-8"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=root,
            timeout=300, **run_as)
    pwfile.unlink()
    if done.returncode != 0:
        raise PostgresUnavailable(f"initdb -D {data} failed (exit {done.returncode}): "
                                  f"{last_line(log, ('initdb:', 'FATAL', 'error'))} "
                                  f"(log {log})")


def _fatal(log: Path) -> str:
    """The log's last FATAL line with the DETAIL line PostgreSQL writes after it (e.g. which
    version initialised a data directory this server cannot read)."""
    line = last_line(log)
    try:
        lines = [entry.strip() for entry in log.read_text(errors="replace").splitlines()]
    except OSError:
        return line
    if line in lines:
        at = len(lines) - 1 - lines[::-1].index(line)
        after = lines[at + 1:][:1]
        if after and "DETAIL:" in after[0]:
            return f"{line} {after[0][after[0].index('DETAIL:'):]}"
        # "could not create any TCP/IP sockets": the cause (a taken port) is a LOG line before.
        causes = [entry for entry in lines[max(0, at - 10):at] if "could not bind" in entry
                  or "HINT:" in entry]
        if causes:
            return f"{line} — " + " ".join(entry[entry.index(key):] for entry in causes
                                           for key in ("could not bind", "HINT:") if key in entry)
    return line


def _wait_and_create_database(server: PostgresServer, log: Path, timeout_s: float) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout_s
    last_error = ""
    while True:
        if server.process.poll() is not None:
            raise PostgresUnavailable(f"postgres on {server.directory} exited with "
                                      f"{server.process.returncode}: {_fatal(log)} "
                                      f"(log {log})")
        try:
            connection = psycopg2.connect(host="127.0.0.1", port=server.port, user=server.user,
                                          password=server.password, dbname="postgres",
                                          connect_timeout=5)
            break
        except psycopg2.OperationalError as exc:
            last_error = str(exc).strip()
            if "password authentication failed" in last_error:
                raise PostgresUnavailable(f"postgres on port {server.port} refuses "
                                          f"{server.user!r}: {last_error}") from None
        if time.monotonic() > deadline:
            raise PostgresUnavailable(f"postgres on port {server.port} did not answer within "
                                      f"{timeout_s:.0f} s: {last_error}; {last_line(log)} "
                                      f"(log {log})")
        time.sleep(0.2)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (server.database,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{server.database}"')
    finally:
        connection.close()
