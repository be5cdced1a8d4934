"""The penguin model: preprocessing (tf.Transform), training and export (Keras 2), tuning.

Classifies a penguin's species from its bill, flipper, mass, island and sex. The raw data
has missing values: numbers are imputed with their training mean, strings with a marker.

The exported SavedModel (components.signatures.export_serving_model) answers with
`scores`, the probability of each species in the order of the `species` vocabulary (most
frequent first), also written to assets/class_names.txt. Its signatures:
  serving_default      serialized tf.Example (without the label), as TFX exports it
  serving_raw          the six features as named tensors, so plain JSON `instances` work;
                       NaN for a missing number, "" for a missing string
  classify             TF Serving's Classify API: species names and scores
  transform_features   serialized tf.Example -> the transformed features
  transform_label      serialized tf.Example -> `species` as the class index; the
                       Evaluator's preprocessing function (it transforms only the label,
                       so slices still see the raw island and sex)
"""
from __future__ import annotations

import glob
import os

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras

from components.signatures import export_serving_model

LABEL = "species"
NUMERIC_FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
CATEGORICAL_FEATURES = ["island", "sex"]
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
MISSING_CATEGORY = "<missing>"
OOV_BUCKETS = 1

DEFAULT_HYPERPARAMETERS = {"learning_rate": 0.01, "hidden_units": 16, "hidden_layers": 2}
BATCH_SIZE = 32


# -- preprocessing ------------------------------------------------------------------------
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
            _to_dense(inputs[name], MISSING_CATEGORY), num_oov_buckets=OOV_BUCKETS,
            vocab_filename=name, name=f"{name}_vocabulary")
    outputs[LABEL] = tft.compute_and_apply_vocabulary(_to_dense(inputs[LABEL], ""),
                                                      vocab_filename=LABEL,
                                                      name=f"{LABEL}_vocabulary")
    return outputs


# -- training -----------------------------------------------------------------------------
def _files(patterns):
    files = sorted(f for pattern in patterns for f in glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no examples match {patterns}")
    return files


def _model_inputs(transformed):
    return {name: tf.reshape(transformed[name], [-1, 1]) for name in FEATURES}


def _dataset(patterns, tft_output, *, shuffle: bool, seed: int = 7):
    spec = tft_output.transformed_feature_spec()
    dataset = tf.data.TFRecordDataset(_files(patterns), compression_type="GZIP")
    if shuffle:
        dataset = dataset.shuffle(1024, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat().batch(BATCH_SIZE)

    def parse(serialized):
        transformed = tf.io.parse_example(serialized, spec)
        return _model_inputs(transformed), transformed[LABEL]

    return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def build_model(tft_output, hyperparameters) -> tf_keras.Model:
    hp = {**DEFAULT_HYPERPARAMETERS, **(hyperparameters or {})}
    inputs, encoded = {}, []
    for name in NUMERIC_FEATURES:
        inputs[name] = tf_keras.Input(shape=(1,), name=name, dtype=tf.float32)
        encoded.append(inputs[name])
    for name in CATEGORICAL_FEATURES:
        inputs[name] = tf_keras.Input(shape=(1,), name=name, dtype=tf.int64)
        size = tft_output.vocabulary_size_by_name(name) + OOV_BUCKETS
        encoded.append(tf_keras.layers.CategoryEncoding(size, output_mode="one_hot")(inputs[name]))
    x = tf_keras.layers.concatenate(encoded)
    for _ in range(int(hp["hidden_layers"])):
        x = tf_keras.layers.Dense(int(hp["hidden_units"]), activation="relu")(x)
    classes = tft_output.vocabulary_size_by_name(LABEL)
    outputs = tf_keras.layers.Dense(classes, activation="softmax", name="scores")(x)
    model = tf_keras.Model(inputs=inputs, outputs=outputs)
    model.compile(optimizer=tf_keras.optimizers.Adam(float(hp["learning_rate"])),
                  loss="sparse_categorical_crossentropy",
                  metrics=[tf_keras.metrics.SparseCategoricalAccuracy()])
    return model


def run_fn(fn_args):
    tf_keras.utils.set_random_seed(int(fn_args.custom_config.get("seed", 7)))
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    model = build_model(tft_output, fn_args.hyperparameters)
    if fn_args.base_model:
        # Warm start: same architecture, weights from the base SavedModel's checkpoint.
        model.load_weights(os.path.join(fn_args.base_model, "variables", "variables")
                           ).expect_partial()
    train(model, _dataset(fn_args.train_files, tft_output, shuffle=True),
          _dataset(fn_args.eval_files, tft_output, shuffle=False),
          train_steps=fn_args.train_steps, eval_steps=fn_args.eval_steps,
          log_dir=fn_args.model_run_dir)
    # Only what the model reads is served: clients need not send the label or `year`.
    # save_traces=False: every layer is built in, so Keras revives them from their config
    # and tracing each layer's call (seconds) is not needed.
    export_serving_model(model, fn_args, tft_output, label_key=LABEL, class_vocabulary=LABEL,
                         raw_feature_keys=FEATURES, save_traces=False)


def train(model, train_data, eval_data, *, train_steps: int, eval_steps: int, log_dir: str):
    """Trains `model` (compiled) for `train_steps` batches and logs to TensorBoard.

    A plain loop of graph-mode steps instead of `model.fit`: fit's AutoGraph conversion
    of the Keras internals costs ~10 s per process, far more than training this model."""
    loss_fn, optimizer = model.loss, model.optimizer
    if isinstance(loss_fn, str):
        loss_fn = tf_keras.losses.get(loss_fn)
    accuracy = tf_keras.metrics.SparseCategoricalAccuracy()

    @tf.function(autograph=False)
    def train_step(features, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(labels, model(features, training=True)))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    @tf.function(autograph=False)
    def eval_step(features, labels):
        scores = model(features, training=False)
        accuracy.update_state(labels, scores)
        return tf.reduce_mean(loss_fn(labels, scores))

    writer = tf.summary.create_file_writer(os.path.join(log_dir, "train"))
    with writer.as_default():
        for step, (features, labels) in enumerate(train_data.take(train_steps)):
            loss = train_step(features, labels)
            if step % 20 == 0 or step == train_steps - 1:
                tf.summary.scalar("loss", loss, step=step)
    losses = [eval_step(features, labels) for features, labels in eval_data.take(eval_steps)]
    with tf.summary.create_file_writer(os.path.join(log_dir, "validation")).as_default():
        tf.summary.scalar("loss", tf.reduce_mean(losses), step=train_steps)
        tf.summary.scalar("sparse_categorical_accuracy", accuracy.result(), step=train_steps)
    return {"loss": float(tf.reduce_mean(losses)), "accuracy": float(accuracy.result())}


# -- tuning -------------------------------------------------------------------------------
def tuner_fn(fn_args):
    import keras_tuner

    from components.user_module import TunerFnResult

    tft_output = tft.TFTransformOutput(fn_args.transform_output)

    def build(hp):
        return build_model(tft_output, {
            "learning_rate": hp.Choice("learning_rate", [0.003, 0.01, 0.03]),
            "hidden_units": hp.Int("hidden_units", 8, 32, step=8),
            "hidden_layers": hp.Int("hidden_layers", 1, 2),
        })

    tuner = keras_tuner.RandomSearch(
        build, objective=keras_tuner.Objective("val_sparse_categorical_accuracy", "max"),
        max_trials=int(fn_args.custom_config.get("max_trials", 4)),
        seed=int(fn_args.custom_config.get("seed", 7)),
        directory=fn_args.working_dir, project_name="penguin", overwrite=False)
    return TunerFnResult(tuner, {
        "x": _dataset(fn_args.train_files, tft_output, shuffle=True),
        "validation_data": _dataset(fn_args.eval_files, tft_output, shuffle=False),
        "steps_per_epoch": fn_args.train_steps, "validation_steps": fn_args.eval_steps,
        "epochs": 1, "verbose": 0,
    })
