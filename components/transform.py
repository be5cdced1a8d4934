"""Transform: tf.Transform on Beam with the user module's `preprocessing_fn`."""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import traceback

from components.artifacts import Examples, Schema, TransformGraph
from components import tft_deep_copy
from components.beam_options import beam_pipeline
from components.example_batches import ReadExampleBatches
from components.example_sink import WriteExampleBatches
from components.base import Component, ExternalPath, Input, Output, Parameter, Step
from components.user_module import UserModuleError, function, pickle_by_value

ANALYZER_CACHE_DIR = "analyzer_cache"
RAW_METADATA_DIR = "metadata"  # where tft.TFTransformOutput looks for the raw schema


class Transform(Component):
    """Analyzes the training split with the user module's `preprocessing_fn`, transforms
    every split with the result, and saves the transform graph. Analyzer results are
    cached per dataset in the TransformGraph, so a later run on the same data reuses
    every analyzer whose definition did not change.

    A failure a feature causes - examples whose type contradicts the schema, a required
    feature absent from some examples, an op of preprocessing_fn failing on a feature's
    values (a Cast of strings to float) - raises TransformFeatureError
    (components.transform_errors), a few lines naming the feature, its schema type and
    the op (with where the user module defines it); the raw error with its Arrow schema
    and tensor dumps is only in the step log."""

    imports_tensorflow = True

    examples: Input[Examples]
    schema: Input[Schema]
    transform_graph: Output[TransformGraph]
    transformed_examples: Output[Examples]
    module_file: Parameter[ExternalPath]
    splits_to_analyze: Parameter[list[str]] = ["train"]
    splits_to_transform: Parameter[list[str]] = []  # empty: every split of the examples

    def execute(self, step: Step) -> None:
        import tensorflow_transform.beam as tft_beam
        from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io
        from tfx_bsl.public import tfxio

        preprocessing_fn = _checked_preprocessing_fn(step.module_file)
        schema = _read_schema(step.schema.file)
        splits = step.splits_to_transform or step.examples.splits
        _check_splits(step.examples, splits + step.splits_to_analyze)

        graph_dir = step.transform_graph.uri
        cache_dir = step.transform_graph.path(ANALYZER_CACHE_DIR)
        keys = {split: tft_beam.analyzer_cache.DatasetKey(_dataset_key(step.examples, split))
                for split in step.splits_to_analyze}
        reused = _seed_analyzer_cache(step, cache_dir, [k.key for k in keys.values()])
        step.log.info("analyzer cache: %s", f"reusing {reused}" if reused else "cold")

        def source(split: str):
            return tfxio.TFExampleRecord(file_pattern=step.examples.file_pattern(split),
                                         schema=schema, telemetry_descriptors=["pipewright"])

        def read(split: str):  # the RecordBatches `source(split).BeamSource()` would give
            return ReadExampleBatches(step.examples.file_pattern(split), schema)

        adapter_config = source(step.splits_to_analyze[0]).TensorAdapterConfig()
        try:
            # Streaming, not materializing: a PCollection that a later stage reads after a
            # side input is ready (the transform_fn, an earlier analyzer phase's results)
            # is buffered whole by the runner (the FnApiRunner keeps it in memory). So the
            # analysis and each split's transformation read the files themselves, and
            # tf.Transform re-reads them for each analyzer phase after the first (its deep
            # copy, see components/tft_deep_copy.py).
            tft_deep_copy.enable()
            with beam_pipeline(step) as pipeline, tft_beam.Context(
                    temp_dir=os.path.join(step.tmp_dir, "tft"),
                    use_deep_copy_optimization=True):
                raw = {split: pipeline | f"Read[{split}]" >> read(split)
                       for split in step.splits_to_analyze}
                input_cache = pipeline | "ReadCache" >> \
                    tft_beam.analyzer_cache.ReadAnalysisCacheFromFS(cache_dir, list(keys.values()))
                transform_fn, output_cache = (
                    ({key: raw[split] for split, key in keys.items()}, input_cache, adapter_config)
                    | "Analyze" >> tft_beam.AnalyzeDatasetWithCache(preprocessing_fn))
                _ = output_cache | "WriteCache" >> tft_beam.analyzer_cache.WriteAnalysisCacheToFS(
                    pipeline, cache_dir, list(keys.values()))
                _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(graph_dir)
                for split in splits:
                    to_transform = pipeline | f"ReadToTransform[{split}]" >> read(split)
                    transformed, _ = (((to_transform, adapter_config), transform_fn)
                                      | f"Transform[{split}]" >> tft_beam.TransformDataset(
                                          output_record_batches=True))
                    _ = transformed | f"Write[{split}]" >> WriteExampleBatches(
                        step.transformed_examples.split_uri(split), "transformed_examples")
        except UserModuleError:
            raise
        except Exception as exc:
            cause = _user_code_error(exc)
            if cause is not None:
                raise cause from exc
            # A bad feature: a short error naming it and the op; the raw one (the Arrow
            # schema, serialized examples, fetched tensors) follows it in the step log.
            explained = _feature_error(exc, step, preprocessing_fn, schema, adapter_config)
            if explained is not None:
                raise explained from exc
            raise

        metadata_io.write_metadata(dataset_metadata.DatasetMetadata(schema),
                                   os.path.join(graph_dir, RAW_METADATA_DIR))
        vocabularies = _vocabulary_sizes(graph_dir)
        if vocabularies:
            step.note("vocabularies: " + ", ".join(f"{name} {size}"
                                                   for name, size in vocabularies.items()))
        step.transform_graph.set(analyzer_cache=ANALYZER_CACHE_DIR)  # relative to the uri
        step.transformed_examples.set(split_names=list(splits), span=step.examples.span,
                                      version=step.examples.version,
                                      spans=step.examples.spans,
                                      span_range=step.examples.span_range,
                                      payload_format="tf.Example")


def _vocabulary_sizes(graph_dir: str) -> dict[str, int]:
    """vocab_filename -> entries, for each vocabulary tf.Transform wrote as an asset of the
    transform graph (transform_fn/assets/<vocab_filename>, one entry per line)."""
    assets = os.path.join(graph_dir, "transform_fn", "assets")
    if not os.path.isdir(assets):
        return {}
    sizes = {}
    for name in sorted(os.listdir(assets)):
        path = os.path.join(assets, name)
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                sizes[name] = sum(1 for _ in fh)
    return sizes


def _feature_error(exc: Exception, step: Step, preprocessing_fn, schema, adapter_config):
    """The TransformFeatureError for a failure a feature caused, else None (see
    components.transform_errors). Never raises: the original error then stands."""
    from tfx_bsl.tfxio import tensor_adapter

    from components.transform_errors import explain, trace

    def traced():
        specs = tensor_adapter.TensorAdapter(adapter_config).OriginalTypeSpecs()
        return trace(preprocessing_fn, specs, step.module_file)

    try:
        return explain(exc, schema, step.schema.source or step.schema.file,
                       functools.cache(traced))
    except Exception:  # noqa: BLE001 - an explanation must not hide the failure
        step.log.warning("could not relate the failure to a feature:\n%s", traceback.format_exc())
        return None


def _checked_preprocessing_fn(module_file: str):
    """The user's preprocessing_fn, wrapped so its failures name the module."""
    user_fn = function(module_file, "preprocessing_fn")
    pickle_by_value(module_file)  # Beam worker processes cannot import it by its name

    def preprocessing_fn(inputs):
        try:
            outputs = user_fn(inputs)
        except Exception as exc:
            raise UserModuleError(f"preprocessing_fn in {module_file} raised "
                                  f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(outputs, dict) or not outputs:
            raise UserModuleError(f"preprocessing_fn in {module_file} must return a non-empty "
                                  f"dict of tensors, got {type(outputs).__name__}")
        return outputs

    return preprocessing_fn


def _user_code_error(exc: BaseException) -> UserModuleError | None:
    """Beam and tf.function may wrap the user's error; find it in the chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserModuleError):
            return UserModuleError(str(exc))
        match = re.search(r"(preprocessing_fn in \S+ (raised|must return)[^\n]*)", str(exc))
        if match:
            return UserModuleError(match.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


def _read_schema(path: str):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    with open(path) as fh:
        try:
            return text_format.Parse(fh.read(), schema_pb2.Schema())
        except text_format.ParseError as exc:
            raise ValueError(f"schema {path} is not a valid Schema text proto: {exc}") from exc


def _check_splits(examples: Examples, wanted: list[str]) -> None:
    missing = sorted(set(wanted) - set(examples.splits))
    if missing:
        raise ValueError(f"examples {examples.uri} have no split(s) {missing}; "
                         f"they have {examples.splits}")


def _dataset_key(examples: Examples, split: str) -> str:
    """Names the analyzed data, so the cache of an earlier run on the same data is found."""
    identity = examples.input_fingerprint or f"artifact{examples.id}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return f"span{examples.span or 0}-v{examples.version or 0}-{split}-{digest}"


def _seed_analyzer_cache(step: Step, cache_dir: str, dataset_keys: list[str]) -> list[str]:
    """Copies into this run's cache the newest earlier cache of each analyzed dataset."""
    os.makedirs(cache_dir, exist_ok=True)
    if step.metadata is None:
        return []
    earlier = sorted(step.metadata.artifacts_of_type(TransformGraph), key=lambda a: -a.id)
    reused = []
    for key in dataset_keys:
        for graph in earlier:
            source = graph.path(graph.analyzer_cache or ANALYZER_CACHE_DIR, key)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(cache_dir, key))
                reused.append(f"{key} from TransformGraph {graph.id}")
                break
    return reused
