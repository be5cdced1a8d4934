"""The data-half benchmark's Transform module, as a new user writes one after the penguin
example (pipelines/penguin/penguin_module.py): numbers imputed with their mean and scaled to
z-scores, strings through a vocabulary (missing ones as a marker), the price also in
quantile buckets, the label passed through."""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

LABEL = "returned"
NUMERIC_FEATURES = ["quantity", "items_in_cart", "customer_age", "tenure_days", "rating",
                    "unit_price", "discount", "session_seconds", "latitude", "longitude"]
CATEGORICAL_FEATURES = ["store", "city", "region", "channel", "payment_type", "device"]
MISSING_CATEGORY = "<missing>"


def _to_dense(x, default_value):
    """A [batch] tensor from a dense [batch, 1] or an optional (sparse) feature."""
    if isinstance(x, tf.SparseTensor):
        x = tft.sparse_tensor_to_dense_with_shape(x, [None, 1], default_value=default_value)
    return tf.reshape(x, [-1])


def _impute_with_mean(x, name):
    if isinstance(x, tf.SparseTensor):
        x = tf.SparseTensor(x.indices, tf.cast(x.values, tf.float32), x.dense_shape)
    else:
        x = tf.cast(x, tf.float32)
    mean = tft.mean(x, name=f"{name}_mean")
    dense = _to_dense(x, float("nan"))
    return tf.where(tf.math.is_nan(dense), mean, dense)


def preprocessing_fn(inputs):
    outputs = {}
    for name in NUMERIC_FEATURES:
        outputs[name] = tft.scale_to_z_score(_impute_with_mean(inputs[name], name),
                                             name=f"{name}_z_score")
    for name in CATEGORICAL_FEATURES:
        outputs[name] = tft.compute_and_apply_vocabulary(
            _to_dense(inputs[name], MISSING_CATEGORY), num_oov_buckets=1,
            vocab_filename=name, name=f"{name}_vocabulary")
    outputs["unit_price_bucket"] = tft.bucketize(
        _to_dense(tf.cast(inputs["unit_price"], tf.float32), 0.0), num_buckets=10,
        name="unit_price_bucket")
    outputs["is_member"] = _to_dense(inputs["is_member"], 0)
    outputs[LABEL] = _to_dense(inputs[LABEL], 0)
    return outputs
