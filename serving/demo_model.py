"""A tiny SavedModel with the signature kinds TF Serving serves, for tests and the bench.

Signatures:
  serving_default  predict: x float32[-1,3], count int64[-1], tag string[-1]
                   -> scores float32[-1,2], total float32[-1], doubled int64[-1], tag_bytes string[-1]
  single           predict: x float32[-1,3] -> y float32[-1]
  classify         classify: inputs (serialized tf.Example with x: 3 floats, count: 1 int)
                   -> classes string[-1,2], scores float32[-1,2]
  regress          regress: inputs (same Example) -> outputs float32[-1]
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# Valid requests for the demo model, shared by tests and the bench.
SAMPLE_INSTANCES = [
    {"x": [1.0, 2.0, 3.0], "count": 2, "tag": "a"},
    {"x": [0.5, -1.0, 0.25], "count": 7, "tag": "b"},
]
SAMPLE_EXAMPLES = [
    {"x": [1.0, 2.0, 3.0], "count": 2},
    {"x": [0.5, -1.0, 0.25], "count": 7},
]

_WEIGHTS = np.array([[0.5, -0.25], [0.125, 0.75], [-1.0, 0.3]], dtype=np.float32)
_BIAS = np.array([0.1, -0.2], dtype=np.float32)


def expected_outputs(x, count, tag):
    """The demo model's serving_default computed with numpy (for checking answers)."""
    x = np.asarray(x, dtype=np.float32)
    count = np.asarray(count, dtype=np.int64)
    logits = x @ _WEIGHTS + _BIAS
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return {
        "scores": (e / e.sum(axis=-1, keepdims=True)).astype(np.float32),
        "total": (x.sum(axis=-1) + count.astype(np.float32)).astype(np.float32),
        "doubled": count * 2,
        "tag_bytes": [t.encode() + b"!" if isinstance(t, str) else t + b"!" for t in tag],
    }


def write_demo_model(export_dir: str | os.PathLike, *, scale: float = 1.0,
                     warmup_records: int = 0) -> Path:
    """Write the demo SavedModel to export_dir (which must not exist yet).

    `scale` multiplies the regress output so two versions can be told apart.
    `warmup_records` > 0 writes assets.extra/tf_serving_warmup_requests with that many
    PredictionLog records.
    """
    import tensorflow as tf

    export_dir = Path(export_dir)
    weights = tf.constant(_WEIGHTS)
    bias = tf.constant(_BIAS)
    feature_spec = {
        "x": tf.io.FixedLenFeature([3], tf.float32),
        "count": tf.io.FixedLenFeature([1], tf.int64),
    }

    class Demo(tf.Module):
        def _predict(self, x, count, tag):
            probs = tf.nn.softmax(tf.matmul(x, weights) + bias)
            return {
                "scores": probs,
                "total": tf.reduce_sum(x, axis=-1) + tf.cast(count, tf.float32),
                "doubled": count * 2,
                "tag_bytes": tf.strings.join([tag, tf.fill(tf.shape(tag), "!")]),
            }

        @tf.function(input_signature=[
            tf.TensorSpec([None, 3], tf.float32, name="x"),
            tf.TensorSpec([None], tf.int64, name="count"),
            tf.TensorSpec([None], tf.string, name="tag"),
        ])
        def serving_default(self, x, count, tag):
            return self._predict(x, count, tag)

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def single(self, x):
            return {"y": tf.reduce_sum(x, axis=-1)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs):
            parsed = tf.io.parse_example(inputs, feature_spec)
            probs = tf.nn.softmax(tf.matmul(parsed["x"], weights) + bias)
            n = tf.shape(inputs)[0]
            classes = tf.tile(tf.constant([["neg", "pos"]]), [n, 1])
            return {"classes": classes, "scores": probs}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs):
            parsed = tf.io.parse_example(inputs, feature_spec)
            value = tf.reduce_sum(parsed["x"], axis=-1) + tf.cast(parsed["count"][:, 0], tf.float32)
            return {"outputs": value * scale}

    module = Demo()
    tf.saved_model.save(module, str(export_dir), signatures={
        "serving_default": module.serving_default,
        "single": module.single,
        "classify": module.classify,
        "regress": module.regress,
    })
    _set_method_names(export_dir, {"classify": CLASSIFY_METHOD, "regress": REGRESS_METHOD})
    if warmup_records:
        write_warmup_file(export_dir, warmup_records)
    return export_dir


def _set_method_names(export_dir: Path, methods: dict[str, str]) -> None:
    """TF2's saver writes every signature as predict; Estimator-style exports carry
    classify/regress method names, which MultiInference clients rely on."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = export_dir / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        for key, method in methods.items():
            meta_graph.signature_def[key].method_name = method
    path.write_bytes(saved_model.SerializeToString())


def make_example(features: dict) -> bytes:
    """A serialized tf.Example from {name: float | int | str | list}."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    for name, value in features.items():
        values = value if isinstance(value, list) else [value]
        feature = example.features.feature[name]
        if all(isinstance(v, int) for v in values):
            feature.int64_list.value.extend(values)
        elif all(isinstance(v, (int, float)) for v in values):
            feature.float_list.value.extend(values)
        else:
            feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in values)
    return example.SerializeToString()


def write_warmup_file(export_dir: Path, records: int) -> Path:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    extra = Path(export_dir) / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    path = extra / "tf_serving_warmup_requests"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for _ in range(records):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "warmup"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0, 2.0, 3.0]], tf.float32))
            request.inputs["count"].CopyFrom(tf.make_tensor_proto([1], tf.int64))
            request.inputs["tag"].CopyFrom(tf.make_tensor_proto([b"w"], tf.string))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path
