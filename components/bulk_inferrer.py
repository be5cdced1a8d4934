"""BulkInferrer: the model's predictions for whole splits of examples, written as the model
server's request log, after TFX's BulkInferrer (tfx/components/bulk_inferrer: executor.py
runs tfx_bsl's RunInferenceImpl on the examples and writes PredictionLogs)."""
from __future__ import annotations

import glob
import os
import time
import uuid

from components.artifacts import Examples, InferenceResult, Model, ModelBlessing
from components.base import Component, Input, OptionalInput, Output, Parameter, Step
from components.beam_options import beam_pipeline
from components.prediction_log_files import SUFFIX, file_stem, model_dir_name, request_log_fields

DEFAULT_SIGNATURE = "serving_default"
LOG_PREFIX = "predictions"
TRANSPORT = "bulk_inferrer"  # the RequestLogFields transport of batch predictions
_COUNTER_NAMESPACE = "pipewright.bulk_inferrer"


class BulkInferrer(Component):
    """Runs the SavedModel `model` (its `Format-Serving/`) over the `data_splits` of
    `examples` (gzip TFRecord of tf.Example per split; [] = every split) in one Beam pipeline
    (the named runner of components/beam_options.py): the examples are batched
    (beam.BatchElements, at most `max_batch_size` per call) and each batch is sent, as the
    DT_STRING [batch] vector of serialized tf.Examples, to the signature `signature_name`
    (default serving_default, whose one input is `examples`), with the model loaded once per
    worker (DoFn.setup).

    Output `inference_result`: per split, `Split-<name>/<model_name>/<version>/predictions-
    <UTC time>Z-<seq>.tfrecord.gz`, gzip TFRecord of tensorflow.serving.PredictionLog, one
    record per batch, in the model server's request-log layout (serving/request_log.py), so
    components/traffic_logs.py reads it like live traffic (`read_window(result.log_dir(split),
    model_name, ...)`): predict_log.request = PredictRequest(model_spec, inputs{<the
    signature's input>: DT_STRING [batch]}), predict_log.response = PredictResponse(model_spec,
    outputs: the signature's outputs for the batch, e.g. scores DT_FLOAT [batch, classes]);
    log_metadata = model_spec {name: model_name, version: model_version, signature_name},
    sampling_config {sampling_rate: 1}, saved_model_tags ["serve"], timestamp_secs (when the
    batch ran) and RequestLogFields request_id (one per batch) and transport "bulk_inferrer".
    `model_version` defaults to the Model artifact's id in ML Metadata.

    When `model_blessing` is connected and does not bless this model, the step is skipped
    with the blessing's reason (as the Pusher) and the result holds no predictions.
    Raises ValueError naming the split for a split the examples lack, or naming the
    signature for a signature the model lacks or one whose inputs are not a single DT_STRING
    tensor; FileNotFoundError naming the pattern for a split with no example files."""

    imports_tensorflow = True

    examples: Input[Examples]
    model: Input[Model]
    model_blessing: OptionalInput[ModelBlessing]
    inference_result: Output[InferenceResult]
    model_name: Parameter[str]
    data_splits: Parameter[list[str]] = []  # [] = every split of the examples (TFX's default)
    signature_name: Parameter[str] = DEFAULT_SIGNATURE
    model_version: Parameter[int | None] = None  # None = the Model artifact's id
    max_batch_size: Parameter[int] = 256

    def execute(self, step: Step) -> None:
        examples, model, result = step.examples, step.model, step.inference_result
        version = step.model_version if step.model_version is not None else model.id
        result.set(model_id=model.id, model_name=step.model_name, model_version=version,
                   signature_name=step.signature_name, span=examples.span, split_names=[],
                   prediction_count=0)
        refusal = _refusal(model, step.model_blessing)
        if refusal:
            step.skip(refusal)
            return
        splits = list(step.data_splits) or examples.splits
        for split in splits:
            if split not in examples.splits:
                raise ValueError(f"data_splits names split {split!r}, which examples "
                                 f"{examples.uri} lack; they have {examples.splits}")
            pattern = examples.file_pattern(split)
            if not any(os.path.getsize(p) > 0 for p in glob.glob(pattern)):
                raise FileNotFoundError(f"examples {examples.uri} have no example files for "
                                        f"split {split!r} ({pattern})")
        if step.max_batch_size < 1:
            raise ValueError(f"max_batch_size = {step.max_batch_size}: must be >= 1")
        input_name = signature_input(model.serving_dir, step.signature_name)
        counts = _run_pipeline(step, splits, input_name, version)
        total = sum(counts.values())
        result.set(split_names=splits, prediction_count=total)
        step.note(", ".join(f"{counts[s]} predictions of split {s}" for s in splits)
                  + f" by {step.model_name} version {version} ({step.signature_name})")


def _refusal(model: Model, blessing: ModelBlessing | None) -> str:
    if blessing is None:
        return ""
    if blessing.model_id is not None and blessing.model_id != model.id:
        return f"the blessing {blessing.id} is for model {blessing.model_id}, not {model.id}"
    if not blessing.blessed:
        return f"model {model.id} is not blessed by the Evaluator: {blessing.reason or '?'}"
    return ""


def signature_input(serving_dir: str, signature_name: str) -> str:
    """The name of the signature's one DT_STRING input (serialized tf.Examples). Raises
    ValueError naming the signature and what the model has."""
    from components.signatures import describe

    signatures = describe(serving_dir)
    if signature_name not in signatures:
        raise ValueError(f"the model {serving_dir} has no signature {signature_name!r}; it has "
                         f"{sorted(signatures)}")
    inputs = signatures[signature_name]["inputs"]
    if len(inputs) != 1 or next(iter(inputs.values()))[0] != "DT_STRING":
        raise ValueError(f"signature {signature_name!r} of {serving_dir} takes {inputs}; the "
                         f"BulkInferrer needs one DT_STRING input of serialized tf.Examples")
    return next(iter(inputs))


def _run_pipeline(step: Step, splits: list[str], input_name: str, version: int) -> dict:
    import apache_beam as beam
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.metrics import MetricsFilter

    opened = time.time()
    pipeline = beam_pipeline(step)
    for split in splits:
        directory = os.path.join(step.inference_result.log_dir(split),
                                 model_dir_name(step.model_name), str(version))
        os.makedirs(directory, exist_ok=True)
        _ = (pipeline
             | f"Read[{split}]" >> beam.io.ReadFromTFRecord(
                 step.examples.file_pattern(split), compression_type=CompressionTypes.GZIP)
             | f"Batch[{split}]" >> beam.BatchElements(min_batch_size=1,
                                                      max_batch_size=step.max_batch_size)
             | f"Infer[{split}]" >> beam.ParDo(_infer_class()(
                 step.model.serving_dir, step.model_name, version, step.signature_name,
                 input_name, split))
             | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                 os.path.join(directory, file_stem(LOG_PREFIX, opened)),
                 file_name_suffix=SUFFIX, shard_name_template="-SSSSSS",
                 compression_type=CompressionTypes.GZIP))
    step.log.info("inferring splits %s with signature %s of %s", splits, step.signature_name,
                  step.model.serving_dir)
    outcome = pipeline.run()
    outcome.wait_until_finish()
    counts = {split: 0 for split in splits}
    for counter in outcome.metrics().query(
            MetricsFilter().with_namespace(_COUNTER_NAMESPACE))["counters"]:
        split = counter.key.metric.name.removeprefix("examples-")
        if split in counts:
            counts[split] += counter.committed or counter.attempted or 0
    return counts


def _make_infer_class():
    import apache_beam as beam

    class Infer(beam.DoFn):
        """One PredictionLog per batch of serialized tf.Examples; the model is loaded once
        per worker."""

        def __init__(self, serving_dir, model_name, version, signature_name, input_name,
                     split):
            self.serving_dir, self.model_name, self.version = serving_dir, model_name, version
            self.signature_name, self.input_name = signature_name, input_name
            self.counter = beam.metrics.Metrics.counter(_COUNTER_NAMESPACE, f"examples-{split}")

        def setup(self):
            import tensorflow as tf

            self._model = tf.saved_model.load(self.serving_dir, tags=["serve"])
            self._fn = self._model.signatures[self.signature_name]

        def process(self, batch):
            import numpy as np
            import tensorflow as tf
            from tensorflow_serving.apis import prediction_log_pb2

            serialized = np.array(list(batch), dtype=object)
            outputs = self._fn(**{self.input_name: tf.constant(serialized)})
            entry = prediction_log_pb2.PredictionLog()
            meta = entry.log_metadata
            meta.model_spec.name = self.model_name
            meta.model_spec.signature_name = self.signature_name
            meta.model_spec.version.value = self.version
            meta.sampling_config.sampling_rate = 1.0
            meta.saved_model_tags.append("serve")
            meta.timestamp_secs = int(time.time())
            meta.MergeFromString(request_log_fields(uuid.uuid4().hex, TRANSPORT))
            request = entry.predict_log.request
            request.model_spec.CopyFrom(meta.model_spec)
            request.model_spec.ClearField("version")
            request.inputs[self.input_name].CopyFrom(tf.make_tensor_proto(serialized,
                                                                          dtype=tf.string))
            response = entry.predict_log.response
            response.model_spec.CopyFrom(meta.model_spec)
            for name, tensor in outputs.items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
            self.counter.inc(len(serialized))
            yield entry.SerializeToString()

    # Named as the module attribute it becomes, so pickle finds it by reference.
    Infer.__qualname__ = Infer.__name__ = "_Infer"
    Infer.__module__ = __name__
    return Infer


def _infer_class():
    return __getattr__("_Infer")


def __getattr__(name):  # the DoFn class is built on first use: importing stays light
    if name == "_Infer":
        globals()["_Infer"] = cls = _make_infer_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
