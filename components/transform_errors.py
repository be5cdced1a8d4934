"""A Transform failure that a feature caused, told as that feature and the op that failed.

tf.Transform on Beam reports a bad feature in the terms of the layer that tripped over it:
tfx_bsl's tf.Example decoder ('Feature had wrong type ... for feature "x"'), its
TensorAdapter ("Error raised when handling tensor 'x'"), or TensorFlow running the traced
preprocessing graph ("Cast string to float is not supported [[{{node Cast_1}}]]", followed
by a dump of the Arrow schema and of every fetched tensor name, which names no feature).
`explain` turns these into a TransformFeatureError of a few lines naming the feature, its
schema type, what the data holds and the op; the raw error stays in the exception chain,
so only the step log (the launcher writes the traceback there) carries the dump.

A graph op is traced back to the features it reads the way TensorFlow builds it: the
preprocessing_fn is traced again as TFT traces it (`impl_helper.
trace_preprocessing_function` on the same TensorAdapter type specs), the failing node is
found by name, and its inputs are followed back to the input placeholders.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

# tfx_bsl ExamplesToRecordBatchDecoder (tfx_bsl/cc/coders/example_coder.cc)
_DECODE = re.compile(r'Feature had wrong type, expected (\w+), found (\w+) for feature "([^"]+)"')
# tfx_bsl TensorAdapter.ToBatchTensors (tfx_bsl/tfxio/tensor_adapter.py)
_ADAPTER = re.compile(r"Error raised when handling tensor '([^']+)'")
_CONVERT = re.compile(r"Unable to convert a .+? to a tensor of type spec (.+?): ([^.]+)\.")
# TensorFlow's op error: the message, then [[{{node NAME}}]]
_NODE = re.compile(r"([^\n]*)\n\s*\[\[\{\{node ([^}]+)\}\}\]\]")
_STAGE = re.compile(r"\[while running '([^']+)'\]")
_LIST_KIND = {"int64_list": "integers", "float_list": "floats", "bytes_list": "strings"}
_SCHEMA_LIST = {"INT": "int64_list", "FLOAT": "float_list", "BYTES": "bytes_list"}


class TransformFeatureError(ValueError):
    """Transform failed because of a feature; the message names it and the op. `feature`
    (str, comma-separated if an op reads several), `op` (what failed) are attributes."""

    def __init__(self, message: str, feature: str, op: str):
        super().__init__(message)
        self.feature, self.op = feature, op


@dataclass(frozen=True)
class TracedGraph:
    """The preprocessing graph as TFT traces it, and its inputs by feature name."""

    graph: Any  # tf.Graph (a FuncGraph in TF2 mode)
    inputs: dict[str, Any]  # feature -> tensor, SparseTensor or RaggedTensor
    module_file: str


def trace(preprocessing_fn, type_specs: dict[str, Any], module_file: str) -> TracedGraph:
    """Traces `preprocessing_fn` on `type_specs` (TensorAdapter.OriginalTypeSpecs()) as
    tft_beam does in TF2 mode; node names match the graph that ran."""
    from tensorflow_transform import impl_helper

    graph, inputs, _ = impl_helper.trace_preprocessing_function(
        preprocessing_fn, type_specs, use_tf_compat_v1=False)
    return TracedGraph(graph, dict(inputs), module_file)


def explain(exc: BaseException, schema, schema_source: str,
            traced: Callable[[], TracedGraph]) -> TransformFeatureError | None:
    """The feature-level reading of a Transform failure, or None if it is not one.

    `schema` is the tensorflow_metadata Schema Transform read, `schema_source` where it
    came from (the curated file, or what SchemaGen inferred it from), for the message;
    `traced` is called only when a graph node must be traced back to its features.
    """
    schema_path = f"the schema ({schema_source})"
    text = _chain_text(exc)
    stage = _STAGE.search(text)
    where = f", Beam stage {stage.group(1)}" if stage else ""
    types = {f.name: _type_name(f.type) for f in schema.feature}

    decode = _DECODE.search(text)
    if decode:
        expected, found, feature = decode.groups()
        return TransformFeatureError(
            f"feature {feature!r} does not match the schema: the examples hold "
            f"{_LIST_KIND.get(found, found)} ({found}) where {schema_path} types it "
            f"{types.get(feature, '?')} ({expected})\n"
            f"op: decoding tf.Example with the schema (tfx_bsl){where}", feature,
            "decode tf.Example")

    adapter = _ADAPTER.search(text)
    if adapter:
        feature = adapter.group(1)
        convert = _CONVERT.search(text)
        spec, reason = convert.groups() if convert else ("its schema type spec", "")
        shape = _shape_of(schema, feature)
        missing = ("absent from (or of another length in) some example(s), while "
                   f"{schema_path} makes it a required dense feature of shape {shape}"
                   if "size mismatch" in reason else reason or "not convertible")
        return TransformFeatureError(
            f"feature {feature!r} ({types.get(feature, '?')}) is {missing}\n"
            f"op: converting the feature to {spec} for preprocessing_fn{where}", feature,
            f"convert to {spec}")

    node = _NODE.search(text)
    if node:
        message, name = node.group(1).strip(), node.group(2)
        graph = traced()
        op = _find_op(graph.graph, name)
        if op is None:
            return None
        features = _features_read_by(op, graph.inputs)
        if not features:
            return None
        described = ", ".join(f"{f!r} ({types.get(f, '?')} in {schema_source})"
                              for f in features)
        return TransformFeatureError(
            f"feature {described}: preprocessing op {op.name!r} ({_describe_op(op)}) "
            f"failed: {message}\n"
            f"op defined at {_user_frame(op, graph.module_file)}{where}",
            ", ".join(features), op.name)
    return None


def _chain_text(exc: BaseException) -> str:
    texts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(texts)


def _type_name(value: int) -> str:
    from tensorflow_metadata.proto.v0 import schema_pb2

    return schema_pb2.FeatureType.Name(value)


def _shape_of(schema, feature: str) -> list[int]:
    for f in schema.feature:
        if f.name == feature and f.HasField("shape"):
            return [dim.size for dim in f.shape.dim]
    return []


def _find_op(graph, name: str):
    """The op called `name`, or the last part of it (a node inside a called function)."""
    parts = name.split("/")
    for start in range(len(parts)):
        try:
            return graph.get_operation_by_name("/".join(parts[start:]))
        except (KeyError, ValueError):
            continue
    return None


def _features_read_by(op, inputs: dict[str, Any]) -> list[str]:
    """The input features whose placeholders `op` depends on, in input order."""
    import tensorflow as tf

    owner = {}
    for feature, value in inputs.items():
        for tensor in tf.nest.flatten(value, expand_composites=True):
            owner[tensor.op.name] = feature
    found, seen, stack = set(), set(), [op]
    while stack:
        current = stack.pop()
        if current.name in seen:
            continue
        seen.add(current.name)
        if current.name in owner:
            found.add(owner[current.name])
        stack.extend(tensor.op for tensor in current.inputs)
        stack.extend(current.control_inputs)
    return [feature for feature in inputs if feature in found]


def _describe_op(op) -> str:
    sources = ", ".join(tensor.dtype.name for tensor in op.inputs)
    if op.type == "Cast":
        return f"Cast {sources} -> {op.get_attr('DstT').name}"
    return f"{op.type} on {sources}" if sources else op.type


def _user_frame(op, module_file: str) -> str:
    """Where the user module created `op` ("penguin_module.py line 45, in f"), else the
    innermost frame TensorFlow recorded."""
    import os

    frames = list(op.traceback or [])
    target = os.path.abspath(module_file)
    mine = [f for f in frames if os.path.abspath(f.filename) == target]
    frame = (mine or frames or [None])[-1]
    if frame is None:
        return "an unknown place"
    return f"{frame.filename} line {frame.lineno}, in {frame.name}"
