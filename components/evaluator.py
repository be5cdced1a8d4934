"""Evaluator: TensorFlow Model Analysis of a candidate model, against a baseline if any."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from typing import Any

from components.artifacts import (Examples, Model, ModelBlessing, ModelEvaluation, PushedModel,
                                  Schema)
from components.beam_options import beam_pipeline
from components.interruption import StepInterrupted
from components.base import (Component, ExternalPath, Input, OptionalInput, Output, Parameter,
                             Step)

CANDIDATE, BASELINE = "candidate", "baseline"
BLESSED_FILE, NOT_BLESSED_FILE = "BLESSED", "NOT_BLESSED"
NO_THRESHOLDS = "no thresholds configured"
CHANGE_SKIPPED = "no baseline: change thresholds skipped"

# The task's default metrics and threshold metric: a subset of the example configurations
# per problem type in TFMA's metrics guide (tensorflow/model-analysis g3doc/metrics.md:
# Regression, Binary Classification and Multi-class Classification Metrics). Class names
# of tfma.metrics or tf_keras.metrics.
TASKS = {
    "binary": (("ExampleCount", "BinaryAccuracy", "AUC", "Precision", "Recall"), "AUC"),
    "multiclass": (("ExampleCount", "SparseCategoricalAccuracy"), "SparseCategoricalAccuracy"),
    "regression": (("ExampleCount", "MeanSquaredError", "MeanAbsoluteError"),
                   "MeanSquaredError"),
}
# Metrics for which lower is better (tfma.MetricDirection.LOWER_IS_BETTER); every other
# metric is HIGHER_IS_BETTER. The same split as KerasTuner's infer_metric_direction:
# errors, losses and cross-entropies are minimised.
LOWER_IS_BETTER = frozenset({
    "MeanSquaredError", "MeanAbsoluteError", "MeanAbsolutePercentageError",
    "MeanSquaredLogarithmicError", "RootMeanSquaredError", "LogCoshError", "BinaryCrossentropy",
    "CategoricalCrossentropy", "SparseCategoricalCrossentropy", "Hinge", "SquaredHinge",
    "CategoricalHinge", "KLDivergence", "Poisson"})
METRICS_FILE = "metrics.json"  # the evaluation's metrics per slice, for tools (_metrics_json)
# Counts, which binarizing (one class's column) would split by class.
COUNT_METRICS = frozenset({"ExampleCount", "WeightedExampleCount"})
# A label with a schema domain of at most this many values is a class label.
MAX_CLASSES = 1000


class EvalConfigError(ValueError):
    """The evaluation is configured wrongly (unknown label, metric or slice feature, model
    specs the Evaluator cannot honour as written); the message names the field."""


class ModelCannotScoreError(ValueError):
    """A model (typically the served baseline) cannot score the examples: a feature its
    signature requires is missing from them, or has another type. The message names the
    model, the version serving it, the signature and the feature; raw details go to the
    step log."""


@dataclass
class EvalPlan:
    """The EvalConfig TFMA runs, and what was set aside to get it (nothing but change
    thresholds, and only when there is no baseline)."""

    config: Any  # tfma.EvalConfig
    candidate_name: str
    baseline_name: str | None  # None without a baseline model
    change_thresholds_skipped: bool  # the config had change thresholds; no baseline to apply them
    has_thresholds: bool  # any threshold left to check in `config`
    task: str = ""  # binary, multiclass or regression (typed parameters only)
    # Typed parameters only: (threshold metric class, lower bound, upper bound) of the
    # overall slice, against which the other slices are reported, and the slices (named
    # as in the reports, "feature=value") that slice_thresholds gate.
    overall_bound: tuple[str, float | None, float | None] | None = None
    gated_slices: tuple[str, ...] = ()


class Evaluator(Component):
    """Computes metrics of the model on the raw evaluation examples, overall and per slice,
    checks them against value thresholds and (when a baseline model is given) change
    thresholds, and blesses the model if every threshold holds. The metrics per slice are
    written to the evaluation's report.txt; the verdict and its reason to the blessing's.

    The task — "binary" or "multiclass" classification, or "regression" — is `task`, or
    follows from the label's feature in the schema: a FLOAT label is a regression target; an
    INT or BYTES label with a domain of 2 values (bool_domain, int_domain [0, 1], a
    string_domain of 2) is a binary class, of 3 to MAX_CLASSES values a multiclass one. A
    label the schema does not bound (no schema, or no domain) needs `task` (EvalConfigError
    naming the label otherwise). The task gives the default `metrics` and `threshold_metric`
    (TASKS: binary ExampleCount, BinaryAccuracy, AUC, Precision, Recall, gated on AUC;
    multiclass ExampleCount, SparseCategoricalAccuracy; regression ExampleCount,
    MeanSquaredError, MeanAbsoluteError, gated on MeanSquaredError), and the threshold's
    direction follows the threshold metric: LOWER_IS_BETTER for errors and losses
    (LOWER_IS_BETTER), HIGHER_IS_BETTER otherwise — so `change_threshold` is how much worse
    than the baseline the candidate may be, whichever way worse is. A binary classifier
    whose signature answers [batch, 2] scores (components.signatures) is measured on the
    second column, the positive class (TFMA BinarizationOptions class_ids [1]); a
    [batch, 1] or [batch] output is the positive class's probability as it is.

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
        every slice, `per_slice_thresholds` the slices named. The typed parameters'
        value and change thresholds (`lower_bound`, `upper_bound`, `change_threshold`)
        gate the overall slice only (per_slice_thresholds on the overall SlicingSpec); the
        other slices are computed and a slice outside the overall bounds is listed in
        report.txt, not gating. `slice_thresholds` gates a slice: {"feature=value" (or
        "f1=v1,f2=v2" for a crossed slice): the worst value of threshold_metric allowed
        there} — a lower bound for a HIGHER_IS_BETTER metric, an upper bound for a
        LOWER_IS_BETTER one; the slice is computed even when slice_features does not
        name its features, and a declared slice without examples fails validation (TFMA's
        missing_slices). A config file is taken as written.

    Before TFMA runs, every model's signatures (`signature_name` and the preprocessing
    functions) are checked against the features of the examples (the schema's, else the
    first example's; components.model_inputs): a required feature that is missing or of
    another type raises ModelCannotScoreError naming the model — for the baseline its id
    and the version serving it — the signature and the feature. A TFMA failure of the same
    kind caught only while running is reported the same way; its raw error goes to the
    step log.

    `baseline_pushed_model`, the baseline's record in the serving directory, lets the
    report say which version serves the baseline; it must be the push of `baseline_model`."""

    imports_tensorflow = True

    examples: Input[Examples]
    model: Input[Model]
    baseline_model: OptionalInput[Model]
    baseline_pushed_model: OptionalInput[PushedModel]
    schema: OptionalInput[Schema]
    evaluation: Output[ModelEvaluation]
    blessing: Output[ModelBlessing]
    label_key: Parameter[str] = "label"
    # "binary", "multiclass" or "regression"; "" infers it from the label's schema.
    task: Parameter[str] = ""
    example_splits: Parameter[list[str]] = ["eval"]
    slice_features: Parameter[list[list[str]]] = []  # the overall slice is always computed
    metrics: Parameter[list[str]] = []  # [] = the task's (TASKS)
    threshold_metric: Parameter[str] = ""  # "" = the task's (TASKS)
    # Bounds of threshold_metric on the overall slice (other slices are reported, not gated).
    lower_bound: Parameter[float | None] = None
    upper_bound: Parameter[float | None] = None
    # Deprecated alias of lower_bound (kept for pipelines written before `task`); giving
    # both, or using it with a LOWER_IS_BETTER threshold_metric, is an EvalConfigError.
    accuracy_threshold: Parameter[float | None] = None
    # How much worse than the baseline's threshold_metric the candidate's may be, on the
    # overall slice (in the metric's units; worse = lower or higher per its direction).
    change_threshold: Parameter[float] = 0.0
    # Slices that threshold_metric gates: {"feature=value[,feature=value]": worst value
    # allowed} (lower bound, or upper bound for a LOWER_IS_BETTER metric).
    slice_thresholds: Parameter[dict[str, float]] = {}
    signature_name: Parameter[str] = "serving_default"
    prediction_key: Parameter[str] = ""  # which output, when the signature has several
    # Signatures turning serialized examples into transformed features (e.g. the label
    # as an integer): "transform_features" for models exported like the penguin module.
    preprocessing_function_names: Parameter[list[str]] = []
    # An EvalConfig text proto replacing the typed parameters above, honoured as written
    # (see the class docstring for its model_specs).
    eval_config_file: Parameter[ExternalPath] = ExternalPath("")

    def execute(self, step: Step) -> None:
        import traceback

        import apache_beam as beam
        import tensorflow_model_analysis as tfma
        from tfx_bsl.tfxio import tf_example_record

        has_baseline = step.baseline_model is not None
        baseline_push = _baseline_push(step)
        plan = self.eval_plan(step, has_baseline)
        eval_config = plan.config
        _check_eval_config(eval_config, step)
        needs = _check_models_can_score(eval_config, step, baseline_push)
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
        try:
            with beam_pipeline(step) as pipeline:
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
                    adapter_config = TensorAdapterConfig(
                        arrow_schema=tfxio.ArrowSchema(),
                        tensor_representations=tfxio.TensorRepresentations())
                _ = (sources | "Flatten" >> beam.Flatten()
                     | "Evaluate" >> tfma.ExtractEvaluateAndWriteResults(
                         eval_shared_model=models if has_baseline else models[0],
                         eval_config=eval_config, output_path=output_path,
                         tensor_adapter_config=adapter_config, schema=schema))
        except StepInterrupted:
            raise  # work cut short from outside: not the model's failure
        except Exception as exc:
            raw = traceback.format_exc()
            step.log.error("TFMA failed; its raw error:\n%s", raw)
            raise _tfma_failure(exc, raw, needs, step.examples.uri) from exc

        validation = tfma.load_validation_result(output_path)
        blessed = bool(validation.validation_ok)
        reason = _verdict(validation, plan)
        metrics = list(tfma.load_metrics(output_path))
        rows = _metric_rows(metrics, plan)
        report = _metrics_report(rows, plan) + _ungated_slices_report(metrics, plan)
        with open(step.evaluation.path(METRICS_FILE), "w") as fh:
            json.dump(_metrics_json(rows, plan), fh, indent=1, sort_keys=True)
        baseline_id = step.baseline_model.id if has_baseline else None
        baseline_version = baseline_push.pushed_version if baseline_push is not None else None
        header = (f"Evaluation of model {step.model.id} "
                  + (_baseline_text(step.baseline_model, baseline_push) if has_baseline else
                     "(no baseline: first push; value thresholds only, change thresholds "
                     "skipped)")
                  + f" on split(s) {', '.join(step.example_splits)}"
                  + (f" ({plan.task} task)" if plan.task else "") + "\n"
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
        headline = _headline(rows, plan)
        step.note(f"{'blessed' if blessed else 'NOT blessed'}: {reason}"
                  + (f"; {headline}" if headline else ""))

    # -- the EvalConfig -------------------------------------------------------------------
    def eval_plan(self, step: Step, has_baseline: bool) -> EvalPlan:
        """The EvalConfig from eval_config_file, else from the typed parameters, checked
        and completed for this run (see the class docstring)."""
        if step.eval_config_file:
            return plan_eval_config(_read_eval_config(step.eval_config_file), has_baseline,
                                    where=self.id)
        schema = _read_schema(step.schema.file) if step.schema is not None else None
        task = infer_task(step.label_key, schema, step.task,
                          label_type=None if schema is not None else
                          _raw_feature_types(step).get(step.label_key), where=self.id)
        plan = plan_eval_config(self.typed_eval_config(step, task), has_baseline,
                                where=self.id)
        metric = step.threshold_metric or TASKS[task][1]
        lower, upper = _overall_bounds(step, metric, self.id)
        return replace(plan, task=task, overall_bound=(metric, lower, upper),
                       gated_slices=tuple(_slice_text(values) for values, _ in
                                          parse_slice_thresholds(step.slice_thresholds,
                                                                 self.id)))

    def typed_eval_config(self, step: Step, task: str):
        """The EvalConfig the typed parameters describe for `task` (a key of TASKS): their
        value and change thresholds gate the overall slice; slice_thresholds the slices
        they name. Raises EvalConfigError naming the parameter."""
        import tensorflow_model_analysis as tfma

        if task not in TASKS:
            raise EvalConfigError(f"{self.id}: task {task!r} is not one of {sorted(TASKS)}")
        metrics = list(step.metrics) or list(TASKS[task][0])
        threshold_metric = step.threshold_metric or TASKS[task][1]
        if threshold_metric not in metrics:
            raise EvalConfigError(f"{self.id}: threshold_metric {threshold_metric!r} "
                                  f"is not among the metrics {metrics}")
        lower, upper = _overall_bounds(step, threshold_metric, self.id)
        direction = metric_direction(threshold_metric)
        slices = parse_slice_thresholds(step.slice_thresholds, self.id)
        configs = []
        for name in metrics:
            metric = tfma.MetricConfig(class_name=name)
            if name == threshold_metric:
                metric.per_slice_thresholds.add(
                    slicing_specs=[tfma.SlicingSpec()],
                    threshold=self._threshold(tfma, step, direction, lower, upper))
                for values, bound in slices:
                    value = (tfma.GenericValueThreshold(lower_bound={"value": bound})
                             if direction == tfma.MetricDirection.HIGHER_IS_BETTER else
                             tfma.GenericValueThreshold(upper_bound={"value": bound}))
                    metric.per_slice_thresholds.add(
                        slicing_specs=[tfma.SlicingSpec(feature_values=values)],
                        threshold=tfma.MetricThreshold(value_threshold=value))
            configs.append(metric)
        slicing_specs = [tfma.SlicingSpec()] + [
            tfma.SlicingSpec(feature_keys=list(keys)) for keys in step.slice_features]
        computed = {tuple(sorted(keys)) for keys in step.slice_features}
        for values, _ in slices:  # a declared slice is computed, whatever slice_features say
            if tuple(sorted(values)) not in computed:
                slicing_specs.append(tfma.SlicingSpec(feature_values=values))
        metrics_specs = [tfma.MetricsSpec(metrics=configs)]
        if task == "binary" and _scores_per_class(step, self.id) == 2:
            # [batch, 2] scores (the framework's signatures): TFMA would micro-average the
            # two columns (precision = recall = accuracy, an AUC of both columns pooled).
            # Binary metrics are computed on the second class's column; counts are not.
            counted = [c for c in configs if c.class_name in COUNT_METRICS]
            metrics_specs = [tfma.MetricsSpec(
                metrics=[c for c in configs if c.class_name not in COUNT_METRICS],
                binarize=tfma.BinarizationOptions(class_ids={"values": [1]}))]
            if counted:
                metrics_specs.append(tfma.MetricsSpec(metrics=counted))
        return tfma.EvalConfig(
            model_specs=[tfma.ModelSpec(
                label_key=step.label_key, signature_name=step.signature_name,
                prediction_key=step.prediction_key,
                preprocessing_function_names=list(step.preprocessing_function_names))],
            slicing_specs=slicing_specs,
            metrics_specs=metrics_specs)

    @staticmethod
    def _threshold(tfma, step: Step, direction, lower: float | None, upper: float | None):
        # A tiny slack so "no worse than the baseline" holds for an identical model.
        allowed = max(step.change_threshold, 1e-10)
        worse = -allowed if direction == tfma.MetricDirection.HIGHER_IS_BETTER else allowed
        threshold = tfma.MetricThreshold(change_threshold=tfma.GenericChangeThreshold(
            direction=direction, absolute={"value": worse}))
        if lower is not None:
            threshold.value_threshold.lower_bound.value = lower
        if upper is not None:
            threshold.value_threshold.upper_bound.value = upper
        return threshold


def metric_direction(class_name: str):
    """tfma.MetricDirection of a metric class name: LOWER_IS_BETTER for the errors and
    losses in LOWER_IS_BETTER, HIGHER_IS_BETTER for every other metric."""
    import tensorflow_model_analysis as tfma

    return (tfma.MetricDirection.LOWER_IS_BETTER if class_name in LOWER_IS_BETTER
            else tfma.MetricDirection.HIGHER_IS_BETTER)


def _overall_bounds(step: Step, metric: str, where: str) -> tuple[float | None, float | None]:
    """(lower, upper) value bounds on the overall slice, accuracy_threshold being the
    deprecated alias of lower_bound."""
    lower, upper = step.lower_bound, step.upper_bound
    if step.accuracy_threshold is not None:
        if lower is not None:
            raise EvalConfigError(f"{where}: accuracy_threshold (deprecated) and lower_bound "
                                  f"both bound {metric} from below: give lower_bound only")
        if metric in LOWER_IS_BETTER:
            raise EvalConfigError(
                f"{where}: accuracy_threshold is a lower bound (deprecated alias of "
                f"lower_bound), but threshold_metric {metric} is LOWER_IS_BETTER: bound it "
                f"with upper_bound")
        lower = step.accuracy_threshold
    if lower is not None and upper is not None and lower > upper:
        raise EvalConfigError(f"{where}: lower_bound {lower} is above upper_bound {upper}")
    return lower, upper


def parse_slice_thresholds(slice_thresholds: dict[str, float],
                           where: str = "Evaluator") -> list[tuple[dict[str, str], float]]:
    """{"island=Dream": 0.8, "island=Dream,sex=male": 0.7} -> [({"island": "Dream"}, 0.8),
    ...]: each key a slice as feature=value pairs joined by commas (values compared as text,
    as TFMA's SlicingSpec.feature_values are). Raises EvalConfigError naming a malformed
    key or a non-numeric bound."""
    parsed = []
    for key, bound in slice_thresholds.items():
        values: dict[str, str] = {}
        for part in str(key).split(","):
            feature, sep, value = part.partition("=")
            feature, value = feature.strip(), value.strip()
            if not sep or not feature or not value or feature in values:
                raise EvalConfigError(
                    f"{where}: slice_thresholds key {key!r} is not a slice: write "
                    f"'feature=value', or 'f1=v1,f2=v2' for a crossed slice, each feature once")
            values[feature] = value
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise EvalConfigError(f"{where}: slice_thresholds[{key!r}] = {bound!r} is not a "
                                  f"number")
        parsed.append((values, float(bound)))
    return parsed


def _slice_text(values: dict[str, str]) -> str:
    """A slice as the reports name it (_slice_name): "f1=v1, f2=v2", features sorted."""
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()))


def infer_task(label_key: str, schema, declared: str = "", label_type: str | None = None,
               where: str = "Evaluator") -> str:
    """The task, "binary", "multiclass" or "regression": `declared` when given, else from
    the label's feature in `schema` (a TFMD Schema, or None; then `label_type`, the
    label's BYTES/INT/FLOAT type in the examples): FLOAT -> regression; INT or BYTES with
    2 domain values -> binary, with 3..MAX_CLASSES -> multiclass. Raises EvalConfigError
    naming the label (and how to declare the task) when it cannot tell."""
    if declared:
        if declared not in TASKS:
            raise EvalConfigError(f"{where}: task {declared!r} is not one of "
                                  f"{sorted(TASKS)} (or '' to infer it from the label's "
                                  f"schema)")
        return declared
    hint = f"; declare it: task='binary', 'multiclass' or 'regression'"
    feature = None
    if schema is not None:
        from tensorflow_metadata.proto.v0 import schema_pb2

        feature = next((f for f in schema.feature if f.name == label_key), None)
        if feature is None:
            raise EvalConfigError(f"{where}: label_key {label_key!r} is not a feature of the "
                                  f"schema, so the task cannot be told{hint}")
        label_type = schema_pb2.FeatureType.Name(feature.type)
    if label_type == "FLOAT":
        return "regression"
    if feature is None:
        raise EvalConfigError(f"{where}: label {label_key!r} is {label_type or 'of unknown type'}"
                              f" and there is no schema to give its classes{hint}")
    classes = _domain_size(feature, schema)
    if classes is None:
        raise EvalConfigError(f"{where}: label {label_key!r} ({label_type}) has no domain in "
                              f"the schema (int_domain with min and max, bool_domain or "
                              f"string_domain), so its classes are unknown{hint}")
    if classes == 2:
        return "binary"
    if 3 <= classes <= MAX_CLASSES:
        return "multiclass"
    raise EvalConfigError(f"{where}: label {label_key!r} has {classes} value(s) in its schema "
                          f"domain; a class label has 2 to {MAX_CLASSES}{hint}")


def _domain_size(feature, schema) -> int | None:
    kind = feature.WhichOneof("domain_info")
    if kind == "bool_domain":
        return 2
    if kind == "int_domain":
        domain = feature.int_domain
        if domain.HasField("min") and domain.HasField("max"):
            return domain.max - domain.min + 1
        return None
    if kind == "string_domain":
        return len(feature.string_domain.value)
    if kind == "domain":
        named = next((d for d in schema.string_domain if d.name == feature.domain), None)
        return len(named.value) if named is not None else None
    return None


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
    return "against " + _baseline_description(baseline, push)


def _baseline_description(baseline: Model, push: PushedModel | None) -> str:
    """The baseline as reports and errors name it, e.g. 'baseline model 12, served as
    version 3 in /srv/penguin' (its push, when known)."""
    text = f"baseline model {baseline.id}"
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


def _check_models_can_score(config, step: Step, baseline_push: PushedModel | None) -> dict:
    """Fails (ModelCannotScoreError) when a feature that a model's signature requires is
    missing from the examples or has another type there; returns {model text: [needs]}
    for _tfma_failure. The examples' features are the schema's, else the first example's."""
    from components.model_inputs import SCHEMA_TYPE, signature_needs

    raw_types = _raw_feature_types(step)
    source = "schema" if step.schema is not None else "first example"
    candidate = next(spec for spec in config.model_specs if not spec.is_baseline)
    signatures = [candidate.signature_name or "serving_default",
                  *candidate.preprocessing_function_names]
    models = [(step.model, f"model {step.model.id}")]
    if step.baseline_model is not None:
        models.append((step.baseline_model,
                       _baseline_description(step.baseline_model, baseline_push)))
    found = {}
    for artifact, text in models:
        found[text] = needs = [signature_needs(artifact.serving_dir, name) for name in signatures]
        for need in needs:
            step.log.info("%s: signature %r requires %s", text, need.signature_name,
                          need.required if need.known else "(unknown: parse spec not constant)")
            for feature, dtype in need.required.items():
                have = raw_types.get(feature)
                wanted = SCHEMA_TYPE.get(dtype)
                if have is not None and (wanted is None or have == wanted):
                    continue
                problem = (f"which the examples lack" if have is None else
                           f"but it is {have} in the examples")
                raise ModelCannotScoreError(
                    f"{text} cannot score the examples {step.examples.uri} (split(s) "
                    f"{', '.join(step.example_splits)}): its signature "
                    f"{need.signature_name!r} requires feature {feature!r} ({dtype}), "
                    f"{problem} (their features, from the {source}: {sorted(raw_types)}). "
                    + ("The served model needs it too: restore the feature in the data, or "
                       "make a model that does not need it the baseline (pipewright "
                       "rollback)" if "baseline" in text else
                       "Train the model on these features, or restore the feature"))
    return found


_MISSING_FEATURE = re.compile(r"Feature: ([^\s(]+) \(data type: (\w+)\) is required but "
                              r"could not be found")


def _tfma_failure(exc: BaseException, raw: str, needs: dict, examples_uri: str) -> Exception:
    """A short error for a TFMA run that failed with `exc` (`raw`: its formatted traceback,
    chained errors included): a required feature missing from an example (TensorFlow's
    parse error, usually wrapped in TFMA's "Fail to call signature func") names the
    model(s) whose signatures require it (`needs`, from _check_models_can_score); anything
    else gives the first line of `exc`. The raw error (serialized examples and all) is for
    the step log, not the message."""
    text = str(exc)
    match = _MISSING_FEATURE.search(raw) or _MISSING_FEATURE.search(text)
    if match:
        feature = match.group(1)
        who = [model for model, model_needs in needs.items()
               if any(feature in need.required for need in model_needs)] or ["a model"]
        return ModelCannotScoreError(
            f"{' and '.join(who)} cannot score the examples {examples_uri}: feature "
            f"{feature!r} ({match.group(2)}), which its signature requires, is missing from "
            f"some examples (the schema or first example has it); raw error in the step log")
    first = text.strip().splitlines()[0] if text.strip() else ""
    if len(first) > 300:
        first = first[:300] + "..."
    return RuntimeError(f"TFMA failed: {type(exc).__name__}: {first} (raw error in the "
                        f"step log)")


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


def _scores_per_class(step: Step, where: str) -> int | None:
    """The last dimension of the prediction the Evaluator reads (signature_name's output,
    prediction_key's when given) in the candidate's saved_model.pb, or None when there is
    no model to read (a config built without one) or the shape is not fixed. Raises
    EvalConfigError when the baseline's differs: one EvalConfig serves both."""
    from components.signatures import describe

    widths = {}
    for role in ("model", "baseline_model"):
        model = getattr(step, role, None)
        if model is None or not os.path.isfile(os.path.join(model.serving_dir,
                                                            "saved_model.pb")):
            continue
        outputs = describe(model.serving_dir).get(step.signature_name, {}).get("outputs", {})
        if step.prediction_key:
            outputs = {k: v for k, v in outputs.items() if k == step.prediction_key}
        if len(outputs) == 1:
            (_, shape), = outputs.values()
            widths[role] = shape[-1] if len(shape) == 2 and shape[-1] > 0 else None
    if len(set(widths.values())) > 1:
        raise EvalConfigError(
            f"{where}: the candidate's {step.signature_name} answers {widths['model']} "
            f"score(s) per example, the baseline's {widths['baseline_model']}; one "
            f"evaluation cannot read both the same way")
    return widths.get("model")


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


def _metric_rows(metrics_for_slices, plan: EvalPlan) -> list[tuple]:
    """(slice, metric, candidate, baseline, change) per slice and metric, Overall first;
    baseline and change are None without a baseline."""
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
    return rows


def _headline(rows: list[tuple], plan: EvalPlan) -> str:
    """The threshold metric on the overall slice against its bounds and the baseline, e.g.
    "auc 0.8572 (bound >= 0.7; baseline 0.8511, change +0.0061)", or "" (a config file)."""
    if plan.overall_bound is None:
        return ""
    metric, lower, upper = plan.overall_bound
    name = _metric_key_name(metric)
    row = next((r for r in rows if r[0] == "Overall" and r[1] == name), None)
    if row is None or row[2] is None:
        return ""
    bounds = ([f">= {lower:g}"] if lower is not None else []) + \
        ([f"<= {upper:g}"] if upper is not None else [])
    text = f"{name} {row[2]:.4f}" + (f" (bound {' and '.join(bounds)})" if bounds else "")
    if row[3] is not None:
        text += f"; baseline {row[3]:.4f}"
        if row[4] is not None:
            text += f", change {row[4]:+.4f}"
    return text


def _metrics_json(rows: list[tuple], plan: EvalPlan) -> dict[str, Any]:
    """What `metrics.json` holds, for `pipewright diff` and `runs`: {"task",
    "threshold_metric" (its recorded name, e.g. "auc"), "slices": {slice: {metric:
    {"candidate", "baseline", "change"}}}} (floats, null when absent)."""
    slices: dict[str, dict[str, Any]] = {}
    for where, name, candidate, baseline, change in rows:
        slices.setdefault(where, {})[name] = {"candidate": candidate, "baseline": baseline,
                                              "change": change}
    metric = plan.overall_bound[0] if plan.overall_bound else ""
    return {"task": plan.task, "threshold_metric": _metric_key_name(metric) if metric else "",
            "slices": slices}


def _metrics_report(rows: list[tuple], plan: EvalPlan) -> str:
    """A table: one row per slice and metric; candidate, baseline and their difference."""
    has_baseline = plan.baseline_name is not None
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


def _metric_key_name(class_name: str) -> str:
    """The name TFMA records a metric class's values under (e.g. AUC -> "auc")."""
    import tensorflow_model_analysis as tfma
    import tf_keras

    cls = getattr(tfma.metrics, class_name, None) or getattr(tf_keras.metrics, class_name)
    return cls().name


def _ungated_slices_report(metrics_for_slices, plan: EvalPlan) -> str:
    """Typed parameters only: the slices whose threshold metric is outside the overall
    slice's bounds, listed as reported, not gating (slice_thresholds gates a slice)."""
    if plan.overall_bound is None:
        return ""
    metric, lower, upper = plan.overall_bound
    if lower is None and upper is None:
        return ""
    name = _metric_key_name(metric)
    outside = []
    for metrics in metrics_for_slices:
        where = _slice_name(metrics.slice_key)
        if where == "Overall" or where in plan.gated_slices:
            continue
        for entry in metrics.metric_keys_and_values:
            if (entry.key.name != name or entry.key.is_diff
                    or entry.key.model_name not in ("", plan.candidate_name)):
                continue
            value = _metric_value(entry.value)
            if value is not None and ((lower is not None and value < lower)
                                      or (upper is not None and value > upper)):
                outside.append((where, value))
    bounds = " and ".join(filter(None, [f">= {lower:g}" if lower is not None else "",
                                        f"<= {upper:g}" if upper is not None else ""]))
    head = (f"\nSlices outside the overall bound {name} {bounds} (reported, not gating; "
            f"slice_thresholds gates a slice):\n")
    if not outside:
        return head + "  none\n"
    return head + "".join(f"  {where}: {name} = {value:.4f}\n"
                          for where, value in sorted(outside))


def _number(value, signed: bool = False) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and not signed:
        return str(int(value))
    return f"{value:+.4f}" if signed else f"{value:.4f}"
