"""Reading the model server's request log (serving/request_log.py, serving/log_files.py) back
into tf.Examples, for the TrafficMonitor.

Files: `<log dir>/<model dir name>/<version>/<prefix>-<UTC time>-<seq>.tfrecord.gz`; only
closed files (no leading dot) are read. A record belongs to the window [start, end) (UNIX
seconds, UTC) by its `log_metadata.timestamp_secs`; a file opened at or after `end` (the time
in its name) is not opened at all.

Each tensorflow.serving.PredictionLog becomes one tf.Example per instance:
- predict_log whose request has one DT_STRING input named "examples" or "inputs"
  (serving_default): the serialized tf.Examples themselves;
- predict_log with named inputs (serving_raw): one feature per input, element i of each
  input's first dimension in example i; typed by the schema (INT -> int64_list, FLOAT ->
  float_list, BYTES -> bytes_list); NaN and "" are missing values (as serving_raw reads them,
  components/signatures.py), so the feature is left out of that example;
- classify_log / regress_log / multi_inference_log: request.input's example_list, or
  example_list_with_context (the context's features merged into each example).
A feature the schema lacks is left out of the example and counted per name
(out-of-schema). A record with our error field set (serving.request_log.request_log_fields:
error_code or error_message) is a failed request: excluded and counted.

A file cut short (a crash while writing, a truncated copy) raises DataLossError from the
TFRecord reader: its records read before the damage are kept, the file is named in a warning
and in `truncated_files`. A file last modified before the window starts holds no record of
it (each record is written after its timestamp) and is not opened.
"""
from __future__ import annotations

import calendar
import logging
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

SUFFIX = ".tfrecord.gz"
_NAME_TIME = re.compile(r".+-(?P<stamp>\d{8}T\d{12})Z-\d{6,}" + re.escape(SUFFIX))
SERIALIZED_INPUT_NAMES = ("examples", "inputs")


@dataclass
class TrafficWindow:
    """What one window of the request log held. examples: serialized tf.Examples (bytes)."""

    start: float
    end: float
    examples: list[bytes] = field(default_factory=list)
    requests: int = 0  # logged requests in the window, failed ones included
    failed: int = 0  # requests with our error field set: excluded
    failed_codes: Counter = field(default_factory=Counter)
    out_of_schema: Counter = field(default_factory=Counter)  # feature -> values dropped
    versions: Counter = field(default_factory=Counter)  # version dir -> requests
    signatures: Counter = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)
    truncated_files: list[str] = field(default_factory=list)
    unreadable: int = 0  # records that are no PredictionLog


def file_opened_at(path: str) -> float | None:
    """UNIX time in a log file's name (its opening time, UTC), or None if it has none."""
    match = _NAME_TIME.fullmatch(os.path.basename(path))
    if not match:
        return None
    stamp = match["stamp"]
    seconds = calendar.timegm(time.strptime(stamp[:15], "%Y%m%dT%H%M%S"))
    return seconds + int(stamp[15:]) / 1e6


def closed_log_files(log_dir: str, model_name: str) -> list[str]:
    """Closed request-log files of a model, all versions, ordered by opening time then
    name. [] when the directory does not exist."""
    from serving.log_files import model_dir_name

    root = os.path.join(log_dir, model_dir_name(model_name))
    found = []
    if not os.path.isdir(root):
        return []
    for version in sorted(os.listdir(root)):
        directory = os.path.join(root, version)
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            if name.startswith(".") or not name.endswith(SUFFIX):
                continue
            path = os.path.join(directory, name)
            found.append((file_opened_at(path) or 0.0, path))
    return [path for _, path in sorted(found)]


STALE_OPEN_FILE_S = 3600.0  # an open log file untouched this long was left by a dead server


def oldest_open_file(log_dir: str, model_name: str, now: float) -> tuple[float, str] | None:
    """(opening time, path) of the model's oldest request-log file still being written (the
    writer's hidden `.<name>`, serving/log_files.py), or None. A window must end there: the
    requests in that file become readable only when it is closed and renamed, and a window
    that ended later would never count them. Files untouched for STALE_OPEN_FILE_S (a server
    that died without closing them) are not waited for."""
    from serving.log_files import model_dir_name

    root = os.path.join(log_dir, model_dir_name(model_name))
    found = []
    for version in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        directory = os.path.join(root, version)
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            if not name.startswith(".") or not name.endswith(SUFFIX):
                continue
            path = os.path.join(directory, name)
            opened = file_opened_at(os.path.join(directory, name[1:]))
            try:
                fresh = now - os.path.getmtime(path) < STALE_OPEN_FILE_S
            except OSError:  # closed and renamed meanwhile
                continue
            if opened is not None and fresh:
                found.append((opened, path))
    return min(found) if found else None


def read_window(log_dir: str, model_name: str, start: float, end: float, schema,
                log: logging.Logger) -> TrafficWindow:
    """The window's traffic (module docstring). schema: a tensorflow_metadata Schema."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.request_log import request_log_fields

    window = TrafficWindow(start=start, end=end)
    types = {f.name: f.type for f in schema.feature}
    for path in closed_log_files(log_dir, model_name):
        opened = file_opened_at(path)
        if opened is not None and opened >= end:
            continue
        try:
            if os.path.getmtime(path) < start:
                continue  # closed before the window began: every record in it is older
        except OSError:
            continue  # removed by the server's byte budget since it was listed
        version = os.path.basename(os.path.dirname(path))
        used = False
        kept = 0
        damage: list[Exception] = []
        for record in intact_records(path, damage):
            kept += 1
            try:
                entry = prediction_log_pb2.PredictionLog.FromString(record)
            except Exception:
                window.unreadable += 1
                continue
            when = entry.log_metadata.timestamp_secs or opened or 0
            if not start <= when < end:
                continue
            used = True
            window.requests += 1
            window.versions[version] += 1
            window.signatures[entry.log_metadata.model_spec.signature_name or "-"] += 1
            extra = request_log_fields(entry)
            if extra.error_code or extra.error_message:
                window.failed += 1
                window.failed_codes[extra.error_code] += 1
                continue
            for example in _examples_of(entry, types, window.out_of_schema):
                window.examples.append(example.SerializeToString())
        if damage:
            log.warning("request log file %s is truncated or corrupt (%s): kept its %d "
                        "complete record(s) before the damage, skipped the rest", path,
                        type(damage[0]).__name__, kept)
            window.truncated_files.append(path)
        if used:
            window.files.append(path)
    return window


def intact_records(path: str, damage: list) -> Iterator[bytes]:
    """The serialized records of a gzip TFRecord log file up to any damage (a file a crash
    cut short); the tf.errors exception that ended it early, if any, is appended to `damage`."""
    import tensorflow as tf

    records = tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator()
    while True:
        try:
            yield next(records)
        except StopIteration:
            break
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as exc:
            damage.append(exc)
            return
    # A cut that falls where the writer flushed ends on a whole record: TensorFlow's reader
    # then stops as at a normal end. Only the gzip trailer tells the two apart.
    if not _gzip_complete(path):
        damage.append(EOFError(f"{path}: the gzip stream ends before its end marker"))


def _gzip_complete(path: str) -> bool:
    """Whether the gzip file at `path` ends with its stream's end (deflate's final block and
    the gzip trailer), i.e. was not cut short."""
    import zlib

    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                inflater.decompress(chunk, 0)
                while inflater.unconsumed_tail:
                    inflater.decompress(inflater.unconsumed_tail, 0)
                if inflater.eof:
                    return True
    except (OSError, zlib.error):
        return False
    return inflater.eof


def _examples_of(entry, types: dict, out_of_schema: Counter):
    from tensorflow.core.example import example_pb2

    kind = entry.WhichOneof("log_type")
    if kind == "predict_log":
        inputs = entry.predict_log.request.inputs
        yield from _predict_examples(inputs, types, out_of_schema)
        return
    if kind in ("classify_log", "regress_log", "multi_inference_log"):
        request_input = getattr(entry, kind).request.input
        which = request_input.WhichOneof("kind")
        if which == "example_list":
            examples, context = request_input.example_list.examples, None
        elif which == "example_list_with_context":
            examples = request_input.example_list_with_context.examples
            context = request_input.example_list_with_context.context
        else:
            return
        for example in examples:
            merged = example_pb2.Example()
            if context is not None:
                merged.CopyFrom(context)
            merged.MergeFrom(example)
            yield _keep_schema_features(merged, types, out_of_schema)


def _predict_examples(inputs, types: dict, out_of_schema: Counter):
    import tensorflow as tf
    from tensorflow.core.example import example_pb2

    if len(inputs) == 1:
        (name,) = inputs.keys()
        tensor = inputs[name]
        if name in SERIALIZED_INPUT_NAMES and tensor.dtype == tf.string.as_datatype_enum:
            for serialized in tf.make_ndarray(tensor).reshape(-1):
                yield _keep_schema_features(example_pb2.Example.FromString(serialized), types,
                                            out_of_schema)
            return
    columns = {name: tf.make_ndarray(tensor) for name, tensor in inputs.items()}
    rows = max((len(c) if c.ndim else 1 for c in columns.values()), default=0)
    for i in range(rows):
        example = example_pb2.Example()
        for name, column in columns.items():
            value = column[i] if column.ndim else column.item()
            if name not in types:
                out_of_schema[name] += 1
                continue
            _set_value(example.features.feature[name], value, types[name])
            if not _has_value(example.features.feature[name]):
                del example.features.feature[name]
        yield example


def _set_value(feature, value, schema_type) -> None:
    """One raw value into a tf.train.Feature of the schema's type; NaN / "" stay missing."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    values = list(value.reshape(-1)) if hasattr(value, "reshape") else [value]
    for v in values:
        if isinstance(v, bytes) or isinstance(v, str):
            raw = v.encode() if isinstance(v, str) else v
            if schema_type == schema_pb2.BYTES:
                if raw:
                    feature.bytes_list.value.append(raw)
                continue
            try:
                v = float(raw)
            except ValueError:
                continue
        number = float(v)
        if math.isnan(number):
            continue
        if schema_type == schema_pb2.INT:
            feature.int64_list.value.append(int(round(number)))
        elif schema_type == schema_pb2.FLOAT:
            feature.float_list.value.append(number)
        else:
            feature.bytes_list.value.append(str(v).encode())


def _has_value(feature) -> bool:
    kind = feature.WhichOneof("kind")
    return kind is not None and len(getattr(feature, kind).value) > 0


def _keep_schema_features(example, types: dict, out_of_schema: Counter):
    """Drops (and counts) the features the schema lacks; writes the others again in the
    schema's type (a float_list of whole numbers for an INT feature becomes an int64_list),
    so one window's examples decode into one column type per feature."""
    for name in list(example.features.feature):
        if name not in types:
            out_of_schema[name] += 1
            del example.features.feature[name]
            continue
        feature = example.features.feature[name]
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        feature.Clear()
        for value in values:
            _set_value(feature, value, types[name])
        if not _has_value(feature):
            del example.features.feature[name]
    return example
