"""The retraining wiring in Airflow 3, in-process and fast: the schedule objects of the
training and monitoring DAGs (also as the scheduler reads them back, serialized), the
alert task's outlet, the asset event's extra, and what a triggered run records about its
trigger. The real services run it end to end in test_retraining_system.py."""
from __future__ import annotations

import datetime as dt
import json

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable

from pipelines.airflow_adapter import (build_monitor_dag, registered_dags, retraining_asset,
                                       training_schedule)

PENGUIN_ASSET = Asset(name="penguin_retraining_alert",
                      uri="pipewright://penguin/retraining-alert")


def test_training_dag_runs_nightly_or_on_its_retraining_alert():
    dags = registered_dags({})
    schedule = dags["penguin"].timetable
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert isinstance(schedule.timetable, CronTriggerTimetable)
    assert schedule.timetable.expression == "0 2 * * *"
    assert schedule.asset_condition.objects[1] == PENGUIN_ASSET == retraining_asset("penguin")
    # As the scheduler reads the DAG back from its serialized form.
    from airflow.serialization.serialized_objects import DagSerialization

    stored = DagSerialization.from_dict(DagSerialization.to_dict(dags["penguin"]))
    assert type(stored.timetable).__name__ == "AssetOrTimeSchedule"
    assert stored.timetable.summary == "Asset or 0 2 * * *"
    assert [a.uri for _, a in stored.timetable.asset_condition.iter_assets()] == \
        ["pipewright://penguin/new-data", "pipewright://penguin/retraining-alert"]
    # Without a cron, the alert alone starts runs.
    assert training_schedule(None, PENGUIN_ASSET) == PENGUIN_ASSET
    alone = registered_dags({"PIPEWRIGHT_SCHEDULE": "none"})["penguin"].timetable
    assert [a.name for a in alone.asset_condition.objects] == \
        ["penguin_new_data", "penguin_retraining_alert"]


def test_monitoring_dag_runs_hourly_and_its_alert_task_has_the_asset_as_outlet():
    dags = registered_dags({})
    monitor = dags["penguin_monitor"]
    assert isinstance(monitor.timetable, CronTriggerTimetable)
    assert monitor.timetable.expression == "0 * * * *"
    assert [t.task_id for t in monitor.topological_sort()] == [
        "ServedModelLineage", "TrafficMonitor", "RetrainingAlert"]
    assert monitor.get_task("RetrainingAlert").outlets == [PENGUIN_ASSET]
    assert monitor.get_task("TrafficMonitor").outlets == []
    alert = monitor.get_task("RetrainingAlert").component
    assert alert.parameters == {"asset_uri": "pipewright://penguin/retraining-alert",
                                "cooldown_hours": 6.0}
    assert monitor.max_active_runs == 1 and not monitor.catchup
    # Every served pipeline gets one; the wordcount-like ones without a Pusher none.
    assert {"penguin_monitor", "churn_monitor"} <= set(dags)


def test_monitor_schedule_cooldown_and_labels_come_from_the_environment(tmp_path):
    dags = registered_dags({"PIPEWRIGHT_MONITOR_SCHEDULE": "*/15 * * * *",
                            "PIPEWRIGHT_ALERT_COOLDOWN_HOURS": "0.5",
                            "PIPEWRIGHT_LABELS": str(tmp_path),
                            "PIPEWRIGHT_MIN_LIVE_ACCURACY": "0.9"})
    monitor = dags["penguin_monitor"]
    assert monitor.timetable.expression == "*/15 * * * *"
    assert monitor.get_task("RetrainingAlert").component.parameters["cooldown_hours"] == 0.5
    traffic = monitor.get_task("TrafficMonitor").component.parameters
    assert traffic["labels"] == str(tmp_path / "penguin")
    assert traffic["min_live_accuracy"] == 0.9
    assert type(registered_dags({"PIPEWRIGHT_MONITOR_SCHEDULE": "none"})[
        "penguin_monitor"].timetable).__name__ == "NullTimetable"  # triggered runs only


def test_a_pipeline_without_a_pusher_has_nothing_to_monitor():
    import pytest

    from pipelines import registry
    from tests.airflow.conftest import WORDCOUNT_PIPELINE

    with pytest.raises(LookupError, match="'wordcount' has no Pusher"):
        build_monitor_dag(registry.load(str(WORDCOUNT_PIPELINE)))


def test_the_alert_steps_event_file_becomes_the_events_extra(tmp_path):
    from airflow.sdk.execution_time.context import OutletEventAccessors

    from pipelines.airflow_task import set_outlet_events

    alert_dir = tmp_path / "alert"
    alert_dir.mkdir()
    extra = {"report_id": 52, "model_version": 3, "flagged_features": ["island"]}
    (alert_dir / "asset_event.json").write_text(json.dumps(extra))
    summary = {"outputs": {"alert": {"id": 9, "type": "AlertDecision", "uri": str(alert_dir)}}}
    events = OutletEventAccessors()
    set_outlet_events([PENGUIN_ASSET], summary, {"outlet_events": events},
                      __import__("logging").getLogger("test"))
    assert events[PENGUIN_ASSET].extra == extra


def test_a_triggered_run_records_the_alert_and_lineage_shows_it(tmp_path):
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from pipelines.airflow_task import triggering_alerts
    from pipelines.inspect_cli import runs_triggered_by, trigger_lines
    from pipelines.metadata import Metadata

    when = dt.datetime(2026, 11, 30, 16, 0, tzinfo=dt.timezone.utc)
    event = AssetEventDagRunReferenceResult(
        asset={"name": PENGUIN_ASSET.name, "uri": PENGUIN_ASSET.uri, "extra": {}},
        extra={"report_id": 52, "model_name": "penguin", "model_version": 3,
               "reasons": ["drift: island"]},
        source_task_id="RetrainingAlert", source_dag_id="penguin_monitor",
        source_run_id="scheduled__2026-11-30T16:00:00+00:00", source_map_index=-1,
        source_aliases=[], timestamp=when)
    context = {"triggering_asset_events": TriggeringAssetEventsAccessor.build([event])}
    [trigger] = triggering_alerts(context)
    assert trigger["report_id"] == 52 and trigger["asset"] == PENGUIN_ASSET.uri
    assert trigger["source_dag_id"] == "penguin_monitor"
    assert triggering_alerts({"triggering_asset_events": TriggeringAssetEventsAccessor.build(
        [])}) == []

    metadata = Metadata(str(tmp_path / "metadata.sqlite"))
    metadata.run_context("penguin", "asset_triggered_1", orchestrator="airflow",
                         triggered_by=[trigger])
    metadata.run_context("penguin", "scheduled_1", orchestrator="airflow")
    [line] = trigger_lines(metadata, "asset_triggered_1")
    assert line == ("run asset_triggered_1 was started by the retraining alert "
                    "pipewright://penguin/retraining-alert of penguin_monitor run "
                    "scheduled__2026-11-30T16:00:00+00:00: TrafficReport #52 (model penguin "
                    "version 3; drift: island)")
    assert trigger_lines(metadata, "scheduled_1") == []
    assert [r["run_id"] for r in runs_triggered_by(metadata, 52)] == ["asset_triggered_1"]


def test_a_monitor_run_before_anything_is_served_skips_instead_of_failing(airflow_db,
                                                                          tmp_path):
    """The hourly monitor of a fresh installation: nothing pushed yet is nothing to
    monitor, not a failure (no retries, no red runs, no event)."""
    from pipelines.metadata import Metadata
    from tests.airflow.conftest import load_dag, pipewright_home, state, task_states

    dag = load_dag("pipewright_dags.py", "penguin_monitor")
    with pipewright_home(tmp_path):
        dag_run = dag.test()
    assert task_states(dag_run) == {"ServedModelLineage": "skipped",
                                    "TrafficMonitor": "skipped", "RetrainingAlert": "skipped"}
    assert state(dag_run) == "success"
    metadata = Metadata(str(tmp_path / "metadata.sqlite"))
    [run] = metadata.runs("penguin-monitor")
    [lineage] = metadata.executions_in_run(metadata.run_context("penguin-monitor",
                                                                run["run_id"]))
    assert lineage.outcome == "skipped"
    assert lineage.outcome_reason == (f"no model is served from {tmp_path}/serving/penguin: "
                                      f"nothing to monitor")


def test_new_data_landing_is_an_asset_event_the_training_dag_runs_on(tmp_path):
    """`pipewright land PIPELINE` writes the file the new-data asset's watcher (Airflow's
    FileDeleteTrigger, run here as the triggerer runs it) turns into an event."""
    import asyncio

    from pipelines.landing import main, signal_new_data

    dags = registered_dags({"PIPEWRIGHT_HOME": str(tmp_path)})
    [new_data, _] = dags["penguin"].timetable.asset_condition.objects
    assert new_data.uri == "pipewright://penguin/new-data"
    [watcher] = new_data.watchers
    trigger = watcher.trigger
    path = signal_new_data("penguin", str(tmp_path), note="span 2026-03-02")
    assert trigger.filepath == path == str(tmp_path / "landing" / "penguin.ready")

    async def first_event():
        return await asyncio.wait_for(trigger.run().__anext__(), timeout=30)

    event = asyncio.run(first_event())
    assert event.payload is True  # the event FileDeleteTrigger yields
    assert not (tmp_path / "landing" / "penguin.ready").exists()  # one landing, one event
    [landed] = [json.loads(line) for line in
                (tmp_path / "landing" / "landed.jsonl").read_text().splitlines()]
    assert (landed["pipeline"], landed["note"]) == ("penguin", "span 2026-03-02")  # kept
    # The wordcount-like pipelines without a Pusher have the landing asset alone.
    assert main(["nosuch", "--home", str(tmp_path)]) == 1
