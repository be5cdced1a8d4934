"""The DAG file parses as Airflow's DAG processor parses it: no import errors, one DAG per
registered pipeline with one task per component and the pipeline's dependencies, params
from the runtime parameters, and no TensorFlow/Beam/TFDV imported (checked in a fresh
process). The parse time is printed by bench/bench_dag_parse.py."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from components.base import ExternalPath
from pipelines import registry
from pipelines.airflow_adapter import json_schema
from pipelines.airflow_dag_check import report_from_output
from tests.airflow.conftest import DAGS_FOLDER, REPO_ROOT, WORDCOUNT_PIPELINE


@pytest.fixture(scope="module")
def report():
    done = subprocess.run([sys.executable, "-m", "pipelines.airflow_dag_check", str(DAGS_FOLDER)],
                          capture_output=True, text=True, cwd=str(REPO_ROOT), env=os.environ,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return report_from_output(done.stdout)


def expected_pipelines():
    """DAG id -> pipeline: every registered one, its monitor when it has a Pusher (the
    pipeline `<name>-monitor` as DAG `<name>_monitor`), and the test's wordcount."""
    from pipelines.airflow_adapter import served_by

    pipelines = {name: registry.load(name) for name in registry.names()}
    for name, pipeline in list(pipelines.items()):
        if served_by(pipeline):
            pipelines[f"{name}_monitor"] = monitor_of(name)
    pipelines["wordcount"] = registry.load(str(WORDCOUNT_PIPELINE))
    return pipelines


def monitor_of(name: str):
    from pipelines.airflow_adapter import build_monitor_dag

    return build_monitor_dag(registry.load(name)).get_task("TrafficMonitor").pipeline


def expected_cron(dag_id: str, pipeline) -> str:
    from pipelines.airflow_adapter import DEFAULT_MONITOR_SCHEDULE

    return DEFAULT_MONITOR_SCHEDULE if dag_id.endswith("_monitor") else pipeline.schedule


def test_every_registered_pipeline_parses_without_errors_or_heavy_imports(report):
    assert report["import_errors"] == {}
    assert sorted(report["dags"]) == sorted(expected_pipelines())
    assert "penguin" in report["dags"], "the penguin pipeline is registered and has a DAG"
    assert report["heavy_modules_loaded"] == [], "parsing imported " + \
        ", ".join(report["heavy_modules_loaded"])


def test_tasks_and_dependencies_follow_the_pipeline_graph(report):
    for name, pipeline in expected_pipelines().items():
        tasks = report["dags"][name]["tasks"]
        assert sorted(tasks) == sorted(c.id for c in pipeline.components), name
        for component in pipeline.components:
            assert tasks[component.id] == sorted(u.id for u in component.upstream), component.id


def test_runtime_parameters_become_typed_dag_params(report):
    for name, pipeline in expected_pipelines().items():
        params = report["dags"][name]["params"]
        assert sorted(params) == sorted([p.name for p in pipeline.parameters] + ["rerun_steps"])
        rerun = params["rerun_steps"]
        assert rerun["default"] == [] and rerun["schema"]["type"] == "array", name
        assert rerun["schema"]["items"]["enum"] == [c.id for c in pipeline.order], name
        for param in pipeline.parameters:
            schema = params[param.name]["schema"]
            assert params[param.name]["default"] == param.default, param.name
            expected_type = json_schema(param.type).get("type")
            assert schema.get("type") in (expected_type, [expected_type, "null"]), param.name


def test_nightly_schedule_without_catch_up_retries_and_timeouts(report):
    for name, pipeline in expected_pipelines().items():
        dag = report["dags"][name]
        cron = expected_cron(name, pipeline)
        assert cron and f"expression='{cron}'" in dag["schedule"], (name, dag["schedule"])
        if name in ("penguin", "churn"):  # nightly OR its monitor's retraining alert
            assert dag["schedule"].startswith("AssetOrTimeSchedule("), dag["schedule"]
            assert f"pipewright://{name}/retraining-alert" in dag["schedule"]
        assert dag["catchup"] is False and dag["max_active_runs"] == 1
        assert set(dag["execution_timeout_s"]) == set(dag["tasks"]), "every task has a timeout"
    # The conftest sets PIPEWRIGHT_AIRFLOW_RETRIES=0 for the registered DAGs.
    assert set(report["dags"]["penguin"]["retries"].values()) == {0}


def test_registered_dags_default_to_retries_and_honour_the_schedule_override():
    from pipelines.airflow_adapter import registered_dags

    dags = registered_dags({"PIPEWRIGHT_SCHEDULE": "30 3 * * *"})
    dag = dags["penguin"]
    assert all(task.retries == 2 and task.retry_exponential_backoff for task in dag.tasks)
    assert dag.timetable.timetable.expression == "30 3 * * *"
    unscheduled = registered_dags({"PIPEWRIGHT_SCHEDULE": "none"})["penguin"]
    assert type(unscheduled.timetable).__name__ == "AssetTriggeredTimetable", "its alert only"


def test_json_schema_of_parameter_types():
    assert json_schema(int) == {"type": "integer"}
    assert json_schema(float) == {"type": "number"}
    assert json_schema(bool) == {"type": "boolean"}
    assert json_schema(ExternalPath) == {"type": "string"}
    assert json_schema(list[str]) == {"type": "array", "items": {"type": "string"}}
    assert json_schema(int | None) == {"type": ["integer", "null"]}
    assert json_schema(dict[str, int]) == {"type": "object"}


def test_a_component_s_queue_reaches_its_airflow_task():
    from components.base import ComponentDefinitionError
    from pipelines.airflow_adapter import build_dag
    from pipelines.penguin.pipeline import create_pipeline

    pipeline = create_pipeline()
    trainer = next(c for c in pipeline.components if c.id == "Trainer")
    assert trainer.with_queue("heavy") is trainer
    dag = build_dag(pipeline, dag_id="penguin_queues", queues={"Transform": "beam"})
    queues = {task.task_id: task.queue for task in dag.tasks}
    assert queues["Trainer"] == "heavy" and queues["Transform"] == "beam"
    assert queues["ExampleGen"] == "default"  # Airflow's [operators] default_queue
    with pytest.raises(ComponentDefinitionError, match="queue 'a b'"):
        trainer.with_queue("a b")
    with pytest.raises(KeyError, match=r"no component\(s\) \['Traner'\] to queue"):
        build_dag(pipeline, dag_id="penguin_typo", queues={"Traner": "heavy"})
