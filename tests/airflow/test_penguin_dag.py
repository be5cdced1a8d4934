"""`dag.test()` of the penguin DAG, as the DAG processor builds it: a run reaches success
and pushes a model; a run whose accuracy threshold no model can reach ends with Pusher
skipped, the run successful, and the serving directory unchanged."""
from __future__ import annotations

import os

import pytest

from pipelines.airflow_adapter import pipewright_run_id
from pipelines.metadata import Metadata
from tests.airflow.conftest import load_dag, pipewright_home, state, task_states

TRAIN_STEPS = 100


def serving_tree(serving_dir) -> dict[str, list[str]]:
    """Every file under each version directory: what a model server sees."""
    tree = {}
    for version in sorted(v for v in os.listdir(serving_dir) if v.isdigit()):
        root = os.path.join(serving_dir, version)
        tree[version] = sorted(os.path.relpath(os.path.join(d, f), root)
                               for d, _, files in os.walk(root) for f in files)
    return tree


@pytest.fixture(scope="module")
def penguin(airflow_db, tmp_path_factory):
    home = tmp_path_factory.mktemp("penguin-dag-test-home")
    dag = load_dag("pipewright_dags.py", "penguin")
    with pipewright_home(home):
        dag_run = dag.test(run_conf={"train_steps": TRAIN_STEPS})
    return dag, home, dag_run


def test_penguin_dag_run_succeeds_and_pushes_a_model(penguin):
    dag, home, dag_run = penguin
    states = task_states(dag_run)
    assert state(dag_run) == "success", states
    assert set(states.values()) == {"success"}, states
    assert sorted(states) == sorted(t.task_id for t in dag.tasks)

    serving_dir = home / "serving" / "penguin"
    assert list(serving_tree(serving_dir)) == ["1"]
    assert (serving_dir / "1" / "saved_model.pb").is_file()

    metadata = Metadata(str(home / "metadata.sqlite"))
    [run] = [r for r in metadata.runs("penguin") if r["airflow_run_id"] == dag_run.run_id]
    assert run["orchestrator"] == "airflow" and run["state"] == "succeeded"
    context = metadata.run_context("penguin", pipewright_run_id(dag_run.run_id))
    pusher = metadata.latest_in_run(context, "Pusher")
    pushed = metadata.outputs_of_execution(pusher.id)["pushed_model"]
    trainer = metadata.latest_in_run(context, "Trainer")
    model = metadata.outputs_of_execution(trainer.id)["model"]
    assert pushed.pushed == 1 and pushed.pushed_version == 1 and pushed.model_id == model.id
    # Lineage leads from the pushed model back to this Airflow run's Trainer execution.
    producers = metadata.lineage(model)["producers"]
    assert producers[0]["execution"].run_id == pipewright_run_id(dag_run.run_id)


def test_impossible_threshold_skips_pusher_and_leaves_serving_unchanged(penguin):
    dag, home, _ = penguin
    serving_dir = home / "serving" / "penguin"
    before = serving_tree(serving_dir)
    with pipewright_home(home):
        dag_run = dag.test(run_conf={"train_steps": TRAIN_STEPS, "accuracy_threshold": 1.01})
    states = task_states(dag_run)
    assert states.pop("Pusher") == "skipped"
    assert states.pop("Rollout") == "skipped"  # nothing pushed: nothing to roll out
    assert set(states.values()) == {"success"}, states
    assert state(dag_run) == "success"
    assert serving_tree(serving_dir) == before

    metadata = Metadata(str(home / "metadata.sqlite"))
    context = metadata.run_context("penguin", pipewright_run_id(dag_run.run_id))
    evaluator = metadata.latest_in_run(context, "Evaluator")
    blessing = metadata.outputs_of_execution(evaluator.id)["blessing"]
    assert blessing.blessed == 0
    pusher = metadata.latest_in_run(context, "Pusher")
    assert pusher.outcome == "skipped" and "not blessed" in pusher.outcome_reason
    # Only what the threshold changes ran again; the data and training steps were cached.
    assert metadata.latest_in_run(context, "Trainer").state == "cached"
    assert metadata.latest_in_run(context, "Transform").state == "cached"
