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

    def log(self, request, *, method: str = "Predict", error=None, when: float | None = None):
        from serving.data_plane import CallRecord, RequestContext
        from serving.request_log import LOG_FIELDS

        ctx = _context(RequestContext)
        record = CallRecord(ctx=ctx, method=method, model_name="penguin",
                            version=self.version, request=request, response=None,
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


def _context(RequestContext):
    return RequestContext(transport="GRPC", request_id="test-" + os.urandom(4).hex())


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
