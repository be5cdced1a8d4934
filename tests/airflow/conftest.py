"""Shared set-up of the Airflow tests: one Airflow database per test session, in a temporary
AIRFLOW_HOME whose DAG folder holds the registered pipelines and the small wordcount test
pipeline. Airflow reads its configuration when first imported, so the environment is set
here, before any test module imports it."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parents[1]
WORDCOUNT_PIPELINE = TESTS_DIR / "wordcount_pipeline.py"
BIN = Path(sys.executable).parent

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="pipewright-airflow-test-"))
DAGS_FOLDER = AIRFLOW_HOME / "dags"
DAGS_FOLDER.mkdir()
# The repo's DAG file as it is, plus the wordcount pipeline without retries (its failure
# tests must not wait for a retry delay).
shutil.copy(REPO_ROOT / "dags" / "pipewright_dags.py", DAGS_FOLDER / "pipewright_dags.py")
(DAGS_FOLDER / "wordcount_dag.py").write_text(
    "from pipelines import registry\n"
    "from pipelines.airflow_adapter import build_dag\n\n"
    f"wordcount = build_dag(registry.load({str(WORDCOUNT_PIPELINE)!r}), retries=0)\n")

os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "PIPEWRIGHT_AIRFLOW_RETRIES": "0",
})


@pytest.fixture(scope="session")
def airflow_db():
    """An initialised Airflow database (once per session)."""
    done = subprocess.run([str(BIN / "airflow"), "db", "migrate"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return AIRFLOW_HOME


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


@contextlib.contextmanager
def pipewright_home(path: Path):
    """Tasks run in this process by `dag.test` find their home through the environment; the
    home is set up first (its identity marker), as `make up` does."""
    from pipelines.home import Home

    Home.resolve(path)
    before = os.environ.get("PIPEWRIGHT_HOME")
    os.environ["PIPEWRIGHT_HOME"] = str(path)
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop("PIPEWRIGHT_HOME", None)
        else:
            os.environ["PIPEWRIGHT_HOME"] = before


def load_dag(file_name: str, dag_id: str):
    """A DAG from the test DAG folder, built the way the DAG processor builds it."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER / file_name))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def state(obj) -> str:
    """A DAG run's or task instance's state as plain text."""
    return str(getattr(obj.state, "value", obj.state))


def task_states(dag_run) -> dict[str, str]:
    return {ti.task_id: state(ti) for ti in dag_run.get_task_instances()}


# -- the running system (tests/airflow/test_services.py) ------------------------------------
@pytest.fixture(scope="session")
def system(tmp_path_factory):
    """The services as `make up` starts them, in a temporary home, on free ports; the DAG
    folder is the test one (the repo's DAG file and the wordcount DAG)."""
    from pipelines.home import Home
    from pipelines.services import Services
    from tests.airflow.system import free_port

    home = Home.resolve(tmp_path_factory.mktemp("system-home"))
    services = Services(home, api_port=free_port(), grpc_port=free_port(),
                        rest_port=free_port(), dags_folder=str(DAGS_FOLDER))
    try:
        services.up(first_run=False)
        yield services
    finally:
        services.down()


@pytest.fixture(scope="session")
def night_1(system):
    """Span 1 (every other penguin) arrives in a dated folder and the penguin DAG is
    triggered over the REST API with a conf: few training steps and a low bar, so the first
    night's model is weak but servable. Returns the conf and the Airflow run id."""
    from tests.airflow.system import SPAN_PATTERN, trigger, write_span

    incoming = Path(system.home.root) / "incoming"
    write_span(incoming, "2026-03-01", keep=lambda i: i % 2 == 0)
    conf = {"data_root": str(incoming), "input_pattern": SPAN_PATTERN, "train_steps": 3,
            "accuracy_threshold": 0.0}
    return conf, trigger(system, "penguin", conf)


@pytest.fixture(scope="session", autouse=True)
def start_night_1_first(request):
    """With the system tests selected, night 1 is triggered before the first test: Airflow
    runs it while the in-process tests run (the DAG is mostly a chain of single-core steps,
    so a run leaves a core idle), which saves about two minutes of the session. Under
    pytest-xdist only on the worker test_services.py is pinned to (tests/conftest.py):
    every worker collects every test."""
    from tests.conftest import pinned_worker

    services_file = "tests/airflow/test_services.py"
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is not None and worker != pinned_worker(services_file):
        return
    if any(item.nodeid.startswith(services_file + "::") for item in request.session.items):
        request.getfixturevalue("night_1")
