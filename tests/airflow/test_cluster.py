"""The cluster mode (`make up-cluster`, pipelines/cluster.py) for real: PostgreSQL, Redis and
MariaDB started under a temporary home on free ports, Airflow with the CeleryExecutor and
two Celery workers. The penguin DAG is triggered over the REST API v2; while Trainer runs,
the worker running it dies (SIGKILL to its process group and to its task processes, as a
lost machine would take them); the scheduler notices the missing heartbeat, Trainer is
retried on the other worker, and the run pushes a model recorded in ML Metadata on MariaDB.
Finally `down` leaves no process behind.

The test's DAG is the penguin pipeline with retries and a 2 s retry delay (the test suite's
default is no retry, the DAGs' default a minute), and the scheduler declares a task lost
after 10 s without heartbeat instead of 5 minutes: both only shorten the waiting."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import urllib.parse
from pathlib import Path

import psutil
import pytest

from pipelines.airflow_adapter import pipewright_run_id
from pipelines.cluster import DATABASES, WORKERS, ClusterServices
from pipelines.home import Home
from pipelines.metadata import Metadata
from tests.airflow.system import SPAN_PATTERN, free_port, trigger, wait_for_run, write_span

RUN_TIMEOUT_S = 900
# About 7 minutes here with the machine to itself, 11 with a load of 6 on its 2 cores: more
# than the suite's 900 s per test must not fail it.
pytestmark = pytest.mark.timeout(1500)
STARTED = time.monotonic()


def elapsed() -> str:
    return f"[{time.monotonic() - STARTED:5.0f} s]"
DAG_FILE = """\
import datetime as dt

from pipelines import registry
from pipelines.airflow_adapter import build_dag

penguin = build_dag(registry.load("penguin"), schedule=None, retries=2,
                    retry_delay=dt.timedelta(seconds=2))
"""


@pytest.fixture(scope="module")
def cluster():
    # As root, PostgreSQL runs as the `postgres` user, who must reach its directory: pytest's
    # own temporary directories are private to root, this one is not.
    root = Path(tempfile.mkdtemp(prefix="pipewright-cluster-"))
    root.chmod(0o755)
    dags = root / "dags"
    dags.mkdir()
    (dags / "penguin_dag.py").write_text(DAG_FILE)
    services = ClusterServices(
        Home.resolve(root / "home"), api_port=free_port(), dags_folder=str(dags),
        dag_ids=["penguin"],
        extra_env={"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "10",
                   "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
                   "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2"})
    try:
        services.up(first_run=False, echo=lambda line: print(f"{elapsed()} {line}"))
        yield services
    finally:
        services.down()
        shutil.rmtree(root, ignore_errors=True)


def kill_worker(services: ClusterServices, name: str) -> None:
    """SIGKILL to the worker's process group and to every process under it (Airflow runs
    each task in a process group of its own)."""
    worker = services._process(name)
    tree = [worker, *worker.children(recursive=True)]
    os.killpg(worker.pid, signal.SIGKILL)
    for process in tree:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(tree, timeout=30)


def test_a_run_on_two_celery_workers_survives_losing_one_and_down_leaves_nothing(cluster):
    incoming = Path(cluster.home.root) / "incoming"
    write_span(incoming, "2026-03-01", keep=lambda i: i % 2 == 0)
    conf = {"data_root": str(incoming), "input_pattern": SPAN_PATTERN, "train_steps": 3,
            "accuracy_threshold": 0.0}
    run_id = trigger(cluster, "penguin", conf)
    path = f"/api/v2/dags/penguin/dagRuns/{urllib.parse.quote(run_id)}/taskInstances"

    # Trainer starts on one worker: that worker dies.
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        trainer = cluster.api("GET", f"{path}/Trainer")
        if trainer["state"] == "running" and trainer["hostname"] in WORKERS:
            break
        assert trainer["state"] not in ("failed", "upstream_failed"), trainer
        assert time.monotonic() < deadline, f"Trainer never ran: {trainer}"
        time.sleep(0.5)
    lost = trainer["hostname"]
    [survivor] = [w for w in WORKERS if w != lost]
    kill_worker(cluster, lost)
    print(f"{elapsed()} killed {lost} while it ran Trainer")

    run, states, other_logs = wait_for_run(cluster, "penguin", run_id, RUN_TIMEOUT_S)
    print(f"{elapsed()} run {run['state']}")
    assert run["state"] == "success", f"run {run_id} is {run['state']}: {states}\n{other_logs}"
    assert set(states.values()) == {"success"}, f"{states}\n{other_logs}"

    # Trainer: the try on the lost worker failed (no heartbeat), the retry on the other
    # worker succeeded; over the run, both workers executed tasks.
    tries = cluster.api("GET", f"{path}/Trainer/tries")["task_instances"]
    by_try = {t["try_number"]: (t["hostname"], t["state"]) for t in tries}
    assert by_try[1] == (lost, "failed") and by_try[max(by_try)] == (survivor, "success"), by_try
    hosts = {ti["hostname"] for ti in cluster.api("GET", path)["task_instances"]}
    assert hosts | {h for h, _ in by_try.values()} == set(WORKERS), (hosts, by_try)

    # ML Metadata is the MariaDB server: the run and its push are recorded there.
    assert cluster.metadata_uri.startswith("mysql://")
    assert not os.path.exists(os.path.join(cluster.home.root, "metadata.sqlite"))
    metadata = Metadata(cluster.metadata_uri)
    [record] = [r for r in metadata.runs("penguin") if r["airflow_run_id"] == run_id]
    assert record["orchestrator"] == "airflow"
    context = metadata.run_context("penguin", pipewright_run_id(run_id))
    pusher = metadata.latest_in_run(context, "Pusher")
    assert metadata.outputs_of_execution(pusher.id)["pushed_model"].pushed_version == 1
    trainers = [e.state for e in metadata.executions_in_run(context)
                if e.component_id == "Trainer"]
    assert trainers.count("complete") == 1, trainers

    # down stops every process: databases, Airflow, the surviving worker and its children.
    running = cluster.running()
    assert set(running) == {*DATABASES, "api-server", "scheduler", "dag-processor",
                            "triggerer", survivor}, running
    everything = {p.pid for pid in running.values()
                  for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]}
    cluster.down()
    print(f"{elapsed()} down")
    left = [pid for pid in everything if alive(pid)]
    assert left == [], f"still running after down: {left}"
    assert cluster.running() == {}
    assert not any(Path(cluster.state_dir).glob("*.pid"))


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
