"""The Rollout step in Airflow: between bake windows the task defers (a TimeDeltaTrigger on
the triggerer, `Component.pending`), so a bake holds no worker slot; `dag.test()` runs the
trigger inline. A real model server serves two real classifiers while a client sends
unpinned requests; the canary is baked at 50 % and promoted."""
from __future__ import annotations

import json
import os
import threading
import urllib.request

import pytest

from components.artifacts import PushedModel
from components.base import Component, Output, Parameter, Step
from tests.airflow.conftest import pipewright_home, state, task_states
from tests.serving.serving_harness import ServerProcess


class PushTwoClassifiers(Component):
    """Writes version 2 of tests/serving/rollout_models.py's classifiers beside the served
    version 1 in `<serving dir>/clf` and starts its canary (what the Pusher does)."""

    pushed_model: Output[PushedModel]
    bake_seconds: Parameter[float] = 3.0

    def execute(self, step: Step) -> None:
        import os

        from components.rollout_policy import LOADING, RolloutPolicy, write_policy
        from tests.serving.rollout_models import CANDIDATE_THRESHOLD, write_classifier

        base = os.path.join(step.serving_dir, "clf")
        write_classifier(os.path.join(base, "2"), CANDIDATE_THRESHOLD)
        write_policy(base, RolloutPolicy(
            strategy="canary", stable_version=1, candidate_version=2, state=LOADING,
            steps_percent=[50.0, 100.0], bake_seconds=step.bake_seconds,
            guards={"max_prediction_distance": 0.3, "max_error_rate_ratio": 2.0}))
        step.pushed_model.set(pushed=1, pushed_version=2, pushed_destination=base,
                              model_name="clf")


def rollout_pipeline():
    """The model server is $PIPEWRIGHT_MODEL_SERVER_REST (as `make up` sets it)."""
    from components.rollout import Rollout
    from pipelines.pipeline import Pipeline

    push = PushTwoClassifiers()
    rollout = Rollout(pushed_model=push.outputs.pushed_model, model_name="clf", min_requests=10)
    return Pipeline("rollout_dag_test", [push, rollout])


def stable_classifier_server(base, tmp_path, name: str) -> ServerProcess:
    """A model server (not started) on `base`, holding the stable classifier as version 1,
    polling every second, with Prometheus metrics (the Rollout step's evidence)."""
    from tests.serving.rollout_models import STABLE_THRESHOLD, write_classifier

    write_classifier(base / "1", STABLE_THRESHOLD)
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    return ServerProcess(["--model_name=clf", f"--model_base_path={base}",
                          "--file_system_poll_wait_seconds=1",
                          f"--monitoring_config_file={monitoring}"], tmp_path, name)


DAG_FILE = ("from pipelines.airflow_adapter import build_dag\n"
            "from tests.airflow.test_rollout_dag import rollout_pipeline\n\n"
            "rollout_dag_test = build_dag(rollout_pipeline(), schedule=None, retries=0)\n")


def test_rollout_task_defers_between_windows_and_promotes(airflow_db, tmp_path, capfd, caplog):
    from components.rollout_controller import history
    from components.rollout_policy import read_policy
    from tests.airflow.conftest import DAGS_FOLDER, load_dag
    from tests.serving.rollout_models import GRID

    base = tmp_path / "serving" / "clf"
    server = stable_classifier_server(base, tmp_path, "clf-server")
    stop, failures, sent = threading.Event(), [], [0]

    def traffic():
        i = 0
        while not stop.is_set():
            body = json.dumps({"instances": [GRID[i % len(GRID)]]}).encode()
            i += 1
            try:
                urllib.request.urlopen(urllib.request.Request(
                    f"{server.rest}/v1/models/clf:predict", body), timeout=30).read()
                sent[0] += 1
            except Exception as exc:
                failures.append(str(exc))
            stop.wait(0.005)

    (DAGS_FOLDER / "rollout_dag.py").write_text(DAG_FILE)
    dag = load_dag("rollout_dag.py", "rollout_dag_test")
    with pipewright_home(tmp_path):
        server.start()
        os.environ["PIPEWRIGHT_MODEL_SERVER_REST"] = server.rest
        thread = threading.Thread(target=traffic, daemon=True)
        thread.start()
        try:
            dag_run = dag.test()
        finally:
            os.environ.pop("PIPEWRIGHT_MODEL_SERVER_REST", None)
            stop.set()
            thread.join(10)
            server.stop()
    states = task_states(dag_run)
    assert state(dag_run) == "success", states
    events = [e["event"] for e in history(str(base), 2)]
    assert events == ["started", "promoted"], history(str(base))
    assert read_policy(str(base)).stable_version == 2
    log = capfd.readouterr()
    log = log.out + log.err + caplog.text  # Airflow's task log, as dag.test prints it
    # Deferred while the window baked (the trigger ran), then ran the step to its verdict.
    assert "Rollout: waiting 3 s (deferred: no worker slot is held)" in log, log[-3000:]
    assert "Trigger completed" in log  # the TimeDeltaTrigger ran, then the task resumed
    assert failures == [] and sent[0] > 100, failures[:5]


def test_an_abort_during_a_bake_ends_the_step_at_once_recording_the_push_rolled_back(tmp_path,
                                                                                      capsys):
    """`pipewright rollout abort` while the Rollout step waits out a 10-minute window: the
    step notices within seconds (it re-reads rollout.json), reports "aborted" and marks its
    push rolled back (it used to wait the window out and end skipped: "not under a rollout")."""
    import time

    from components.rollout_policy import read_policy
    from pipelines.local_runner import run_pipeline
    from pipelines.rollout_cli import main as rollout_cli

    home = tmp_path / "home"
    base = home / "serving" / "clf"
    server = stable_classifier_server(base, tmp_path, "clf-abort")
    pipeline = rollout_pipeline()
    pipeline.component("PushTwoClassifiers").parameters["bake_seconds"] = 600.0

    def abort_once_baking():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            policy = read_policy(str(base)) if (base / "rollout.json").exists() else None
            if policy is not None and policy.state == "baking":
                rollout_cli(["abort", "clf", "--home", str(home)])
                return
            time.sleep(0.5)

    server.start()
    os.environ["PIPEWRIGHT_MODEL_SERVER_REST"] = server.rest
    aborter = threading.Thread(target=abort_once_baking, daemon=True)
    try:
        aborter.start()
        started = time.monotonic()
        result = run_pipeline(pipeline, home=str(home), echo=lambda line: None)
        took = time.monotonic() - started
    finally:
        os.environ.pop("PIPEWRIGHT_MODEL_SERVER_REST", None)
        aborter.join(10)
        server.stop()
    assert result.ok, result.summary()
    step = result.steps["Rollout"]
    assert step.outcome == "ok" and took < 120, (step.outcome, step.reason, took)
    report, pushed = step.outputs["rollout_report"], result.steps["PushTwoClassifiers"].outputs[
        "pushed_model"]
    assert report.state == "aborted" and "aborted by hand" in report.reason, report.reason
    from pipelines.metadata import Metadata

    stored = Metadata(str(home / "metadata.sqlite")).artifact(pushed.id)
    assert stored.rolled_back == 1
    from pipelines.cli import main as pipewright

    capsys.readouterr()
    assert pipewright(["runs", "rollout_dag_test", "--home", str(home)]) == 0
    assert "v2 aborted" in capsys.readouterr().out
    # In Airflow the step runs again after its deferral, the abort already written: it
    # reports it too (it ended skipped, "version 2 is not under a rollout").
    again = run_pipeline(pipeline, home=str(home), only=["Rollout"], enable_cache=False,
                         echo=lambda line: None)
    step = again.steps["Rollout"]
    assert step.outcome == "ok", (step.outcome, step.reason)
    assert step.outputs["rollout_report"].state == "aborted"
