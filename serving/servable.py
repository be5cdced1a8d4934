"""One loaded model version: its SignatureDefs (as TF Serving reports them) and fast runners.

Runners call the SavedModel's concrete signature functions through TensorFlow's eager
function-call entry point with flat tensors, skipping the structured-call argument binding
(~250 us per call on a small model). If that private path is unavailable or disagrees with the
public signature in dtype or arity, the runner falls back to the public call.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from serving import errors
from serving.errors import ServingError
from serving.tensors import NUMPY_DTYPES, dtype_string

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class TensorSpec:
    alias: str
    name: str          # the graph tensor name ("serving_default_x:0")
    dtype: int         # tensorflow.DataType
    shape: tuple | None  # None: unknown rank; -1 for unknown dimensions


class SignatureRunner:
    def __init__(self, key: str, signature_def, function):
        self.key = key
        self.signature_def = signature_def
        self.method_name = signature_def.method_name
        self.inputs = {alias: _spec(alias, info) for alias, info in signature_def.inputs.items()}
        self.outputs = {alias: _spec(alias, info) for alias, info in signature_def.outputs.items()}
        self.input_order = sorted(self.inputs)
        self.input_dtypes = {alias: spec.dtype for alias, spec in self.inputs.items()}
        self._function = function
        self._call = self._public_call
        if function is not None:
            self._setup_fast_path(function)

    def _setup_fast_path(self, function) -> None:
        try:
            from tensorflow.python.eager import context
            from tensorflow.python.framework import ops

            kwargs_spec = function.structured_input_signature[1]
            order = sorted(kwargs_spec)
            outputs = function.structured_outputs
            atomic = function._inference_function
            flat_inputs = list(function.inputs)
            captures = list(function.captured_inputs)
            if (order != self.input_order or not isinstance(outputs, dict)
                    or sorted(outputs) != sorted(self.outputs)
                    or len(flat_inputs) != len(order) + len(captures)
                    or len(atomic.function_type.flat_outputs) != len(outputs)):
                return
            for alias, tensor in zip(order, flat_inputs):
                if tensor.dtype.as_datatype_enum != self.inputs[alias].dtype:
                    return
            bound = atomic._bound_context
            name = atomic.name
            n_out = len(outputs)
            device = context.context().device_name
            output_order = sorted(outputs)
            eager_tensor = ops.EagerTensor

            def fast_call(arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
                tensors = [eager_tensor(a, device, None) for a in arrays]
                results = bound.call_function(name, tensors + captures, n_out)
                return {alias: t.numpy() for alias, t in zip(output_order, results)}

            self._call = fast_call
        except Exception as e:  # private API moved: keep the public path
            log.info("signature %s: fast call path unavailable (%s)", self.key, e)

    def _public_call(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        if self._function is None:
            raise ServingError(errors.FAILED_PRECONDITION,
                               f"Signature {self.key} has no runnable function in this SavedModel")
        results = self._function(**dict(zip(self.input_order, arrays)))
        return {alias: t.numpy() for alias, t in results.items()}

    def debug_string(self) -> str:
        from google.protobuf import text_format
        return text_format.MessageToString(self.signature_def)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run with exactly this signature's inputs (already validated)."""
        arrays = [inputs[alias] for alias in self.input_order]
        try:
            return self._call(arrays)
        except ServingError:
            raise
        except Exception as e:
            raise errors.from_tf_error(e) from None


def _spec(alias: str, info) -> TensorSpec:
    if info.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = tuple(d.size for d in info.tensor_shape.dim)
    return TensorSpec(alias, info.name, info.dtype, shape)


class MetadataCache:
    """Per-version memo of responses built from its immutable signatures (GetModelMetadata)."""

    _metadata_cache: dict

    def cached(self, key, build):
        value = self._metadata_cache.get(key)
        if value is None:
            value = self._metadata_cache[key] = build()
        return value


class Servable(MetadataCache):
    """A loaded SavedModel version. Immutable once built; shared by all request threads."""

    upstream = None  # run here (serving/upstream.py UpstreamServable: run by another server)

    def __init__(self, name: str, version: int, path: str, meta_graph, functions: dict, model):
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = meta_graph.signature_def  # the map TF Serving's metadata returns
        self.runners = {key: SignatureRunner(key, sig, functions.get(key))
                        for key, sig in meta_graph.signature_def.items()}
        self._model = model  # keeps the loaded object (and its variables) alive
        self._metadata_cache = {}


def read_saved_model(path: str):
    """cc/saved_model/reader.cc ReadSavedModel: saved_model.pb, else saved_model.pbtxt."""
    from google.protobuf import message, text_format
    from tensorflow.core.protobuf import saved_model_pb2

    from serving.config import read_file_bytes

    pb = os.path.join(path, "saved_model.pb")
    pbtxt = os.path.join(path, "saved_model.pbtxt")
    saved_model = saved_model_pb2.SavedModel()
    if os.path.exists(pb):
        data = read_file_bytes(pb)
        try:
            saved_model.ParseFromString(data)
        except (message.DecodeError, RuntimeError, ValueError):
            raise ServingError(errors.DATA_LOSS, f"Can't parse {pb} as binary proto") from None
        return saved_model
    if os.path.exists(pbtxt):
        data = read_file_bytes(pbtxt)
        try:
            text_format.Parse(data, saved_model)
        except (text_format.ParseError, UnicodeDecodeError):
            raise ServingError(errors.DATA_LOSS, f"Can't parse {pbtxt} as text proto") from None
        return saved_model
    raise ServingError(errors.NOT_FOUND, "Could not find SavedModel .pb or .pbtxt at supplied "
                                         f"export directory path: {path}. Check that the "
                                         "directory exists and that you have the right "
                                         "permissions for accessing it.")


def read_meta_graph(path: str, tags: set[str]):
    saved_model = read_saved_model(path)
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == tags:
            return meta_graph
    available = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ServingError(errors.NOT_FOUND, f"Could not find meta graph def matching supplied tags: "
                                         f"{{ {' '.join(sorted(tags))} }}. To inspect available tag-"
                                         f"sets in the SavedModel, please use the SavedModel CLI: "
                                         f"`saved_model_cli`. Available tags: {available}")


def load_servable(name: str, version: int, path: str, tags: set[str]) -> Servable:
    import tensorflow as tf

    meta_graph = read_meta_graph(path, tags)
    try:
        model = tf.saved_model.load(path, tags=sorted(tags))
    except Exception as e:
        raise errors.from_tf_error(e) from None
    functions = dict(getattr(model, "signatures", {}) or {})
    return Servable(name, version, path, meta_graph, functions, model)


def check_input_dtypes(runner: SignatureRunner, inputs: dict[str, np.ndarray]) -> None:
    """DirectSession's call-frame check, in feed order."""
    for index, alias in enumerate(runner.input_order):
        want = runner.inputs[alias].dtype
        array = inputs[alias]
        have = NUMPY_DTYPES.get(want)
        if have is None or np.dtype(have) != array.dtype:
            from serving.tensor_proto import dtype_of
            raise ServingError(errors.INVALID_ARGUMENT,
                               f"Expects arg[{index}] to be {dtype_string(want)} but "
                               f"{dtype_string(dtype_of(array))} is provided")


def check_input_shapes(runner: SignatureRunner, inputs: dict[str, np.ndarray]) -> None:
    """Reject shapes the signature cannot take before they reach a kernel."""
    for alias in runner.input_order:
        spec = runner.inputs[alias].shape
        shape = inputs[alias].shape
        if spec is None:
            continue
        if len(spec) != len(shape) or any(s >= 0 and s != d for s, d in zip(spec, shape)):
            raise ServingError(errors.INVALID_ARGUMENT,
                               f"Input tensor alias: {alias} has shape {_shape(shape)}, which is "
                               f"incompatible with the signature's shape {_shape(spec)}")


def _shape(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
