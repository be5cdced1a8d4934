"""InfraValidator with real model servers: the penguin pipeline's model is served in a
sandbox and answers canaries over gRPC and REST before the Pusher pushes it; a corrupt model
and a server that misses its deadline are not blessed, leave no server running, and keep the
Pusher from pushing."""
from __future__ import annotations

import filecmp
import os
import re
import shutil

import psutil
import pytest

from components.artifacts import Model
from components.base import Component, ComponentDefinitionError, Output, Step
from components.canary_requests import WARMUP_FILE
from components.example_gen import ExampleGen
from components.infra_validator import InfraValidator
from components.pusher import Pusher
from components.serving_sandbox import choose_server, docker_engine_available
from pipelines.pipeline import Pipeline


class CorruptModel(Component):
    """A trainer gone wrong: its export's saved_model.pb is not a SavedModel."""

    model: Output[Model]

    def execute(self, step: Step) -> None:
        os.makedirs(step.model.serving_dir)
        with open(os.path.join(step.model.serving_dir, "saved_model.pb"), "wb") as fh:
            fh.write(b"not a SavedModel\n" * 8)


class DivergedModel(Component):
    """A model whose training diverged: it loads and answers, but every score is NaN."""

    model: Output[Model]

    def execute(self, step: Step) -> None:
        import tensorflow as tf

        class Diverged(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
            def serve(self, examples):
                return {"scores": tf.fill([tf.shape(examples)[0], 3], float("nan"))}

        module = Diverged()
        tf.saved_model.save(module, step.model.serving_dir,
                            signatures={"serving_default": module.serve})


def server_pid(blessing) -> int:
    with open(blessing.path("report.txt")) as fh:
        return int(re.search(r"pid (\d+)", fh.read()).group(1))


def assert_server_gone(pid: int) -> None:
    """The sandbox server is reaped; a process now holding the PID is not one of ours."""
    if psutil.pid_exists(pid):
        try:
            command = " ".join(psutil.Process(pid).cmdline())
        except psutil.NoSuchProcess:
            return
        assert "infra-validation-" not in command, f"server {pid} still runs: {command}"


def serving_tree(directory: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, dirs, files in os.walk(directory) for name in dirs + files)


@pytest.fixture(scope="module")
def penguin_copy(trained_penguin, tmp_path_factory):
    """A home of our own holding a copy of the trained penguin's records, so the penguin
    steps upstream of the InfraValidator are cached here (their artifacts are only read)."""
    home = tmp_path_factory.mktemp("infra-home") / "home"
    shutil.copytree(trained_penguin.home, home)
    return str(home)


def penguin_with_infra_validator(**infra_args) -> Pipeline:
    """The penguin pipeline with the InfraValidator configured by `infra_args`."""
    from pipelines import registry

    penguin = registry.load("penguin")
    trainer, example_gen = penguin.component("Trainer"), penguin.component("ExampleGen")
    infra = InfraValidator(model=trainer.outputs.model, examples=example_gen.outputs.examples,
                           model_name="penguin", **infra_args)
    pusher = Pusher(model=trainer.outputs.model, infra_blessing=infra.outputs.blessing,
                    model_blessing=penguin.component("Evaluator").outputs.blessing,
                    model_name="penguin")
    kept = [c for c in penguin.components if c.id not in ("InfraValidator", "Pusher")]
    return Pipeline("penguin", kept + [infra, pusher], parameters=penguin.parameters)


def run_quietly(pipeline: Pipeline, home: str):
    from pipelines.local_runner import run_pipeline

    return run_pipeline(pipeline, home=home, echo=lambda line: None)


def test_penguin_model_answers_canaries_over_grpc_and_rest_before_it_is_pushed(
        trained_penguin):
    run = trained_penguin.run
    blessing = run.steps["InfraValidator"].outputs["blessing"]
    assert blessing.blessed == 1, blessing.reason
    assert blessing.model_id == run.steps["Trainer"].outputs["model"].id
    with open(blessing.path("report.txt")) as fh:
        report = fh.read()
    assert "signature 'serving_default': input 'examples' (DT_STRING [batch])" in report
    classes = len(trained_penguin.labels)
    assert f"gRPC Predict: scores [10, {classes}], finite" in report
    assert f"REST :predict: scores [10, {classes}], finite, equal to gRPC's" in report
    assert_server_gone(server_pid(blessing))

    # The warmup record the sandbox server replayed travels with the pushed version.
    assert run.steps["Pusher"].outputs["pushed_model"].pushed == 1
    pushed_warmup = os.path.join(trained_penguin.model_dir, WARMUP_FILE)
    assert filecmp.cmp(pushed_warmup, blessing.path(WARMUP_FILE), shallow=False)
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    (record,) = [r.numpy() for r in tf.data.TFRecordDataset(pushed_warmup)]
    request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(request.inputs["examples"]).shape == (10,)


def test_corrupt_model_is_not_blessed_and_its_server_is_stopped(penguin_copy):
    example_gen = ExampleGen(input_base=_penguin_data(), input_pattern="penguins.csv")
    corrupt = CorruptModel()
    infra = InfraValidator(model=corrupt.outputs.model, examples=example_gen.outputs.examples,
                           model_name="penguin")
    run = run_quietly(Pipeline("corrupt-model", [example_gen, corrupt, infra]), penguin_copy)

    assert run.ok, run.summary()
    assert run.steps["ExampleGen"].status == "cached"
    blessing = run.steps["InfraValidator"].outputs["blessing"]
    assert blessing.blessed == 0
    assert "failed to load" in blessing.reason
    with open(blessing.path("report.txt")) as fh:
        assert fh.readline().startswith("NOT BLESSED: the model failed to load")
    assert os.path.getsize(blessing.path("server.log")) > 0
    assert_server_gone(server_pid(blessing))


def test_model_answering_nan_is_not_blessed(penguin_copy):
    example_gen = ExampleGen(input_base=_penguin_data(), input_pattern="penguins.csv")
    diverged = DivergedModel()
    infra = InfraValidator(model=diverged.outputs.model, examples=example_gen.outputs.examples,
                           num_examples=4)
    run = run_quietly(Pipeline("diverged-model", [example_gen, diverged, infra]), penguin_copy)

    assert run.ok, run.summary()
    blessing = run.steps["InfraValidator"].outputs["blessing"]
    assert blessing.blessed == 0
    assert blessing.reason == "gRPC Predict output 'scores' holds 12 non-finite value(s)"
    assert_server_gone(server_pid(blessing))


def test_missed_load_deadline_is_not_blessed_and_the_pusher_pushes_nothing(penguin_copy):
    serving = os.path.join(penguin_copy, "serving", "penguin")
    before = serving_tree(serving)
    run = run_quietly(penguin_with_infra_validator(load_deadline_s=0.5), penguin_copy)

    assert run.ok, run.summary()
    assert run.steps["Trainer"].status == "cached"
    assert run.steps["Evaluator"].outputs["blessing"].blessed == 1
    blessing = run.steps["InfraValidator"].outputs["blessing"]
    assert blessing.blessed == 0
    assert "not AVAILABLE within 0.5 s" in blessing.reason
    assert_server_gone(server_pid(blessing))
    pusher = run.steps["Pusher"]
    assert pusher.outcome == "skipped"
    assert "failed infra validation" in pusher.reason
    assert pusher.outputs["pushed_model"].pushed == 0
    assert serving_tree(serving) == before


def test_parameters_are_checked_where_the_pipeline_is_defined():
    penguin = penguin_with_infra_validator()
    model = penguin.component("Trainer").outputs.model
    examples = penguin.component("ExampleGen").outputs.examples
    with pytest.raises(ValueError, match="serving_binary must be one of"):
        InfraValidator(model=model, examples=examples, serving_binary="kubernetes")
    with pytest.raises(ValueError, match="num_examples must be at least 1"):
        InfraValidator(model=model, examples=examples, num_examples=0)
    with pytest.raises(ComponentDefinitionError, match="required input 'examples'"):
        InfraValidator(model=model)


@pytest.mark.skipif(docker_engine_available(), reason="a docker engine answers here")
def test_docker_without_an_engine_falls_back_to_a_local_server():
    kind, note = choose_server("docker")
    assert kind in ("pipewright", "tensorflow_model_server")
    assert "no docker engine" in note


def _penguin_data() -> str:
    from pipelines.penguin.pipeline import PACKAGED_DATA

    return PACKAGED_DATA
