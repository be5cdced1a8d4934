"""A Redis server in a directory of its own, on 127.0.0.1 with a password: the Celery broker
of the cluster mode, `make up-cluster`.

`start(directory, port)` runs `redis-server` in the foreground as its own process group
(log `directory/redis.log`, no persistence: the broker's queue lives as long as the
cluster), and returns once it answers PING with the password. A server that exits or does
not answer is stopped and reported with its log's last line. The binary comes from Debian's
`redis-server` package; `install()` runs apt-get for it (as root), as
`pipelines.mariadb_server.install()` does for MariaDB.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.owned_process import apt_install, last_line, stop as stop_process

APT_PACKAGE = "redis-server"
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])


class RedisUnavailable(RuntimeError):
    """redis-server is missing and could not be installed, or did not start."""


def binary() -> str | None:
    return shutil.which("redis-server", path=_SEARCH_PATH)


def install(timeout_s: float = 900) -> float:
    """apt-get install redis-server (no recommended packages); returns the seconds it took.
    Needs root. Debian's maintainer scripts may start the packaged service (port 6379);
    nothing here uses it. Raises RedisUnavailable naming the command and its output."""
    return apt_install(APT_PACKAGE, lambda: binary() is not None, RedisUnavailable,
                       "redis-server is", timeout_s)


@dataclass
class RedisServer:
    directory: Path
    port: int
    password: str
    process: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def url(self, db: int = 0) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    def stop(self, timeout_s: float = 30) -> None:
        stop_process(self.process, signal.SIGTERM, timeout_s)


def start(directory: str | os.PathLike, port: int, *, timeout_s: float = 30) -> RedisServer:
    """Starts redis-server on 127.0.0.1:`port` (password made once, kept in
    `directory/password`). Raises RedisUnavailable naming its log's last line."""
    path = binary()
    if path is None:
        raise RedisUnavailable(f"redis-server is not installed: apt-get install {APT_PACKAGE} "
                               f"(pipelines.redis_server.install())")
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    secret = root / "password"
    if not secret.exists():
        secret.write_text(secrets.token_hex(16))
        secret.chmod(0o600)
    password = secret.read_text().strip()
    log = root / "redis.log"
    config = root / "redis.conf"  # the password stays off the command line
    config.write_text(f"bind 127.0.0.1\nport {port}\nrequirepass {password}\n"
                      f"dir {root}\nlogfile {log}\ndaemonize no\nsave \"\"\n"
                      f"appendonly no\nprotected-mode yes\n")
    config.chmod(0o600)
    process = subprocess.Popen([path, str(config)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=root, start_new_session=True)
    server = RedisServer(root, port, password, process)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            # Redis logs the cause ("... bind: Address already in use") as a warning, then
            # "Failed listening on port ..., aborting": name both.
            cause = last_line(log, ("Could not create server", "Fatal", "FATAL", "Bad directive"))
            final = last_line(log, ("#",))
            reason = final if cause == final else f"{cause}; {final}"
            raise RedisUnavailable(f"redis-server on port {port} exited with "
                                   f"{process.returncode}: {reason} (log {log})")
        if _ping(port, password):
            return server
        if time.monotonic() > deadline:
            server.stop()
            raise RedisUnavailable(f"redis-server on port {port} did not answer within "
                                   f"{timeout_s:.0f} s: {last_line(log)} (log {log})")
        time.sleep(0.1)


def _ping(port: int, password: str) -> bool:
    """AUTH + PING in Redis's inline protocol."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            reply = b""
            while b"PONG" not in reply and len(reply) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                reply += chunk
            return b"+OK" in reply and b"+PONG" in reply
    except OSError:
        return False
