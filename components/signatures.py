"""Exporting a Keras model with the serving signatures the rest of the pipeline relies on.

A user module's `run_fn` ends with one call:

    export_serving_model(model, fn_args, tf_transform_output, label_key="species",
                         class_vocabulary="species")

which saves `model` (Keras 2, `tf_keras`) to `fn_args.serving_model_dir` with the
tf.Transform graph attached (so raw data goes in) and these signatures; `batch` is the
number of examples in the request:

  serving_default     examples: DT_STRING [batch], serialized tf.Example (no label needed)
                      -> scores: DT_FLOAT [batch, num_classes], class probabilities in the
                         order of the class names (classifier), or
                      -> outputs: DT_FLOAT [batch] (regressor).
                      What the Evaluator (signature_name) and the InfraValidator's canary
                      requests call; TFX's `_get_serve_tf_examples_fn` is the model.
  serving_raw         one input per served raw feature, named after it, [batch] (or
                      [batch, k] for a fixed-length feature of k values): DT_STRING for
                      string features, DT_FLOAT for numbers, except DT_INT64 for required
                      integer features -> the same outputs. Plain JSON `instances` over REST.
                      A missing value is written NaN (numbers; TF Serving's REST parser and
                      ours accept the `NaN` literal) or "" (strings): for an optional feature
                      (tf.io.VarLenFeature in the raw feature spec, i.e. the schema gives no
                      shape) it becomes an absent value, exactly as `tf.io.parse_example`
                      gives an Example lacking the feature, so preprocessing_fn imputes it as
                      it does in training; for a required feature with a default value, it
                      becomes that default. JSON `null` and omitted inputs are rejected by TF
                      Serving's REST API before any signature runs (every signature input
                      must be sent, as a number or a string), hence NaN and "".
                      A classifier's serving_raw also answers `classes`: DT_STRING
                      [batch, num_classes], the class names in the order of `scores`, so a
                      JSON answer reads {"scores": [...], "classes": [...]} per instance.
  classify            inputs: DT_STRING [batch] -> classes: DT_STRING [batch, num_classes],
                      scores: DT_FLOAT [batch, num_classes]; method_name
                      tensorflow/serving/classify, so TF Serving's Classify API (gRPC
                      Classify, REST `:classify` with "signature_name": "classify") answers
                      labelled scores. Classifiers only.
  regress             inputs: DT_STRING [batch] -> outputs: DT_FLOAT [batch]; method_name
                      tensorflow/serving/regress (TF Serving's Regress API). Regressors only.
  transform_features  examples: DT_STRING [batch] -> every transformed feature (TFX's
                      `_get_transform_features_signature`); for TFMA's
                      preprocessing_function_names.
  transform_label     examples: DT_STRING [batch] -> {label_key: the transformed label,
                      [batch]} (e.g. a class index); it parses only the label, so TFMA slices
                      still see the raw features. The Evaluator's preprocessing function for a
                      string label.

A classifier also carries `assets/class_names.txt`: its class names, one per line, in the
order of `scores`, so predictions can be labelled without the model.

TensorFlow and tf.Transform are imported inside the functions: importing this module (the
Trainer does, so its cache key covers this file) stays cheap.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

CLASSIFY_METHOD = "tensorflow/serving/classify"  # tensorflow/python/saved_model/signature_constants.py
REGRESS_METHOD = "tensorflow/serving/regress"
CLASS_NAMES_FILE = "class_names.txt"

SERVING_DEFAULT = "serving_default"
SERVING_RAW = "serving_raw"
CLASSIFY = "classify"
REGRESS = "regress"
TRANSFORM_FEATURES = "transform_features"
TRANSFORM_LABEL = "transform_label"


class SignatureExportError(ValueError):
    """The model, the transform output and the arguments do not fit together; the message
    names the feature, input or argument at fault."""


def export_serving_model(model, fn_args, tf_transform_output, *, label_key: str,
                         class_names: Sequence[str] | None = None,
                         class_vocabulary: str | None = None,
                         raw_feature_keys: Sequence[str] | None = None,
                         from_logits: bool = False,
                         save_traces: bool = True) -> tuple[str, ...]:
    """Saves a trained Keras model with the serving and transform signatures (module doc).

    model: a `tf_keras` functional model whose inputs are named after transformed features
        (each Input of shape (1,) takes a [batch] transformed feature as [batch, 1]) and
        whose one output is [batch, num_classes] probabilities, [batch, 1] probabilities of
        the second class of a binary classifier, or [batch, 1] / [batch] regression values.
        With `from_logits`, outputs are logits and softmax (sigmoid for one column) turns
        them into scores.
    fn_args: the `FnArgs` given to run_fn; the model goes to `fn_args.serving_model_dir`.
    tf_transform_output: a `tft.TFTransformOutput`, or the TransformGraph directory.
    label_key: the raw label feature; preprocessing_fn must output a feature of that name.
    class_names: the class names in the order of the model's scores; or
    class_vocabulary: the tf.Transform vocabulary (its `vocab_filename`) that mapped the
        label to indices, whose order is the scores' order. Neither: a regressor.
    raw_feature_keys: the raw features clients send (serving_default parses only these,
        serving_raw takes exactly these); default every raw feature but the label.
    save_traces: passed to `model.save`; False is faster and enough when every layer is a
        built-in Keras layer.

    Returns the names of the exported signatures. Raises SignatureExportError before
    anything is written when the arguments do not fit the model or the transform output.
    The SavedModel is written with `model.save(save_format="tf")`, so
    `tf_keras.models.load_model` still restores the model and its optimizer.
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    export_dir = getattr(fn_args, "serving_model_dir", None)
    if not export_dir:
        raise SignatureExportError("fn_args has no serving_model_dir: pass the FnArgs that "
                                   "run_fn received")
    if isinstance(tf_transform_output, (str, os.PathLike)):
        tf_transform_output = tft.TFTransformOutput(str(tf_transform_output))
    raw_spec = tf_transform_output.raw_feature_spec()
    if label_key not in raw_spec:
        raise SignatureExportError(f"label_key {label_key!r} is not a raw feature; the raw "
                                   f"features are {sorted(raw_spec)}")
    served = _served_features(raw_spec, label_key, raw_feature_keys)
    names = _class_names(tf_transform_output, class_names, class_vocabulary)
    width = _output_width(model)
    _check_output_width(width, names)
    input_names = list(model.input_names)
    transformed_spec = tf_transform_output.transformed_feature_spec()
    unknown_inputs = [name for name in input_names if name not in transformed_spec]
    if unknown_inputs:
        raise SignatureExportError(
            f"model input(s) {unknown_inputs} are not transformed features; name each "
            f"tf_keras.Input after an output of preprocessing_fn: {sorted(transformed_spec)}")
    if label_key not in transformed_spec:
        raise SignatureExportError(
            f"preprocessing_fn outputs no feature {label_key!r} (label_key), which "
            f"transform_label returns; its outputs are {sorted(transformed_spec)}")
    raw_inputs = {name: _raw_input_spec(name, spec, tf_transform_output.raw_metadata.schema)
                  for name, spec in served.items()}

    model.tft_layer = tf_transform_output.transform_features_layer()  # tracked: assets saved
    model_inputs = [(name, tensor.shape.rank, tensor.dtype)
                    for name, tensor in zip(input_names, model.inputs)]

    def predict(transformed):
        inputs = {}
        for name, rank, dtype in model_inputs:
            value = transformed[name]
            if value.shape.rank is not None and rank is not None and value.shape.rank == rank - 1:
                value = tf.expand_dims(value, -1)
            inputs[name] = tf.cast(value, dtype) if value.dtype != dtype else value
        output = model(inputs, training=False)
        if names is None:
            return {"outputs": tf.reshape(tf.cast(output, tf.float32), [-1])}
        return {"scores": _scores(output, width, from_logits)}

    examples_spec = tf.TensorSpec([None], tf.string, name="examples")
    served_spec = dict(served)

    @tf.function(input_signature=[examples_spec], autograph=False)
    def serve_examples(examples):
        return predict(model.tft_layer(tf.io.parse_example(examples, served_spec)))

    def class_names_for(scores):
        return tf.tile(tf.constant([list(names)]), [tf.shape(scores)[0], 1])

    @tf.function(input_signature=[raw_inputs], autograph=False)
    def serve_raw(features):
        parsed = {name: _raw_to_parsed(features[name], spec) for name, spec in served.items()}
        answer = predict(model.tft_layer(parsed))
        if names is not None:  # people read this one: each score with its class's name
            answer["classes"] = class_names_for(answer["scores"])
        return answer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")],
                 autograph=False)
    def classify(inputs):
        scores = predict(model.tft_layer(tf.io.parse_example(inputs, served_spec)))["scores"]
        return {"classes": class_names_for(scores), "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")],
                 autograph=False)
    def regress(inputs):
        return predict(model.tft_layer(tf.io.parse_example(inputs, served_spec)))

    @tf.function(input_signature=[examples_spec], autograph=False)
    def transform_features(examples):
        return model.tft_layer(tf.io.parse_example(examples, raw_spec))

    label_spec = {label_key: raw_spec[label_key]}

    @tf.function(input_signature=[examples_spec], autograph=False)
    def transform_label(examples):
        transformed = model.tft_layer(tf.io.parse_example(examples, label_spec))
        return {label_key: transformed[label_key]}

    functions = {SERVING_DEFAULT: serve_examples, SERVING_RAW: serve_raw,
                 TRANSFORM_FEATURES: transform_features, TRANSFORM_LABEL: transform_label}
    functions.update({CLASSIFY: classify} if names is not None else {REGRESS: regress})
    signatures = {}
    for key, function in functions.items():
        try:
            signatures[key] = function.get_concrete_function()
        except (KeyError, ValueError, TypeError) as error:
            needs = (f"; the raw features it gets are {sorted(served)} (raw_feature_keys)"
                     if key in (SERVING_DEFAULT, SERVING_RAW, CLASSIFY, REGRESS)
                     else f"; it parses {sorted(label_spec)}" if key == TRANSFORM_LABEL
                     else "")
            raise SignatureExportError(f"signature {key!r} cannot be built: "
                                       f"{type(error).__name__}: {error}{needs}") from error

    with tempfile.TemporaryDirectory() as scratch:
        if names is not None:
            path = os.path.join(scratch, CLASS_NAMES_FILE)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write("".join(f"{name}\n" for name in names))
            model.class_names_asset = tf.saved_model.Asset(path)
        elif hasattr(model, "class_names_asset"):  # exported as a classifier before
            del model.class_names_asset
        model.save(export_dir, save_format="tf", save_traces=save_traces,
                   signatures=signatures)
    _set_method_names(export_dir, {CLASSIFY: CLASSIFY_METHOD, REGRESS: REGRESS_METHOD})
    return tuple(signatures)


def read_class_names(saved_model_dir: str) -> list[str]:
    """The class names a classifier was exported with (assets/class_names.txt), in the
    order of its scores. Raises FileNotFoundError naming the file for a regressor or a
    model not exported by export_serving_model."""
    path = os.path.join(saved_model_dir, "assets", CLASS_NAMES_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: the model was not exported as a "
                                f"classifier by export_serving_model")
    with open(path, encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh]


# -- checks ---------------------------------------------------------------------------------
def _served_features(raw_spec: dict, label_key: str, keys: Sequence[str] | None) -> dict:
    if keys is None:
        keys = sorted(name for name in raw_spec if name != label_key)
    keys = list(keys)
    unknown = [name for name in keys if name not in raw_spec]
    if unknown:
        raise SignatureExportError(f"raw_feature_keys {unknown} are not raw features; the raw "
                                   f"features are {sorted(raw_spec)}")
    if label_key in keys:
        raise SignatureExportError(f"raw_feature_keys holds the label {label_key!r}: clients "
                                   f"would have to send it to get a prediction")
    if len(set(keys)) != len(keys):
        raise SignatureExportError(f"raw_feature_keys names a feature twice: {keys}")
    if not keys:
        raise SignatureExportError("no raw features to serve: raw_feature_keys is empty")
    return {name: raw_spec[name] for name in keys}


def _class_names(tf_transform_output, class_names, class_vocabulary) -> list[str] | None:
    if class_names is not None and class_vocabulary is not None:
        raise SignatureExportError("give class_names or class_vocabulary, not both")
    if class_vocabulary is not None:
        try:
            raw = tf_transform_output.vocabulary_by_name(class_vocabulary)
        except (ValueError, KeyError, OSError) as error:
            raise SignatureExportError(
                f"class_vocabulary {class_vocabulary!r} is not a vocabulary of the transform "
                f"output (preprocessing_fn's vocab_filename): {error}") from error
        class_names = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in raw]
    if class_names is None:
        return None
    if isinstance(class_names, str):
        raise SignatureExportError(f"class_names must be a list of names, got the string "
                                   f"{class_names!r}")
    names = list(class_names)
    bad = [n for n in names if not isinstance(n, str) or not n or "\n" in n]
    if bad:
        raise SignatureExportError(f"class names must be non-empty strings without newlines; "
                                   f"got {bad!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SignatureExportError(f"class names {duplicates} appear more than once")
    if len(names) < 2:
        raise SignatureExportError(f"a classifier needs at least 2 class names, got {names}")
    return names


def _output_width(model) -> int | None:
    outputs = model.outputs
    if len(outputs) != 1:
        raise SignatureExportError(f"the model has {len(outputs)} outputs; "
                                   f"export_serving_model exports a model with one output")
    shape = outputs[0].shape
    if shape.rank not in (1, 2):
        raise SignatureExportError(f"the model's output has shape {shape}; expected "
                                   f"[batch, width] or [batch]")
    return 1 if shape.rank == 1 else shape[-1]


def _check_output_width(width: int | None, names: list[str] | None) -> None:
    if width is None:
        return
    if names is None:
        if width != 1:
            raise SignatureExportError(
                f"the model outputs {width} values per example but no class names were given: "
                f"pass class_names or class_vocabulary for a classifier (a regressor outputs "
                f"one value)")
    elif width != len(names) and not (width == 1 and len(names) == 2):
        raise SignatureExportError(
            f"the model outputs {width} scores per example but there are {len(names)} class "
            f"names {names}; a classifier outputs one score per class (or one probability "
            f"of the second class for 2 classes)")


def _raw_input_spec(name: str, spec, schema):
    """The serving_raw TensorSpec of one raw feature (module doc)."""
    import tensorflow as tf

    if isinstance(spec, tf.io.FixedLenFeature):
        shape = list(spec.shape)
        if len(shape) > 1:
            raise SignatureExportError(f"raw feature {name!r} has shape {shape}; serving_raw "
                                       f"takes features of at most one dimension")
        dims = [None] if shape in ([], [1]) else [None, shape[0]]
        if spec.dtype == tf.string:
            dtype = tf.string
        elif spec.dtype.is_integer and spec.default_value is None:
            dtype = tf.int64
        else:
            dtype = tf.float32
        return tf.TensorSpec(dims, dtype, name=name)
    if isinstance(spec, tf.io.VarLenFeature):
        feature = next((f for f in schema.feature if f.name == name), None)
        if feature is None or feature.value_count.max != 1:
            raise SignatureExportError(
                f"raw feature {name!r} is optional with no single-value bound in the schema "
                f"(value_count max 1); serving_raw takes one value or NaN/\"\" per example: "
                f"leave it out of raw_feature_keys or give the schema value_count {{ max: 1 }}")
        return tf.TensorSpec([None], tf.string if spec.dtype == tf.string else tf.float32,
                             name=name)
    raise SignatureExportError(f"raw feature {name!r} is a {type(spec).__name__}; serving_raw "
                               f"takes FixedLenFeature and single-valued VarLenFeature only")


def _raw_to_parsed(x, spec):
    """A serving_raw input as `tf.io.parse_example` gives the feature for `spec`: NaN or ""
    marks a missing value (absent for a VarLenFeature, the default for a FixedLenFeature
    that has one)."""
    import tensorflow as tf

    if isinstance(spec, tf.io.FixedLenFeature):
        if spec.default_value is not None and x.shape.rank == 1:
            missing = (tf.equal(x, "") if x.dtype == tf.string else tf.math.is_nan(x))
            default = tf.reshape(tf.constant(spec.default_value, dtype=x.dtype), [])
            x = tf.where(missing, default, x)
        if x.dtype != spec.dtype:
            x = tf.cast(tf.round(x) if spec.dtype.is_integer and x.dtype.is_floating else x,
                        spec.dtype)
        return tf.reshape(x, [-1] + list(spec.shape))
    present = tf.not_equal(x, "") if x.dtype == tf.string else tf.logical_not(tf.math.is_nan(x))
    rows = tf.where(present)
    values = tf.gather(x, rows[:, 0])
    if values.dtype != spec.dtype:
        values = tf.cast(tf.round(values) if spec.dtype.is_integer else values, spec.dtype)
    return tf.SparseTensor(tf.concat([rows, tf.zeros_like(rows)], axis=1), values,
                           tf.stack([tf.shape(x, out_type=tf.int64)[0], 1]))


def _scores(output, width: int | None, from_logits: bool):
    """[batch, num_classes] float32 probabilities from the model's output."""
    import tensorflow as tf

    output = tf.cast(output, tf.float32)
    if width == 1:
        p = tf.reshape(output, [-1, 1])
        if from_logits:
            p = tf.sigmoid(p)
        return tf.concat([1.0 - p, p], axis=1)
    return tf.nn.softmax(output) if from_logits else output


def _set_method_names(export_dir: str, methods: dict[str, str]) -> None:
    """TF2's saver writes every signature with the predict method; TF Serving's Classify
    and Regress APIs check the classify/regress method names (as Estimators exported them),
    so the SavedModel proto gets them here."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(export_dir, "saved_model.pb")
    with open(path, "rb") as fh:
        saved_model = saved_model_pb2.SavedModel.FromString(fh.read())
    changed = False
    for meta_graph in saved_model.meta_graphs:
        for key, method in methods.items():
            if key in meta_graph.signature_def:
                meta_graph.signature_def[key].method_name = method
                changed = True
    if changed:
        with open(path, "wb") as fh:
            fh.write(saved_model.SerializeToString())
        if os.path.isfile(os.path.join(export_dir, "fingerprint.pb")):
            # fingerprint.pb hashes saved_model.pb; rewrite it as the saver itself does
            # (tensorflow/python/saved_model/save.py), or it describes another graph.
            from tensorflow.python.saved_model import fingerprinting_utils

            fingerprinting_utils.write_fingerprint(export_dir)


def describe(saved_model_dir: str) -> dict[str, Any]:
    """signature name -> {"method", "inputs": {alias: (dtype, shape)}, "outputs": ...}, read
    from saved_model.pb without loading the model (shape -1 = any size). The saver's own
    `__saved_model_init_op` (table initialization, no inputs) is left out."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as fh:
        saved_model = saved_model_pb2.SavedModel.FromString(fh.read())

    def tensors(infos):
        return {alias: (types_pb2.DataType.Name(info.dtype),
                        [d.size for d in info.tensor_shape.dim])
                for alias, info in infos.items()}

    return {key: {"method": sig.method_name, "inputs": tensors(sig.inputs),
                  "outputs": tensors(sig.outputs)}
            for key, sig in saved_model.meta_graphs[0].signature_def.items()
            if not key.startswith("__")}
