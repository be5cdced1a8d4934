"""Artifact types: a directory URI plus typed properties, recorded in ML Metadata.

An artifact's directory is written by exactly one execution and never changes once it
is published. Properties are plain Python values; the metadata layer maps them to MLMD.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

# Property kinds the metadata store understands.
INT, FLOAT, STRING, STRINGS = int, float, str, list


@dataclass(eq=False)
class Artifact:
    """A typed directory. Subclasses declare PROPERTIES: name -> kind (int, float, str, list)."""

    PROPERTIES: ClassVar[dict[str, type]] = {}
    REGISTRY: ClassVar[dict[str, type["Artifact"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            Artifact.REGISTRY[cls.__name__] = cls

    uri: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    name: str = ""  # "<component id>.<output key>" of the producer

    @classmethod
    def type_name(cls) -> str:
        return cls.__name__

    def __getattr__(self, item: str) -> Any:
        # Declared properties read like attributes: examples.span, blessing.blessed.
        props = self.__dict__.get("properties", {})
        if item in type(self).PROPERTIES:
            return props.get(item)
        raise AttributeError(f"{type(self).__name__} has no attribute or property {item!r}")

    def set(self, **values: Any) -> None:
        for key, value in values.items():
            if key not in type(self).PROPERTIES:
                raise KeyError(f"{type(self).__name__} declares no property {key!r}; "
                               f"it has {sorted(type(self).PROPERTIES)}")
            self.properties[key] = value

    def path(self, *parts: str) -> str:
        return os.path.join(self.uri, *parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id}, uri={self.uri!r}, properties={self.properties})"


class _SplitArtifact(Artifact):
    """An artifact with one sub-directory per split, named `Split-<name>` as in TFX."""

    def split_uri(self, split: str) -> str:
        return self.path(f"Split-{split}")

    @property
    def splits(self) -> list[str]:
        return list(self.properties.get("split_names") or [])


class Examples(_SplitArtifact):
    """gzip TFRecord files of tf.Example, one directory per split."""

    PROPERTIES = {"span": INT, "version": INT, "split_names": STRINGS,
                  "input_fingerprint": STRING, "payload_format": STRING,
                  "spans": STRINGS, "span_range": STRINGS,  # every span read; [first, last]
                  "input_files": STRINGS}  # the files read, so problems found later name them

    def file_pattern(self, split: str) -> str:
        return os.path.join(self.split_uri(split), "*.gz")


class ExampleStatistics(_SplitArtifact):
    """TFDV DatasetFeatureStatisticsList per split (FeatureStats.pb) and an HTML view."""

    PROPERTIES = {"span": INT, "split_names": STRINGS,
                  "input_files": STRINGS}  # the files the examples were read from


class Schema(Artifact):
    """A TFMD schema in `schema.pbtxt`. `origin` says how it was made: "inferred" (by
    SchemaGen from statistics), "accepted" (`pipewright schema accept`), "carried" (SchemaGen
    republishing the pipeline's current schema) or "imported" (ImportSchemaGen)."""

    PROPERTIES = {"source": STRING, "origin": STRING}

    @property
    def file(self) -> str:
        return self.path("schema.pbtxt")


class ExampleAnomalies(_SplitArtifact):
    """TFDV Anomalies per split (SchemaDiff.pb), plus a readable report.txt."""

    PROPERTIES = {"span": INT, "split_names": STRINGS, "anomaly_count": INT}


class TransformGraph(Artifact):
    """The tf.Transform output directory (transform_fn/, transformed_metadata/)."""

    PROPERTIES = {"analyzer_cache": STRING}


class Model(Artifact):
    """A SavedModel under `Format-Serving/`."""

    PROPERTIES = {"span": INT}

    @property
    def serving_dir(self) -> str:
        return self.path("Format-Serving")


class ModelRun(Artifact):
    """TensorBoard logs of a training run."""


class HyperParameters(Artifact):
    """The best hyperparameters found by the Tuner, as `best_hyperparameters.json`."""

    PROPERTIES = {"best_score": FLOAT}

    @property
    def file(self) -> str:
        return self.path("best_hyperparameters.json")


class ModelEvaluation(Artifact):
    """TFMA evaluation output and a readable report of metrics per slice."""

    PROPERTIES = {"baseline_model_id": INT, "baseline_version": INT}


class ModelBlessing(Artifact):
    """Whether the Evaluator judged the model good enough to push."""

    PROPERTIES = {"blessed": INT, "model_id": INT, "baseline_model_id": INT,
                  "baseline_version": INT, "reason": STRING}


class InfraBlessing(Artifact):
    """Whether the model loaded and answered canary requests in a model server, and which:
    `server` is the one that validated ("tensorflow_model_server" or "docker": TF Serving's
    C++ binary; "pipewright": our Python server, which loads the model with this
    environment's TensorFlow and so cannot catch ops missing from TF Serving's binary);
    `requested_server` is the InfraValidator's `serving_binary` ("auto" or one of those).
    They differ after "auto" chose, or after a fallback (report.txt says why)."""

    PROPERTIES = {"blessed": INT, "model_id": INT, "reason": STRING, "server": STRING,
                  "requested_server": STRING}


class PushedModel(Artifact):
    """Where a model was pushed: the serving directory and the version it got.
    `rolled_back` is set to 1 when `pipewright rollback` replaced this version: it is then
    never an Evaluator baseline again (a new push of the model makes a new record)."""

    PROPERTIES = {"pushed": INT, "pushed_version": INT, "pushed_destination": STRING,
                  "model_id": INT, "model_name": STRING, "rolled_back": INT}


class InferenceResult(_SplitArtifact):
    """The BulkInferrer's predictions: per split, tensorflow.serving.PredictionLog records in
    the model server's request-log layout, `Split-<name>/<model>/<version>/<prefix>-<UTC
    time>Z-<seq>.tfrecord.gz` (gzip TFRecord), so `log_dir(split)` is read like a request-log
    directory (components/traffic_logs.py)."""

    PROPERTIES = {"split_names": STRINGS, "model_id": INT, "model_name": STRING,
                  "model_version": INT, "signature_name": STRING, "prediction_count": INT,
                  "span": INT}

    def log_dir(self, split: str) -> str:
        return self.split_uri(split)


def artifact_class(type_name: str) -> type[Artifact]:
    """The artifact class registered under a type name (custom subclasses register too)."""
    if type_name not in Artifact.REGISTRY:
        # A custom type whose module is not imported here (e.g. `pipewright lineage`):
        # an untyped stand-in keeps its URI and properties readable.
        return type(type_name, (Artifact,), {"__module__": __name__})
    return Artifact.REGISTRY[type_name]
