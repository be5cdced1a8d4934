"""Retraining on evidence on the real services: Airflow 3.3 (api-server, scheduler,
dag-processor, triggerer) and the model server, as `make up` starts them.

The model server serves the session's trained penguin model (`trained_penguin`, its serving
directory through PIPEWRIGHT_SERVING_DIR; the home holds a copy of its metadata store) and
logs every request (files closed after 2 s). A day of penguins drawn from the training
data is sent over REST first: the monitoring DAG `penguin_monitor` (the real one,
registered_dags) records every feature's distance, all under threshold, and alerts nobody.
Then penguins whose body mass is 1.5 times larger and whose islands are swapped: the monitor
flags exactly those two features and its RetrainingAlert task emits the retraining asset
event. The penguin training DAG, scheduled on "nightly OR that asset", is started by that
event and trains a new model; its run records the alert's report in ML Metadata, so
`pipewright lineage` leads from the new model back to the drift report. (The DAG's runs
default to 100 train steps and an accuracy bound no model reaches, so nothing is pushed into
the session's shared serving directory.) A second shifted window within the cooldown alerts
again: the alert task ends skipped, says why in its log, emits no event, and starts no run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from components.traffic_monitor import TrafficReport  # noqa: F401 - typed properties
from pipelines.airflow_adapter import pipewright_run_id
from pipelines.home import Home
from pipelines.metadata import Metadata
from pipelines.services import Services
from tests.airflow.conftest import REPO_ROOT
from tests.airflow.system import free_port, wait_for_run

MONITOR, RETRAIN = "penguin_monitor", "penguin_retrain"
SHIFTED = ["body_mass_g", "island"]
SERVED_FEATURES = {"island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm",
                   "body_mass_g", "sex"}
ASSET_URI = "pipewright://penguin/retraining-alert"
NEW_DATA_URI = "pipewright://penguin/new-data"
DAG_FILE = f'''"""The test's DAGs: the registered penguin monitor, and the penguin training DAG
on nightly OR the penguin retraining alert, its runs defaulting to a short training that
pushes nothing."""
from pipelines import registry
from pipelines.airflow_adapter import (build_dag, new_data_asset, registered_dags,
                                       retraining_asset)
from pipelines.home import Home

penguin_monitor = registered_dags()["penguin_monitor"]
penguin_retrain = build_dag(
    registry.load("penguin").with_defaults(train_steps=100, accuracy_threshold=1.01),
    dag_id="{RETRAIN}", retries=0,
    retrain_on=[new_data_asset("penguin", Home.resolve().landing_dir),
                retraining_asset("penguin")])
'''


def shifted_instances(start: int, count: int | None = None, *, shift: bool = True) -> list[dict]:
    """serving_raw instances from every other palmerpenguins row from `start` (so the
    species mix, and the features left alone, stay as in training): body mass x 1.5,
    Biscoe and Torgersen swapped (as tests/test_traffic_monitor.py shifted()), unless
    `shift` is False."""
    from tests.test_traffic_monitor import penguin_rows, shifted

    rows = [r for r in penguin_rows() if "NA" not in r.values()]
    rows = (shifted(rows) if shift else rows)[start::2][:count]
    return [{"island": r["island"], "bill_length_mm": float(r["bill_length_mm"]),
             "bill_depth_mm": float(r["bill_depth_mm"]),
             "flipper_length_mm": float(r["flipper_length_mm"]),
             "body_mass_g": float(r["body_mass_g"]), "sex": r["sex"]} for r in rows]


def send(services: Services, instances: list[dict], prefix: str) -> None:
    """One REST predict per instance, each with its own x-request-id."""
    url = f"http://127.0.0.1:{services.rest_port}/v1/models/penguin:predict"
    for i, instance in enumerate(instances):
        body = json.dumps({"signature_name": "serving_raw", "instances": [instance]}).encode()
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "x-request-id": f"{prefix}-{i}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert len(json.loads(response.read())["predictions"]) == 1


def wait_for_closed_logs(home: Path, count: int, timeout_s: float = 30) -> None:
    """Until the server has closed request-log files holding `count` records in all."""
    import tensorflow as tf

    from components.traffic_logs import closed_log_files

    deadline = time.monotonic() + timeout_s
    while True:
        files = closed_log_files(str(home / "request_logs"), "penguin")
        records = sum(1 for f in files for _ in tf.data.TFRecordDataset(
            f, compression_type="GZIP"))
        if records >= count or time.monotonic() > deadline:
            assert records >= count, f"{records} of {count} records in closed files {files}"
            return
        time.sleep(1)


def finished(services: Services, dag_id: str, run_id: str,
             timeout_s: float = 300) -> tuple[dict, dict[str, str]]:
    run, states, other_logs = wait_for_run(services, dag_id, run_id, timeout_s)
    assert run["state"] == "success", f"{dag_id} {run_id}: {run['state']} {states}\n{other_logs}"
    return run, states


def task_log(services: Services, dag_id: str, run_id: str, task_id: str) -> str:
    path = (f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/"
            f"{task_id}/logs/1")
    return json.dumps(services.api("GET", path))


def asset_events(services: Services, uri: str = ASSET_URI) -> list[dict]:
    events = services.api("GET", "/api/v2/assets/events?limit=100")["asset_events"]
    return [e for e in events if e["uri"] == uri]


def retrain_runs(services: Services) -> list[dict]:
    return services.api("GET", f"/api/v2/dags/{RETRAIN}/dagRuns")["dag_runs"]


@pytest.fixture(scope="module")
def services(trained_penguin, tmp_path_factory):
    root = tmp_path_factory.mktemp("retraining-home")
    shutil.copy(os.path.join(trained_penguin.home, "metadata.sqlite"), root / "metadata.sqlite")
    dags = root / "dags"
    dags.mkdir()
    (dags / "retraining_dags.py").write_text(DAG_FILE)
    before = os.environ.get("PIPEWRIGHT_SERVING_DIR")
    os.environ["PIPEWRIGHT_SERVING_DIR"] = os.path.dirname(trained_penguin.serving_base)
    system = Services(Home.resolve(root), api_port=free_port(), grpc_port=free_port(),
                      rest_port=free_port(), dags_folder=str(dags), dag_ids=[MONITOR, RETRAIN],
                      request_log_max_file_age_seconds=2.0,
                      extra_env={"PIPEWRIGHT_MONITOR_SCHEDULE": "none",
                                 "PIPEWRIGHT_AIRFLOW_RETRIES": "0",
                                 "PIPEWRIGHT_ALERT_COOLDOWN_HOURS": "6"})
    try:
        system.up(first_run=False, echo=lambda line: None)
        yield system, root
    finally:
        system.down(echo=lambda line: None)
        if before is None:
            os.environ.pop("PIPEWRIGHT_SERVING_DIR", None)
        else:
            os.environ["PIPEWRIGHT_SERVING_DIR"] = before


def monitor_report(home: Path, monitor_run: str):
    metadata = Metadata(str(home / "metadata.sqlite"))
    context = metadata.run_context("penguin-monitor", pipewright_run_id(monitor_run))
    return metadata.outputs_of_execution(
        metadata.latest_in_run(context, "TrafficMonitor").id)["report"]


def test_a_day_from_the_training_distribution_records_every_distance_and_alerts_nobody(
        services):
    system, home = services
    instances = shifted_instances(0, shift=False)
    send(system, instances, "usual")
    wait_for_closed_logs(home, len(instances))

    monitor_run = system.trigger(MONITOR, {})["dag_run_id"]
    _, states = finished(system, MONITOR, monitor_run)
    assert states == {"ServedModelLineage": "success", "TrafficMonitor": "success",
                      "RetrainingAlert": "skipped"}, states
    report = monitor_report(home, monitor_run)
    assert (report.verdict, report.requests, report.flagged_features) == \
        ("no drift", len(instances), []), report
    distances = json.loads(report.distances)
    assert set(distances) == SERVED_FEATURES, "every feature's distance is recorded"
    for name, measured in distances.items():
        assert measured["skew"]["flagged"] is False, (name, measured)
        assert measured["skew"]["distance"] is not None, (name, measured)
    assert "no alert: verdict no drift" in task_log(system, MONITOR, monitor_run,
                                                    "RetrainingAlert")
    assert asset_events(system) == [] and retrain_runs(system) == []


def test_shifted_traffic_emits_the_alert_and_the_training_dag_runs_on_it(services):
    system, home = services
    before = len(shifted_instances(0, shift=False))
    instances = shifted_instances(0)
    send(system, instances, "shifted")
    wait_for_closed_logs(home, before + len(instances))

    monitor_run = system.trigger(MONITOR, {})["dag_run_id"]
    _, states = finished(system, MONITOR, monitor_run)
    assert states == {"ServedModelLineage": "success", "TrafficMonitor": "success",
                      "RetrainingAlert": "success"}, states

    metadata = Metadata(str(home / "metadata.sqlite"))
    report = monitor_report(home, monitor_run)
    assert report.verdict == "drift" and report.requests == len(instances)
    assert sorted(report.flagged_features) == SHIFTED, report.flagged_features

    # The event starts the penguin training DAG (its schedule: nightly OR the asset). (Read
    # the events once that run has started: Airflow 3.3.2 cannot list an event whose run is
    # still queued, Services.api.)
    deadline = time.monotonic() + 120
    while not [r for r in retrain_runs(system) if r["start_date"]] and \
            time.monotonic() < deadline:
        time.sleep(2)
    [event] = asset_events(system)
    assert event["source_dag_id"] == MONITOR and event["source_run_id"] == monitor_run
    assert event["source_task_id"] == "RetrainingAlert"
    extra = event["extra"]
    assert extra["report_id"] == report.id and extra["model_name"] == "penguin"
    assert extra["flagged_features"] == report.flagged_features
    assert extra["distances"]["body_mass_g"]["skew"]["flagged"] is True

    [run] = retrain_runs(system)
    assert run["run_type"] == "asset_triggered", run
    _, states = finished(system, RETRAIN, run["dag_run_id"], timeout_s=900)
    assert states["Trainer"] == "success" and states["Pusher"] == "skipped", states

    # Its run context records the report; lineage leads from the new model to the alert.
    [record] = [r for r in metadata.runs("penguin") if r["airflow_run_id"] == run["dag_run_id"]]
    [trigger] = json.loads(record["triggered_by"])
    assert trigger["report_id"] == report.id and trigger["source_run_id"] == monitor_run
    penguin = metadata.run_context("penguin", record["run_id"])
    trainer = metadata.latest_in_run(penguin, "Trainer")
    model = metadata.outputs_of_execution(trainer.id)["model"]
    lineage = pipewright("lineage", str(model.id), home)
    assert (f"was started by the retraining alert {ASSET_URI} of {MONITOR} run {monitor_run}: "
            f"TrafficReport #{report.id} (model penguin version "
            f"{extra['model_version']}; skew: ") in lineage, lineage
    assert f"alerted: started run {record['run_id']} of penguin" in \
        pipewright("lineage", str(report.id), home)
    assert f"alert=TrafficReport#{report.id}" in pipewright("runs", "penguin", home)


def test_a_second_alert_within_the_cooldown_is_suppressed_and_starts_nothing(services):
    system, home = services
    first = len(shifted_instances(0, shift=False)) + len(shifted_instances(0))
    send(system, shifted_instances(1, 80), "shifted-again")
    wait_for_closed_logs(home, first + 80)
    monitor_run = system.trigger(MONITOR, {})["dag_run_id"]
    _, states = finished(system, MONITOR, monitor_run)
    assert states["TrafficMonitor"] == "success" and states["RetrainingAlert"] == "skipped"
    log = task_log(system, MONITOR, monitor_run, "RetrainingAlert")
    assert "alert suppressed by the cooldown: alert #" in log, log[-3000:]
    assert len(asset_events(system)) == 1, "no second event"
    time.sleep(10)  # a scheduler loop or two: no run may appear
    assert len(retrain_runs(system)) == 1


def test_landed_data_starts_the_training_dag_through_the_triggerers_watcher(services):
    """`pipewright land` (signal_new_data) writes <home>/landing/penguin.ready; the triggerer
    running the DAG's AssetWatcher (FileDeleteTrigger) deletes it and emits the new-data
    event, and the scheduler starts an asset-triggered run. (The run is left to `down`.)"""
    from pipelines.landing import signal_new_data

    system, home = services
    path = signal_new_data("penguin", str(home), note="span 2 landed")
    deadline = time.monotonic() + 120
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(1)
    assert not os.path.exists(path), "the triggerer's FileDeleteTrigger never took the file"
    deadline = time.monotonic() + 180  # a started run: see the shifted-traffic test
    while len([r for r in retrain_runs(system) if r["start_date"]]) < 2 and \
            time.monotonic() < deadline:
        time.sleep(2)
    runs = sorted(retrain_runs(system), key=lambda r: r["queued_at"] or "")
    assert len(runs) == 2 and runs[-1]["run_type"] == "asset_triggered", runs
    [event] = asset_events(system, NEW_DATA_URI)
    assert event["source_dag_id"] is None, event  # the watcher's, not a task's


def pipewright(*args) -> str:
    home = args[-1]
    done = subprocess.run([str(Path(sys.executable).parent / "pipewright"), *args[:-1],
                           "--home", str(home)], capture_output=True, text=True,
                          cwd=str(REPO_ROOT), timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
