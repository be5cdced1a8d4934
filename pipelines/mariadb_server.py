"""A throwaway MariaDB server in a directory of its own: for the tests of the MySQL metadata
store and for trying `PIPEWRIGHT_METADATA=mysql://…` on one machine without a DBA.

`start(directory)` creates a data directory with `mariadb-install-db` (once; a later start
reuses it), a user with a password that owns one database, and runs `mariadbd` on
127.0.0.1 (a free TCP port) and on a unix socket in `directory`; it returns once the server
answers a query as that user over TCP. `MariaDBServer.stop()` ends exactly the process it
started, by its PID (SIGTERM, then SIGKILL) — never `service` or `systemctl`, which would
touch a system-wide server — and a server started from the main thread also gets SIGTERM
when the process that started it dies. No grant table is skipped: the server checks
passwords like a production one does.

The binaries come from Debian's `mariadb-server` package; `install()` runs apt-get for it
(as root). Nothing here imports ML Metadata.
"""
from __future__ import annotations

import ctypes
import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.owned_process import apt_install, stop as stop_process

APT_PACKAGE = "mariadb-server"
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
# mariadb-install-db and the client come with the package (mariadb-client is a dependency).
BINARIES = ("mariadbd", "mariadb-install-db", "mariadb")


class MariaDBUnavailable(RuntimeError):
    """The MariaDB binaries are missing and could not be installed, or the server did not
    start; the message names the command and its output."""


def binaries() -> dict[str, str] | None:
    """{name: path} of the MariaDB binaries, or None when any of them is missing."""
    found = {name: shutil.which(name, path=_SEARCH_PATH) for name in BINARIES}
    return found if all(found.values()) else None  # type: ignore[return-value]


def install(timeout_s: float = 900, package: str = APT_PACKAGE) -> float:
    """Installs Debian's `mariadb-server` (or `package`) with apt-get, without recommended
    packages; returns the seconds it took (about a minute here). Needs root. Debian's
    maintainer scripts start the packaged service through invoke-rc.d unless a
    policy-rc.d denies it, as this project's containers' does; nothing here uses that
    service or its port 3306.
    Raises MariaDBUnavailable naming the command and the tail of its output when it fails
    or times out, or when the binaries are still missing afterwards."""
    return apt_install(package, lambda: binaries() is not None, MariaDBUnavailable,
                       f"{BINARIES} are", timeout_s)


@dataclass
class MariaDBServer:
    """A running `mariadbd`: its directory, addresses, the one user and database. The user
    may also create and use any database named `<database>_<suffix>`."""

    directory: Path  # holds data/, the socket, the PID file and error.log
    port: int  # TCP, on 127.0.0.1
    socket: str  # unix socket path
    user: str
    password: str
    database: str
    process: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def uri(self) -> str:
        """`mysql://user:password@127.0.0.1:port/database`, what PIPEWRIGHT_METADATA takes."""
        return f"mysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def uri_for(self, database: str) -> str:
        """The URI of another database of this user (`<database>_<suffix>`)."""
        return self.uri.rsplit("/", 1)[0] + "/" + database

    @property
    def socket_uri(self) -> str:
        """The same server through its unix socket (`?unix_socket=`)."""
        return f"mysql://{self.user}:{self.password}@localhost/{self.database}" \
               f"?unix_socket={self.socket}"

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    def running(self) -> bool:
        return self.process.poll() is None

    def sql(self, statement: str, *, as_root: bool = False, timeout_s: float = 30) -> str:
        """Runs one SQL statement with the `mariadb` client (as the user over TCP, or as root
        over the socket); returns its tab-separated output. Raises MariaDBUnavailable with
        the client's error."""
        return _client(self, statement, as_root=as_root, timeout_s=timeout_s)

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM to the server's own PID (a clean InnoDB shutdown), SIGKILL after
        `timeout_s` seconds. Idempotent."""
        stop_process(self.process, signal.SIGTERM, timeout_s)

    def restart(self, timeout_s: float = 60) -> None:
        """Stops the server (if running) and starts it again on the same directory, port
        and socket; this object then refers to the new process."""
        self.stop()
        again = start(self.directory, user=self.user, password=self.password,
                      database=self.database, port=self.port, timeout_s=timeout_s)
        self.process = again.process

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would end it (InnoDB recovers on restart)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started us dies (Linux
    prctl PR_SET_PDEATHSIG), so a crashed test run leaves no server behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _refuse_if_running(root: Path) -> None:
    pid_file = root / "mariadbd.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return
    raise MariaDBUnavailable(f"a mariadbd (PID {pid}, {pid_file}) already runs on {root}; "
                             f"stop it first")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_user() -> list[str]:
    # mariadbd refuses to run as root unless told to; the files are ours either way.
    return ["--user=root"] if os.geteuid() == 0 else []


def _client(server: MariaDBServer, statement: str, *, as_root: bool = False,
            timeout_s: float = 30) -> str:
    paths = binaries() or {}
    if as_root:
        # mariadb-install-db gave root (and the OS user who ran it) unix_socket logins.
        os_user = "root" if os.geteuid() == 0 else getpass.getuser()
        args = [paths.get("mariadb", "mariadb"), "--no-defaults", f"--user={os_user}",
                f"--socket={server.socket}"]
        env = dict(os.environ)
    else:
        args = [paths.get("mariadb", "mariadb"), "--no-defaults", "--protocol=TCP",
                "--host=127.0.0.1", f"--port={server.port}", f"--user={server.user}",
                server.database]
        env = {**os.environ, "MYSQL_PWD": server.password}  # not on the command line
    done = subprocess.run(args + ["--batch", "--skip-column-names", "-e", statement],
                          capture_output=True, text=True, env=env, timeout=timeout_s)
    if done.returncode != 0:
        raise MariaDBUnavailable(f"`{statement}` on {server.directory}: "
                                 f"{done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def start(directory: str | os.PathLike, *, user: str = "pipewright",
          password: str | None = None, database: str = "mlmd", port: int | None = None,
          timeout_s: float = 60, die_with_parent: bool = True) -> MariaDBServer:
    """Starts `mariadbd` on `directory` (created; its data directory initialised on first
    use) and returns once `user` (password: given, else random; stored in
    `directory/password` so a restart keeps it) can query `database` over TCP. Raises
    MariaDBUnavailable when the binaries are missing, initialisation fails, or the server
    exits or does not answer within `timeout_s` seconds — naming its error log.
    `die_with_parent=False` lets the server outlive the process that started it (the
    cluster mode's `up` exits and `down` stops the server by its PID)."""
    paths = binaries()
    if paths is None:
        raise MariaDBUnavailable(f"{BINARIES} are not installed: apt-get install "
                                 f"{APT_PACKAGE} (pipelines.mariadb_server.install())")
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    secret_file = root / "password"
    if password is None:
        password = secret_file.read_text() if secret_file.exists() else secrets.token_hex(12)
    if not (data / "mysql").is_dir():
        _initialise(paths, root, data, user, password, database)
        secret_file.write_text(password)
        secret_file.chmod(0o600)
    port = port or _free_port()
    sock = str(root / "mysqld.sock")
    log = root / "error.log"
    args = [paths["mariadbd"], "--no-defaults", *_run_user(), f"--datadir={data}",
            f"--socket={sock}", f"--port={port}", "--bind-address=127.0.0.1",
            f"--pid-file={root / 'mariadbd.pid'}", f"--log-error={log}",
            "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M", "--max-connections=200"]
    _refuse_if_running(root)
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True,
                               # The death signal follows the forking *thread*: only the main
                               # thread lives as long as the process.
                               preexec_fn=_die_with_parent if die_with_parent and
                               threading.current_thread() is threading.main_thread() else None)
    server = MariaDBServer(root, port, sock, user, password, database, process)
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while True:
        if process.poll() is not None:
            raise MariaDBUnavailable(f"mariadbd on {root} exited with {process.returncode} "
                                     f"before answering; {log}:\n{_tail(log)}")
        try:
            server.sql("SELECT 1", timeout_s=10)
            return server
        except (MariaDBUnavailable, subprocess.TimeoutExpired) as exc:
            last_error = str(exc)
            if "Access denied" in last_error:  # up, but not with this password: no use waiting
                server.stop()
                raise MariaDBUnavailable(f"mariadbd on {root} refuses {user!r}: {last_error} "
                                         f"(the data directory keeps the password it was "
                                         f"initialised with, in {secret_file})") from None
        if time.monotonic() > deadline:
            server.stop()
            raise MariaDBUnavailable(f"mariadbd on {root} (port {port}) did not answer within "
                                     f"{timeout_s:.0f} s: {last_error}; {log}:\n{_tail(log)}")
        time.sleep(0.2)


def _initialise(paths: dict[str, str], root: Path, data: Path, user: str, password: str,
                database: str) -> None:
    """mariadb-install-db, with the user and database created by its --extra-file."""
    for name in (user, database):
        if not name.replace("_", "").isalnum():
            raise ValueError(f"MariaDB user/database name {name!r}: use letters, digits and _")
    setup = root / "setup.sql"
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    # In bootstrap mode the grant tables are not loaded until FLUSH PRIVILEGES.
    setup.write_text(f"FLUSH PRIVILEGES;\n"
                     f"CREATE DATABASE IF NOT EXISTS `{database}`;\n"
                     f"CREATE USER '{user}'@'%' IDENTIFIED BY '{quoted}';\n"
                     f"GRANT ALL PRIVILEGES ON `{database}`.* TO '{user}'@'%';\n"
                     # and every `<database>_<suffix>`, for a fresh database per test
                     f"GRANT ALL PRIVILEGES ON `{database}\\_%`.* TO '{user}'@'%';\n")
    if data.exists():  # a half-initialised directory from an interrupted attempt
        shutil.rmtree(data)
    done = subprocess.run(
        [paths["mariadb-install-db"], "--no-defaults", *_run_user(), f"--datadir={data}",
         "--auth-root-authentication-method=socket", "--skip-test-db", "--skip-name-resolve",
         f"--extra-file={setup}"],
        capture_output=True, text=True, timeout=300)
    setup.unlink()
    if done.returncode != 0 or not (data / "mysql").is_dir():
        output = (done.stdout + done.stderr)[-2000:]
        raise MariaDBUnavailable(f"mariadb-install-db --datadir={data} failed "
                                 f"(exit {done.returncode}):\n{output}")


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
