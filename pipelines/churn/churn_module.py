"""The churn model: will a subscriber cancel within 30 days? A binary classifier.

preprocessing_fn (tf.Transform): numbers are imputed with their training mean and
z-scored; the categorical strings get a vocabulary (the long-tailed country and device
columns keep their most frequent values, the rest share out-of-vocabulary buckets, as do
values never seen in training). `churned` passes through as 0/1.

run_fn trains a small network and exports it with the framework's signatures
(components.signatures.export_serving_model): `scores`, the probability of churn, with
class names "stays" and "churns". Nothing else in this file is about serving.
"""
from __future__ import annotations

import glob

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras

from components.signatures import export_serving_model

LABEL = "churned"
NUMERIC_FEATURES = ["tenure_months", "monthly_charge", "support_calls", "last_login_days"]
# feature -> how many of its most frequent values get their own index
CATEGORICAL_FEATURES = {"plan": None, "channel": None, "country": 40, "device_model": 60}
FEATURES = NUMERIC_FEATURES + list(CATEGORICAL_FEATURES)
OOV_BUCKETS = 2
BATCH_SIZE = 64


def _dense(x, default_value):
    """A [batch] tensor from a dense [batch, 1] or an optional (sparse) feature."""
    if isinstance(x, tf.SparseTensor):
        x = tft.sparse_tensor_to_dense_with_shape(x, [None, 1], default_value=default_value)
    return tf.reshape(x, [-1])


def preprocessing_fn(inputs):
    outputs = {}
    for name in NUMERIC_FEATURES:
        x = inputs[name]
        x = (tf.SparseTensor(x.indices, tf.cast(x.values, tf.float32), x.dense_shape)
             if isinstance(x, tf.SparseTensor) else tf.cast(x, tf.float32))
        dense = _dense(x, float("nan"))
        imputed = tf.where(tf.math.is_nan(dense), tft.mean(x, name=f"{name}_mean"), dense)
        outputs[name] = tft.scale_to_z_score(imputed, name=f"{name}_z")
    for name, top_k in CATEGORICAL_FEATURES.items():
        outputs[name] = tft.compute_and_apply_vocabulary(
            _dense(inputs[name], ""), top_k=top_k, num_oov_buckets=OOV_BUCKETS,
            vocab_filename=name, name=f"{name}_vocabulary")
    outputs[LABEL] = _dense(inputs[LABEL], 0)
    return outputs


def _dataset(patterns, tft_output, *, shuffle: bool):
    files = sorted(f for pattern in patterns for f in glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no examples match {patterns}")
    spec = tft_output.transformed_feature_spec()
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if shuffle:
        dataset = dataset.shuffle(4096, seed=7, reshuffle_each_iteration=True)

    def parse(serialized):
        transformed = tf.io.parse_example(serialized, spec)
        features = {name: tf.reshape(transformed[name], [-1, 1]) for name in FEATURES}
        return features, tf.cast(tf.reshape(transformed[LABEL], [-1, 1]), tf.float32)

    return dataset.repeat().batch(BATCH_SIZE).map(parse).prefetch(2)


def build_model(tft_output) -> tf_keras.Model:
    inputs, encoded = {}, []
    for name in NUMERIC_FEATURES:
        inputs[name] = tf_keras.Input(shape=(1,), name=name, dtype=tf.float32)
        encoded.append(inputs[name])
    for name in CATEGORICAL_FEATURES:
        inputs[name] = tf_keras.Input(shape=(1,), name=name, dtype=tf.int64)
        size = tft_output.vocabulary_size_by_name(name) + OOV_BUCKETS
        encoded.append(tf_keras.layers.CategoryEncoding(size, output_mode="one_hot")(inputs[name]))
    x = tf_keras.layers.Dense(16, activation="relu")(tf_keras.layers.concatenate(encoded))
    churn = tf_keras.layers.Dense(1, activation="sigmoid", name="scores")(x)
    model = tf_keras.Model(inputs=inputs, outputs=churn)
    model.compile(optimizer=tf_keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    return model


def run_fn(fn_args):
    tf_keras.utils.set_random_seed(int(fn_args.custom_config.get("seed", 7)))
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    model = build_model(tft_output)
    loss_fn, optimizer = tf_keras.losses.BinaryCrossentropy(), model.optimizer

    @tf.function(autograph=False)  # a plain loop: model.fit's AutoGraph costs ~10 s
    def train_step(features, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(features, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
        return loss

    auc = tf_keras.metrics.AUC()
    writer = tf.summary.create_file_writer(fn_args.model_run_dir)
    with writer.as_default():
        for step, (features, labels) in enumerate(
                _dataset(fn_args.train_files, tft_output, shuffle=True).take(fn_args.train_steps)):
            loss = train_step(features, labels)
            if step % 50 == 0:
                tf.summary.scalar("loss", loss, step=step)
        for features, labels in _dataset(fn_args.eval_files, tft_output,
                                         shuffle=False).take(fn_args.eval_steps):
            auc.update_state(labels, model(features, training=False))
        tf.summary.scalar("eval_auc", auc.result(), step=fn_args.train_steps)
    export_serving_model(model, fn_args, tft_output, label_key=LABEL,
                         class_names=["stays", "churns"], raw_feature_keys=FEATURES,
                         save_traces=False)
