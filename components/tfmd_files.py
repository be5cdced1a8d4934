"""Reading and writing the tensorflow-metadata protos the data components exchange:
a Schema as text (`schema.pbtxt`), statistics and anomalies as binary protos.
Only the proto classes are imported here, not TensorFlow."""
from __future__ import annotations

import os

STATISTICS_FILE = "FeatureStats.pb"
ANOMALIES_FILE = "SchemaDiff.pb"


class SchemaFileError(ValueError):
    """A schema file that does not parse; the message names the file and line."""


def read_schema(path: str):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    if not os.path.isfile(path):
        raise FileNotFoundError(f"schema file {path} does not exist")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    schema = schema_pb2.Schema()
    try:
        text_format.Parse(text, schema)
    except text_format.ParseError as exc:
        line = exc.GetLine()
        where = f"{path} line {line}" if line is not None else path
        raise SchemaFileError(f"{where}: not a valid tensorflow_metadata Schema text proto: "
                              f"{exc}") from None
    if not schema.feature and not schema.sparse_feature and not schema.tensor_representation_group:
        raise SchemaFileError(f"{path}: the schema declares no features")
    return schema


def write_schema(schema, path: str, header: str = "") -> None:
    from google.protobuf import text_format

    with open(path, "w", encoding="utf-8") as fh:
        fh.write(header + text_format.MessageToString(schema))


def _read_binary(message, path: str):
    with open(path, "rb") as fh:
        message.ParseFromString(fh.read())
    return message


def _write_binary(message, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(message.SerializeToString())


def statistics_path(statistics, split: str) -> str:
    return os.path.join(statistics.split_uri(split), STATISTICS_FILE)


def read_statistics(statistics, split: str):
    """The DatasetFeatureStatisticsList of one split of an ExampleStatistics artifact."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    path = statistics_path(statistics, split)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{statistics!r} has no statistics for split {split!r} ({path})")
    return _read_binary(statistics_pb2.DatasetFeatureStatisticsList(), path)


def anomalies_path(anomalies, split: str) -> str:
    return os.path.join(anomalies.split_uri(split), ANOMALIES_FILE)


def write_anomalies(anomalies_proto, anomalies, split: str) -> None:
    _write_binary(anomalies_proto, anomalies_path(anomalies, split))


def read_anomalies(anomalies, split: str):
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    return _read_binary(anomalies_pb2.Anomalies(), anomalies_path(anomalies, split))
