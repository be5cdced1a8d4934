"""Watching the served model's traffic: skew against its training data, drift between
windows of the request log.

`ServedModelLineage` (a Resolver) finds, through ML Metadata, the model being served from
`<serving dir>/<model name>/` (components.resolver.served_model: the newest version on disk
that a recorded push put there), its push, the schema it was trained with (the Pusher
execution's `schema` input, which it served beside the model, else the Trainer execution's)
and the training statistics (the StatisticsGen statistics of the
examples the Trainer's examples were made from: pushed model -> Model -> Trainer execution ->
its `examples` -> back through Transform to the raw examples -> the StatisticsGen execution
that read them).

`TrafficMonitor` reads one window of the request log (components.traffic_logs), writes it as
an Examples artifact (split "serving", a new span per window), computes TFDV statistics of it
and compares them with the training statistics (skew) and with this monitor's previous window
that had traffic (drift), with TFDV's comparators plus PSI (components.traffic_distance). Its
`report` holds report.txt (read by a person), distances.json (this window) and history.json
(every window of this monitor so far, this one last).

`monitor_pipeline()` wires the two; `pipewright monitor PIPELINE` runs it
(pipelines/monitor_cli.py); `latest_verdict()` reads the newest verdict back (what a
retraining trigger needs).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
import types as _types

from components.artifacts import Artifact, Examples, ExampleStatistics, Model, PushedModel, Schema
from components.base import Component, Input, Output, Parameter, Resolver, Step

SPLIT = "serving"
NO_DRIFT, DRIFT, NO_TRAFFIC = "no drift", "drift", "no traffic"
REPORT_FILE, DISTANCES_FILE, HISTORY_FILE = "report.txt", "distances.json", "history.json"


class TrafficReport(Artifact):
    """One window of served traffic judged: verdict ("no drift", "drift", "no traffic"), the
    window [window_start, window_end) in UNIX seconds, the counts, the flagged features, and
    every feature's distances as JSON (`distances`; distances.json holds the same)."""

    PROPERTIES = {"span": int, "verdict": str, "window_start": float, "window_end": float,
                  "requests": int, "failed_requests": int, "examples": int,
                  "flagged_features": list, "distances": str, "model_name": str,
                  "served_versions": list, "alert": int, "labels_joined": int,
                  "labels_unjoined": int, "live_accuracy": str}


class LineageError(LookupError):
    """The served model's schema or training statistics cannot be found through lineage."""


class ServedModelLineage(Resolver):
    """Resolves what the TrafficMonitor compares against (module docstring). Skips the step
    when nothing is served from the directory yet (nothing to monitor, so nothing downstream
    runs: an hourly monitor before the first push is not a failure). Raises
    components.resolver.BaselineError as LatestPushedModel does, LineageError when the
    lineage breaks off (naming the artifact where it did)."""

    served_model: Output[Model]
    served_push: Output[PushedModel]
    schema: Output[Schema]
    training_statistics: Output[ExampleStatistics]
    model_name: Parameter[str]
    push_destination: Parameter[str] = ""

    def resolve(self, step: Step) -> dict[str, Artifact | None]:
        from components.pusher import serving_base
        from components.resolver import served_model

        destination = serving_base(step.serving_dir, step.push_destination, step.model_name)
        found = served_model(step.metadata, destination, _types.SimpleNamespace(id=None))
        if found is None:
            step.skip(f"no model is served from {destination}: nothing to monitor")
            return {}
        model, push = found
        schema, statistics = training_lineage(step.metadata, model, push)
        step.note(f"served: model {model.id} as version {push.pushed_version}; schema "
                  f"{schema.id}, training statistics {statistics.id}")
        return {"served_model": model, "served_push": push, "schema": schema,
                "training_statistics": statistics}


def training_lineage(metadata, model: Model,
                     push: PushedModel | None = None) -> tuple[Schema, ExampleStatistics]:
    """(schema, training statistics) of a model, through ML Metadata (module docstring).
    The schema is the push's: the Pusher execution's `schema` input (the file it put in the
    version as assets.extra/schema.pbtxt, components/pusher.py SCHEMA_FILE), else the
    Trainer execution's. Raises LineageError naming where the chain breaks."""
    producers = metadata.lineage(model)["producers"]
    if not producers:
        raise LineageError(f"model {model.id} ({model.uri}) has no recorded producer")
    trainer_inputs = producers[0]["inputs"]
    pushed_with = None
    if push is not None:
        pushers = metadata.lineage(push)["producers"]
        pushed_with = pushers[0]["inputs"].get("schema") if pushers else None
    schema = pushed_with or trainer_inputs.get("schema")
    if schema is None:
        raise LineageError(f"the execution that produced model {model.id} "
                           f"({producers[0]['execution'].component_id}) had no schema input")
    examples = trainer_inputs.get("examples")
    seen = 0
    while examples is not None and seen < 5:
        seen += 1
        lineage = metadata.lineage(examples)
        for consumer in lineage["consumers"]:
            if consumer["execution"].type_name == "StatisticsGen" and \
                    consumer["execution"].state in ("complete", "cached"):
                stats = metadata.outputs_of_execution(consumer["execution"].id).get("statistics")
                if stats is not None and "train" in stats.splits:
                    return schema, stats
        producer = lineage["producers"][0] if lineage["producers"] else None
        examples = producer["inputs"].get("examples") if producer else None
    raise LineageError(f"no StatisticsGen statistics with a train split found for the "
                       f"examples model {model.id} was trained on (followed Trainer -> "
                       f"examples back {seen} step(s))")


class TrafficMonitor(Component):
    """Skew and drift of one window of served traffic (module docstring).

    Parameters: `model_name` (the model's directory in the request log); `log_dir` (default
    `<home>/request_logs`); `window_start` / `window_end`, ISO 8601 UTC times
    ("2026-11-30T12:00:00Z") or UNIX seconds; an empty start means "since the end of this
    monitor's previous window" (or the beginning of the log), an empty end means now — but a
    window never ends after the opening of a request-log file the server is still writing
    (its requests are counted by the next window: traffic_logs.oldest_open_file);
    `thresholds` (feature -> threshold of its TFDV distance: L-infinity for a categorical
    feature, Jensen-Shannon for a numeric one), defaults `categorical_threshold` and
    `numeric_threshold`; `psi_thresholds` (feature -> PSI threshold), default `psi_threshold`;
    `labels`, a delayed-label file or directory (components/traffic_labels.py) joined to the
    logged predictions by request id: the live accuracy of each version with at least
    `min_labels` joined labels is judged against `min_live_accuracy`.

    A feature is flagged when, against the training statistics (skew) or the previous window
    (drift), its TFDV distance or its PSI exceeds its threshold; the verdict is "drift" when
    any feature is flagged, "no traffic" for a window without a successful request (no alert),
    else "no drift". The report alerts (property `alert`, read by RetrainingAlert) when a
    feature is flagged or a version's live accuracy is below `min_live_accuracy`. Raises
    ValueError for an unparsable window or one that ends before it starts, a threshold for
    a feature the schema lacks, or a bad label file (naming the file and row);
    FileNotFoundError for a `labels` path that does not exist.
    """

    imports_tensorflow = True

    served_model: Input[Model]
    served_push: Input[PushedModel]
    schema: Input[Schema]
    training_statistics: Input[ExampleStatistics]
    examples: Output[Examples]
    statistics: Output[ExampleStatistics]
    report: Output[TrafficReport]
    model_name: Parameter[str]
    log_dir: Parameter[str] = ""
    window_start: Parameter[str] = ""
    window_end: Parameter[str] = ""
    thresholds: Parameter[dict[str, float]] = {}
    categorical_threshold: Parameter[float] = 0.2
    numeric_threshold: Parameter[float] = 0.1
    psi_thresholds: Parameter[dict[str, float]] = {}
    psi_threshold: Parameter[float] = 0.25
    labels: Parameter[str] = ""
    min_live_accuracy: Parameter[float] = 0.7
    min_labels: Parameter[int] = 10

    def execute(self, step: Step) -> None:
        import tensorflow as tf
        import tensorflow_data_validation as tfdv

        from components.tfmd_files import read_schema, read_statistics
        from components.traffic_logs import oldest_open_file, read_window

        schema = read_schema(step.schema.file)
        previous = _previous_report(step)
        start = parse_time(step.window_start) if step.window_start else (
            previous.window_end if previous is not None else 0.0)
        end = parse_time(step.window_end) if step.window_end else time.time()
        if end < start:
            raise ValueError(f"window ends ({_iso(end)}) before it starts ({_iso(start)})")
        log_dir = step.log_dir or os.path.join(step.home, "request_logs")
        still_open = oldest_open_file(log_dir, step.model_name, time.time())
        if still_open is not None and still_open[0] < end:
            # Its requests are readable only once it closes: the window stops where it began
            # (the next window starts there), so no request is skipped.
            end = max(start, still_open[0])
            step.note(f"window ends at {_iso(end)}, where the oldest request-log file still "
                      f"being written began ({still_open[1]}); its requests count in the next "
                      f"window")
        for name in list(step.thresholds) + list(step.psi_thresholds):
            if name not in {f.name for f in schema.feature}:
                raise ValueError(f"threshold for feature {name!r}, which the schema does not "
                                 f"have (features: {sorted(f.name for f in schema.feature)})")
        window = read_window(log_dir, step.model_name, start, end, schema, step.log)
        span = (previous.span + 1) if previous is not None and previous.span is not None else 1

        # The window as examples: one split, gzip TFRecord as every Examples artifact.
        os.makedirs(step.examples.split_uri(SPLIT), exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(step.examples.split_uri(SPLIT), "data.tfrecord.gz"),
                                  options="GZIP") as writer:
            for example in window.examples:
                writer.write(example)
        step.examples.set(span=span, version=0, split_names=[SPLIT], payload_format="tf.Example",
                          input_files=window.files)

        statistics = _statistics_of(window.examples, schema)
        os.makedirs(step.statistics.split_uri(SPLIT), exist_ok=True)
        from components.tfmd_files import statistics_path
        with open(statistics_path(step.statistics, SPLIT), "wb") as fh:
            fh.write(statistics.SerializeToString())
        step.statistics.set(span=span, split_names=[SPLIT], input_files=window.files)

        training = read_statistics(step.training_statistics, "train")
        baseline_stats = _previous_statistics(step, previous)
        result = judge(schema, training, statistics,
                       read_statistics(baseline_stats, SPLIT) if baseline_stats else None,
                       thresholds=step.thresholds, psi_thresholds=step.psi_thresholds,
                       categorical_threshold=step.categorical_threshold,
                       numeric_threshold=step.numeric_threshold,
                       psi_threshold=step.psi_threshold, examples=len(window.examples))
        result.update(
            window_start=start, window_end=end, span=span, model_name=step.model_name,
            served_model_id=step.served_model.id, served_version=step.served_push.pushed_version,
            requests=window.requests, failed_requests=window.failed,
            failed_codes={str(k): v for k, v in window.failed_codes.items()},
            out_of_schema=dict(window.out_of_schema), versions=dict(window.versions),
            signatures=dict(window.signatures), files=window.files,
            truncated_files=window.truncated_files,
            drift_baseline=({"span": previous_span(baseline_stats), "statistics_id": baseline_stats.id}
                            if baseline_stats else None),
            training_statistics_id=step.training_statistics.id)
        result["live_quality"] = _live_quality(step, log_dir, start, end)
        quality_alert = any(v["below_threshold"] for v in
                            (result["live_quality"] or {}).get("versions", {}).values())
        result["alert"] = bool(result["flagged"]) or quality_alert

        history = _previous_history(previous) + [result]
        with open(step.report.path(DISTANCES_FILE), "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1, sort_keys=True)
        with open(step.report.path(HISTORY_FILE), "w", encoding="utf-8") as fh:
            json.dump(history, fh, indent=1, sort_keys=True)
        text = report_text(result, schema, training, statistics,
                           read_statistics(baseline_stats, SPLIT) if baseline_stats else None)
        with open(step.report.path(REPORT_FILE), "w", encoding="utf-8") as fh:
            fh.write(text)
        step.report.set(span=span, verdict=result["verdict"], window_start=start,
                        window_end=end, requests=window.requests,
                        failed_requests=window.failed, examples=len(window.examples),
                        flagged_features=result["flagged"],
                        distances=json.dumps(result["features"], sort_keys=True),
                        model_name=step.model_name,
                        served_versions=sorted(window.versions),
                        alert=int(result["alert"]),
                        labels_joined=(result["live_quality"] or {}).get("joined", 0),
                        labels_unjoined=(result["live_quality"] or {}).get("unjoined", 0),
                        live_accuracy=json.dumps({v: round(q["accuracy"], 6) for v, q in (
                            result["live_quality"] or {}).get("versions", {}).items()},
                            sort_keys=True))
        step.log.info("%s", text)
        for path in window.truncated_files:
            step.note(f"truncated log file skipped after its complete records: {path}")
        step.note(f"window {_iso(start)}..{_iso(end)}: {window.requests} requests "
                  f"({window.failed} failed), {len(window.examples)} examples: "
                  f"{result['verdict']}"
                  + (f" ({', '.join(result['flagged'])})" if result["flagged"] else ""))
        quality = result["live_quality"]
        if quality is not None:
            step.note(f"labels: {quality['joined']} joined, {quality['unjoined']} did not "
                      f"join; live accuracy " + (", ".join(
                          f"v{v} {q['accuracy']:.4f}" for v, q in quality["versions"].items())
                          or "-"))


def _live_quality(step: Step, log_dir: str, start: float, end: float) -> dict | None:
    """The delayed labels of the window joined to the logged predictions (None without
    `labels`); see components/traffic_labels.py."""
    if not step.labels:
        return None
    from components.traffic_labels import join_labels, label_files, read_labels

    if not 0.0 <= step.min_live_accuracy <= 1.0:
        raise ValueError(f"min_live_accuracy must be in [0, 1], got {step.min_live_accuracy}")
    if step.min_labels < 1:
        raise ValueError(f"min_labels must be at least 1 (labels a version needs before its "
                         f"live accuracy is judged), got {step.min_labels}")
    files = label_files(step.labels, start, end)
    quality = join_labels(read_labels(files), log_dir, step.model_name, step.log)
    quality.files = files
    summary = quality.summary(step.min_live_accuracy, step.min_labels)
    if quality.unjoined:
        step.log.warning("%d labels did not join a logged prediction (request ids such as "
                         "%s): unknown to the request log, failed, or without a "
                         "classification", quality.unjoined,
                         ", ".join(quality.unjoined_examples))
    return summary


def live_quality_lines(quality: dict | None) -> list[str]:
    """The report's lines on delayed labels (none without labels)."""
    if quality is None:
        return []
    lines = [f"live quality: {quality['labels']} labels from {len(quality['files'])} file(s), "
             f"{quality['joined']} joined, {quality['unjoined']} labels did not join"
             + (f" (e.g. {', '.join(quality['unjoined_examples'])})"
                if quality["unjoined"] else "")]
    if not quality["versions"]:
        lines.append("  live accuracy: not measured - no label joined a logged prediction")
    if sum(m["labeled"] for m in quality["versions"].values()) > quality["joined"]:
        lines.append("  (a shadowed request was answered by two versions: its label counts "
                     "once above and judges each version's answer below)")
    for version, measured in quality["versions"].items():
        verdict = ("BELOW THRESHOLD" if measured["below_threshold"] else "ok") \
            if measured["judged"] else f"not judged (< {quality['min_labels']} labels)"
        lines.append(f"  version {version}: live accuracy {measured['accuracy']:.4f} "
                     f"({measured['correct']}/{measured['labeled']}), threshold "
                     f"{quality['threshold']:g} -> {verdict}")
    return lines


def previous_span(stats: ExampleStatistics | None) -> int | None:
    return stats.span if stats is not None else None


def _statistics_of(examples: list[bytes], schema):
    """TFDV statistics of serialized tf.Examples (decoded without the schema, as
    StatisticsGen does; StatsOptions with it). An empty window gives one dataset with
    num_examples 0."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import statistics_pb2
    from tensorflow_data_validation.statistics import stats_impl
    from tfx_bsl.coders import example_coder

    if not examples:
        result = statistics_pb2.DatasetFeatureStatisticsList()
        result.datasets.add(num_examples=0)
        return result
    batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(examples)
    return stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions(schema=schema))


def judge(schema, training, window, previous, *, thresholds: dict, psi_thresholds: dict,
          categorical_threshold: float, numeric_threshold: float, psi_threshold: float,
          examples: int) -> dict:
    """Skew (window against training) and drift (window against previous, when given) of
    every schema feature the window carries. Returns {"verdict", "flagged": [feature],
    "features": {feature: {"kind", "measure", "threshold", "psi_threshold", "skew":
    {"distance", "psi", "flagged"}, "drift": {...} or None, "flagged": bool}}}."""
    import copy

    import tensorflow_data_validation as tfdv

    from components.example_validator import _set_comparators
    from components.traffic_distance import (feature_stats_by_name, is_categorical,
                                             measured_distances, psi)

    if not examples:
        return {"verdict": NO_TRAFFIC, "flagged": [], "features": {}}
    window_features = feature_stats_by_name(window)
    schema_features = {f.name: f for f in schema.feature}
    compared = sorted(name for name in window_features if name in schema_features)
    limits = {name: float(thresholds.get(name, categorical_threshold
                                         if is_categorical(schema_features[name])
                                         else numeric_threshold)) for name in compared}
    judged = copy.deepcopy(schema)
    del judged.default_environment[:]  # compare every feature; presence is not our question
    for feature in judged.feature:
        del feature.in_environment[:]
        del feature.not_in_environment[:]
    _set_comparators(judged, limits, "skew_comparator")
    _set_comparators(judged, limits, "drift_comparator")
    skew = measured_distances(tfdv.validate_statistics(training, judged,
                                                       serving_statistics=window), "skew")
    drift = measured_distances(tfdv.validate_statistics(window, judged,
                                                        previous_statistics=previous),
                               "drift") if previous is not None else {}
    training_features = feature_stats_by_name(training)
    previous_features = feature_stats_by_name(previous) if previous is not None else {}
    features, flagged = {}, []
    for name in compared:
        categorical = is_categorical(schema_features[name])
        psi_limit = float(psi_thresholds.get(name, psi_threshold))

        def side(measured, baseline_features):
            if name not in baseline_features:
                return None
            _, distance, _ = measured.get(name, ("", None, None))
            value = psi(baseline_features[name], window_features[name], categorical)
            over = ((distance is not None and distance > limits[name])
                    or (value is not None and value > psi_limit))
            return {"distance": distance, "psi": value, "flagged": bool(over)}

        skew_side = side(skew, training_features)
        drift_side = side(drift, previous_features) if previous is not None else None
        is_flagged = any(s and s["flagged"] for s in (skew_side, drift_side))
        features[name] = {"kind": "categorical" if categorical else "numeric",
                          "measure": "L-infinity" if categorical else "Jensen-Shannon",
                          "threshold": limits[name], "psi_threshold": psi_limit,
                          "skew": skew_side, "drift": drift_side, "flagged": is_flagged}
        if is_flagged:
            flagged.append(name)
    return {"verdict": DRIFT if flagged else NO_DRIFT, "flagged": flagged, "features": features}


def report_text(result: dict, schema, training, window, previous) -> str:
    """The report a person reads: the window, counts, verdict, then per feature the
    distances against their thresholds and the distributions side by side."""
    from components.traffic_distance import feature_stats_by_name, is_categorical, side_by_side

    lines = [f"TrafficMonitor: model {result['model_name']} (served: model "
             f"{result['served_model_id']}, version {result['served_version']}), window "
             f"{_iso(result['window_start'])} .. {_iso(result['window_end'])} (span "
             f"{result['span']})",
             f"requests: {result['requests']} logged, {result['failed_requests']} failed "
             f"(excluded{', codes ' + json.dumps(result['failed_codes']) if result['failed_codes'] else ''})"
             f", answered by versions {result['versions'] or '-'}",
             f"files read: {len(result['files'])}"]
    for path in result["truncated_files"]:
        lines.append(f"WARNING truncated log file, kept its complete records, skipped the rest: {path}")
    if result["out_of_schema"]:
        lines.append("out-of-schema features (not in the schema, left out): " + ", ".join(
            f"{k} ({v} values)" for k, v in sorted(result["out_of_schema"].items())))
    lines += live_quality_lines(result.get("live_quality"))
    if result["verdict"] == NO_TRAFFIC:
        lines.append(f"VERDICT: {NO_TRAFFIC} - no successful request was logged in this "
                     f"window; nothing compared, "
                     + ("ALERT: live accuracy below threshold" if result.get("alert")
                        else "no alert"))
        return "\n".join(lines) + "\n"
    lines.append(f"VERDICT: {result['verdict']}"
                 + (f" - flagged: {', '.join(result['flagged'])}" if result["flagged"] else ""))
    if result["drift_baseline"] is None:
        lines.append("drift: not measured - no earlier window of this monitor had traffic")
    else:
        lines.append(f"drift: against window span {result['drift_baseline']['span']} "
                     f"(statistics #{result['drift_baseline']['statistics_id']})")
    lines.append(f"skew: against training statistics #{result['training_statistics_id']} "
                 f"(split train)")
    schema_features = {f.name: f for f in schema.feature}
    stats = {"training": feature_stats_by_name(training), "window": feature_stats_by_name(window),
             "previous": feature_stats_by_name(previous) if previous is not None else {}}

    def fmt(value):
        return "-" if value is None else f"{value:.4f}"

    for name, feature in result["features"].items():
        lines.append("")
        lines.append(f"{name} ({feature['kind']}): {'FLAGGED' if feature['flagged'] else 'ok'}")
        for kind, baseline in (("skew", "training"), ("drift", "previous")):
            side = feature[kind]
            if side is None:
                continue
            lines.append(f"  {kind}: {feature['measure']} {fmt(side['distance'])} "
                         f"(threshold {feature['threshold']:g}), PSI {fmt(side['psi'])} "
                         f"(threshold {feature['psi_threshold']:g}) -> "
                         f"{'over' if side['flagged'] else 'under'}")
            lines += side_by_side(stats[baseline].get(name), stats["window"].get(name),
                                  is_categorical(schema_features[name]), baseline, "window")
    not_served = sorted(set(schema_features) - set(result["features"]))
    if not_served:
        lines.append("")
        lines.append(f"schema features absent from the traffic (not compared): "
                     f"{', '.join(not_served)}")
    return "\n".join(lines) + "\n"


def _previous_report(step: Step) -> TrafficReport | None:
    """This monitor's newest earlier report (same producer name, largest span)."""
    if step.metadata is None:
        return None
    mine = f"{step.component.id}.report"
    earlier = [a for a in step.metadata.artifacts_in_pipeline(step.pipeline_name, TrafficReport)
               if a.name == mine and a.span is not None]
    return max(earlier, key=lambda a: (a.span, a.id)) if earlier else None


def _previous_statistics(step: Step, previous: TrafficReport | None) -> ExampleStatistics | None:
    """The statistics of this monitor's newest earlier window that had traffic."""
    if previous is None:
        return None
    mine = f"{step.component.id}.statistics"
    spans_with_traffic = {r.span for r in step.metadata.artifacts_in_pipeline(
        step.pipeline_name, TrafficReport) if r.name == f"{step.component.id}.report"
        and (r.examples or 0) > 0}
    candidates = [a for a in step.metadata.artifacts_in_pipeline(step.pipeline_name,
                                                                 ExampleStatistics)
                  if a.name == mine and a.span in spans_with_traffic]
    return max(candidates, key=lambda a: (a.span, a.id)) if candidates else None


def _previous_history(previous: TrafficReport | None) -> list[dict]:
    if previous is None or not os.path.isfile(previous.path(HISTORY_FILE)):
        return []
    with open(previous.path(HISTORY_FILE), encoding="utf-8") as fh:
        return json.load(fh)


def parse_time(text: str) -> float:
    """UNIX seconds from ISO 8601 ("2026-11-30T12:00:00Z", no zone means UTC) or a number.
    Raises ValueError naming the text."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"window time {text!r} is neither ISO 8601 (2026-11-30T12:00:00Z) "
                         f"nor UNIX seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def monitor_pipeline(pipeline_name: str, model_name: str, *, log_dir: str = "",
                     window_start: str = "", window_end: str = "",
                     thresholds: dict[str, float] | None = None,
                     psi_thresholds: dict[str, float] | None = None,
                     push_destination: str = "", labels: str = "",
                     min_live_accuracy: float = 0.7, min_labels: int = 10,
                     asset_uri: str = "", cooldown_hours: float = 6.0):
    """The pipeline `<pipeline_name>-monitor`: ServedModelLineage -> TrafficMonitor ->
    RetrainingAlert (components/retraining_alert.py; `asset_uri` is the asset its alert is
    emitted to, "" to report only). Nothing is cached: each run reads a new window."""
    from components.retraining_alert import RetrainingAlert
    from pipelines.pipeline import Pipeline

    served = ServedModelLineage(model_name=model_name, push_destination=push_destination)
    monitor = TrafficMonitor(served_model=served.outputs.served_model,
                             served_push=served.outputs.served_push,
                             schema=served.outputs.schema,
                             training_statistics=served.outputs.training_statistics,
                             model_name=model_name, log_dir=log_dir,
                             window_start=window_start, window_end=window_end,
                             thresholds=thresholds or {}, psi_thresholds=psi_thresholds or {},
                             labels=labels, min_live_accuracy=min_live_accuracy,
                             min_labels=min_labels, enable_cache=False)
    alert = RetrainingAlert(report=monitor.outputs.report, asset_uri=asset_uri,
                            cooldown_hours=cooldown_hours, enable_cache=False)
    return Pipeline(f"{pipeline_name}-monitor", [served, monitor, alert], schedule=None,
                    description=f"skew and drift of model {model_name}'s served traffic")


def latest_verdict(metadata, pipeline_name: str) -> dict | None:
    """The newest window's judgement of `pipewright monitor PIPELINE` (what a retraining
    trigger reads): {"verdict", "flagged", "features", "window_start", "window_end",
    "span", ...} as in distances.json, or None when the monitor never ran."""
    reports = metadata.artifacts_in_pipeline(f"{pipeline_name}-monitor", TrafficReport)
    if not reports:
        return None
    newest = max(reports, key=lambda a: (a.span or 0, a.id))
    with open(newest.path(DISTANCES_FILE), encoding="utf-8") as fh:
        return json.load(fh)
