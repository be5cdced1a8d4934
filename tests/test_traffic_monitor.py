"""TrafficMonitor on real components: the session's penguin model (`trained_penguin`), its
real lineage in ML Metadata, and request logs written by the model server's own writers
(serving.request_log.RequestLogger.prediction_log + serving.log_files.LogFiles) from
PredictRequests built as a client builds them (serving_raw named inputs from the
palmerpenguins CSV rows). No server is started: the clock of the log files and each record's
time are set, so two windows an hour apart take no waiting.

The monitor runs in a home of its own holding a copy of the trained home's metadata store
(the trained home is shared by the session and must not change); the served model is read
from the trained home's serving directory (push_destination)."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import pytest

T0 = 1_790_000_000.0  # 2026-09-21T...Z: window 1 starts here; window 2 an hour later
NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
STRINGS = ["island", "sex"]
SERVED = NUMERIC + STRINGS


def penguin_rows() -> list[dict]:
    from pipelines.penguin.pipeline import PACKAGED_DATA

    with open(os.path.join(PACKAGED_DATA, "penguins.csv"), newline="") as fh:
        return list(csv.DictReader(fh))


def raw_request(row: dict, model_name: str = "penguin"):
    """A serving_raw PredictRequest for one row, as a client sends it: every input present,
    NaN for a missing number, "" for a missing string (README, Serving)."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_raw"
    for name in NUMERIC:
        value = row[name]
        number = float(value) if value not in ("NA", "") else math.nan
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.array([number], np.float32)))
    for name in STRINGS:
        value = row[name] if row[name] != "NA" else ""
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.array([value.encode()], object)))
    return request


def classify_request(row: dict, extra: dict):
    """A Classify request with one tf.Example carrying the row plus `extra` features."""
    from tensorflow.core.example import example_pb2
    from tensorflow_serving.apis import classification_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "penguin"
    example = example_pb2.Example()
    for name in NUMERIC:  # typed as the schema declares them: INT or FLOAT
        if row[name] == "NA":
            continue
        if name in ("flipper_length_mm", "body_mass_g"):
            example.features.feature[name].int64_list.value.append(int(row[name]))
        else:
            example.features.feature[name].float_list.value.append(float(row[name]))
    for name, value in {**{n: row[n] for n in STRINGS}, **extra}.items():
        if value != "NA":
            example.features.feature[name].bytes_list.value.append(value.encode())
    request.input.example_list.examples.append(example)
    return request


class LogWriter:
    """The server's writers, driven with a settable clock."""

    def __init__(self, log_dir: str, version: int):
        from serving.log_files import LogFiles
        from serving.request_log import LogPolicy, RequestLogger
        from tensorflow_serving.config import logging_config_pb2

        self.now = T0
        self.version = version
        self.logger = RequestLogger(log_dir=log_dir, metrics=_NullMetrics())
        self.files = LogFiles(max_file_bytes=1 << 20, max_file_age_seconds=3600,
                              max_total_bytes=1 << 30, clock=lambda: self.now)
        config = logging_config_pb2.SamplingConfig(sampling_rate=1.0)
        self.policy = LogPolicy(1.0, config, log_dir, "requests")

    def log(self, request, *, method: str = "Predict", error=None, when: float | None = None,
            response=None, request_id: str = ""):
        from serving.data_plane import CallRecord, RequestContext
        from serving.request_log import LOG_FIELDS

        ctx = _context(RequestContext, request_id)
        record = CallRecord(ctx=ctx, method=method, model_name="penguin",
                            version=self.version, request=request, response=response,
                            error=error, latency_micros=1000.0)
        entry = self.logger.prediction_log(self.policy, LOG_FIELDS[method], record,
                                           self.now if when is None else when)
        self.files.write(self.policy.root, "penguin", self.version, "requests",
                         entry.SerializeToString())

    def close(self) -> list[str]:
        opened = dict(self.files._open)
        self.files.close_all()
        return [f.final_path for f in opened.values()]


class _NullMetrics:
    def __getattr__(self, name):
        return None

    def count(self, *args, **kwargs):
        pass


def _context(RequestContext, request_id: str = ""):
    return RequestContext(transport="GRPC",
                          request_id=request_id or "test-" + os.urandom(4).hex())


def write_window(writer: LogWriter, rows: list[dict], start: float, *, failed: int = 0,
                 classify_extra: int = 0) -> list[str]:
    """Logs every row as one serving_raw request, one second apart from `start`; then
    `failed` failed requests and `classify_extra` Classify requests whose examples carry
    an out-of-schema feature "colour". Returns the closed files."""
    from serving.errors import INVALID_ARGUMENT, ServingError

    writer.now = start
    for i, row in enumerate(rows):
        writer.log(raw_request(row), when=start + i)
    for i in range(failed):
        writer.log(raw_request(rows[i]), when=start + i,
                   error=ServingError(INVALID_ARGUMENT, "bad input on purpose"))
    for i in range(classify_extra):
        writer.log(classify_request(rows[i], {"colour": "grey"}), method="Classify",
                   when=start + i)
    return writer.close()


def shifted(rows: list[dict]) -> list[dict]:
    """body_mass_g x 1.5, island mix inverted (Biscoe <-> Torgersen, the most and the least
    frequent island); the other features as they were."""
    swap = {"Biscoe": "Torgersen", "Torgersen": "Biscoe", "Dream": "Dream"}
    out = []
    for row in rows:
        row = dict(row)
        if row["body_mass_g"] != "NA":
            row["body_mass_g"] = str(round(float(row["body_mass_g"]) * 1.5))
        row["island"] = swap[row["island"]]
        out.append(row)
    return out


def monitor_home(trained_penguin, tmp_path: Path) -> Path:
    home = tmp_path / "monitor-home"
    home.mkdir()
    shutil.copy(os.path.join(trained_penguin.home, "metadata.sqlite"), home / "metadata.sqlite")
    return home


def run_monitor(trained_penguin, home: Path, **window):
    from components.traffic_monitor import monitor_pipeline
    from pipelines.local_runner import run_pipeline

    pipeline = monitor_pipeline("penguin", "penguin", log_dir=str(home / "request_logs"),
                                push_destination=os.path.dirname(trained_penguin.serving_base),
                                **window)
    result = run_pipeline(pipeline, home=str(home), enable_cache=False, echo=lambda line: None)
    assert result.ok, result.summary()
    report = result.steps["TrafficMonitor"].outputs["report"]
    with open(os.path.join(report.uri, "distances.json")) as fh:
        distances = json.load(fh)
    with open(os.path.join(report.uri, "report.txt")) as fh:
        text = fh.read()
    return result, report, distances, text


@pytest.fixture(scope="module")
def two_windows(trained_penguin, tmp_path_factory):
    home = monitor_home(trained_penguin, tmp_path_factory.mktemp("traffic"))
    writer = LogWriter(str(home / "request_logs"), trained_penguin.version)
    rows = penguin_rows()
    write_window(writer, rows, T0, failed=3, classify_extra=2)
    write_window(writer, shifted(rows), T0 + 3600)
    first = run_monitor(trained_penguin, home, window_start=str(T0), window_end=str(T0 + 1800))
    second = run_monitor(trained_penguin, home, window_end=str(T0 + 5400))  # since the last
    return home, rows, first, second


def test_window_from_the_training_distribution_records_every_feature_under_threshold(
        two_windows, trained_penguin):
    home, rows, (result, report, distances, text), _ = two_windows
    assert distances["verdict"] == "no drift", text
    assert distances["flagged"] == []
    assert sorted(distances["features"]) == sorted(SERVED)
    for name, feature in distances["features"].items():
        skew = feature["skew"]
        assert skew["distance"] is not None and skew["psi"] is not None, (name, feature)
        assert skew["distance"] <= feature["threshold"], (name, feature)
        assert skew["psi"] <= feature["psi_threshold"], (name, feature)
        assert feature["drift"] is None  # the first window has nothing to drift from
    assert distances["requests"] == len(rows) + 3 + 2
    assert distances["failed_requests"] == 3 and distances["failed_codes"] == {"3": 3}
    assert distances["out_of_schema"] == {"colour": 2}
    assert report.properties["examples"] == len(rows) + 2
    assert report.properties["verdict"] == "no drift"
    assert "VERDICT: no drift" in text and "drift: not measured" in text
    assert "out-of-schema features" in text and "colour (2 values)" in text
    # The window became an Examples artifact whose lineage reaches the served model.
    from pipelines.metadata import Metadata

    metadata = Metadata(str(home / "metadata.sqlite"))
    examples = result.steps["TrafficMonitor"].outputs["examples"]
    assert examples.span == 1
    inputs = metadata.lineage(examples)["producers"][0]["inputs"]
    assert inputs["served_push"].pushed_version == trained_penguin.version
    assert inputs["served_model"].id == trained_penguin.run.steps["Trainer"].outputs["model"].id
    assert inputs["training_statistics"].id == \
        trained_penguin.run.steps["StatisticsGen"].outputs["statistics"].id
    # The schema the push served beside the model (the pipeline's curated one).
    assert inputs["schema"].id == trained_penguin.run.steps["ImportSchemaGen"].outputs["schema"].id


def test_shifted_window_flags_exactly_the_shifted_features_as_skew_and_drift(two_windows):
    home, rows, first, (result, report, distances, text) = two_windows
    assert distances["verdict"] == "drift", text
    assert sorted(distances["flagged"]) == ["body_mass_g", "island"], text
    for name in ("body_mass_g", "island"):
        feature = distances["features"][name]
        assert feature["skew"]["flagged"] and feature["drift"]["flagged"], (name, feature)
        assert feature["skew"]["distance"] > feature["threshold"]
        assert feature["drift"]["distance"] > feature["threshold"]
        assert feature["drift"]["psi"] > feature["psi_threshold"]
    for name in set(SERVED) - {"body_mass_g", "island"}:
        feature = distances["features"][name]
        assert feature["drift"]["distance"] is not None and not feature["flagged"], (name, feature)
    # "since the last window": it starts where window 1 ended.
    assert distances["window_start"] == first[2]["window_end"]
    assert distances["span"] == 2 and distances["drift_baseline"]["span"] == 1
    assert "VERDICT: drift - flagged: body_mass_g, island" in text
    assert "island (categorical): FLAGGED" in text and "Biscoe" in text
    with open(os.path.join(report.uri, "history.json")) as fh:
        history = json.load(fh)
    assert [h["verdict"] for h in history] == ["no drift", "drift"]
    assert [h["span"] for h in history] == [1, 2]
    from components.traffic_monitor import latest_verdict
    from pipelines.metadata import Metadata

    newest = latest_verdict(Metadata(str(home / "metadata.sqlite")), "penguin")
    assert newest["verdict"] == "drift" and sorted(newest["flagged"]) == ["body_mass_g", "island"]
    assert json.loads(report.properties["distances"])["island"]["drift"]["flagged"]


def test_truncated_log_file_is_skipped_with_a_warning_and_an_empty_window_says_so(
        trained_penguin, tmp_path):
    home = monitor_home(trained_penguin, tmp_path)
    writer = LogWriter(str(home / "request_logs"), trained_penguin.version)
    rows = penguin_rows()
    [intact] = write_window(writer, rows[:100], T0)
    [damaged] = write_window(writer, rows * 4, T0 + 200)
    size = os.path.getsize(damaged)
    with open(damaged, "r+b") as fh:
        fh.truncate(size // 2)  # a crash mid-copy: the gzip stream ends halfway

    result, report, distances, text = run_monitor(trained_penguin, home, window_start=str(T0),
                                                  window_end=str(T0 + 3000))
    assert distances["truncated_files"] == [damaged]
    assert f"WARNING truncated log file, kept its complete records, skipped the rest: {damaged}" \
        in text
    log_text = Path(result.steps["TrafficMonitor"].log_path).read_text()
    assert "is truncated or corrupt" in log_text and damaged in log_text
    # Every record of the intact file, some (not all) of the damaged one.
    assert 100 < distances["requests"] < 100 + 4 * len(rows)
    assert sorted(distances["files"]) == sorted([intact, damaged])

    result, report, distances, text = run_monitor(trained_penguin, home,
                                                  window_end=str(T0 + 7200))
    assert distances["verdict"] == "no traffic" and distances["requests"] == 0
    assert distances["flagged"] == [] and distances["features"] == {}
    assert "VERDICT: no traffic - no successful request was logged in this window" in text
    assert report.properties["verdict"] == "no traffic"


def test_a_window_stops_where_a_log_file_still_being_written_began_and_the_next_counts_it(
        trained_penguin, tmp_path):
    """A window ending 'now' while the server still writes a log file (hidden until closed)
    would skip that file's requests for good: the window ends where the file began."""
    home = monitor_home(trained_penguin, tmp_path)
    writer = LogWriter(str(home / "request_logs"), trained_penguin.version)
    rows = penguin_rows()
    write_window(writer, rows[:100], T0)
    writer.now = T0 + 600
    for i, row in enumerate(rows[100:150]):  # still open: `.requests-...` beside the closed one
        writer.log(raw_request(row), when=T0 + 600 + i)

    result, report, distances, text = run_monitor(trained_penguin, home, window_start=str(T0),
                                                  window_end=str(T0 + 1800))
    assert (report.window_end, distances["requests"]) == (T0 + 600, 100)
    note = result.steps["TrafficMonitor"].reason
    assert "where the oldest request-log file still being written began" in note, note
    writer.close()
    result, report, distances, text = run_monitor(trained_penguin, home,
                                                  window_end=str(T0 + 1800))
    assert (report.window_start, report.window_end, distances["requests"]) == \
        (T0 + 600, T0 + 1800, 50)


# -- delayed labels and the retraining alert ----------------------------------------------------
ASSET_URI = "pipewright://penguin/retraining-alert"
ROTATED = {"Adelie": "Gentoo", "Gentoo": "Chinstrap", "Chinstrap": "Adelie"}


def served_answers(model_dir: str, rows: list[dict]):
    """The served model's serving_raw PredictResponse for each row, as the server answers
    (its `classes` and `scores` outputs), computed by the SavedModel itself."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    signature = tf.saved_model.load(model_dir).signatures["serving_raw"]
    specs = signature.structured_input_signature[1]
    inputs = {}
    for name, spec in specs.items():
        column = [row[name] for row in rows]
        if spec.dtype == tf.string:
            inputs[name] = tf.constant([v.encode() for v in column])
        else:
            inputs[name] = tf.constant(np.array(column, dtype=float), dtype=spec.dtype)
    outputs = {k: v.numpy() for k, v in signature(**inputs).items()}
    answers = []
    for i in range(len(rows)):
        response = predict_pb2.PredictResponse()
        for name in ("classes", "scores"):
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name][i:i + 1]))
        answers.append(response)
    predicted = [outputs["classes"][i][int(np.argmax(outputs["scores"][i]))].decode()
                 for i in range(len(rows))]
    return answers, predicted


def log_labelled_window(writer: LogWriter, rows, answers, start: float, prefix: str):
    writer.now = start
    for i, (row, answer) in enumerate(zip(rows, answers)):
        writer.log(raw_request(row), when=start + i, response=answer,
                   request_id=f"{prefix}-{i}")
    return writer.close()


def write_labels(folder: Path, name: str, labels: dict[str, str], arrived: float) -> Path:
    """A delayed-label CSV that arrived at `arrived` (its modification time)."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["request_id", "label"])
        writer.writerows(sorted(labels.items()))
    os.utime(path, (arrived, arrived))
    return path


@pytest.fixture(scope="module")
def alerts(trained_penguin, tmp_path_factory):
    """Three hourly windows of served traffic with the served model's own answers, and
    delayed labels arriving in each: (1) the true species: no alert; (2) the same traffic,
    but the world changed: every label is another species than the CSV's (the live
    accuracy collapses), an alert is emitted; (3) shifted features an hour later: drift,
    an alert within the 6 h cooldown, suppressed."""
    home = monitor_home(trained_penguin, tmp_path_factory.mktemp("alerts"))
    writer = LogWriter(str(home / "request_logs"), trained_penguin.version)
    rows = [r for r in penguin_rows() if "NA" not in r.values()]
    answers, predicted = served_answers(trained_penguin.model_dir, rows)
    labels_dir = home / "labels"
    log_labelled_window(writer, rows, answers, T0, "w1")
    true = {f"w1-{i}": row["species"] for i, row in enumerate(rows)}
    write_labels(labels_dir, "w1.csv", {**true, "nobody-1": "Adelie", "nobody-2": "Gentoo",
                                        "nobody-3": "Adelie"}, T0 + 1000)
    log_labelled_window(writer, rows, answers, T0 + 3600, "w2")
    write_labels(labels_dir, "w2.csv", {f"w2-{i}": ROTATED[row["species"]]
                                        for i, row in enumerate(rows)}, T0 + 4600)
    write_window(writer, shifted(rows), T0 + 7200)
    options = dict(labels=str(labels_dir), min_live_accuracy=0.6, min_labels=10,
                   asset_uri=ASSET_URI, cooldown_hours=6.0)
    runs = [run_monitor(trained_penguin, home, window_start=str(T0),
                        window_end=str(T0 + 3600), **options)]
    for end in (T0 + 7200, T0 + 10800):
        runs.append(run_monitor(trained_penguin, home, window_end=str(end), **options))
    return home, rows, predicted, runs


def test_labels_join_logged_predictions_by_request_id_and_unknown_ids_are_counted(alerts):
    home, rows, predicted, runs = alerts
    result, report, distances, text = runs[0]
    quality = distances["live_quality"]
    version = str(report.properties["served_versions"][0])
    expected = sum(p == row["species"] for p, row in zip(predicted, rows)) / len(rows)
    assert expected > 0.6, "the session's model is better than the threshold on its own data"
    assert quality["labels"] == len(rows) + 3
    assert quality["joined"] == len(rows) and quality["unjoined"] == 3
    assert quality["unjoined_examples"] == ["nobody-1", "nobody-2", "nobody-3"]
    assert quality["files"] == [str(home / "labels" / "w1.csv")]
    measured = quality["versions"][version]
    assert measured["labeled"] == len(rows)
    assert measured["accuracy"] == pytest.approx(expected)
    assert not measured["below_threshold"] and distances["alert"] is False
    assert (f"live quality: {len(rows) + 3} labels from 1 file(s), {len(rows)} joined, "
            f"3 labels did not join (e.g. nobody-1, nobody-2, nobody-3)") in text
    assert f"version {version}: live accuracy {expected:.4f}" in text
    log_text = Path(result.steps["TrafficMonitor"].log_path).read_text()
    assert "3 labels did not join a logged prediction" in log_text
    # No alert: the step is skipped, nothing to emit.
    alert = result.steps["RetrainingAlert"]
    assert alert.outcome == "skipped" and alert.reason.startswith("no alert: verdict no drift")
    assert alert.outputs["alert"].properties["emitted"] == 0
    assert not os.path.exists(os.path.join(alert.outputs["alert"].uri, "asset_event.json"))


def test_live_accuracy_below_threshold_emits_an_alert_with_the_report_in_its_extra(alerts):
    home, rows, predicted, runs = alerts
    result, report, distances, text = runs[1]
    assert distances["verdict"] == "no drift", "the same traffic: only the labels changed"
    quality = distances["live_quality"]
    assert quality["files"] == [str(home / "labels" / "w2.csv")], "only the newly arrived"
    assert quality["joined"] == len(rows) and quality["unjoined"] == 0
    [measured] = quality["versions"].values()
    expected = sum(p == ROTATED[row["species"]] for p, row in zip(predicted, rows)) / len(rows)
    assert measured["accuracy"] == pytest.approx(expected) and expected < 0.6
    assert measured["below_threshold"] and distances["alert"] is True
    assert report.properties["alert"] == 1
    assert "-> BELOW THRESHOLD" in text
    step = result.steps["RetrainingAlert"]
    assert step.outcome == "ok"
    alert = step.outputs["alert"]
    assert alert.properties["emitted"] == 1 and alert.properties["report_id"] == report.id
    with open(os.path.join(alert.uri, "asset_event.json")) as fh:
        extra = json.load(fh)
    assert extra["report_id"] == report.id
    assert extra["model_version"] == distances["served_version"]
    assert extra["reasons"] == [f"live accuracy of version {alert.properties['model_version']}"
                                f": {expected:.4f} < 0.6 ({len(rows)} labels)"]
    assert sorted(extra["distances"]) == sorted(SERVED)


def test_a_drift_alert_within_the_cooldown_is_suppressed_and_says_so(alerts):
    home, rows, predicted, runs = alerts
    _, second_report, _, _ = runs[1]
    result, report, distances, text = runs[2]
    assert distances["verdict"] == "drift" and distances["alert"] is True
    assert distances["live_quality"]["labels"] == 0  # no label file arrived in this window
    step = result.steps["RetrainingAlert"]
    assert step.outcome == "skipped"
    first = runs[1][0].steps["RetrainingAlert"].outputs["alert"]
    assert step.reason.startswith(f"alert suppressed by the cooldown: alert #{first.id} "
                                  f"(report #{second_report.id}) started a retraining at ")
    assert "skew: body_mass_g, island" in step.reason
    alert = step.outputs["alert"]
    assert alert.properties["suppressed"] == 1 and alert.properties["emitted"] == 0
    assert alert.properties["cooldown_until"] == pytest.approx(
        first.properties["decided_at"] + 6 * 3600)
    log_text = Path(step.log_path).read_text()
    assert "alert suppressed by the cooldown" in log_text


def test_pipewright_show_prints_each_decision(alerts, capsys):
    from pipelines.inspect_cli import print_artifact

    home, _, _, runs = alerts
    emitted = runs[1][0].steps["RetrainingAlert"].outputs["alert"]
    suppressed = runs[2][0].steps["RetrainingAlert"].outputs["alert"]
    assert print_artifact(str(home), str(emitted.id)) == 0
    out = capsys.readouterr().out
    assert "  emitted: alert emitted: live accuracy of version" in out
    assert f"  report: TrafficReport #{emitted.properties['report_id']}, model penguin" in out
    assert f"  asset {ASSET_URI}; no other alert emitted before " in out
    assert print_artifact(str(home), str(suppressed.id)) == 0
    assert "  suppressed (cooldown): alert suppressed by the cooldown: alert #" in \
        capsys.readouterr().out


def test_pipewright_monitor_prints_live_quality_and_reports_an_alert_it_cannot_emit(
        alerts, trained_penguin, capsys):
    """The command line: a label file given by path is read whole; without Airflow the
    alert is reported, not emitted."""
    from pipelines.monitor_cli import main

    home, rows, predicted, _ = alerts
    code = main(["penguin", "--home", str(home), "--log-dir", str(home / "request_logs"),
                 "--push-destination", os.path.dirname(trained_penguin.serving_base),
                 "--end", str(T0 + 14400), "--labels", str(home / "labels" / "w2.csv"),
                 "--min-live-accuracy", "0.6"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"live quality: {len(rows)} labels from 1 file(s), {len(rows)} joined, 0 labels " \
           f"did not join" in out
    assert "VERDICT: no traffic - no successful request was logged in this window; nothing " \
           "compared, ALERT: live accuracy below threshold" in out
    assert "RETRAINING: alert (live accuracy of version" in out
    assert "no asset to emit to: retraining starts only from the monitoring DAG" in out

    code = main(["penguin", "--home", str(home), "--log-dir", str(home / "request_logs"),
                 "--push-destination", os.path.dirname(trained_penguin.serving_base),
                 "--end", str(T0 + 14400), "--labels", str(home / "labels" / "w2.csv"),
                 "--min-labels", "0"])
    captured = capsys.readouterr()
    assert code == 1 and "min_labels must be at least 1" in captured.err + captured.out, \
        "0 is refused by name, not taken as 1"


def test_a_log_file_cut_where_the_writer_flushed_is_still_found_damaged(tmp_path):
    """The server flushes its gzip stream after records, so a crash can cut a file on a whole
    record: TensorFlow's reader then ends as at a normal end (1 cut in 10 here, which made
    the truncated-file test flaky). The gzip trailer is checked as well."""
    import random
    import shutil

    import tensorflow as tf

    from components.traffic_logs import intact_records

    path = str(tmp_path / "requests.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for _ in range(300):
            writer.write(os.urandom(50))
            writer.flush()
    complete: list = []
    assert len(list(intact_records(path, complete))) == 300 and complete == []
    size, rng = os.path.getsize(path), random.Random(1)
    undetected = []
    for cut in rng.sample(range(100, size - 1), 60):
        copy = str(tmp_path / f"cut-{cut}.tfrecord.gz")
        shutil.copy(path, copy)
        with open(copy, "r+b") as fh:
            fh.truncate(cut)
        damage: list = []
        kept = len(list(intact_records(copy, damage)))
        if not damage or kept >= 300:
            undetected.append(cut)
    assert undetected == [], f"cuts read as complete files: {undetected}"
