"""The cluster mode's databases that cannot start (issue 11, bad input): `up` stops with the
service's own log line, and nothing it had started stays behind. Real PostgreSQL and Redis
(Debian's binaries) under a temporary home: Redis on a port another process holds, after
PostgreSQL has started (so there is something half-started to clean up); and a PostgreSQL
data directory initialised by another major version."""
from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

import psutil
import pytest

from pipelines import postgres_server
from pipelines.cluster import ClusterServices
from pipelines.home import Home
from pipelines.services import ServiceError
from tests.airflow.system import free_port


@pytest.fixture
def root():
    # As root, PostgreSQL runs as the `postgres` user, who must reach its directory.
    path = Path(tempfile.mkdtemp(prefix="pipewright-cluster-bad-"))
    path.chmod(0o755)
    (path / "dags").mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cluster(root: Path, **ports) -> ClusterServices:
    return ClusterServices(Home.resolve(root / "home"), api_port=free_port(),
                           dags_folder=str(root / "dags"), dag_ids=[], **ports)


def processes_under(root: Path) -> list[str]:
    """Command lines of live processes that name a path under `root`."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if str(root) in command:
            found.append(command)
    return found


def test_redis_on_a_taken_port_stops_up_with_its_log_line_and_postgres_is_stopped(root):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        services = cluster(root, redis_port=holder.getsockname()[1])
        lines = []
        with pytest.raises(ServiceError, match=r"redis did not start: .*Address already in use"):
            services.up(first_run=False, echo=lines.append)
    assert any(line.startswith("started postgres") for line in lines), lines
    assert any(line.startswith("stopping postgres") for line in lines), lines
    assert services.running() == {}
    assert processes_under(root) == []


def test_a_postgres_data_directory_from_another_version_is_named_by_its_fatal_line(root):
    services = cluster(root)
    directory = Path(services.database_dir("postgres"))
    server = postgres_server.start(directory, free_port())  # a real, initialised directory
    server.stop()
    (directory / "data" / "PG_VERSION").write_text("9.6\n")  # as an old cluster left it
    with pytest.raises(ServiceError, match=r"postgres did not start: .*FATAL: +database files "
                                           r"are incompatible with server DETAIL: +The data "
                                           r"directory was initialized by PostgreSQL version 9\.6"):
        services.up(first_run=False, echo=lambda line: None)
    assert services.running() == {}
    assert processes_under(root) == []


def test_a_file_where_a_database_directory_goes_is_named_and_the_others_are_stopped(root):
    """A file in MariaDB's place (a leftover, a typo'd mount): `up` names it, not a
    FileExistsError traceback, and stops PostgreSQL and Redis, which had started."""
    services = cluster(root)
    blocker = Path(services.database_dir("mariadb"))
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory\n")
    lines = []
    with pytest.raises(ServiceError, match=rf"^mariadb did not start: File exists: {blocker}$"):
        services.up(first_run=False, echo=lines.append)
    assert any(line.startswith("stopping redis") for line in lines), lines
    assert any(line.startswith("stopping postgres") for line in lines), lines
    assert services.running() == {}
    assert processes_under(root) == []


def test_postgres_on_a_taken_port_is_named_by_its_bind_error_not_only_its_fatal_line(root):
    """PostgreSQL's FATAL line ("could not create any TCP/IP sockets") does not say why:
    the LOG line before it does (Address already in use, with the port in its HINT)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        services = cluster(root, postgres_port=port)
        with pytest.raises(ServiceError, match=r"postgres did not start: .*FATAL: +could not "
                                               r"create any TCP/IP sockets — could not bind "
                                               r"IPv4 address \"127\.0\.0\.1\": Address already "
                                               rf"in use HINT: .* port {port}\?"):
            services.up(first_run=False, echo=lambda line: None)
    assert services.running() == {}
    assert processes_under(root) == []
