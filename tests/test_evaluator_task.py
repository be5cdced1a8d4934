"""An Evaluator that fits the task: the task (binary, multiclass, regression) follows from
the label's schema or is declared, and gives the default metrics, the threshold metric and
its direction; typed thresholds gate the overall slice while other slices are reported,
and slice_thresholds gate the slices they name; a baseline that cannot score the day's
examples fails the step naming the model, the version serving it and the feature.

The runs use a tiny Keras model trained here on generated data (a second or two) and
exported with a serialized-tf.Example `serving_default` signature, and go through the real
launcher, ML Metadata, LatestPushedModel, Evaluator (TFMA) and Pusher."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from components.artifacts import Examples, Model, Schema
from components.base import Component, Input, Output, Param, Parameter, Step
from components.evaluator import (LOWER_IS_BETTER, EvalConfigError, Evaluator,
                                  ModelCannotScoreError, infer_task, parse_slice_thresholds)
from components.model_inputs import signature_needs
from components.pusher import Pusher
from components.resolver import LatestPushedModel
from pipelines.pipeline import Pipeline

ROWS = 600  # every 10th row is in the "small" group


class TinyData(Component):
    """Generated examples in the Examples layout (Split-train/, Split-eval/, gzip TFRecord
    of tf.Example) and their schema. x, extra ~ N(0, 1); group "small" for every 10th row,
    else "big". Binary label (INT, int_domain [0, 1]): x + extra/2 > 0 in the big group,
    the opposite in the small one (so a model is good overall and bad there). Regression
    label (FLOAT): 2x + extra/2 + N(0, 0.1). `with_extra=False` leaves out `extra`."""

    examples: Output[Examples]
    schema: Output[Schema]
    with_extra: Parameter[bool] = True
    regression: Parameter[bool] = False

    def execute(self, step: Step) -> None:
        import numpy as np
        import tensorflow as tf
        from google.protobuf import text_format
        from tensorflow_metadata.proto.v0 import schema_pb2

        rng = np.random.default_rng(7)
        for split in ("train", "eval"):
            os.makedirs(step.examples.split_uri(split))
            path = os.path.join(step.examples.split_uri(split), "data_tfrecord-00000-of-00001.gz")
            with tf.io.TFRecordWriter(path, options="GZIP") as writer:
                for i in range(ROWS):
                    x, extra = rng.normal(), rng.normal()
                    small = i % 10 == 0
                    feature = {"x": _floats(x), "group": _bytes(b"small" if small else b"big")}
                    if step.with_extra:
                        feature["extra"] = _floats(extra)
                    if step.regression:
                        feature["label"] = _floats(2 * x + extra / 2 + rng.normal(0, 0.1))
                    else:
                        positive = (x + extra / 2 > 0) != small
                        feature["label"] = tf.train.Feature(
                            int64_list=tf.train.Int64List(value=[int(positive)]))
                    writer.write(tf.train.Example(features=tf.train.Features(
                        feature=feature)).SerializeToString())
        step.examples.set(split_names=["train", "eval"])
        label_type = "FLOAT" if step.regression else "INT int_domain { min: 0 max: 1 }"
        text = "".join(
            f'feature {{ name: "{name}" type: {kind} presence {{ min_fraction: 1 }} '
            f'shape {{ dim {{ size: 1 }} }} }}\n'
            for name, kind in [("x", "FLOAT"), ("extra", "FLOAT"), ("group", "BYTES"),
                               ("label", label_type)]
            if name != "extra" or step.with_extra)
        schema = text_format.Parse(text, schema_pb2.Schema())
        with open(step.schema.file, "w") as fh:
            fh.write(text_format.MessageToString(schema))


def _floats(value: float):
    import tensorflow as tf
    return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))


def _bytes(value: bytes):
    import tensorflow as tf
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


class TinyKeras(Component):
    """A logistic (or linear) regression in plain tf_keras on x (and extra), exported with
    `serving_default`: examples (DT_STRING [batch], serialized tf.Example; x and extra
    required) -> probabilities [batch, 1] (or predictions [batch, 1])."""

    examples: Input[Examples]
    model: Output[Model]
    with_extra: Parameter[bool] = True
    regression: Parameter[bool] = False

    def execute(self, step: Step) -> None:
        import glob

        import tensorflow as tf
        import tf_keras

        tf_keras.utils.set_random_seed(1)
        names = ["x", "extra"] if step.with_extra else ["x"]
        spec = {name: tf.io.FixedLenFeature([1], tf.float32) for name in names}
        label = tf.io.FixedLenFeature([1], tf.float32 if step.regression else tf.int64)
        files = glob.glob(step.examples.file_pattern("train"))
        parsed = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP")
                           .batch(ROWS).map(lambda s: tf.io.parse_example(
                               s, {**spec, "label": label}))))
        inputs = {name: tf_keras.Input((1,), name=name) for name in names}
        joined = tf_keras.layers.Concatenate()(list(inputs.values()))
        output = tf_keras.layers.Dense(1, activation=None if step.regression else "sigmoid",
                                       name="predictions" if step.regression
                                       else "probabilities")(joined)
        model = tf_keras.Model(inputs, output)
        model.compile(optimizer=tf_keras.optimizers.Adam(0.1),
                      loss="mse" if step.regression else "binary_crossentropy")
        model.fit({n: parsed[n] for n in names}, tf.cast(parsed["label"], tf.float32),
                  epochs=40, batch_size=100, verbose=0)
        key = "predictions" if step.regression else "probabilities"

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(examples):
            return {key: model(tf.io.parse_example(examples, spec), training=False)}

        model.save(step.model.serving_dir, save_format="tf",
                   signatures={"serving_default": serve.get_concrete_function()})


def _tiny_pipeline(*evaluators: dict, regression: bool = False) -> Pipeline:
    """TinyData -> TinyKeras -> LatestPushedModel -> Evaluator(s) -> Pusher (blessed by the
    first Evaluator). Run parameter `with_extra` (default true)."""
    with_extra = Param("with_extra", bool, True)
    data = TinyData(with_extra=with_extra, regression=regression)
    train = TinyKeras(examples=data.outputs.examples, with_extra=with_extra,
                      regression=regression)
    baseline = LatestPushedModel(model=train.outputs.model, model_name="tiny")
    steps = [Evaluator(examples=data.outputs.examples, model=train.outputs.model,
                       baseline_model=baseline.outputs.baseline_model,
                       baseline_pushed_model=baseline.outputs.baseline_pushed_model,
                       schema=data.outputs.schema, **parameters)
             for parameters in evaluators]
    pusher = Pusher(model=train.outputs.model, model_blessing=steps[0].outputs.blessing,
                    model_name="tiny")
    return Pipeline("tiny", [data, train, baseline, *steps, pusher], parameters=[with_extra])


def _run(pipeline: Pipeline, home: str, **params):
    from pipelines.local_runner import run_pipeline

    return run_pipeline(pipeline, home=home, params=params, echo=lambda line: None)


def _read(artifact, name: str = "report.txt") -> str:
    with open(artifact.path(name)) as fh:
        return fh.read()


# -- the task and its thresholds, from the config alone ---------------------------------
def _schema(text: str):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    return text_format.Parse(text, schema_pb2.Schema())


def test_the_task_follows_from_the_label_s_schema_or_is_declared():
    assert infer_task("y", _schema('feature { name: "y" type: FLOAT }')) == "regression"
    assert infer_task("y", _schema('feature { name: "y" type: INT int_domain { min: 0 max: 1 } }')
                      ) == "binary"
    assert infer_task("y", _schema('feature { name: "y" type: INT bool_domain {} }')) == "binary"
    assert infer_task("y", _schema('feature { name: "y" type: INT int_domain { min: 0 max: 4 } }')
                      ) == "multiclass"
    assert infer_task("y", _schema('feature { name: "y" type: BYTES domain: "y" } '
                                   'string_domain { name: "y" value: "a" value: "b" }')
                      ) == "binary"
    penguin = _schema(open(os.path.join(os.path.dirname(__file__), "..", "schemas", "penguin",
                                        "schema.pbtxt")).read())
    assert infer_task("species", penguin) == "multiclass"
    assert infer_task("y", None, label_type="FLOAT") == "regression"
    assert infer_task("y", None, declared="binary", label_type="INT") == "binary"

    with pytest.raises(EvalConfigError, match=r"label 'y' \(INT\) has no domain .*declare it: "
                       r"task='binary'"):
        infer_task("y", _schema('feature { name: "y" type: INT }'))
    with pytest.raises(EvalConfigError, match=r"label 'y' is INT and there is no schema"):
        infer_task("y", None, label_type="INT")
    with pytest.raises(EvalConfigError, match=r"task 'ranking' is not one of"):
        infer_task("y", None, declared="ranking")


def _typed(task: str, **parameters):
    evaluator = Evaluator.__new__(Evaluator)
    evaluator.id = "Evaluator"
    values = {name: spec.default for name, spec in Evaluator.PARAMETERS.items()}
    values.update(parameters)
    return evaluator.typed_eval_config(SimpleNamespace(**values), task)


def _thresholds(config, class_name: str):
    (metric,) = [m for m in config.metrics_specs[0].metrics if m.class_name == class_name]
    return metric.per_slice_thresholds


def test_each_task_has_its_metrics_threshold_metric_and_direction():
    import tensorflow_model_analysis as tfma

    binary = _typed("binary", lower_bound=0.7)
    assert [m.class_name for m in binary.metrics_specs[0].metrics] == [
        "ExampleCount", "BinaryAccuracy", "AUC", "Precision", "Recall"]
    (overall,) = _thresholds(binary, "AUC")
    assert overall.threshold.change_threshold.direction == tfma.MetricDirection.HIGHER_IS_BETTER
    assert overall.threshold.change_threshold.absolute.value < 0  # may drop by the slack

    regression = _typed("regression", upper_bound=0.5, change_threshold=0.01)
    (overall,) = _thresholds(regression, "MeanSquaredError")
    assert overall.threshold.change_threshold.direction == tfma.MetricDirection.LOWER_IS_BETTER
    assert overall.threshold.change_threshold.absolute.value == pytest.approx(0.01)  # may rise
    assert overall.threshold.value_threshold.upper_bound.value == pytest.approx(0.5)
    assert not overall.threshold.value_threshold.HasField("lower_bound")
    assert "MeanAbsoluteError" in LOWER_IS_BETTER

    multiclass = _typed("multiclass", accuracy_threshold=0.6)  # the deprecated alias
    (overall,) = _thresholds(multiclass, "SparseCategoricalAccuracy")
    assert overall.threshold.value_threshold.lower_bound.value == pytest.approx(0.6)


def test_bound_parameters_say_what_they_bound():
    with pytest.raises(EvalConfigError, match=r"accuracy_threshold \(deprecated\) and "
                       r"lower_bound both bound AUC"):
        _typed("binary", accuracy_threshold=0.6, lower_bound=0.7)
    with pytest.raises(EvalConfigError, match=r"threshold_metric MeanSquaredError is "
                       r"LOWER_IS_BETTER: bound it with upper_bound"):
        _typed("regression", accuracy_threshold=0.6)
    with pytest.raises(EvalConfigError, match=r"lower_bound 0.9 is above upper_bound 0.1"):
        _typed("binary", lower_bound=0.9, upper_bound=0.1)
    with pytest.raises(EvalConfigError, match=r"threshold_metric 'AUC' is not among the "
                       r"metrics \['ExampleCount'\]"):
        _typed("binary", metrics=["ExampleCount"])


def test_slice_thresholds_gate_the_slices_they_name_in_the_metric_s_direction():
    import tensorflow_model_analysis as tfma

    binary = _typed("binary", lower_bound=0.7, slice_features=[["group"]],
                    slice_thresholds={"group=small": 0.5, "group=big, island=x": 0.6})
    overall, small, crossed = _thresholds(binary, "AUC")
    assert list(overall.slicing_specs) == [tfma.SlicingSpec()]
    assert dict(small.slicing_specs[0].feature_values) == {"group": "small"}
    assert small.threshold.value_threshold.lower_bound.value == pytest.approx(0.5)
    assert not small.threshold.HasField("change_threshold")
    # group=small is computed by slice_features; the crossed slice is added to be computed.
    assert [dict(s.feature_values) for s in binary.slicing_specs
            if s.feature_values] == [{"group": "big", "island": "x"}]

    regression = _typed("regression", slice_thresholds={"group=small": 2.0})
    _, small = _thresholds(regression, "MeanSquaredError")
    assert small.threshold.value_threshold.upper_bound.value == pytest.approx(2.0)

    with pytest.raises(EvalConfigError, match=r"slice_thresholds key 'small' is not a slice"):
        parse_slice_thresholds({"small": 0.5})
    with pytest.raises(EvalConfigError, match=r"slice_thresholds\['g=a'\] = 'high' is not"):
        parse_slice_thresholds({"g=a": "high"})


# -- runs --------------------------------------------------------------------------------
def test_required_features_are_read_from_the_signature(trained_penguin):
    needs = signature_needs(trained_penguin.model_dir, "serving_default")
    assert needs.parses_examples and needs.known
    raw = signature_needs(trained_penguin.model_dir, "serving_raw")
    assert not raw.parses_examples and "island" in raw.required
    with pytest.raises(KeyError, match=r"has no signature 'nope'"):
        signature_needs(trained_penguin.model_dir, "nope")


@pytest.fixture(scope="module")
def binary_runs(tmp_path_factory):
    """Run 1: a binary model on x and extra, first push. Run 2: the day's examples lack
    `extra` and so does the new model; the served run-1 model is the baseline."""
    home = str(tmp_path_factory.mktemp("tiny-home"))
    pipeline = _tiny_pipeline(
        dict(label_key="label", slice_features=[["group"]], lower_bound=0.7),
        dict(id="SliceGated", label_key="label", slice_features=[["group"]], lower_bound=0.7,
             slice_thresholds={"group=small": 0.5}))
    first = _run(pipeline, home)
    second = _run(pipeline, home, with_extra=False)
    return SimpleNamespace(home=home, first=first, second=second)


def test_a_binary_task_is_blessed_on_overall_auc_and_a_weak_slice_is_reported(binary_runs):
    run = binary_runs.first
    assert run.ok, run.summary()
    blessing = run.steps["Evaluator"].outputs["blessing"]
    assert blessing.blessed == 1, blessing.reason
    report = _read(run.steps["Evaluator"].outputs["evaluation"])
    assert "(binary task)" in report  # inferred from the label's int_domain [0, 1]
    rows = {tuple(line.split()[:2]): line.split()[2] for line in report.splitlines()
            if line.startswith(("Overall", "group="))}
    assert float(rows[("Overall", "auc")]) >= 0.7
    assert float(rows[("group=small", "auc")]) < 0.5
    assert {"binary_accuracy", "precision", "recall", "example_count"} <= {
        metric for _, metric in rows}
    assert ("Slices outside the overall bound auc >= 0.7 (reported, not gating; "
            "slice_thresholds gates a slice):\n  group=small: auc = ") in report
    assert run.steps["Pusher"].outputs["pushed_model"].pushed == 1


def test_a_declared_slice_threshold_gates(binary_runs):
    blessing = binary_runs.first.steps["SliceGated"].outputs["blessing"]
    assert blessing.blessed == 0
    assert "auc = " in blessing.reason and "on group=small" in blessing.reason
    assert "on Overall" not in blessing.reason and "on group=big" not in blessing.reason
    report = _read(binary_runs.first.steps["SliceGated"].outputs["evaluation"])
    assert "  none\n" in report  # group=small is gated here, so not listed as ungated


def test_a_baseline_that_cannot_score_the_examples_names_model_version_and_feature(
        binary_runs):
    first, second = binary_runs.first, binary_runs.second
    pushed = first.steps["Pusher"].outputs["pushed_model"]
    served = first.steps["TinyKeras"].outputs["model"]
    assert second.steps["LatestPushedModel"].outputs["baseline_model"].id == served.id
    assert second.steps["Evaluator"].status == "failed"
    message = second.failure
    assert ModelCannotScoreError.__name__ in message
    assert (f"baseline model {served.id}, served as version {pushed.pushed_version} in "
            f"{pushed.pushed_destination} cannot score the examples") in message
    assert "its signature 'serving_default' requires feature 'extra' (float32), which the " \
           "examples lack" in message
    assert "\\x" not in message and len(message) < 1500, message  # no serialized examples
    assert "Pusher" in second.not_run


def test_a_regression_task_is_bounded_from_above(tmp_path):
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.writers.eval_config_writer import load_eval_run

    run = _run(_tiny_pipeline(dict(label_key="label", slice_features=[["group"]],
                                   upper_bound=0.05), regression=True), str(tmp_path))
    assert run.ok, run.summary()
    evaluation = run.steps["Evaluator"].outputs["evaluation"]
    report = _read(evaluation)
    assert "(regression task)" in report  # inferred from the FLOAT label
    mse = float(next(line.split()[2] for line in report.splitlines()
                     if line.split()[:2] == ["Overall", "mean_squared_error"]))
    assert mse < 0.05
    assert run.steps["Evaluator"].outputs["blessing"].blessed == 1
    config = load_eval_run(evaluation.uri)[0]
    (metric,) = [m for m in config.metrics_specs[0].metrics if m.class_name == "MeanSquaredError"]
    (overall,) = metric.per_slice_thresholds
    assert overall.threshold.value_threshold.upper_bound.value == pytest.approx(0.05)
    assert "Slices outside the overall bound mean_squared_error <= 0.05" in report


def test_a_parse_failure_inside_tfma_names_the_model_not_the_bytes():
    """The fallback when the check before TFMA cannot tell (an example lacks a feature the
    schema declares): TensorFlow's own parse error, wrapped as TFMA wraps it."""
    import traceback

    import tensorflow as tf

    from components.evaluator import _tfma_failure
    from components.model_inputs import SignatureNeeds

    example = tf.train.Example(features=tf.train.Features(feature={"x": _floats(1.0)}))
    spec = {"x": tf.io.FixedLenFeature([1], tf.float32),
            "extra": tf.io.FixedLenFeature([1], tf.float32)}
    try:
        try:
            tf.io.parse_example([example.SerializeToString()], spec)
        except tf.errors.InvalidArgumentError as error:
            raise ValueError("Fail to call signature func with signature_name: "
                             "serving_default.") from error
    except ValueError as exc:
        raw = traceback.format_exc()
        needs = {"model 5": [SignatureNeeds("serving_default", {"x": "float32"}, True)],
                 "baseline model 3, served as version 1 in /srv/tiny": [
                     SignatureNeeds("serving_default", {"x": "float32", "extra": "float32"},
                                    True)]}
        failure = _tfma_failure(exc, raw, needs, "/artifacts/examples/7")
    assert isinstance(failure, ModelCannotScoreError)
    assert str(failure).startswith(
        "baseline model 3, served as version 1 in /srv/tiny cannot score the examples "
        "/artifacts/examples/7: feature 'extra' (float), which its signature requires")
    assert "model 5" not in str(failure) and "\\x" not in str(failure)
    assert "serialized" in raw or "Feature: extra" in raw  # the raw details stay in the log
