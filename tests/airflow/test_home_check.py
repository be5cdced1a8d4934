"""A task on a worker that does not see the pipeline home fails with a message naming the
home, the host and the fix, and writes nothing there — no fresh home, no metadata store, no
step log (pipelines/home.py Home.check_shared, pipelines/airflow_task.py task_home). The
small wordcount DAG (no TensorFlow) runs through `dag.test()`; the message is read from the
task entry point (ComponentOperator.execute) called with a run's context."""
from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest

from pipelines.home import HOME_ID_ENV, MARKER, Home, HomeUnavailable
from tests.airflow.conftest import load_dag, pipewright_home, state, task_states


def _context(conf=None):
    return {"dag_run": SimpleNamespace(run_id="manual__2026-01-01T00:00:00+00:00",
                                       conf=conf or {}),
            "triggering_asset_events": {}}


def _execute(home, **env):
    """WriteCorpus's task entry point, with PIPEWRIGHT_HOME=home (and `env`)."""
    dag = load_dag("wordcount_dag.py", "wordcount")
    task = dag.get_task("WriteCorpus")
    saved = {k: os.environ.get(k) for k in ("PIPEWRIGHT_HOME", *env)}
    os.environ.update({"PIPEWRIGHT_HOME": str(home), **env})
    try:
        return task.execute(_context())
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _refused(home, **env) -> str:
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException) as failure:
        _execute(home, **env)
    message = str(failure.value)
    assert str(home) in message and socket.gethostname() in message, message
    assert "Mount the same POSIX path" in message, message
    return message


def test_a_missing_home_fails_the_task_and_nothing_is_created(airflow_db, tmp_path):
    home = tmp_path / "not-mounted"
    assert "does not exist" in _refused(home)
    assert not home.exists()


def test_a_home_without_its_marker_fails_the_task_and_stays_empty(airflow_db, tmp_path):
    home = tmp_path / "bare"
    home.mkdir()
    assert f"has no {MARKER}" in _refused(home)
    assert os.listdir(home) == []


def test_a_different_home_than_the_one_make_up_set_fails_the_task(airflow_db, tmp_path):
    home = Home.resolve(tmp_path / "other")
    expected = "0" * 32
    message = _refused(home.root, **{HOME_ID_ENV: expected})
    assert f"holds {home.identity!r}" in message and expected in message
    assert sorted(os.listdir(home.root)) == [MARKER]


def test_the_set_up_home_runs_the_task(airflow_db, tmp_path):
    home = Home.resolve(tmp_path / "shared")
    summary = _execute(home.root, **{HOME_ID_ENV: home.identity})
    assert summary["status"] == "executed", summary
    assert os.path.isfile(os.path.join(home.root, "metadata.sqlite"))


def test_dag_test_with_an_unmounted_home_fails_and_leaves_no_trace(airflow_db, tmp_path):
    home = tmp_path / "unmounted"
    dag = load_dag("wordcount_dag.py", "wordcount")
    before = os.environ.get("PIPEWRIGHT_HOME")
    os.environ["PIPEWRIGHT_HOME"] = str(home)
    try:
        dag_run = dag.test(run_conf={"lines": 3})
    finally:
        if before is None:
            os.environ.pop("PIPEWRIGHT_HOME", None)
        else:
            os.environ["PIPEWRIGHT_HOME"] = before
    assert state(dag_run) == "failed"
    assert task_states(dag_run)["WriteCorpus"] == "failed"
    assert not home.exists(), sorted(str(p) for p in home.rglob("*"))

    with pipewright_home(home):  # the same DAG once the home is set up
        assert state(dag.test(run_conf={"lines": 3})) == "success"


def test_setting_a_home_up_keeps_its_identity(tmp_path):
    first = Home.resolve(tmp_path / "h")
    identity = first.identity
    assert identity and len(identity) == 32
    assert Home.resolve(tmp_path / "h").identity == identity  # not rewritten
    assert Home.check_shared(tmp_path / "h", expected_id=identity) == first
    with pytest.raises(HomeUnavailable, match="is a different home"):
        Home.check_shared(tmp_path / "h", expected_id="f" * 32)
