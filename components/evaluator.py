"""Evaluator: TensorFlow Model Analysis of a candidate model, against a baseline if any."""
from __future__ import annotations

import os
from typing import Any

from components.artifacts import Examples, Model, ModelBlessing, ModelEvaluation, Schema
from components.base import (Component, ExternalPath, Input, OptionalInput, Output, Parameter,
                             Step)

CANDIDATE, BASELINE = "candidate", "baseline"
DEFAULT_BEAM_ARGS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
BLESSED_FILE, NOT_BLESSED_FILE = "BLESSED", "NOT_BLESSED"


class EvalConfigError(ValueError):
    """The evaluation is configured wrongly (unknown label, metric or slice feature)."""


class Evaluator(Component):
    """Computes metrics of the model on the raw evaluation examples, overall and per slice,
    checks them against value thresholds and (when a baseline model is given) change
    thresholds, and blesses the model if every threshold holds. A first run without a
    baseline is judged on value thresholds alone. The metrics per slice are written to
    the evaluation's report.txt; the verdict and its reason to the blessing's."""

    examples: Input[Examples]
    model: Input[Model]
    baseline_model: OptionalInput[Model]
    schema: OptionalInput[Schema]
    evaluation: Output[ModelEvaluation]
    blessing: Output[ModelBlessing]
    label_key: Parameter[str] = "label"
    example_splits: Parameter[list[str]] = ["eval"]
    slice_features: Parameter[list[list[str]]] = []  # the overall slice is always computed
    metrics: Parameter[list[str]] = ["ExampleCount", "SparseCategoricalAccuracy"]
    threshold_metric: Parameter[str] = "SparseCategoricalAccuracy"
    accuracy_threshold: Parameter[float] = 0.6  # lower bound of threshold_metric, overall
    change_threshold: Parameter[float] = 0.0  # how much worse than the baseline it may be
    signature_name: Parameter[str] = "serving_default"
    prediction_key: Parameter[str] = ""  # which output, when the signature has several
    # Signatures turning serialized examples into transformed features (e.g. the label
    # as an integer): "transform_features" for models exported like the penguin module.
    preprocessing_function_names: Parameter[list[str]] = []
    # An EvalConfig text proto replacing the typed parameters above (model specs' names
    # and baseline flags are set here).
    eval_config_file: Parameter[ExternalPath] = ExternalPath("")

    def execute(self, step: Step) -> None:
        import apache_beam as beam
        import tensorflow_model_analysis as tfma
        from tfx_bsl.tfxio import tf_example_record

        has_baseline = step.baseline_model is not None
        eval_config = self.eval_config(step, has_baseline)
        _check_eval_config(eval_config, step)
        models = [_shared_model(tfma, step.model, eval_config, CANDIDATE)]
        if has_baseline:
            models.append(_shared_model(tfma, step.baseline_model, eval_config, BASELINE))
        schema = _read_schema(step.schema.file) if step.schema is not None else None

        output_path = step.evaluation.uri
        patterns = [step.examples.file_pattern(split) for split in step.example_splits]
        options = beam.options.pipeline_options.PipelineOptions(
            DEFAULT_BEAM_ARGS + list(step.beam_args))
        with beam.Pipeline(options=options) as pipeline:
            sources = []
            for split, pattern in zip(step.example_splits, patterns):
                tfxio = tf_example_record.TFExampleRecord(
                    file_pattern=pattern, schema=schema,
                    raw_record_column_name=tfma.ARROW_INPUT_COLUMN,
                    telemetry_descriptors=["pipewright"])
                sources.append(pipeline | f"Read[{split}]" >> tfxio.BeamSource())
            adapter_config = None
            if schema is not None:
                from tfx_bsl.public.tfxio import TensorAdapterConfig
                adapter_config = TensorAdapterConfig(arrow_schema=tfxio.ArrowSchema(),
                                                     tensor_representations=tfxio.TensorRepresentations())
            _ = (sources | "Flatten" >> beam.Flatten()
                 | "Evaluate" >> tfma.ExtractEvaluateAndWriteResults(
                     eval_shared_model=models if has_baseline else models[0],
                     eval_config=eval_config, output_path=output_path,
                     tensor_adapter_config=adapter_config, schema=schema))

        validation = tfma.load_validation_result(output_path)
        blessed = bool(validation.validation_ok)
        reason = _verdict(validation, has_baseline)
        report = _metrics_report(tfma.load_metrics(output_path), has_baseline)
        baseline_id = step.baseline_model.id if has_baseline else None
        header = (f"Evaluation of model {step.model.id} "
                  + (f"against baseline model {baseline_id}" if has_baseline else
                     "(no baseline: value thresholds only)")
                  + f" on split(s) {', '.join(step.example_splits)}\n"
                  + f"{'BLESSED' if blessed else 'NOT BLESSED'}: {reason}\n\n")
        with open(step.evaluation.path("report.txt"), "w") as fh:
            fh.write(header + report)
        with open(step.blessing.path("report.txt"), "w") as fh:
            fh.write(header)
        open(step.blessing.path(BLESSED_FILE if blessed else NOT_BLESSED_FILE), "w").close()
        step.evaluation.set(baseline_model_id=baseline_id)
        step.blessing.set(blessed=int(blessed), model_id=step.model.id,
                          baseline_model_id=baseline_id, reason=reason)
        step.log.info("%s: %s", "blessed" if blessed else "not blessed", reason)

    # -- the EvalConfig -------------------------------------------------------------------
    def eval_config(self, step: Step, has_baseline: bool):
        """The EvalConfig: from eval_config_file, else from the typed parameters."""
        import tensorflow_model_analysis as tfma

        if step.eval_config_file:
            config = _read_eval_config(step.eval_config_file)
        else:
            config = tfma.EvalConfig(
                model_specs=[tfma.ModelSpec(
                    label_key=step.label_key, signature_name=step.signature_name,
                    prediction_key=step.prediction_key,
                    preprocessing_function_names=list(step.preprocessing_function_names))],
                slicing_specs=[tfma.SlicingSpec()] + [
                    tfma.SlicingSpec(feature_keys=list(keys)) for keys in step.slice_features],
                metrics_specs=[tfma.MetricsSpec(metrics=[
                    tfma.MetricConfig(class_name=name, threshold=self._threshold(
                        tfma, step) if name == step.threshold_metric else None)
                    for name in step.metrics])])
            if step.threshold_metric not in step.metrics:
                raise EvalConfigError(f"{self.id}: threshold_metric {step.threshold_metric!r} "
                                      f"is not among the metrics {step.metrics}")
        if not config.model_specs:
            raise EvalConfigError(f"{self.id}: the EvalConfig has no model_specs")
        candidate = config.model_specs[0]
        del config.model_specs[1:]
        candidate.name, candidate.is_baseline = CANDIDATE, False
        if has_baseline:
            baseline = config.model_specs.add()
            baseline.CopyFrom(candidate)
            baseline.name, baseline.is_baseline = BASELINE, True
        else:
            _drop_change_thresholds(config)
        return config

    @staticmethod
    def _threshold(tfma, step: Step):
        # A tiny slack so "no worse than the baseline" holds for an identical model.
        allowed_drop = max(step.change_threshold, 1e-10)
        return tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(
                lower_bound={"value": step.accuracy_threshold}),
            change_threshold=tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                absolute={"value": -allowed_drop}))


def _read_eval_config(path: str):
    import tensorflow_model_analysis as tfma
    from google.protobuf import text_format

    if not os.path.isfile(path):
        raise EvalConfigError(f"eval config file {path} does not exist")
    with open(path) as fh:
        try:
            return text_format.Parse(fh.read(), tfma.EvalConfig())
        except text_format.ParseError as exc:
            raise EvalConfigError(f"eval config file {path} is not an EvalConfig text "
                                  f"proto: {exc}") from exc


def _drop_change_thresholds(config) -> None:
    """Without a baseline there is nothing to change against."""
    for spec in config.metrics_specs:
        for metric in spec.metrics:
            if metric.HasField("threshold"):
                metric.threshold.ClearField("change_threshold")
            for per_slice in metric.per_slice_thresholds:
                per_slice.threshold.ClearField("change_threshold")
        for threshold in spec.thresholds.values():
            threshold.ClearField("change_threshold")


def _check_eval_config(config, step: Step) -> None:
    """Fails early, naming the field, on what TFMA would otherwise report obscurely or
    silently ignore: an unknown metric, label or slice feature, a missing signature."""
    import tensorflow as tf

    for spec in config.metrics_specs:
        for metric in spec.metrics:
            if not _known_metric(metric):
                raise EvalConfigError(
                    f"metric {metric.class_name!r} in the eval config is unknown: it is "
                    + (f"not defined in module {metric.module!r}" if metric.module else
                       "neither a TFMA metric (tfma.metrics) nor a Keras metric "
                       "(tf_keras.metrics)"))
    raw_types = _raw_feature_types(step)
    raw_features = set(raw_types)
    candidate = config.model_specs[0]
    signatures = [candidate.signature_name or "serving_default",
                  *candidate.preprocessing_function_names]
    models = [(step.model, "model")]
    if step.baseline_model is not None:
        models.append((step.baseline_model, "baseline model"))
    for artifact, role in models:
        loaded = tf.saved_model.load(artifact.serving_dir)
        missing = [name for name in signatures if name not in loaded.signatures]
        if missing:
            raise EvalConfigError(f"{role} {artifact.id} ({artifact.serving_dir}) has no "
                                  f"signature {missing}; it has {sorted(loaded.signatures)}")
        if role == "model":
            model = loaded
    transformed = set()
    for name in candidate.preprocessing_function_names:
        transformed |= set(model.signatures[name].structured_outputs)
    if not candidate.label_key:
        raise EvalConfigError("the eval config names no label_key")
    if candidate.label_key not in raw_features | transformed:
        raise EvalConfigError(
            f"label_key {candidate.label_key!r} is not a feature of the examples "
            f"{step.examples.uri} ({sorted(raw_features)})"
            + (f" nor an output of {list(candidate.preprocessing_function_names)} "
               f"({sorted(transformed)})" if transformed else ""))
    if candidate.label_key not in transformed and raw_types[candidate.label_key] == "BYTES":
        raise EvalConfigError(
            f"label_key {candidate.label_key!r} is a string feature of the examples; metrics "
            f"need class indices: name a model signature that maps it (e.g. "
            f"preprocessing_function_names=['transform_label']; model signatures: "
            f"{sorted(model.signatures)})")
    for slicing in config.slicing_specs:
        unknown = sorted(set(slicing.feature_keys) - raw_features - transformed)
        if unknown:
            raise EvalConfigError(f"slice feature(s) {unknown} are not features of the "
                                  f"examples {step.examples.uri} ({sorted(raw_features)})")


def _known_metric(metric) -> bool:
    import importlib

    import tensorflow_model_analysis as tfma
    import tf_keras

    if metric.module:
        try:
            return hasattr(importlib.import_module(metric.module), metric.class_name)
        except ImportError:
            return False
    return hasattr(tfma.metrics, metric.class_name) or hasattr(tf_keras.metrics,
                                                                metric.class_name)


def _raw_feature_types(step: Step) -> dict[str, str]:
    """Feature name -> BYTES, INT or FLOAT: from the schema, else from the first example."""
    if step.schema is not None:
        from tensorflow_metadata.proto.v0 import schema_pb2

        return {feature.name: schema_pb2.FeatureType.Name(feature.type)
                for feature in _read_schema(step.schema.file).feature}
    import glob

    import tensorflow as tf

    files = sorted(f for split in step.example_splits
                   for f in glob.glob(step.examples.file_pattern(split)))
    if not files:
        raise ValueError(f"no examples in {step.examples.uri} for split(s) "
                         f"{step.example_splits}")
    kinds = {"bytes_list": "BYTES", "int64_list": "INT", "float_list": "FLOAT"}
    for record in tf.data.TFRecordDataset(files[:1], compression_type="GZIP").take(1):
        features = tf.train.Example.FromString(record.numpy()).features.feature
        return {name: kinds.get(value.WhichOneof("kind"), "?") for name, value in features.items()}
    raise ValueError(f"{files[0]} holds no examples")


def _shared_model(tfma, model: Model, eval_config, name: str):
    # include_default_metrics=False: the model's compiled loss and metrics would make TFMA
    # reload the model in every metrics combiner; the EvalConfig names what to compute.
    return tfma.default_eval_shared_model(eval_saved_model_path=model.serving_dir,
                                          model_name=name, eval_config=eval_config,
                                          include_default_metrics=False)


def _read_schema(path: str):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    with open(path) as fh:
        return text_format.Parse(fh.read(), schema_pb2.Schema())


# -- reports ------------------------------------------------------------------------------
def _verdict(validation, has_baseline: bool) -> str:
    if validation.validation_ok:
        return ("every threshold holds" + (", including the change against the baseline"
                                           if has_baseline else ""))
    failures = []
    for per_slice in validation.metric_validations_per_slice:
        where = _slice_name(per_slice.slice_key)
        for failure in per_slice.failures:
            failures.append(f"{failure.metric_key.name}"
                            f"{' (change vs baseline)' if failure.metric_key.is_diff else ''} "
                            f"= {failure.metric_value.double_value.value:.4f} on {where}, "
                            f"threshold {_threshold_text(failure.metric_threshold)}")
    if validation.missing_slices:
        failures.append(f"slices without data: {len(validation.missing_slices)}")
    return "; ".join(failures) or "validation failed"


def _threshold_text(threshold) -> str:
    from google.protobuf import text_format
    return text_format.MessageToString(threshold, as_one_line=True)


def _slice_name(slice_key) -> str:
    parts = []
    for single in slice_key.single_slice_keys:
        value = getattr(single, single.WhichOneof("kind"))
        parts.append(f"{single.column}={value.decode() if isinstance(value, bytes) else value}")
    return ", ".join(parts) or "Overall"


def _metric_value(value) -> Any:
    kind = value.WhichOneof("type")
    if kind == "double_value":
        return value.double_value.value
    return None  # confusion matrices and other structured values are not tabulated


def _metrics_report(metrics_for_slices, has_baseline: bool) -> str:
    """A table: one row per slice and metric; candidate, baseline and their difference."""
    rows = []
    for metrics in metrics_for_slices:
        where = _slice_name(metrics.slice_key)
        table: dict[str, dict[str, Any]] = {}
        for entry in metrics.metric_keys_and_values:
            value = _metric_value(entry.value)
            if value is None:
                continue
            column = "diff" if entry.key.is_diff else (entry.key.model_name or CANDIDATE)
            table.setdefault(entry.key.name, {})[column] = value
        for name, values in sorted(table.items()):
            rows.append((where, name, values.get(CANDIDATE), values.get(BASELINE),
                         values.get("diff")))
    rows.sort(key=lambda r: (r[0] != "Overall", r[0], r[1]))
    header = ("slice", "metric", CANDIDATE) + ((BASELINE, "change") if has_baseline else ())
    lines = [header]
    for where, name, candidate, baseline, diff in rows:
        cells = (where, name, _number(candidate))
        if has_baseline:
            cells += (_number(baseline), _number(diff, signed=True))
        lines.append(cells)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in lines) + "\n"


def _number(value, signed: bool = False) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and not signed:
        return str(int(value))
    return f"{value:+.4f}" if signed else f"{value:.4f}"
