"""Delayed labels: ground truth joined to the served model's logged predictions by request
id, giving the live accuracy of each served version (a classifier's).

Label files: CSV with a header holding `request_id` and `label` (and optionally `instance`,
the 0-based row of a request with several instances; default 0), or TFRecord (`.tfrecord`,
gzip when `.tfrecord.gz`) of tf.Examples with the bytes feature `request_id`, the feature
`label` (bytes, int64 or float) and optionally the int64 feature `instance`. The request id
is the one the model server logged: the client's `x-request-id` header / metadata, else the
id the server generated and returned (serving/data_plane.py request_id_from; the request
log's RequestLogFields.request_id, serving/request_log.py).

`labels` given to the monitor is a file (read whole, every window) or a directory (the label
files in it whose modification time lies in the window: the labels that arrived since the
previous window). Labels arrive late, so they are joined against the predictions of every
closed request-log file of the model, not only the window's.

The prediction of a logged request: predict_log with outputs `classes` and `scores`
(a row of class names and a row of scores per instance, TF Serving's classification
outputs): the class of the highest score; `classes` alone of shape [n]: that class;
classify_log: the label of the highest-scoring class of each classification. Labels and
classes compare as text (`1`, `1.0` and b"1" are the same class).

A shadowed request (serving/shadow.py) was answered twice under one request id, by the
stable version for the client and by the candidate in the shadow: its label counts once in
`joined` and judges each version's own answer.

A label whose request id (and instance) the log does not hold is counted as unjoined
("N labels did not join"); so is one whose request failed or whose response holds no
classification.
"""
from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from dataclasses import dataclass, field

LABEL_SUFFIXES = (".csv", ".tfrecord", ".tfrecord.gz")


@dataclass
class LiveQuality:
    """The join of one window's labels: counts, and per version labeled / correct."""

    files: list[str] = field(default_factory=list)
    labels: int = 0
    joined: int = 0
    unjoined: int = 0
    unjoined_examples: list[str] = field(default_factory=list)  # first few request ids
    labeled: Counter = field(default_factory=Counter)  # version -> joined labels
    correct: Counter = field(default_factory=Counter)  # version -> predicted == label

    def summary(self, threshold: float, min_labels: int) -> dict:
        """JSON for distances.json: {"threshold", "min_labels", "labels", "joined",
        "unjoined", "unjoined_examples", "files", "versions": {version: {"labeled",
        "correct", "accuracy", "below_threshold", "judged"}}}. A version with fewer than
        `min_labels` joined labels is measured but not judged."""
        versions = {}
        for version in sorted(self.labeled):
            labeled, correct = self.labeled[version], self.correct[version]
            accuracy = correct / labeled
            judged = labeled >= min_labels
            versions[version] = {"labeled": labeled, "correct": correct, "accuracy": accuracy,
                                 "judged": judged,
                                 "below_threshold": bool(judged and accuracy < threshold)}
        return {"threshold": threshold, "min_labels": min_labels, "labels": self.labels,
                "joined": self.joined, "unjoined": self.unjoined,
                "unjoined_examples": self.unjoined_examples, "files": self.files,
                "versions": versions}


def label_files(path: str, start: float, end: float) -> list[str]:
    """The label files to read for the window [start, end): `path` itself when a file, the
    label files of a directory modified in the window. Raises FileNotFoundError naming a
    path that does not exist, ValueError for a file that is no label file."""
    if os.path.isfile(path):
        if not path.endswith(LABEL_SUFFIXES):
            raise ValueError(f"label file {path} must end in one of {LABEL_SUFFIXES}")
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"labels {path} is neither a file nor a directory")
    found = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name.startswith(".") or not name.endswith(LABEL_SUFFIXES) or not os.path.isfile(full):
            continue
        if start <= os.path.getmtime(full) < end:
            found.append(full)
    return found


def normalized(value) -> str:
    """A label or class as comparable text: bytes decoded, integral numbers without '.0'."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def read_labels(paths: list[str]) -> dict[tuple[str, int], str]:
    """{(request id, instance): label} of the files. Raises ValueError naming the file and
    row (or record) for a missing column or feature, an empty request id, a bad instance,
    or one request id and instance given two different labels."""
    labels: dict[tuple[str, int], str] = {}
    where: dict[tuple[str, int], str] = {}
    for path in paths:
        rows = _csv_rows(path) if path.endswith(".csv") else _tfrecord_rows(path)
        for place, request_id, instance, label in rows:
            if not request_id:
                raise ValueError(f"{place}: empty request_id")
            if instance < 0:
                raise ValueError(f"{place}: instance must be >= 0, got {instance}")
            key = (request_id, instance)
            if key in labels and labels[key] != label:
                raise ValueError(f"{place}: request {request_id!r} instance {instance} has "
                                 f"label {label!r}, but {where[key]} gave it {labels[key]!r}")
            labels[key], where[key] = label, place
    return labels


def _csv_rows(path: str):
    # -sig: an Excel BOM is no part of the first column's name.
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        try:
            yield from _csv_dict_rows(path, reader)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} row {_first_undecodable_line(path)}: not UTF-8 text "
                             f"({e.reason})") from None


def _first_undecodable_line(path: str) -> int:
    """The 1-based line holding the file's first byte that is not UTF-8 (the decoder reads
    in chunks, so its error does not say)."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _csv_dict_rows(path: str, reader: csv.DictReader):
    missing = [c for c in ("request_id", "label") if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"label file {path}: header {reader.fieldnames} lacks column(s) "
                         f"{missing} (expected request_id,label[,instance])")
    for row in reader:
        place = f"{path} row {reader.line_num}"
        if None in row:  # more fields than the header: e.g. a label with an unquoted comma
            raise ValueError(f"{place}: {len(reader.fieldnames) + len(row[None])} fields, the "
                             f"header has {len(reader.fieldnames)} ({reader.fieldnames})")
        text = (row.get("instance") or "0").strip()
        try:
            instance = int(text)
        except ValueError:
            raise ValueError(f"{place}: instance {text!r} is not an integer") from None
        if row["label"] is None or row["label"].strip() == "":
            raise ValueError(f"{place}: empty label")
        yield place, (row["request_id"] or "").strip(), instance, normalized(row["label"])


def _tfrecord_rows(path: str):
    import tensorflow as tf
    from tensorflow.core.example import example_pb2

    from google.protobuf.message import DecodeError

    compression = "GZIP" if path.endswith(".gz") else ""
    for number, record in enumerate(_records(path, compression)):
        place = f"{path} record {number}"
        try:
            features = example_pb2.Example.FromString(record).features.feature
        except DecodeError:
            raise ValueError(f"{place}: not a tf.Example") from None
        values = {}
        for name in ("request_id", "label", "instance"):
            if name not in features:
                continue
            kind = features[name].WhichOneof("kind")
            found = list(getattr(features[name], kind).value) if kind else []
            if found:
                values[name] = found[0]
        for name in ("request_id", "label"):
            if name not in values:
                raise ValueError(f"{place}: no feature {name!r} (expected request_id, label, "
                                 f"optional instance)")
        request_id = values["request_id"]
        request_id = request_id.decode() if isinstance(request_id, bytes) else str(request_id)
        yield place, request_id.strip(), int(values.get("instance", 0)), \
            normalized(values["label"])


def _records(path: str, compression: str):
    """The file's records; ValueError naming the file and record for a damaged one (TF's
    DataLossError names neither)."""
    import tensorflow as tf

    iterator = tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator()
    number = 0
    while True:
        try:
            record = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            kind = "gzip TFRecord" if compression else "TFRecord"
            raise ValueError(f"{path} record {number}: not a readable {kind} file: "
                             f"{e.message.split('}} ')[-1].split(' [Op:')[0]}") from None
        yield record
        number += 1


def join_labels(labels: dict[tuple[str, int], str], log_dir: str, model_name: str,
                log: logging.Logger) -> LiveQuality:
    """Joins labels to the predictions of every closed request-log file of the model
    (module docstring)."""
    from tensorflow_serving.apis import prediction_log_pb2

    from components.traffic_logs import closed_log_files, intact_records
    from serving.request_log import request_log_fields

    quality = LiveQuality(labels=len(labels))
    wanted = {request_id for request_id, _ in labels}
    # request id -> {version: classes}: a shadowed request was answered by two versions
    # (stable for the client, the candidate in the shadow), each judged on its own answer.
    predicted: dict[str, dict[str, list[str]]] = {}
    for path in closed_log_files(log_dir, model_name):
        version = os.path.basename(os.path.dirname(path))
        damage: list[Exception] = []
        for record in intact_records(path, damage):
            try:
                entry = prediction_log_pb2.PredictionLog.FromString(record)
            except Exception:  # noqa: BLE001 - not a PredictionLog: nothing to join
                continue
            fields = request_log_fields(entry)
            if fields.request_id not in wanted or fields.error_code or fields.error_message:
                continue
            classes = predicted_classes(entry)
            if classes:
                predicted.setdefault(fields.request_id, {})[version] = classes
        if damage:
            log.warning("request log file %s is truncated or corrupt: its predictions "
                        "after the damage cannot be joined to labels", path)
    for (request_id, instance), label in sorted(labels.items()):
        answers = {version: classes for version, classes in
                   predicted.get(request_id, {}).items() if instance < len(classes)}
        if not answers:
            quality.unjoined += 1
            if len(quality.unjoined_examples) < 5:
                quality.unjoined_examples.append(
                    request_id if instance == 0 else f"{request_id}[{instance}]")
            continue
        quality.joined += 1
        for version, classes in answers.items():
            quality.labeled[version] += 1
            quality.correct[version] += int(classes[instance] == label)
    return quality


def predicted_classes(entry) -> list[str]:
    """The predicted class of each instance of a logged request ([] when its response
    holds no classification); see the module docstring."""
    import numpy as np
    import tensorflow as tf

    kind = entry.WhichOneof("log_type")
    if kind == "classify_log":
        result = []
        for classification in entry.classify_log.response.result.classifications:
            if not classification.classes:
                return []
            best = max(classification.classes, key=lambda c: c.score)
            result.append(normalized(best.label))
        return result
    if kind != "predict_log":
        return []
    outputs = entry.predict_log.response.outputs
    if "classes" not in outputs:
        return []
    classes = tf.make_ndarray(outputs["classes"])
    if classes.ndim == 1:
        return [normalized(c) for c in classes]
    if classes.ndim == 2 and "scores" in outputs:
        scores = tf.make_ndarray(outputs["scores"])
        if scores.shape != classes.shape:
            return []
        best = np.argmax(scores, axis=1)
        return [normalized(classes[i, best[i]]) for i in range(len(best))]
    return []
