"""Evaluator: TensorFlow Model Analysis of a candidate model, against a baseline if any."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from components.artifacts import (Examples, Model, ModelBlessing, ModelEvaluation, PushedModel,
                                  Schema)
from components.beam_options import pipeline_options
from components.base import (Component, ExternalPath, Input, OptionalInput, Output, Parameter,
                             Step)

CANDIDATE, BASELINE = "candidate", "baseline"
BLESSED_FILE, NOT_BLESSED_FILE = "BLESSED", "NOT_BLESSED"
NO_THRESHOLDS = "no thresholds configured"
CHANGE_SKIPPED = "no baseline: change thresholds skipped"


class EvalConfigError(ValueError):
    """The evaluation is configured wrongly (unknown label, metric or slice feature, model
    specs the Evaluator cannot honour as written); the message names the field."""


@dataclass
class EvalPlan:
    """The EvalConfig TFMA runs, and what was set aside to get it (nothing but change
    thresholds, and only when there is no baseline)."""

    config: Any  # tfma.EvalConfig
    candidate_name: str
    baseline_name: str | None  # None without a baseline model
    change_thresholds_skipped: bool  # the config had change thresholds; no baseline to apply them
    has_thresholds: bool  # any threshold left to check in `config`


class Evaluator(Component):
    """Computes metrics of the model on the raw evaluation examples, overall and per slice,
    checks them against value thresholds and (when a baseline model is given) change
    thresholds, and blesses the model if every threshold holds. The metrics per slice are
    written to the evaluation's report.txt; the verdict and its reason to the blessing's.

    The EvalConfig is honoured as written or rejected (EvalConfigError naming the field),
    never silently cut down:
      * model_specs: exactly one candidate spec, and at most one more with
        `is_baseline: true`. A baseline spec must equal the candidate spec apart from its
        name (the baseline, the model being served, is a model of the same step and is
        evaluated the same way); one that differs is rejected, naming the fields. Names are kept as written
        ("candidate" / "baseline" when empty). Without a baseline spec, a baseline model
        is evaluated with a copy of the candidate spec named "baseline" (as TFX does).
      * Without a baseline model (a first push) the baseline spec and every change
        threshold are set aside, as TFMA's update_eval_config_with_defaults(has_baseline=
        False) does; a config whose only thresholds are change thresholds then blesses
        the model (TFMA's rubber stamp), and the report says change thresholds were skipped.
      * A config with no threshold at all blesses nothing ("no thresholds configured",
        TFMA's ValidationResult.missing_thresholds), baseline or not.
      * Thresholds gate the slices TFMA applies them to: a MetricConfig's `threshold` gates
        every slice, `per_slice_thresholds` the slices named. The typed parameters below
        gate the overall slice only (their thresholds are per_slice_thresholds on the
        overall SlicingSpec); a config file is taken as written.

    `baseline_pushed_model`, the baseline's record in the serving directory, lets the
    report say which version serves the baseline; it must be the push of `baseline_model`."""

    examples: Input[Examples]
    model: Input[Model]
    baseline_model: OptionalInput[Model]
    baseline_pushed_model: OptionalInput[PushedModel]
    schema: OptionalInput[Schema]
    evaluation: Output[ModelEvaluation]
    blessing: Output[ModelBlessing]
    label_key: Parameter[str] = "label"
    example_splits: Parameter[list[str]] = ["eval"]
    slice_features: Parameter[list[list[str]]] = []  # the overall slice is always computed
    metrics: Parameter[list[str]] = ["ExampleCount", "SparseCategoricalAccuracy"]
    threshold_metric: Parameter[str] = "SparseCategoricalAccuracy"
    # Lower bound of threshold_metric on the overall slice (slices are reported, not gated).
    accuracy_threshold: Parameter[float] = 0.6
    # How much lower than the baseline's threshold_metric may be, on the overall slice.
    change_threshold: Parameter[float] = 0.0
    signature_name: Parameter[str] = "serving_default"
    prediction_key: Parameter[str] = ""  # which output, when the signature has several
    # Signatures turning serialized examples into transformed features (e.g. the label
    # as an integer): "transform_features" for models exported like the penguin module.
    preprocessing_function_names: Parameter[list[str]] = []
    # An EvalConfig text proto replacing the typed parameters above, honoured as written
    # (see the class docstring for its model_specs).
    eval_config_file: Parameter[ExternalPath] = ExternalPath("")

    def execute(self, step: Step) -> None:
        import apache_beam as beam
        import tensorflow_model_analysis as tfma
        from tfx_bsl.tfxio import tf_example_record

        has_baseline = step.baseline_model is not None
        baseline_push = _baseline_push(step)
        plan = self.eval_plan(step, has_baseline)
        eval_config = plan.config
        _check_eval_config(eval_config, step)
        # Rubber stamp (TFMA): with no baseline, a config left without thresholds once its
        # change thresholds are set aside validates OK. Never for a config that had none.
        models = [_shared_model(tfma, step.model, eval_config, plan.candidate_name,
                                rubber_stamp=plan.change_thresholds_skipped)]
        if has_baseline:
            models.append(_shared_model(tfma, step.baseline_model, eval_config,
                                        plan.baseline_name))
        schema = _read_schema(step.schema.file) if step.schema is not None else None

        output_path = step.evaluation.uri
        patterns = [step.examples.file_pattern(split) for split in step.example_splits]
        options = pipeline_options(step.beam_args, step.log)
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
        reason = _verdict(validation, plan)
        report = _metrics_report(tfma.load_metrics(output_path), plan)
        baseline_id = step.baseline_model.id if has_baseline else None
        baseline_version = baseline_push.pushed_version if baseline_push is not None else None
        header = (f"Evaluation of model {step.model.id} "
                  + (_baseline_text(step.baseline_model, baseline_push) if has_baseline else
                     "(no baseline: first push; value thresholds only, change thresholds "
                     "skipped)")
                  + f" on split(s) {', '.join(step.example_splits)}\n"
                  + f"{'BLESSED' if blessed else 'NOT BLESSED'}: {reason}\n\n")
        with open(step.evaluation.path("report.txt"), "w") as fh:
            fh.write(header + report)
        with open(step.blessing.path("report.txt"), "w") as fh:
            fh.write(header)
        open(step.blessing.path(BLESSED_FILE if blessed else NOT_BLESSED_FILE), "w").close()
        step.evaluation.set(baseline_model_id=baseline_id, baseline_version=baseline_version)
        step.blessing.set(blessed=int(blessed), model_id=step.model.id,
                          baseline_model_id=baseline_id, baseline_version=baseline_version,
                          reason=reason)
        step.log.info("%s: %s", "blessed" if blessed else "not blessed", reason)

    # -- the EvalConfig -------------------------------------------------------------------
    def eval_plan(self, step: Step, has_baseline: bool) -> EvalPlan:
        """The EvalConfig from eval_config_file, else from the typed parameters, checked
        and completed for this run (see the class docstring)."""
        if step.eval_config_file:
            config = _read_eval_config(step.eval_config_file)
        else:
            config = self.typed_eval_config(step)
        return plan_eval_config(config, has_baseline, where=self.id)

    def typed_eval_config(self, step: Step):
        """The EvalConfig the typed parameters describe: their thresholds gate the overall
        slice only."""
        import tensorflow_model_analysis as tfma

        if step.threshold_metric not in step.metrics:
            raise EvalConfigError(f"{self.id}: threshold_metric {step.threshold_metric!r} "
                                  f"is not among the metrics {step.metrics}")
        metrics = []
        for name in step.metrics:
            metric = tfma.MetricConfig(class_name=name)
            if name == step.threshold_metric:
                metric.per_slice_thresholds.add(slicing_specs=[tfma.SlicingSpec()],
                                                threshold=self._threshold(tfma, step))
            metrics.append(metric)
        return tfma.EvalConfig(
            model_specs=[tfma.ModelSpec(
                label_key=step.label_key, signature_name=step.signature_name,
                prediction_key=step.prediction_key,
                preprocessing_function_names=list(step.preprocessing_function_names))],
            slicing_specs=[tfma.SlicingSpec()] + [
                tfma.SlicingSpec(feature_keys=list(keys)) for keys in step.slice_features],
            metrics_specs=[tfma.MetricsSpec(metrics=metrics)])

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


def plan_eval_config(config, has_baseline: bool, where: str = "Evaluator") -> EvalPlan:
    """Checks `config`'s model specs and returns the config TFMA runs: unchanged, but for
    the baseline spec it gains (a baseline model and no baseline spec) or loses with every
    change threshold (no baseline model). Raises EvalConfigError naming the field."""
    import tensorflow_model_analysis as tfma

    config = _copy(config)
    specs = list(config.model_specs)
    candidates = [s for s in specs if not s.is_baseline]
    baselines = [s for s in specs if s.is_baseline]
    described = ", ".join(f"{s.name or '(unnamed)'}{' (is_baseline)' if s.is_baseline else ''}"
                          for s in specs)
    if len(candidates) != 1 or len(baselines) > 1:
        raise EvalConfigError(
            f"{where}: model_specs: the EvalConfig has {len(specs)} model spec(s)"
            + (f" [{described}]" if specs else "")
            + f" ({len(candidates)} candidate, {len(baselines)} with is_baseline); the "
            "Evaluator takes exactly one candidate spec and at most one baseline spec")
    candidate = candidates[0]
    candidate_name = candidate.name or CANDIDATE
    baseline_spec = baselines[0] if baselines else None
    if baseline_spec is not None:
        differing = _differing_fields(candidate, baseline_spec)
        if differing:
            raise EvalConfigError(
                f"{where}: model_specs: the baseline spec differs from the candidate spec in "
                f"{differing}; the baseline (the model being served) is evaluated like the "
                f"candidate: make these fields equal or drop the baseline spec")
        if (baseline_spec.name or BASELINE) == candidate_name:
            raise EvalConfigError(f"{where}: model_specs: the candidate and baseline specs "
                                  f"are both named {candidate_name!r}")
    known = {candidate_name} | ({baseline_spec.name or BASELINE} if baseline_spec else set())
    for i, metrics_spec in enumerate(config.metrics_specs):
        unknown = sorted(set(metrics_spec.model_names) - known)
        if unknown:
            raise EvalConfigError(f"{where}: metrics_specs[{i}].model_names names "
                                  f"{unknown}, which no model spec is named ({sorted(known)})")

    candidate.name = candidate_name
    skipped = False
    baseline_name = None
    if has_baseline:
        if baseline_spec is None:
            if candidate_name == BASELINE:
                raise EvalConfigError(f"{where}: model_specs: the candidate spec is named "
                                      f"{BASELINE!r}, the name the baseline model gets")
            baseline_spec = config.model_specs.add()
            baseline_spec.CopyFrom(candidate)
            baseline_spec.name, baseline_spec.is_baseline = BASELINE, True
        baseline_spec.name = baseline_spec.name or BASELINE
        baseline_name = baseline_spec.name
    else:
        skipped = tfma.utils.has_change_threshold(config)
        if baseline_spec is not None:
            # The baseline spec goes, and with it what only it was named in.
            name = baseline_spec.name or BASELINE
            config.model_specs.remove(baseline_spec)
            for metrics_spec in list(config.metrics_specs):
                kept = [n for n in metrics_spec.model_names if n != name]
                if metrics_spec.model_names and not kept:
                    config.metrics_specs.remove(metrics_spec)
                elif len(kept) != len(metrics_spec.model_names):
                    del metrics_spec.model_names[:]
                    metrics_spec.model_names.extend(kept)
        _drop_change_thresholds(config)
    _check_metrics_known(config)  # before TFMA instantiates them, failing obscurely
    left = tfma.metrics.metric_thresholds_from_metrics_specs(config.metrics_specs,
                                                             eval_config=config)
    return EvalPlan(config=config, candidate_name=candidate_name, baseline_name=baseline_name,
                    change_thresholds_skipped=skipped, has_thresholds=bool(left))


def _copy(message):
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _differing_fields(candidate, baseline) -> list[str]:
    a, b = _copy(candidate), _copy(baseline)
    for spec in (a, b):
        spec.ClearField("name")
        spec.ClearField("is_baseline")
    names = {f.name for f, _ in a.ListFields()} | {f.name for f, _ in b.ListFields()}
    return sorted(n for n in names if getattr(a, n) != getattr(b, n))


def _baseline_push(step: Step) -> PushedModel | None:
    """The baseline's push record, checked against the baseline model."""
    push = step.baseline_pushed_model
    if push is None:
        return None
    if step.baseline_model is None:
        raise ValueError(f"baseline_pushed_model {push.id} (model {push.model_id}) is given "
                         f"but no baseline_model")
    if push.model_id != step.baseline_model.id:
        raise ValueError(f"baseline_pushed_model {push.id} is the push of model "
                         f"{push.model_id}, not of the baseline model {step.baseline_model.id}")
    return push


def _baseline_text(baseline: Model, push: PushedModel | None) -> str:
    text = f"against baseline model {baseline.id}"
    if push is None:
        return text
    if not push.pushed or push.pushed_version is None:
        return text + f", not pushed to {push.pushed_destination}"
    return text + f", served as version {push.pushed_version} in {push.pushed_destination}"


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
    """Without a baseline there is nothing to change against: every change threshold goes,
    wherever it is (as TFMA's update_eval_config_with_defaults(has_baseline=False) does)."""
    def clear(threshold):
        threshold.ClearField("change_threshold")

    for spec in config.metrics_specs:
        for metric in spec.metrics:
            if metric.HasField("threshold"):
                clear(metric.threshold)
            for scoped in (*metric.per_slice_thresholds, *metric.cross_slice_thresholds):
                clear(scoped.threshold)
        for threshold in spec.thresholds.values():
            clear(threshold)
        for per_slice in spec.per_slice_thresholds.values():
            for scoped in per_slice.thresholds:
                clear(scoped.threshold)
        for cross_slice in spec.cross_slice_thresholds.values():
            for scoped in cross_slice.thresholds:
                clear(scoped.threshold)


def _check_eval_config(config, step: Step) -> None:
    """Fails early, naming the field, on what TFMA would otherwise report obscurely or
    silently ignore: an unknown metric, label or slice feature, a missing signature."""
    import tensorflow as tf

    _check_metrics_known(config)
    raw_types = _raw_feature_types(step)
    raw_features = set(raw_types)
    candidate = next(spec for spec in config.model_specs if not spec.is_baseline)
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


def _check_metrics_known(config) -> None:
    for spec in config.metrics_specs:
        for metric in spec.metrics:
            if not _known_metric(metric):
                raise EvalConfigError(
                    f"metric {metric.class_name!r} in the eval config is unknown: it is "
                    + (f"not defined in module {metric.module!r}" if metric.module else
                       "neither a TFMA metric (tfma.metrics) nor a Keras metric "
                       "(tf_keras.metrics)"))


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


def _shared_model(tfma, model: Model, eval_config, name: str, rubber_stamp: bool = False):
    # include_default_metrics=False: the model's compiled loss and metrics would make TFMA
    # reload the model in every metrics combiner; the EvalConfig names what to compute.
    return tfma.default_eval_shared_model(eval_saved_model_path=model.serving_dir,
                                          model_name=name, eval_config=eval_config,
                                          include_default_metrics=False,
                                          rubber_stamp=rubber_stamp)


def _read_schema(path: str):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    with open(path) as fh:
        return text_format.Parse(fh.read(), schema_pb2.Schema())


# -- reports ------------------------------------------------------------------------------
def _verdict(validation, plan: EvalPlan) -> str:
    skipped = f"; {CHANGE_SKIPPED}" if plan.change_thresholds_skipped else ""
    if validation.missing_thresholds:
        return NO_THRESHOLDS
    if validation.validation_ok:
        if not plan.has_thresholds:  # TFMA's rubber stamp: only change thresholds, skipped
            return f"{CHANGE_SKIPPED}; no value thresholds configured"
        return ("every threshold holds" + (", including the change against the baseline"
                                           if plan.baseline_name is not None else "") + skipped)
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
    return ("; ".join(failures) or "validation failed") + skipped


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


def _metrics_report(metrics_for_slices, plan: EvalPlan) -> str:
    """A table: one row per slice and metric; candidate, baseline and their difference."""
    has_baseline = plan.baseline_name is not None
    rows = []
    for metrics in metrics_for_slices:
        where = _slice_name(metrics.slice_key)
        table: dict[str, dict[str, Any]] = {}
        for entry in metrics.metric_keys_and_values:
            value = _metric_value(entry.value)
            if value is None:
                continue
            if entry.key.is_diff:
                column = "diff"
            elif entry.key.model_name == plan.baseline_name and has_baseline:
                column = BASELINE
            else:
                column = CANDIDATE
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
