"""`dag.test()` of the small wordcount pipeline: the adapter's behaviour without the cost of
TensorFlow — runs recorded in the metadata store under the Airflow run id, inputs resolved
from upstream outputs of the same run, caching across runs, a gate that ends as a skipped
task in a successful run, a halt that fails the run, and params validated by Airflow."""
from __future__ import annotations

import json
import os

import pytest

from pipelines.airflow_adapter import pipewright_run_id
from pipelines.metadata import Metadata
from tests.airflow.conftest import load_dag, pipewright_home, state, task_states

ALL_TASKS = {"WriteCorpus", "CountWords", "Summarize", "Judge", "Publish"}


@pytest.fixture(scope="module")
def wordcount(airflow_db, tmp_path_factory):
    """The DAG, a home, and a first successful run of it."""
    home = tmp_path_factory.mktemp("wordcount-home")
    dag = load_dag("wordcount_dag.py", "wordcount")
    with pipewright_home(home):
        first = dag.test(run_conf={"lines": 12})
    return dag, home, first


def run(dag, home, conf):
    with pipewright_home(home):
        return dag.test(run_conf=conf)


def published_versions(home) -> list[str]:
    base = home / "published" / "wordcount"
    return sorted(os.listdir(base)) if base.exists() else []


def test_run_succeeds_and_is_recorded_under_the_airflow_run_id(wordcount):
    dag, home, dag_run = wordcount
    assert state(dag_run) == "success"
    assert set(task_states(dag_run).values()) == {"success"}
    assert published_versions(home) == ["1"]

    metadata = Metadata(str(home / "metadata.sqlite"))
    [record] = [r for r in metadata.runs("wordcount")
                if r["airflow_run_id"] == dag_run.run_id]
    assert record["orchestrator"] == "airflow"
    assert record["run_id"] == pipewright_run_id(dag_run.run_id)
    assert record["state"] == "succeeded"
    assert json.loads(record["parameters"])["lines"] == 12
    assert record["steps"] == {"complete": 5}


def test_each_task_reads_the_outputs_its_upstream_tasks_recorded_in_the_run(wordcount):
    dag, home, dag_run = wordcount
    metadata = Metadata(str(home / "metadata.sqlite"))
    context = metadata.run_context("wordcount", pipewright_run_id(dag_run.run_id))
    executions = {e.component_id: e for e in metadata.executions_in_run(context)}
    corpus = metadata.outputs_of_execution(executions["WriteCorpus"].id)["corpus"]
    counts = metadata.outputs_of_execution(executions["CountWords"].id)["counts"]
    assert corpus.lines == 12
    assert metadata.inputs_of_execution(executions["CountWords"].id)["corpus"].id == corpus.id
    assert metadata.inputs_of_execution(executions["Summarize"].id)["corpus"].id == corpus.id
    judged = metadata.inputs_of_execution(executions["Judge"].id)
    assert judged["counts"].id == counts.id
    with open(os.path.join(counts.uri, "counts.json")) as fh:
        assert sum(json.load(fh).values()) == counts.total
    # The task's XCom summarises its step.
    summary = dag_run.get_task_instance("CountWords").xcom_pull(task_ids="CountWords")
    assert summary["status"] == "executed"
    assert summary["outputs"]["counts"] == {"id": counts.id, "type": "WordCounts",
                                            "uri": counts.uri}


def test_unapproved_result_ends_with_the_gate_task_skipped_and_the_run_succeeding(wordcount):
    dag, home, _ = wordcount
    dag_run = run(dag, home, {"lines": 12, "min_words_per_line": 99.0})
    states = task_states(dag_run)
    assert states.pop("Publish") == "skipped"
    assert set(states.values()) == {"success"}
    assert state(dag_run) == "success"
    assert published_versions(home) == ["1"], "nothing new was published"

    metadata = Metadata(str(home / "metadata.sqlite"))
    context = metadata.run_context("wordcount", pipewright_run_id(dag_run.run_id))
    steps = {e.component_id: e for e in metadata.executions_in_run(context)}
    # Same corpus as the first run: its steps came from the cache.
    assert {steps[c].state for c in ("WriteCorpus", "CountWords", "Summarize")} == {"cached"}
    assert steps["Publish"].outcome == "skipped"
    assert "99.0" in steps["Publish"].outcome_reason


def test_halted_step_fails_its_task_and_nothing_downstream_runs(wordcount):
    dag, home, _ = wordcount
    dag_run = run(dag, home, {"lines": 0})
    states = task_states(dag_run)
    assert states["Judge"] == "failed"
    assert states["Publish"] == "upstream_failed"
    assert state(dag_run) == "failed"
    metadata = Metadata(str(home / "metadata.sqlite"))
    [record] = [r for r in metadata.runs("wordcount") if r["airflow_run_id"] == dag_run.run_id]
    assert record["state"] == "failed"


def test_params_are_validated_by_airflow_and_unknown_conf_keys_are_rejected(wordcount):
    from airflow.sdk.exceptions import ParamValidationError

    dag, home, _ = wordcount
    with pytest.raises(ParamValidationError, match="lines"):
        run(dag, home, {"lines": "many"})
    with pytest.raises(ParamValidationError, match="vocabulary"):
        run(dag, home, {"vocabulary": "model"})
    dag_run = run(dag, home, {"linez": 3})
    assert task_states(dag_run)["WriteCorpus"] == "failed"
    assert state(dag_run) == "failed"


def test_rerun_steps_in_the_trigger_form_executes_one_cached_step_again(wordcount):
    from airflow.sdk.exceptions import ParamValidationError

    dag, home, _ = wordcount
    dag_run = run(dag, home, {"lines": 12, "rerun_steps": ["CountWords"]})
    assert state(dag_run) == "success"
    metadata = Metadata(str(home / "metadata.sqlite"))
    context = metadata.run_context("wordcount", pipewright_run_id(dag_run.run_id))
    steps = {e.component_id: e.state for e in metadata.executions_in_run(context)}
    assert steps["WriteCorpus"] == "cached" and steps["Summarize"] == "cached"
    assert steps["CountWords"] == "complete", "re-run instead of reused"
    assert steps["Judge"] == "complete", "its downstream saw a new input"
    with pytest.raises(ParamValidationError, match="rerun_steps"):
        run(dag, home, {"rerun_steps": ["NoSuchStep"]})
