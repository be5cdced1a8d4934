"""The model half on the real penguin pipeline: Transform, Trainer, LatestPushedModel,
Evaluator, Pusher, rollback and Tuner, plus the bad-input cases.

`trained_penguin` (tests/conftest.py) is the session's one trained model. The tests that
train more models, roll back or break steps share one home of their own (`lifecycle`,
holding the first run). What a test needs beyond it is a fixture (`second`: the second
model, compared with the first and pushed), so each test also runs alone (`-k rollback`)."""
from __future__ import annotations

import filecmp
import glob
import os

import pytest

from components.artifacts import Model, ModelBlessing, TransformGraph
from components.base import ExternalPath
from pipelines.metadata import Metadata
from tests.conftest import run_penguin

PENGUIN_MODULE = os.path.join(os.path.dirname(__file__), "..", "pipelines", "penguin",
                              "penguin_module.py")
FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g",
            "island", "sex"]


def _eval_examples(pattern: str):
    import tensorflow as tf

    files = sorted(glob.glob(pattern))
    assert files, pattern
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _raw_columns(records):
    """The eval examples as the serving_raw signature takes them (NaN / "" when missing)."""
    import tensorflow as tf

    columns = {name: [] for name in FEATURES}
    labels = []
    for record in records:
        feature = tf.train.Example.FromString(record).features.feature
        labels.append(feature["species"].bytes_list.value[0].decode())
        for name in FEATURES:
            value = feature[name] if name in feature else None
            if name in ("island", "sex"):
                columns[name].append(value.bytes_list.value[0] if value is not None
                                     and value.bytes_list.value else b"")
            else:
                numbers = [] if value is None else list(value.float_list.value) + list(
                    value.int64_list.value)
                columns[name].append(float(numbers[0]) if numbers else float("nan"))
    return columns, labels


# -- the session's model ------------------------------------------------------------------
def test_full_pipeline_pushes_a_model_that_classifies_the_eval_split(trained_penguin):
    import numpy as np
    import tensorflow as tf

    run = trained_penguin.run
    assert set(run.executed()) >= {"Transform", "Trainer", "Evaluator", "Pusher"}
    assert run.steps["LatestPushedModel"].status == "resolved"
    assert "baseline_model" not in run.steps["LatestPushedModel"].outputs
    assert trained_penguin.version == 1
    # rollout.json: the first push is served at once (nothing to canary against)
    assert sorted(os.listdir(trained_penguin.serving_base)) == [".push.lock", "1", "rollout.json"]
    assert sorted(trained_penguin.labels) == ["Adelie", "Chinstrap", "Gentoo"]
    infra = run.steps.get("InfraValidator")
    if infra is not None and os.path.isdir(infra.outputs["blessing"].path("assets.extra")):
        # The Pusher adds the warmup requests the InfraValidator validated.
        assert os.listdir(os.path.join(trained_penguin.model_dir, "assets.extra"))

    model = tf.saved_model.load(trained_penguin.model_dir)
    assert {"serving_default", "serving_raw"} <= set(model.signatures)
    records = _eval_examples(trained_penguin.eval_examples)
    columns, labels = _raw_columns(records)
    scores = model.signatures["serving_default"](examples=tf.constant(records))["scores"].numpy()
    assert scores.shape == (len(records), 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    predicted = [trained_penguin.labels[i] for i in scores.argmax(axis=1)]
    accuracy = np.mean([p == t for p, t in zip(predicted, labels)])
    assert accuracy >= 0.9, accuracy

    # Plain named features (REST `instances`) give the same answer, missing values included.
    raw = model.signatures["serving_raw"](**{
        name: tf.constant(values, tf.string if name in ("island", "sex") else tf.float32)
        for name, values in columns.items()})["scores"].numpy()
    np.testing.assert_allclose(raw, scores, atol=1e-5)
    assert any(v == b"" for v in columns["sex"]), "the eval split should hold a missing sex"


def test_evaluation_reports_metrics_per_slice_and_the_blessing_says_why(trained_penguin):
    evaluator = trained_penguin.run.steps["Evaluator"]
    blessing = evaluator.outputs["blessing"]
    assert blessing.blessed == 1 and blessing.baseline_model_id is None
    assert blessing.baseline_version is None
    with open(evaluator.outputs["evaluation"].path("report.txt")) as fh:
        report = fh.read()
    assert report.startswith(
        f"Evaluation of model {trained_penguin.run.steps['Trainer'].outputs['model'].id} "
        "(no baseline: first push; value thresholds only, change thresholds skipped) on "
        "split(s) eval (multiclass task)\nBLESSED: every threshold holds; no baseline: change "
        "thresholds skipped\n")
    for slice_name in ("Overall", "island=Biscoe", "island=Dream", "island=Torgersen",
                       "sex=female", "sex=male"):
        assert slice_name in report
    assert "sparse_categorical_accuracy" in report and "example_count" in report


def test_trainer_writes_tensorboard_logs_and_transform_its_analyzer_cache(trained_penguin):
    model_run = trained_penguin.run.steps["Trainer"].outputs["model_run"]
    assert glob.glob(os.path.join(model_run.uri, "train", "events.out.tfevents.*"))
    assert glob.glob(os.path.join(model_run.uri, "validation", "events.out.tfevents.*"))
    # The console's TensorBoard command names the published logs, not the removed staging.
    assert f"tensorboard --logdir {model_run.uri}" in trained_penguin.run.steps["Trainer"].reason
    graph = trained_penguin.run.steps["Transform"].outputs["transform_graph"]
    assert os.path.isdir(graph.path("transform_fn"))
    caches = os.listdir(graph.path(graph.analyzer_cache))
    assert len(caches) == 1 and "-train-" in caches[0]


# -- a home of its own: unblessed runs, a second model, rollback, no-change re-run --------
@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    home = str(tmp_path_factory.mktemp("lifecycle-home"))
    first = run_penguin(home)
    assert first.ok, first.summary()
    return {"home": home, "first": first,
            "serving": first.steps["Pusher"].outputs["pushed_model"].pushed_destination}


def _snapshot(directory: str) -> dict[str, float]:
    return {os.path.relpath(os.path.join(d, f), directory): os.stat(os.path.join(d, f)).st_mtime
            for d, _, files in os.walk(directory) for f in files}


def test_unreachable_threshold_is_not_blessed_and_leaves_serving_unchanged(lifecycle):
    before = _snapshot(lifecycle["serving"])
    run = run_penguin(lifecycle["home"], accuracy_threshold=1.01)
    assert run.ok, run.summary()
    assert run.executed() == ["Evaluator", "Pusher"]
    blessing = run.steps["Evaluator"].outputs["blessing"]
    assert blessing.blessed == 0
    assert "sparse_categorical_accuracy" in blessing.reason and "Overall" in blessing.reason
    assert run.steps["Pusher"].outcome == "skipped"
    assert "not blessed" in run.steps["Pusher"].reason
    assert _snapshot(lifecycle["serving"]) == before


def _second_model_pipeline():
    # 101 eval examples: one more mistake is 0.01 accuracy; allow it, so the second model
    # is blessed whatever its last-digit luck.
    return _with_parameter("Evaluator", change_threshold=0.05)


@pytest.fixture(scope="module")
def second(lifecycle):
    """The second model (more training steps), compared with the first, served as version
    1, as its baseline."""
    run = _run(_second_model_pipeline(), lifecycle["home"], train_steps=320)
    assert run.ok, run.summary()
    return run


def test_second_model_is_compared_against_the_first_as_baseline(lifecycle, second):
    first_model = lifecycle["first"].steps["Trainer"].outputs["model"]
    run = second
    assert "Transform" not in run.executed()  # the data and preprocessing did not change
    baseline = run.steps["LatestPushedModel"].outputs["baseline_model"]
    assert baseline.id == first_model.id
    served = run.steps["LatestPushedModel"].outputs["baseline_pushed_model"]
    assert (served.model_id, served.pushed_version) == (first_model.id, 1)
    second_model = run.steps["Trainer"].outputs["model"]
    evaluation = run.steps["Evaluator"].outputs["evaluation"]
    assert (evaluation.baseline_model_id, evaluation.baseline_version) == (first_model.id, 1)
    blessing = run.steps["Evaluator"].outputs["blessing"]
    assert blessing.model_id == second_model.id and blessing.baseline_model_id == first_model.id
    assert blessing.baseline_version == 1
    assert blessing.blessed == 1, blessing.reason
    assert blessing.reason == "every threshold holds, including the change against the baseline"
    named = (f"Evaluation of model {second_model.id} against baseline model {first_model.id}, "
             f"served as version 1 in {lifecycle['serving']} on split(s) eval (multiclass task)\n")
    for artifact in (evaluation, blessing):
        with open(artifact.path("report.txt")) as fh:
            assert fh.read().startswith(named)
    with open(evaluation.path("report.txt")) as fh:
        table_header = fh.read().splitlines()[3].split()
    assert table_header == ["slice", "metric", "candidate", "baseline", "change"]
    pushed = run.steps["Pusher"].outputs["pushed_model"]
    assert pushed.pushed_version == 2
    assert filecmp.cmp(os.path.join(lifecycle["serving"], "2", "saved_model.pb"),
                       os.path.join(second_model.serving_dir, "saved_model.pb"), shallow=False)


def test_rerun_with_nothing_changed_executes_no_step(lifecycle, second):
    before = _snapshot(lifecycle["serving"])
    run = _run(_second_model_pipeline(), lifecycle["home"], train_steps=320)
    assert run.ok, run.summary()
    assert run.executed() == []
    assert {s.status for s in run.steps.values()} == {"cached", "resolved"}
    # The baseline resolves as before (the candidate's own push is passed over), so the
    # Evaluator is cached.
    assert run.steps["LatestPushedModel"].outputs["baseline_model"].id == \
        lifecycle["first"].steps["Trainer"].outputs["model"].id
    assert _snapshot(lifecycle["serving"]) == before


def test_rollback_repushes_the_previous_blessed_model_as_a_new_version(lifecycle, second,
                                                                       capsys):
    from components.pusher import next_version
    from pipelines.cli import main

    first_model = lifecycle["first"].steps["Trainer"].outputs["model"]
    serving = lifecycle["serving"]
    assert main(["rollback", "penguin", "--home", lifecycle["home"]]) == 0
    assert "model %d is now version 3" % first_model.id in capsys.readouterr().out
    assert sorted(v for v in os.listdir(serving) if v.isdigit()) == ["1", "2", "3"]
    assert not [n for n in os.listdir(serving) if n.startswith(".tmp-")]
    assert filecmp.cmp(os.path.join(serving, "3", "saved_model.pb"),
                       os.path.join(first_model.serving_dir, "saved_model.pb"), shallow=False)
    assert os.path.isdir(os.path.join(serving, "1", "assets.extra")) == \
        os.path.isdir(os.path.join(serving, "3", "assets.extra"))  # served as before
    metadata = Metadata(os.path.join(lifecycle["home"], "metadata.sqlite"))
    assert next_version(serving, metadata) == 4  # versions only grow after a rollback

    # The first model is the oldest blessed one: nothing further back, nothing changes.
    assert main(["rollback", "penguin", "--home", lifecycle["home"]]) == 1
    assert "nothing to roll back to" in capsys.readouterr().err
    assert sorted(v for v in os.listdir(serving) if v.isdigit()) == ["1", "2", "3"]


# -- bad input: the step fails naming what is wrong; nothing is published -----------------
def _with_parameter(component_id: str, **parameters):
    from pipelines import registry

    pipeline = registry.load("penguin")
    pipeline.component(component_id).parameters.update(parameters)
    return pipeline


def _run(pipeline, home, **params):
    from pipelines.local_runner import run_pipeline

    return run_pipeline(pipeline, home=home, params=params, echo=lambda line: None)


def _live(home: str, artifact_type) -> int:
    return len(Metadata(os.path.join(home, "metadata.sqlite")).artifacts_of_type(artifact_type))


def _broken_module(tmp_path, name: str, edit) -> ExternalPath:
    with open(PENGUIN_MODULE) as fh:
        source = fh.read()
    edited = edit(source)
    assert edited != source, f"{name}: the edit matches nothing in {PENGUIN_MODULE}"
    path = tmp_path / f"{name}.py"
    path.write_text(edited)
    return ExternalPath(str(path))


def test_module_without_run_fn_fails_the_trainer_naming_the_module(lifecycle, tmp_path):
    module = _broken_module(tmp_path, "no_run_fn", lambda s: s.replace("def run_fn(", "def fit("))
    models = _live(lifecycle["home"], Model)
    run = _run(_with_parameter("Trainer", module_file=module), lifecycle["home"])
    assert not run.ok and run.steps["Trainer"].status == "failed"
    assert f"user module {module} defines no function 'run_fn'" in run.failure
    assert _live(lifecycle["home"], Model) == models


def test_run_fn_that_exports_nothing_fails_the_trainer(lifecycle, tmp_path):
    module = _broken_module(tmp_path, "no_export", lambda s: s.replace(
        "    export_serving_model(model, fn_args,", "    (lambda *a, **k: None)(model, fn_args,"))
    models = _live(lifecycle["home"], Model)
    run = _run(_with_parameter("Trainer", module_file=module), lifecycle["home"])
    assert run.steps["Trainer"].status == "failed"
    assert f"run_fn in {module} exported no SavedModel" in run.failure
    assert _live(lifecycle["home"], Model) == models
    assert not os.listdir(os.path.join(lifecycle["home"], "staging"))


def test_preprocessing_fn_that_raises_fails_the_transform(lifecycle, tmp_path):
    module = _broken_module(tmp_path, "bad_preprocessing", lambda s: s + (
        "\n\ndef preprocessing_fn(inputs):\n"
        "    return {'beak': inputs['beak_colour']}\n"))
    graphs = _live(lifecycle["home"], TransformGraph)
    run = _run(_with_parameter("Transform", module_file=module), lifecycle["home"])
    assert run.steps["Transform"].status == "failed"
    assert f"preprocessing_fn in {module} raised KeyError" in run.failure
    assert "beak_colour" in run.failure
    assert "Trainer" in run.not_run
    assert _live(lifecycle["home"], TransformGraph) == graphs


def test_transform_preprocessing_fn_loads_in_a_beam_worker_of_another_process(tmp_path):
    """Multi-process Beam (--direct_running_mode=multi_processing) unpickles the
    preprocessing_fn in worker processes, which cannot import the user module by its
    generated name: Transform makes Beam pickle the module's functions by value."""
    import subprocess
    import sys

    from apache_beam.internal import pickler

    from components.transform import _checked_preprocessing_fn

    module = tmp_path / "doubling_module.py"
    module.write_text("FACTOR = 2\n\n\ndef preprocessing_fn(inputs):\n"
                      "    return {'y': inputs['x'] * FACTOR}\n")
    preprocessing_fn = _checked_preprocessing_fn(str(module))  # registers it by value
    worker = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom apache_beam.internal import pickler\n"
         "print(pickler.loads(sys.stdin.buffer.read())({'x': 21}))"],
        input=pickler.dumps(preprocessing_fn), capture_output=True,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
    assert worker.returncode == 0, worker.stderr.decode()[-2000:]
    assert worker.stdout.decode().strip() == "{'y': 42}"


@pytest.mark.parametrize("parameters, message", [
    ({"label_key": "beak_colour"}, "label_key 'beak_colour' is not a feature of the schema"),
    ({"metrics": ["ExampleCount", "SparseCategoricalAccuracy", "Accurracy"]},
     "metric 'Accurracy' in the eval config is unknown"),
    ({"label_key": "species", "preprocessing_function_names": []},
     "label_key 'species' is a string feature"),
])
def test_eval_config_naming_an_unknown_label_or_metric_fails_the_evaluator(
        lifecycle, parameters, message):
    blessings = _live(lifecycle["home"], ModelBlessing)
    run = _run(_with_parameter("Evaluator", **parameters), lifecycle["home"])
    assert run.steps["Evaluator"].status == "failed"
    assert message in run.failure
    assert "Pusher" in run.not_run
    assert _live(lifecycle["home"], ModelBlessing) == blessings


# -- Tuner ----------------------------------------------------------------------------------
def test_tuner_finds_hyperparameters_that_the_trainer_uses(lifecycle):
    import json

    from components.trainer import Trainer
    from components.tuner import Tuner
    from pipelines import registry
    from pipelines.pipeline import Pipeline

    base = registry.load("penguin")
    transform = base.component("Transform")
    tuner = Tuner(examples=transform.outputs.transformed_examples,
                  transform_graph=transform.outputs.transform_graph,
                  module_file=ExternalPath(PENGUIN_MODULE), train_steps=20, eval_steps=2,
                  custom_config={"max_trials": 2})
    trainer = Trainer(id="TunedTrainer", examples=transform.outputs.transformed_examples,
                      transform_graph=transform.outputs.transform_graph,
                      hyperparameters=tuner.outputs.best_hyperparameters,
                      module_file=ExternalPath(PENGUIN_MODULE), train_steps=50)
    components = [c for c in base.components
                  if c.id in ("ExampleGen", "ImportSchemaGen", "StatisticsGen",
                              "ExampleValidator", "Transform")]
    run = _run(Pipeline("penguin", components + [tuner, trainer], parameters=base.parameters),
               lifecycle["home"])
    assert run.ok, run.summary()
    assert run.executed() == ["Tuner", "TunedTrainer"]
    best = run.steps["Tuner"].outputs["best_hyperparameters"]
    with open(best.file) as fh:
        values = json.load(fh)
    assert set(values) == {"learning_rate", "hidden_units", "hidden_layers"}
    assert 0.0 <= best.best_score <= 1.0
    trainer_step = run.steps["TunedTrainer"]
    assert_trained_with(values, trainer_step.log_path,
                        trainer_step.outputs["model"].serving_dir, train_steps=50)


def assert_trained_with(values: dict, log_path: str, serving_dir: str, train_steps: int):
    """The Trainer used exactly `values`: its log states them, and the exported model has
    that many hidden Dense layers of that width, and that learning rate."""
    import tf_keras

    with open(log_path) as fh:
        logged = [line.split(": ", 1)[1].rstrip("\n") for line in fh
                  if "training " in line and " with hyperparameters " in line]
    assert logged == [f"training {train_steps} steps with hyperparameters {values}"]
    model = tf_keras.models.load_model(serving_dir)
    hidden = [layer.units for layer in model.layers
              if isinstance(layer, tf_keras.layers.Dense) and layer.name != "scores"]
    assert hidden == [values["hidden_units"]] * values["hidden_layers"]
    assert float(model.optimizer.learning_rate) == pytest.approx(values["learning_rate"])
