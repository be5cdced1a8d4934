"""Canary requests for a served model: serialized tf.Examples sent to one signature over gRPC
Predict and REST :predict, and the checks their answers must pass (every output present,
one row per example, finite numbers, both protocols agreeing).

TensorFlow comes in with tensorflow_serving.apis, so everything heavy is imported inside
the functions that need it.
"""
from __future__ import annotations

import base64
import glob
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

DT_STRING = 7
REST_RETRY_S = 30  # REST may start listening a moment after gRPC reports AVAILABLE
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


class CanaryFailed(Exception):
    """The model's answers, or its signature, do not pass validation."""


@dataclass(frozen=True)
class ExampleSignature:
    """A signature taking one DT_STRING tensor of serialized tf.Example."""

    name: str
    input_alias: str
    input_rank: int  # 1: [batch]; 2: [batch, 1]
    outputs: tuple[str, ...]

    def describe(self) -> str:
        shape = "[batch]" if self.input_rank == 1 else "[batch, 1]"
        return (f"signature {self.name!r}: input {self.input_alias!r} (DT_STRING {shape}), "
                f"outputs {', '.join(self.outputs)}")


def read_serialized_examples(file_pattern: str, limit: int) -> list[bytes]:
    """Up to `limit` records from the gzip TFRecord files matching `file_pattern`."""
    import tensorflow as tf

    files = sorted(glob.glob(file_pattern))
    if not files:
        raise FileNotFoundError(f"no example files match {file_pattern}")
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").take(limit)
    records = [record.numpy() for record in dataset]
    if not records:
        raise ValueError(f"the example files {file_pattern} hold no records")
    return records


def example_signature(grpc_target: str, model_name: str, signature_name: str) -> ExampleSignature:
    """Reads the signature from GetModelMetadata, checking it takes serialized examples."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model_name
    response = _call_prediction_service(grpc_target, "GetModelMetadata", request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    if signature_name not in signatures.signature_def:
        raise CanaryFailed(f"the model has no signature {signature_name!r}; it has "
                           f"{sorted(signatures.signature_def)}")
    signature = signatures.signature_def[signature_name]
    inputs = dict(signature.inputs)
    if len(inputs) != 1 or next(iter(inputs.values())).dtype != DT_STRING:
        described = {name: f"dtype {tensor.dtype}" for name, tensor in inputs.items()}
        raise CanaryFailed(f"signature {signature_name!r} takes {described or 'no inputs'}; "
                           f"canary requests need one DT_STRING input of serialized tf.Example")
    (alias, info), = inputs.items()
    dims = [d.size for d in info.tensor_shape.dim]
    if info.tensor_shape.unknown_rank or dims == [-1]:
        rank = 1
    elif len(dims) == 2 and dims[0] == -1 and dims[1] == 1:
        rank = 2
    else:
        raise CanaryFailed(f"signature {signature_name!r} input {alias!r} has shape {dims}; "
                           f"canary requests send [batch] or [batch, 1]")
    return ExampleSignature(signature_name, alias, rank, tuple(sorted(signature.outputs)))


def predict_request(model_name: str, signature: ExampleSignature, examples: list[bytes]):
    """The gRPC PredictRequest carrying the examples (also what a warmup record replays)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature.name
    shape = [len(examples)] if signature.input_rank == 1 else [len(examples), 1]
    request.inputs[signature.input_alias].CopyFrom(
        tf.make_tensor_proto(examples, dtype=tf.string, shape=shape))
    return request


def grpc_predict(grpc_target: str, request) -> dict:
    """Output alias -> numpy array, from gRPC Predict."""
    import tensorflow as tf

    response = _call_prediction_service(grpc_target, "Predict", request, timeout=60)
    return {alias: tf.make_ndarray(tensor) for alias, tensor in response.outputs.items()}


def _call_prediction_service(grpc_target: str, method: str, request, *, timeout: float):
    """One PredictionService call; a gRPC error becomes CanaryFailed naming the method."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    options = [("grpc.max_receive_message_length", 1 << 30)]
    with grpc.insecure_channel(grpc_target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as error:
            raise CanaryFailed(f"gRPC {method} failed: {error.code().name}: "
                               f"{error.details()}") from None


def rest_predict(rest_url: str, model_name: str, signature: ExampleSignature,
                 examples: list[bytes]) -> dict:
    """Output alias -> numpy array, from REST :predict in the row ("instances") format."""
    import numpy as np

    encoded = [{"b64": base64.b64encode(e).decode("ascii")} for e in examples]
    instances = encoded if signature.input_rank == 1 else [[item] for item in encoded]
    body = json.dumps({"signature_name": signature.name, "instances": instances}).encode()
    answer = _post_json(f"{rest_url}/v1/models/{model_name}:predict", body)
    predictions = answer.get("predictions")
    if not isinstance(predictions, list):
        raise CanaryFailed(f"REST :predict answered without a predictions list: {str(answer)[:300]}")
    predictions = _decode_b64(predictions)
    if len(signature.outputs) == 1:
        rows = {signature.outputs[0]: predictions}
    else:
        if not all(isinstance(row, dict) for row in predictions):
            raise CanaryFailed("REST :predict answered rows that are not objects keyed by output")
        rows = {alias: [row.get(alias) for row in predictions]
                for alias in {key for row in predictions for key in row}}
    try:
        return {alias: np.asarray(values) for alias, values in rows.items()}
    except ValueError as error:  # ragged rows
        raise CanaryFailed(f"REST :predict answered rows of different shapes: {error}") from None


def _decode_b64(value):
    """Binary string outputs (aliases ending in `_bytes`) come back as {"b64": ...}."""
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            return base64.b64decode(value["b64"])
        return {key: _decode_b64(v) for key, v in value.items()}
    return value


def _post_json(url: str, body: bytes) -> dict:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + REST_RETRY_S
    while True:
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")[:500]
            raise CanaryFailed(f"REST :predict answered HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, ConnectionError) as error:
            if time.monotonic() >= deadline:
                raise CanaryFailed(f"REST :predict at {url} failed: {error}") from None
            time.sleep(0.5)
        except json.JSONDecodeError as error:
            raise CanaryFailed(f"REST :predict answered invalid JSON: {error}") from None


def check_answers(protocol: str, outputs: dict, signature: ExampleSignature,
                  batch_size: int) -> None:
    """Every signature output present, with one row per example, and finite if numeric."""
    import numpy as np

    missing = set(signature.outputs) - set(outputs)
    if missing:
        raise CanaryFailed(f"{protocol} answer lacks output(s) {sorted(missing)}; "
                           f"it has {sorted(outputs)}")
    for alias in signature.outputs:
        values = outputs[alias]
        if values.ndim == 0 or values.shape[0] != batch_size:
            raise CanaryFailed(f"{protocol} output {alias!r} has shape {list(values.shape)}; "
                               f"expected {batch_size} rows, one per example")
        if values.dtype == object:
            if any(isinstance(v, (list, dict)) for v in values.ravel()):
                raise CanaryFailed(f"{protocol} output {alias!r} is not a regular tensor")
        elif np.issubdtype(values.dtype, np.number) and not np.all(np.isfinite(values)):
            bad = int(np.sum(~np.isfinite(values)))
            raise CanaryFailed(f"{protocol} output {alias!r} holds {bad} non-finite value(s)")


def check_agreement(grpc_outputs: dict, rest_outputs: dict, signature: ExampleSignature) -> None:
    """The same examples must get the same numbers over both protocols."""
    import numpy as np

    for alias in signature.outputs:
        a, b = grpc_outputs[alias], rest_outputs[alias]
        if not (np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number)):
            continue
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-6):
            raise CanaryFailed(f"output {alias!r} differs between gRPC and REST for the same "
                               f"examples (shapes {list(a.shape)} and {list(b.shape)})")


def write_warmup_file(saved_model_dir: str, request) -> str:
    """Writes `assets.extra/tf_serving_warmup_requests`: one PredictionLog replaying
    `request`, which a server runs before it reports the version AVAILABLE."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(saved_model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(record.SerializeToString())
    return path
