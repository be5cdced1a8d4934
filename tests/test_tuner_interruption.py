"""A distributed Tuner whose worker is killed from outside (SIGTERM, as `make down` sends)
has not searched: the step fails with StepInterrupted naming the process and the signal,
publishes no "best" hyperparameters, and so caches nothing."""
from __future__ import annotations

import os
import re
import shutil

import psutil

from components.artifacts import HyperParameters
from components.base import ExternalPath
from components.tuner import Tuner
from pipelines.home import Home
from pipelines.metadata import Metadata
from pipelines.pipeline import Pipeline
from tests.process_signals import sigterm_first_seen

PENGUIN_MODULE = os.path.join(os.path.dirname(__file__), "..", "pipelines", "penguin",
                              "penguin_module.py")


def _with_upstream(component) -> set[str]:
    needed, todo = set(), [component]
    while todo:
        current = todo.pop()
        if current.id not in needed:
            needed.add(current.id)
            todo.extend(current.upstream)
    return needed


def _tuner_processes(role: str = "") -> list[psutil.Process]:
    """This process's live tuner processes (chief and workers), or those of one role."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = child.cmdline()
            alive = child.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            continue
        if alive and "components.tuner" in command and (not role or role in command):
            found.append(child)
    return found


def test_tuner_worker_killed_from_outside_fails_the_step_and_publishes_nothing(
        trained_penguin, tmp_path):
    from pipelines import registry
    from pipelines.local_runner import run_pipeline

    home = str(tmp_path / "home")
    shutil.copytree(trained_penguin.home, home)  # Transform's outputs, only read here
    penguin = registry.load("penguin")
    transform = penguin.component("Transform")
    tuner = Tuner(id="ParallelTuner", examples=transform.outputs.transformed_examples,
                  transform_graph=transform.outputs.transform_graph,
                  module_file=ExternalPath(PENGUIN_MODULE), train_steps=20, eval_steps=2,
                  parallel_trials=2, custom_config={"max_trials": 2})
    needed = _with_upstream(transform)
    pipeline = Pipeline("penguin", [c for c in penguin.components if c.id in needed] + [tuner],
                        parameters=penguin.parameters)
    metadata = Metadata(Home.resolve(home).metadata_uri)
    before = len(metadata.artifacts_of_type(HyperParameters))

    with sigterm_first_seen(lambda: _tuner_processes("worker")) as killed:
        run = run_pipeline(pipeline, home=home, echo=lambda line: None)

    assert "pid" in killed, "no tuning worker was seen"
    step = run.steps["ParallelTuner"]
    assert not run.ok and step.status == "failed"
    assert re.search(rf"StepInterrupted: tuner tuner[01] process \(pid {killed['pid']}\) was "
                     rf"killed by SIGTERM from outside the step", run.failure), run.failure
    record = metadata._record(metadata._execution(step.execution_id))
    assert record.state == "failed" and "killed by SIGTERM" in record.error
    assert metadata.outputs_of_execution(step.execution_id) == {}
    assert len(metadata.artifacts_of_type(HyperParameters)) == before
    # The chief and the other worker are stopped with the step.
    assert _tuner_processes() == []
