"""ExampleValidator: checks the statistics against the schema, across spans and splits."""
from __future__ import annotations

from components.anomaly_report import feature_anomalies, halt_message, split_section
from components.artifacts import ExampleAnomalies, ExampleStatistics, Schema
from components.base import Component, Input, Output, Parameter, Step
from components.schema_inference import validation_environment
from components.split_names import included_splits
from components.tfmd_files import read_schema, read_statistics, write_anomalies


class ExampleValidator(Component):
    """Validates each split's statistics against the schema with TFDV and writes the
    anomalies (`Split-<name>/SchemaDiff.pb`) and a readable `report.txt`.

    - Drift: with `drift_thresholds` (feature -> threshold), each split is compared with
      the same split of the previous span's statistics in this pipeline (the newest
      ExampleStatistics with a smaller span).
    - Skew: with `skew_thresholds`, the first of `skew_splits` is compared with the second.
    - Thresholds are L-infinity distances for categorical features and Jensen-Shannon
      divergences for numeric ones.
    - Environments: a schema with TFDV environments (SchemaGen's `label_feature`) is
      validated in TRAINING, so the label is checked here and not required at serving.
    - Any anomaly halts the run before anything downstream, naming each feature and
      anomaly; with `fail_on_anomalies=False` it is logged as a warning instead.
    """

    imports_tensorflow = True

    statistics: Input[ExampleStatistics]
    schema: Input[Schema]
    anomalies: Output[ExampleAnomalies]
    exclude_splits: Parameter[list[str]] = []
    drift_thresholds: Parameter[dict[str, float]] = {}
    skew_thresholds: Parameter[dict[str, float]] = {}
    skew_splits: Parameter[list[str]] = ["train", "eval"]
    fail_on_anomalies: Parameter[bool] = True

    def execute(self, step: Step) -> None:
        import tensorflow_data_validation as tfdv

        splits = included_splits(step.statistics, step.exclude_splits, step.log)
        schema = read_schema(step.schema.file)
        _set_comparators(schema, step.drift_thresholds, "drift_comparator")
        _set_comparators(schema, step.skew_thresholds, "skew_comparator")

        previous = _previous_span_statistics(step) if step.drift_thresholds else None
        skew_pair = _skew_pair(step, splits) if step.skew_thresholds else None

        environment = validation_environment(schema)
        report = [f"ExampleValidator: statistics {step.statistics.name} #{step.statistics.id} "
                  f"(span {step.statistics.span}), schema #{step.schema.id} "
                  f"{step.schema.source or step.schema.file}"
                  + (f", environment {environment}" if environment else "")]
        if step.drift_thresholds and previous is None:
            report.append(f"drift not checked: no statistics of an earlier span than "
                          f"{step.statistics.span} in pipeline {step.pipeline_name}")
        per_split = {}
        for split in splits:
            drift_base = skew_target = None
            drift_note = skew_note = ""
            if previous is not None and split in previous.splits:
                drift_base = read_statistics(previous, split)
                drift_note = f"against span {previous.span} (statistics #{previous.id})"
            if skew_pair is not None and split == skew_pair[0]:
                skew_target = read_statistics(step.statistics, skew_pair[1])
                skew_note = f"against split {skew_pair[1]}"
            anomalies = tfdv.validate_statistics(
                read_statistics(step.statistics, split), schema,
                previous_statistics=drift_base, serving_statistics=skew_target,
                environment=environment)
            write_anomalies(anomalies, step.anomalies, split)
            per_split[split] = anomalies
            report += split_section(split, anomalies, drift_note, skew_note)

        count = sum(len(feature_anomalies(a)) for a in per_split.values())
        step.anomalies.set(span=step.statistics.span, split_names=splits, anomaly_count=count)
        with open(step.anomalies.path("report.txt"), "w", encoding="utf-8") as fh:
            fh.write("\n".join(report) + "\n")
        step.log.info("\n".join(report))
        if not count:
            step.note(f"no anomalies in {', '.join(splits)}")
        else:
            features = sorted({f for a in per_split.values() for f, _, _ in feature_anomalies(a)})
            step.note(f"{count} anomal{'y' if count == 1 else 'ies'}: {', '.join(features)}")
            message = halt_message(per_split, step.statistics.input_files)
            if step.fail_on_anomalies:
                step.halt(message)
            else:
                step.log.warning("%s (fail_on_anomalies=False: continuing)", message)


def _set_comparators(schema, thresholds: dict[str, float], comparator_field: str) -> None:
    from tensorflow_metadata.proto.v0 import schema_pb2

    features = {feature.name: feature for feature in schema.feature}
    for name, threshold in thresholds.items():
        if name not in features:
            raise ValueError(f"{comparator_field.split('_')[0]} threshold for feature {name!r}, "
                             f"which the schema does not have (features: {sorted(features)})")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
            raise ValueError(f"threshold for feature {name!r} must be a number >= 0, "
                             f"got {threshold!r}")
        feature = features[name]
        comparator = getattr(feature, comparator_field)
        categorical = feature.type == schema_pb2.BYTES or (
            feature.HasField("int_domain") and feature.int_domain.is_categorical)
        if categorical:
            comparator.infinity_norm.threshold = float(threshold)
        else:
            comparator.jensen_shannon_divergence.threshold = float(threshold)


def _previous_span_statistics(step: Step) -> ExampleStatistics | None:
    """The newest statistics from the same producer with the largest span below ours."""
    current = step.statistics
    if current.span is None or step.metadata is None:
        return None
    earlier = [a for a in step.metadata.artifacts_in_pipeline(step.pipeline_name,
                                                               ExampleStatistics)
               if a.name == current.name and a.id != current.id
               and a.span is not None and a.span < current.span]
    if not earlier:
        return None
    return max(earlier, key=lambda a: (a.span, a.id))


def _skew_pair(step: Step, splits: list[str]) -> tuple[str, str] | None:
    if len(step.skew_splits) != 2:
        raise ValueError(f"skew_splits must name two splits (e.g. ['train', 'eval']), "
                         f"got {step.skew_splits}")
    missing = [s for s in step.skew_splits if s not in splits]
    if missing:
        raise ValueError(f"skew_splits {step.skew_splits}: {missing} not among the validated "
                         f"splits {splits}")
    return step.skew_splits[0], step.skew_splits[1]
