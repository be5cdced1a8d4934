"""The framework's promises, on the real launcher and a real MLMD store: a cache key that
covers the code that runs, verdicts only from finished work, one launch path, reserved
names, and `--rerun`. (The served-model baseline is tested on real penguin models in
test_served_baseline.py.)"""
from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from components.artifacts import Model, ModelBlessing
from components.base import (Component, ComponentDefinitionError, ExternalPath, Input, Output,
                             Param, Parameter, Resolver, Step)
from pipelines.home import Home
from pipelines.local_runner import run_pipeline
from pipelines.metadata import Metadata
from pipelines.pipeline import Pipeline
from tests import core_pipelines
from tests.core_pipelines import MakeNumbers, Numbers, Total


def _quiet(line: str) -> None:
    pass


def _states(home, component_id: str) -> list[str]:
    metadata = Metadata(Home.resolve(home).metadata_uri)
    records = [r for run in metadata.runs() for r in
               metadata.executions_in_run(_run_context(metadata, run))
               if r.component_id == component_id]
    return [r.state for r in sorted(records, key=lambda r: r.id)]


def _run_context(metadata: Metadata, run: dict):
    return metadata.run_context(run["pipeline_name"], run["run_id"])


# -- a cache key that covers the code that runs --------------------------------------------
COMPONENT_MODULE = '''
from components.base import Component, Output, Parameter, Step
from tests.core_pipelines import Numbers
from {package} import numbers_helper


class Helped(Component):
    """Writes what the helper module computes."""

    numbers: Output[Numbers]

    def execute(self, step: Step) -> None:
        from {package} import late_helper  # imported inside execute, as heavy imports are

        with open(step.numbers.path("numbers.txt"), "w") as fh:
            fh.write(str(numbers_helper.value() + late_helper.value()))
'''


def _load_package(root: Path, package: str):
    """Writes a package with a component importing two helper modules; imports it."""
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    (root / package / "numbers_helper.py").write_text("def value():\n    return 1\n")
    (root / package / "late_helper.py").write_text("def value():\n    return 10\n")
    (root / package / "component.py").write_text(COMPONENT_MODULE.format(package=package))
    sys.path.insert(0, str(root))
    try:
        spec = importlib.util.spec_from_file_location(f"{package}.component",
                                                      root / package / "component.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(root))
    return module


def test_editing_a_helper_module_of_a_component_reruns_its_step(tmp_path):
    (tmp_path / "src").mkdir()
    module = _load_package(tmp_path / "src", "helped_pkg")
    pipeline = Pipeline("helped", [module.Helped()])
    first = run_pipeline(pipeline, home=tmp_path / "home", echo=_quiet)
    assert first.executed() == ["Helped"], first.summary()
    again = run_pipeline(pipeline, home=tmp_path / "home", echo=_quiet)
    assert again.executed() == [], "nothing changed: cached"

    # A helper imported inside execute() only: the running process still holds the old
    # code, but the key must change, since the next process runs the new one.
    helper = tmp_path / "src" / "helped_pkg" / "late_helper.py"
    helper.write_text("def value():\n    return 20\n")
    edited = run_pipeline(pipeline, home=tmp_path / "home", echo=_quiet)
    assert edited.executed() == ["Helped"], edited.summary()


def test_editing_a_module_the_user_module_imports_from_its_directory_reruns_the_step(tmp_path):
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    (user_dir / "features.py").write_text("SCALE = 2\n")
    (user_dir / "my_module.py").write_text("import features\n\ndef run_fn(args):\n    pass\n")

    class UsesModule(Component):
        """Records the user module it was given."""

        numbers: Output[Numbers]
        module_file: Parameter[ExternalPath]

        def execute(self, step: Step) -> None:
            with open(step.numbers.path("numbers.txt"), "w") as fh:
                fh.write("1")

    pipeline = Pipeline("user-module", [UsesModule(module_file=ExternalPath(
        str(user_dir / "my_module.py")))])
    assert run_pipeline(pipeline, home=tmp_path / "home", echo=_quiet).executed() == ["UsesModule"]
    assert run_pipeline(pipeline, home=tmp_path / "home", echo=_quiet).executed() == []
    (user_dir / "unrelated.py").write_text("X = 1\n")  # not imported: no re-run
    assert run_pipeline(pipeline, home=tmp_path / "home", echo=_quiet).executed() == []
    (user_dir / "features.py").write_text("SCALE = 3\n")
    assert run_pipeline(pipeline, home=tmp_path / "home", echo=_quiet).executed() == ["UsesModule"]


def test_every_standard_component_fingerprints_its_helper_modules():
    from components.evaluator import Evaluator
    from components.infra_validator import InfraValidator
    from components.pusher import Pusher
    from components.source_fingerprint import PROJECT_ROOT, source_closure
    from components.trainer import Trainer
    from components.transform import Transform
    from components.tuner import Tuner

    def closure(cls) -> set[str]:
        path = sys.modules[cls.__module__].__file__
        return {os.path.relpath(f, PROJECT_ROOT) for f in source_closure(path, [PROJECT_ROOT])}

    assert {"components/canary_requests.py", "components/serving_sandbox.py",
            "components/interruption.py"} <= closure(InfraValidator)
    assert "components/trainer.py" in closure(Tuner)  # fn_args_for, imported inside execute
    assert "components/user_module.py" in closure(Trainer)
    for cls in (Evaluator, Pusher, Transform):
        assert "components/base.py" in closure(cls) and "components/artifacts.py" in closure(cls)


# -- reserved names ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["home", "metadata", "log", "tmp_dir", "run_id", "serving_dir",
                                  "id", "inputs", "outputs", "skip"])
def test_a_spec_name_that_would_shadow_the_framework_is_rejected_at_class_definition(name):
    with pytest.raises(ComponentDefinitionError, match=rf"'{name}' cannot name"):
        type("Clashing", (Component,), {"__annotations__": {name: Parameter[str]},
                                        name: "x", "__module__": __name__})


# -- verdicts only from finished work -------------------------------------------------------------
class SignalledMidway(Component):
    """Receives SIGTERM while it works, then finishes as if nothing happened — as a step
    whose exception handling swallowed the interruption would."""

    numbers: Output[Numbers]
    signal_self: Parameter[bool] = True

    def execute(self, step: Step) -> None:
        if step.signal_self:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the signal arrives while the step still works
        with open(step.numbers.path("numbers.txt"), "w") as fh:
            fh.write("7")
        step.numbers.set(count=1)


def test_a_step_that_received_sigterm_publishes_nothing_and_the_next_run_executes_it(tmp_path):
    flag = SignalledMidway(signal_self=True)
    pipeline = Pipeline("signalled", [flag, Total(numbers=flag.outputs.numbers)])
    previous = signal.getsignal(signal.SIGTERM)
    try:
        first = run_pipeline(pipeline, home=tmp_path, echo=_quiet)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not first.ok
    assert first.steps["SignalledMidway"].status == "failed"
    assert "SIGTERM" in first.failure
    assert "Total" in first.not_run
    metadata = Metadata(Home.resolve(tmp_path).metadata_uri)
    assert metadata.artifacts_of_type(Numbers) == [], "nothing published, so nothing cached"
    assert _states(tmp_path, "SignalledMidway") == ["failed"]
    assert not os.listdir(os.path.join(tmp_path, "staging"))

    pipeline.component("SignalledMidway").parameters["signal_self"] = False
    second = run_pipeline(pipeline, home=tmp_path, echo=_quiet)
    assert second.ok, second.summary()
    assert second.executed() == ["SignalledMidway", "Total"]


# -- one launch path ------------------------------------------------------------------------------
class Failing(Resolver):
    """A resolver whose lookup fails."""

    numbers: Output[Numbers]

    def resolve(self, step: Step):
        raise LookupError("the store has no such thing")


def test_a_resolver_failure_is_a_failed_execution_in_the_store(tmp_path):
    failing = Failing()
    result = run_pipeline(Pipeline("resolving", [failing, Total(numbers=failing.outputs.numbers)]),
                          home=tmp_path, echo=_quiet)
    assert not result.ok and "the store has no such thing" in result.failure
    assert _states(tmp_path, "Failing") == ["failed"]
    assert result.steps["Failing"].execution_id is not None


def test_the_launcher_resolves_inputs_from_the_store_and_fails_recorded_without_them(tmp_path):
    from pipelines.launcher import RunInfo, StepFailed, launch

    pipeline = core_pipelines.create_pipeline()
    home = Home.resolve(tmp_path)
    metadata = Metadata(home.metadata_uri)
    context = metadata.run_context(pipeline.name, "lonely")
    run = RunInfo(pipeline.name, "lonely", pipeline.resolve_params({}), [], context)
    with pytest.raises(StepFailed, match="MakeNumbers has no execution in run lonely"):
        launch(pipeline.component("Scale"), run=run, metadata=metadata, home=home)
    assert [r.state for r in metadata.executions_in_run(context)] == ["failed"]

    made = launch(pipeline.component("MakeNumbers"), run=run, metadata=metadata, home=home)
    scaled = launch(pipeline.component("Scale"), run=run, metadata=metadata, home=home)
    assert metadata.inputs_of_execution(scaled.execution_id)["numbers"].id == \
        made.outputs["numbers"].id


# -- --rerun --------------------------------------------------------------------------------------
def test_rerun_drops_one_cached_execution_and_its_downstream_follow(tmp_path, capsys):
    from pipelines.cli import main

    pipeline = core_pipelines.create_pipeline()
    assert run_pipeline(pipeline, home=tmp_path, echo=_quiet).ok
    again = run_pipeline(pipeline, home=tmp_path, rerun=["Scale"], echo=_quiet)
    assert again.executed() == ["Scale", "Total"]
    assert again.steps["MakeNumbers"].status == "cached"
    with pytest.raises(ValueError, match=r"--rerun names no step of numbers: \['Nope'\]"):
        run_pipeline(pipeline, home=tmp_path, rerun=["Nope"], echo=_quiet)
    file = str(Path(core_pipelines.__file__))
    assert main(["run", file, "--home", str(tmp_path), "--rerun", "MakeNumbers"]) == 0
    assert "MakeNumbers" in capsys.readouterr().err


def test_reading_commands_in_a_home_where_nothing_ran_say_so_and_create_no_store(tmp_path,
                                                                                   capsys):
    from pipelines.cli import main

    empty = tmp_path / "empty"
    for command in (["show", "1"], ["lineage", "1"], ["runs"]):
        assert main([*command, "--home", str(empty)]) == 2
        assert "nothing has run in this home; pass --home" in capsys.readouterr().err
    assert not (empty / "metadata.sqlite").exists()


def test_a_second_metadata_store_on_one_home_fails_naming_the_clash_and_deletes_nothing(
        tmp_path, monkeypatch):
    pipeline = core_pipelines.create_pipeline()
    first = run_pipeline(pipeline, home=tmp_path, echo=_quiet)
    kept = first.steps["MakeNumbers"].outputs["numbers"].uri
    monkeypatch.setenv("PIPEWRIGHT_METADATA", str(tmp_path / "other.sqlite"))
    clash = run_pipeline(pipeline, home=tmp_path, params={"count": 5}, echo=_quiet)
    assert not clash.ok and "exists already: another metadata store" in clash.failure
    assert Path(kept, "numbers.txt").read_text() == "0\n1\n2", "the first store's output kept"


def test_an_interrupted_push_never_reaches_the_serving_directory(tmp_path):
    from components.interruption import StepInterrupted
    from components.pusher import push, versions_on_disk

    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"")
    destination = str(tmp_path / "serving" / "m")

    def interrupted():
        raise StepInterrupted("SIGTERM arrived")

    with pytest.raises(StepInterrupted):
        push(str(model), destination, before_rename=interrupted)
    assert versions_on_disk(destination) == [] and os.listdir(destination) == [".push.lock"]
    assert push(str(model), destination) == 1


def test_version_directories_are_read_as_tf_serving_reads_them(tmp_path):
    from components.pusher import versions_on_disk

    for name in ["1", " 7", "+3", "-1", "01", "99999999999999999999", "x2", "2.0", "٣"]:
        (tmp_path / name).mkdir()
    (tmp_path / "9").write_text("a file is not a version")
    assert versions_on_disk(str(tmp_path)) == [-1, 1, 1, 3, 7]


def test_an_unexplained_version_above_the_pushed_ones_fails_the_baseline(tmp_path):
    from components.artifacts import Model, PushedModel
    from components.resolver import BaselineError, served_model

    metadata = Metadata(str(tmp_path / "metadata.sqlite"))
    run = metadata.run_context("p", "r")
    model = Model(uri=str(tmp_path / "model"), name="Trainer.model")
    os.makedirs(model.serving_dir)
    Path(model.serving_dir, "saved_model.pb").write_bytes(b"")
    destination = str(tmp_path / "serving" / "m")
    os.makedirs(os.path.join(destination, "1"))
    pushed = PushedModel(uri=str(tmp_path / "push"), name="Pusher.pushed_model")
    execution = metadata.begin_execution(type_name="T", component_id="Trainer",
                                         pipeline_name="p", run=run, inputs={}, cache_key="",
                                         parameters={}, log_path="")
    metadata.publish_execution(execution, pipeline_name="p", run=run,
                               outputs={"model": model}, outcome="ok", outcome_reason="",
                               duration_s=0)
    pushed.set(pushed=1, pushed_version=1, pushed_destination=destination, model_id=model.id)
    execution = metadata.begin_execution(type_name="P", component_id="Pusher",
                                         pipeline_name="p", run=run, inputs={}, cache_key="",
                                         parameters={}, log_path="")
    metadata.publish_execution(execution, pipeline_name="p", run=run,
                               outputs={"pushed_model": pushed}, outcome="ok",
                               outcome_reason="", duration_s=0)
    candidate = Model(uri="", id=10**6)
    assert served_model(metadata, destination, candidate)[0].id == model.id
    os.makedirs(os.path.join(destination, "2"))  # copied in by hand: the server serves it
    with pytest.raises(BaselineError, match="serves version 2 .* no push recorded"):
        served_model(metadata, destination, candidate)


class FakeTrainer(Component):
    """Writes a stand-in SavedModel file, one per tag."""

    model: Output[Model]
    tag: Parameter[str] = "a"

    def execute(self, step: Step) -> None:
        os.makedirs(step.model.serving_dir)
        Path(step.model.serving_dir, "saved_model.pb").write_text(step.tag)


class FakeEvaluator(Component):
    """Blesses every model."""

    model: Input[Model]
    blessing: Output[ModelBlessing]

    def execute(self, step: Step) -> None:
        step.blessing.set(blessed=1, model_id=step.model.id, reason="fake")


def test_a_rolled_back_model_is_not_pushed_again_by_a_later_run(tmp_path):
    from components.pusher import Pusher
    from pipelines.rollback import rollback

    def pipeline():
        trainer = FakeTrainer(tag=Param("tag", str, "a"))
        evaluator = FakeEvaluator(model=trainer.outputs.model)
        pusher = Pusher(model=trainer.outputs.model, model_blessing=evaluator.outputs.blessing,
                        model_name="fake")
        return Pipeline("fake", [trainer, evaluator, pusher],
                        parameters=[trainer.parameters["tag"]])

    assert run_pipeline(pipeline(), home=tmp_path, params={"tag": "a"}, echo=_quiet).ok
    assert run_pipeline(pipeline(), home=tmp_path, params={"tag": "b"}, echo=_quiet).ok
    assert rollback("fake", str(tmp_path)).pushed_version == 3
    again = run_pipeline(pipeline(), home=tmp_path, params={"tag": "b"}, rerun=["Pusher"],
                         echo=_quiet)
    assert again.steps["Pusher"].outcome == "skipped", again.summary()
    assert "rolled back from version 2" in again.steps["Pusher"].reason
    assert sorted(os.listdir(tmp_path / "serving" / "fake")) == [".push.lock", "1", "2", "3"]


class EditsItsModule(Component):
    """Edits its own user module while it runs (as a person saving a file mid-run)."""

    numbers: Output[Numbers]
    module_file: Parameter[ExternalPath]

    def execute(self, step: Step) -> None:
        with open(step.module_file, "a") as fh:
            fh.write("# edited while the step ran\n")
        step.numbers.set(count=0)


def test_a_file_edited_during_a_step_is_named_and_nothing_is_published(tmp_path):
    module = tmp_path / "user_module.py"
    module.write_text("VALUE = 1\n")
    pipeline = Pipeline("edited", [EditsItsModule(module_file=ExternalPath(module))])
    result = run_pipeline(pipeline, home=tmp_path / "home", echo=_quiet)
    assert not result.ok
    assert f"{module} changed on disk while the step ran" in result.failure, result.failure
    assert not Metadata(str(tmp_path / "home" / "metadata.sqlite")).artifacts_of_type(Numbers)
