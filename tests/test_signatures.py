"""components.signatures.export_serving_model: the signatures of the session's penguin model
(exported by the penguin module through it), and a second, tiny model — a binary classifier
on generated data, transformed by tf.Transform in process — exported with the same call,
loaded back with tf.saved_model.load and called."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from components import signatures
from components.signatures import SignatureExportError, describe, read_class_names
from components.user_module import FnArgs

PENGUIN_FEATURES = {"bill_length_mm": "DT_FLOAT", "bill_depth_mm": "DT_FLOAT",
                    "flipper_length_mm": "DT_FLOAT", "body_mass_g": "DT_FLOAT",
                    "island": "DT_STRING", "sex": "DT_STRING"}
EXPORTED = {"serving_default", "serving_raw", "classify", "transform_features",
            "transform_label"}


def _records(pattern: str) -> list[bytes]:
    import tensorflow as tf

    files = sorted(glob.glob(pattern))
    assert files, pattern
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return [record.numpy() for record in dataset]


# -- the penguin model ------------------------------------------------------------------------
def test_penguin_model_exports_the_signatures_evaluator_infra_validator_and_rest_use(
        trained_penguin):
    described = describe(trained_penguin.model_dir)
    assert set(described) == EXPORTED
    classes = len(trained_penguin.labels)
    assert described["serving_default"] == {
        "method": "tensorflow/serving/predict",
        "inputs": {"examples": ("DT_STRING", [-1])},
        "outputs": {"scores": ("DT_FLOAT", [-1, classes])}}
    assert described["serving_raw"] == {
        "method": "tensorflow/serving/predict",
        "inputs": {name: (dtype, [-1]) for name, dtype in PENGUIN_FEATURES.items()},
        "outputs": {"scores": ("DT_FLOAT", [-1, classes]),
                    "classes": ("DT_STRING", [-1, classes])}}
    assert described["classify"] == {
        "method": "tensorflow/serving/classify",
        "inputs": {"inputs": ("DT_STRING", [-1])},
        "outputs": {"classes": ("DT_STRING", [-1, classes]),
                    "scores": ("DT_FLOAT", [-1, classes])}}
    assert described["transform_label"]["inputs"] == {"examples": ("DT_STRING", [-1])}
    assert described["transform_label"]["outputs"] == {"species": ("DT_INT64", [-1])}
    assert {"bill_length_mm", "island", "sex", "species"} <= set(
        described["transform_features"]["outputs"])
    # The class names travel with the model, in the order of `scores` (the species vocabulary).
    assert tuple(read_class_names(trained_penguin.model_dir)) == trained_penguin.labels


def test_penguin_raw_call_with_missing_values_answers_finite_scores(trained_penguin):
    import tensorflow as tf

    model = tf.saved_model.load(trained_penguin.model_dir)
    # As REST `instances` carry them: the second penguin has no bill length and no sex
    # (JSON NaN and ""), the third nothing but its island.
    nan = float("nan")
    raw = {
        "bill_length_mm": [39.1, nan, nan], "bill_depth_mm": [18.7, 17.4, nan],
        "flipper_length_mm": [181.0, 186.0, nan], "body_mass_g": [3750.0, 3800.0, nan],
        "island": [b"Torgersen", b"Torgersen", b"Biscoe"], "sex": [b"male", b"", b""]}
    answer = model.signatures["serving_raw"](**{
        name: tf.constant(values, tf.string if PENGUIN_FEATURES[name] == "DT_STRING"
                          else tf.float32) for name, values in raw.items()})
    scores = answer["scores"].numpy()
    assert scores.shape == (3, len(trained_penguin.labels))
    # Each score beside its species' name, for a person reading a JSON answer.
    assert [c.decode() for c in answer["classes"].numpy()[0]] == list(trained_penguin.labels)
    assert np.all(np.isfinite(scores)), scores
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)

    # The same penguins as tf.Examples that lack those features answer the same scores.
    def example(i):
        features = {}
        for name, values in raw.items():
            value = values[i]
            if isinstance(value, bytes):
                if value:
                    features[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
            elif not np.isnan(value):
                if name in ("flipper_length_mm", "body_mass_g"):
                    features[name] = tf.train.Feature(
                        int64_list=tf.train.Int64List(value=[int(value)]))
                else:
                    features[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        return tf.train.Example(
            features=tf.train.Features(feature=features)).SerializeToString()

    parsed = model.signatures["serving_default"](
        examples=tf.constant([example(i) for i in range(3)]))["scores"].numpy()
    np.testing.assert_allclose(scores, parsed, atol=1e-6)

    answer = model.signatures["classify"](inputs=tf.constant([example(0)]))
    assert [c.decode() for c in answer["classes"].numpy()[0]] == list(trained_penguin.labels)
    np.testing.assert_allclose(answer["scores"].numpy(), parsed[:1], atol=1e-6)


def test_penguin_transform_label_maps_species_to_class_indices(trained_penguin):
    import tensorflow as tf

    model = tf.saved_model.load(trained_penguin.model_dir)
    records = _records(trained_penguin.eval_examples)
    species = [tf.train.Example.FromString(r).features.feature["species"].bytes_list.value[0]
               .decode() for r in records]
    indices = model.signatures["transform_label"](examples=tf.constant(records))["species"]
    assert indices.dtype == tf.int64
    assert [trained_penguin.labels[i] for i in indices.numpy()] == species
    assert len(set(species)) == len(trained_penguin.labels), "every species in eval"


# -- a second model: binary classifier, explicit class names ---------------------------------
def preprocessing_fn(inputs):
    import tensorflow as tf
    import tensorflow_transform as tft

    color = tft.sparse_tensor_to_dense_with_shape(inputs["color"], [None, 1], "<missing>")
    return {"x": tft.scale_to_z_score(tf.reshape(inputs["x"], [-1])),
            "color": tft.compute_and_apply_vocabulary(tf.reshape(color, [-1]),
                                                      vocab_filename="color"),
            "label": tf.reshape(inputs["label"], [-1])}


def _generated_rows(n: int, seed: int = 3) -> list[dict]:
    """label 1 ("yes") when x + 2 * [color is red] > 1; every fifth row lacks its color."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        x = float(rng.normal())
        color = ["red", "blue"][int(rng.integers(2))]
        rows.append({"x": [x], "color": [] if i % 5 == 0 else [color.encode()],
                     "label": [int(x + (2.0 if color == "red" and i % 5 else 0.0) > 1.0)]})
    return rows


def _serialize(row: dict) -> bytes:
    import tensorflow as tf

    feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=row["x"])),
               "label": tf.train.Feature(int64_list=tf.train.Int64List(value=row["label"]))}
    if row["color"]:
        feature["color"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=row["color"]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """(TransformGraph dir, trained tf_keras model, rows): tf.Transform's in-process Beam
    API on 200 generated rows, then a logistic model on the transformed features."""
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    import tf_keras
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from tensorflow_transform.tf_metadata import metadata_io, schema_utils

    root = tmp_path_factory.mktemp("binary")
    schema = schema_utils.schema_from_feature_spec({
        "x": tf.io.FixedLenFeature([1], tf.float32),
        "color": tf.io.VarLenFeature(tf.string),
        "label": tf.io.FixedLenFeature([1], tf.int64)})
    color = next(f for f in schema.feature if f.name == "color")
    color.value_count.min = color.value_count.max = 1  # optional, one value when present
    rows = _generated_rows(200)
    transform_dir = str(root / "transform_graph")
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        with tft_beam.Context(temp_dir=str(root / "tmp")):
            transform_fn = ((pipeline | beam.Create(rows),
                             tft.DatasetMetadata(schema))
                            | tft_beam.AnalyzeDataset(preprocessing_fn))
            _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
    # As the Transform component does: the raw schema next to the graph.
    metadata_io.write_metadata(tft.DatasetMetadata(schema), os.path.join(transform_dir,
                                                                         "metadata"))

    output = tft.TFTransformOutput(transform_dir)
    transformed = output.transform_features_layer()(tf.io.parse_example(
        tf.constant([_serialize(r) for r in rows]), output.raw_feature_spec()))
    tf_keras.utils.set_random_seed(1)
    inputs = {"x": tf_keras.Input(shape=(1,), name="x", dtype=tf.float32),
              "color": tf_keras.Input(shape=(1,), name="color", dtype=tf.int64)}
    colors = tf_keras.layers.CategoryEncoding(output.vocabulary_size_by_name("color"),
                                              output_mode="one_hot")(inputs["color"])
    probability = tf_keras.layers.Dense(1, activation="sigmoid")(
        tf_keras.layers.concatenate([inputs["x"], colors]))
    model = tf_keras.Model(inputs=inputs, outputs=probability)
    model.compile(optimizer=tf_keras.optimizers.Adam(0.1), loss="binary_crossentropy")
    features = {"x": tf.reshape(transformed["x"], [-1, 1]),
                "color": tf.reshape(transformed["color"], [-1, 1])}
    labels = tf.cast(tf.reshape(transformed["label"], [-1, 1]), tf.float32)

    @tf.function(autograph=False)  # not fit: its AutoGraph conversion alone takes seconds
    def train_step():
        with tf.GradientTape() as tape:
            loss = tf_keras.losses.binary_crossentropy(labels, model(features, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))

    for _ in range(150):
        train_step()
    return transform_dir, model, rows


def _fn_args(export_dir: str, transform_dir: str) -> FnArgs:
    return FnArgs(train_files=[], eval_files=[], transform_output=transform_dir,
                  schema_file=None, serving_model_dir=export_dir, model_run_dir="",
                  train_steps=0, eval_steps=0)


@pytest.fixture(scope="module")
def binary_export(binary, tmp_path_factory):
    """The binary classifier exported with one call (class names given), loaded back."""
    import tensorflow as tf

    transform_dir, model, rows = binary
    export_dir = str(tmp_path_factory.mktemp("binary-export") / "serving")
    exported = signatures.export_serving_model(
        model, _fn_args(export_dir, transform_dir), transform_dir, label_key="label",
        class_names=["no", "yes"])
    examples = tf.constant([_serialize(r) for r in rows])
    labels = np.array([r["label"][0] for r in rows])
    return exported, export_dir, tf.saved_model.load(export_dir), rows, examples, labels


def test_binary_classifier_exports_every_signature_and_its_class_names(binary_export):
    exported, export_dir, _, _, _, _ = binary_export
    assert set(exported) == EXPORTED
    described = describe(export_dir)
    assert set(described) == EXPORTED
    assert described["serving_raw"]["inputs"] == {"x": ("DT_FLOAT", [-1]),
                                                  "color": ("DT_STRING", [-1])}
    assert described["serving_default"]["outputs"] == {"scores": ("DT_FLOAT", [-1, 2])}
    assert described["classify"]["method"] == "tensorflow/serving/classify"
    assert read_class_names(export_dir) == ["no", "yes"]


def test_binary_classifier_fingerprint_describes_the_rewritten_graph(binary_export):
    """Setting the method names rewrote saved_model.pb; fingerprint.pb follows it."""
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    export_dir = binary_export[1]
    with open(os.path.join(export_dir, "fingerprint.pb"), "rb") as fh:
        assert fh.read() == fingerprinting.CreateFingerprintDef(export_dir)


def test_binary_classifier_serving_default_scores_the_generated_rows(binary_export):
    _, _, loaded, rows, examples, labels = binary_export
    scores = loaded.signatures["serving_default"](examples=examples)["scores"].numpy()
    assert scores.shape == (len(rows), 2)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    assert np.mean(scores.argmax(axis=1) == labels) >= 0.85


def test_binary_classifier_serving_raw_takes_empty_string_as_a_missing_value(binary_export):
    """"" is a missing color, handled as preprocessing_fn handles an Example without one."""
    import tensorflow as tf

    _, _, loaded, rows, examples, _ = binary_export
    scores = loaded.signatures["serving_default"](examples=examples)["scores"].numpy()
    raw = loaded.signatures["serving_raw"](
        x=tf.constant([r["x"][0] for r in rows], tf.float32),
        color=tf.constant([r["color"][0] if r["color"] else b"" for r in rows]))["scores"]
    assert np.all(np.isfinite(raw.numpy()))
    np.testing.assert_allclose(raw.numpy(), scores, atol=1e-6)


def test_binary_classifier_classify_labels_its_scores(binary_export):
    _, _, loaded, _, examples, _ = binary_export
    scores = loaded.signatures["serving_default"](examples=examples[:3])["scores"].numpy()
    answer = loaded.signatures["classify"](inputs=examples[:3])
    assert answer["classes"].numpy().tolist() == [[b"no", b"yes"]] * 3
    np.testing.assert_allclose(answer["scores"].numpy(), scores, atol=1e-6)


def test_binary_classifier_transform_signatures(binary_export):
    import tensorflow as tf

    _, _, loaded, _, examples, labels = binary_export
    label = loaded.signatures["transform_label"](examples=examples)
    assert set(label) == {"label"} and label["label"].numpy().tolist() == labels.tolist()
    transformed = loaded.signatures["transform_features"](examples=examples)
    assert set(transformed) == {"x", "color", "label"}
    assert abs(float(tf.reduce_mean(transformed["x"]))) < 1e-4  # z-scored over these rows


def test_regressor_exports_regress_and_outputs(binary, tmp_path):
    """No class names: a regressor, whose one value per example is `outputs` [batch], with
    TF Serving's Regress signature instead of Classify."""
    import tensorflow as tf

    transform_dir, model, rows = binary
    export_dir = str(tmp_path / "serving")
    exported = signatures.export_serving_model(
        model, _fn_args(export_dir, transform_dir), transform_dir, label_key="label",
        raw_feature_keys=["x", "color"])
    assert "regress" in exported and "classify" not in exported
    described = describe(export_dir)
    assert described["regress"] == {"method": "tensorflow/serving/regress",
                                    "inputs": {"inputs": ("DT_STRING", [-1])},
                                    "outputs": {"outputs": ("DT_FLOAT", [-1])}}
    assert not os.path.exists(os.path.join(export_dir, "assets", "class_names.txt"))
    loaded = tf.saved_model.load(export_dir)
    values = loaded.signatures["regress"](inputs=tf.constant([_serialize(rows[0])]))["outputs"]
    assert values.shape == (1,) and 0.0 <= float(values[0]) <= 1.0


@pytest.mark.parametrize("arguments, message", [
    ({"class_names": ["no", "yes", "maybe"]},
     "the model outputs 1 scores per example but there are 3 class names"),
    ({"class_names": ["no", "no"]}, "class names ['no'] appear more than once"),
    ({"class_names": ["no", "yes"], "class_vocabulary": "color"},
     "give class_names or class_vocabulary, not both"),
    ({"class_vocabulary": "colour"}, "class_vocabulary 'colour' is not a vocabulary"),
    ({"label_key": "target"}, "label_key 'target' is not a raw feature; the raw features are "
                              "['color', 'label', 'x']"),
    ({"raw_feature_keys": ["x", "label"]}, "raw_feature_keys holds the label 'label'"),
    ({"raw_feature_keys": ["x", "size"]}, "raw_feature_keys ['size'] are not raw features"),
    ({"raw_feature_keys": ["x"]}, "signature 'serving_default' cannot be built"),
])
def test_mismatched_arguments_are_rejected_naming_what_is_wrong_and_write_nothing(
        binary, tmp_path, arguments, message):
    transform_dir, model, _ = binary
    export_dir = str(tmp_path / "serving")
    arguments = {"label_key": "label", "class_names": None, **arguments}
    with pytest.raises(SignatureExportError) as raised:
        signatures.export_serving_model(model, _fn_args(export_dir, transform_dir),
                                        transform_dir, **arguments)
    assert message in str(raised.value)
    assert not os.path.exists(export_dir)
