"""Predict / Classify / Regress / MultiInference semantics shared by REST and gRPC.

Mirrors TF Serving's predict_util.cc, classifier.cc, regressor.cc, multi_inference.cc and
util.cc: the same checks in the same order, with the same messages. Each API is split into
prepare (checks, in the caller's thread), execute (the model call, batched when batching is on;
REST and gRPC await it on their event loops, warmup blocks on it) and finish (result shaping).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import Future

import numpy as np

from serving import errors
from serving.errors import ServingError
from serving.servable import (DEFAULT_SIGNATURE, Servable, SignatureRunner, check_input_dtypes,
                              check_input_shapes)

log = logging.getLogger(__name__)

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000
_DATATYPE_NAMES = {1: "DT_FLOAT", 2: "DT_DOUBLE", 3: "DT_INT32", 4: "DT_UINT8", 5: "DT_INT16",
                   6: "DT_INT8", 7: "DT_STRING", 9: "DT_INT64", 10: "DT_BOOL", 19: "DT_HALF"}


def _invalid(message: str) -> ServingError:
    return ServingError(errors.INVALID_ARGUMENT, message)


def _shape(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _join(names) -> str:
    return ",".join(sorted(names))


class InferenceService:
    def __init__(self, manager, metrics=None, batcher=None):
        self.manager = manager
        self.metrics = metrics
        self.batcher = batcher

    # ------------------------------------------------------------ execution

    def submit(self, runner: SignatureRunner, inputs: dict[str, np.ndarray],
               outputs=None) -> Future | None:
        """A future when batching is on; None means: call runner.run(inputs) yourself.

        `outputs` are the output aliases the caller fetches (None: all of them). BatchingSession
        queues a Run by its TensorSignature (input and output tensors): a Run fetching a subset
        (a Predict output_filter) gets a queue of its own, with the same limits."""
        if self.batcher is None:
            return None
        return self.batcher.submit(runner, inputs, batch_signature(runner, outputs))

    def submit_on_loop(self, runner: SignatureRunner, inputs: dict[str, np.ndarray],
                       outputs=None) -> asyncio.Future | None:
        """submit for a coroutine on the running event loop: await the future it returns."""
        if self.batcher is None:
            return None
        return self.batcher.submit_on_loop(runner, inputs, batch_signature(runner, outputs))

    def execute(self, runner: SignatureRunner, inputs: dict[str, np.ndarray],
                outputs=None) -> dict[str, np.ndarray]:
        future = self.submit(runner, inputs, outputs)
        return runner.run(inputs) if future is None else future.result()

    # ------------------------------------------------------------ predict

    def input_dtypes_for_json(self, servable: Servable, signature_name: str) -> dict[str, int]:
        """HttpRestApiHandler::GetInfoMap."""
        key = signature_name or DEFAULT_SIGNATURE
        runner = servable.runners.get(key)
        if runner is None:
            raise _invalid(f'Serving signature name: "{key}" not found in signature def')
        return runner.input_dtypes

    def prepare_predict(self, servable: Servable, signature_name: str,
                        inputs: dict[str, np.ndarray], output_filter=()) -> tuple[SignatureRunner, list[str]]:
        key = signature_name or DEFAULT_SIGNATURE
        runner = servable.runners.get(key)
        if runner is None:
            raise ServingError(errors.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
        verify_inputs(runner, inputs)
        check_input_dtypes(runner, inputs)
        check_input_shapes(runner, inputs)
        outputs: list[str] = []
        for alias in output_filter:
            if alias not in runner.outputs:
                raise _invalid(f"output tensor alias not found in signature: {alias} Outputs "
                               f"expected to be in the set {{{_join(runner.outputs)}}}.")
            if alias in outputs:
                raise _invalid(f"duplicate output tensor alias: {alias}")
            outputs.append(alias)
        return runner, outputs or sorted(runner.outputs)

    # ------------------------------------------------------------ classify / regress

    def prepare_classify(self, servable: Servable, signature_name: str) -> SignatureRunner:
        runner = self._signature(servable, signature_name)
        _check_classification_signature(runner)
        return runner

    def prepare_regress(self, servable: Servable, signature_name: str) -> SignatureRunner:
        runner = self._signature(servable, signature_name)
        _check_regression_signature(runner)
        return runner

    @staticmethod
    def _signature(servable: Servable, signature_name: str) -> SignatureRunner:
        key = signature_name or DEFAULT_SIGNATURE
        runner = servable.runners.get(key)
        if runner is None:
            raise _invalid(f"No signature was found with the name: {key}")
        return runner

    @staticmethod
    def examples_input(serialized: list[bytes]) -> dict[str, np.ndarray]:
        if not serialized:
            raise _invalid("Input is empty.")
        array = np.empty(len(serialized), dtype=object)
        array[:] = serialized
        return {"inputs": array}

    # ------------------------------------------------------------ multi inference

    def multi_inference(self, request) -> tuple[Servable, list[tuple]]:
        """[(task, kind, result)], kind in ("classification", "regression")."""
        spec = request.tasks[0].model_spec if request.tasks else None
        servable = self.servable_for(spec)
        model_name = ""
        seen = set()
        plan = []
        for task in request.tasks:
            if not task.model_spec.name:
                raise _invalid("Found ModelSpec with an empty model name.")
            if not model_name:
                model_name = task.model_spec.name
            elif model_name != task.model_spec.name:
                raise _invalid("All ModelSpecs in a MultiInferenceRequest must access the same "
                               "model name.")
            key = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if key in seen:
                raise _invalid(f"Duplicate evaluation of signature: {key}")
            seen.add(key)
            runner = servable.runners.get(key)
            if runner is None:
                raise _invalid(f"Requested signature not found in model graph: {key}")
            if task.method_name == CLASSIFY_METHOD:
                _check_classification_signature(runner)
            elif task.method_name == REGRESS_METHOD:
                _check_regression_signature(runner)
            else:
                raise ServingError(errors.UNIMPLEMENTED,
                                   f"Unsupported signature method_name: {task.method_name}")
            plan.append((task, runner))
        inputs = self.examples_input(serialized_examples(request.input))
        n = len(inputs["inputs"])
        results = []
        outputs_by_runner: dict[int, dict] = {}
        for task, runner in plan:
            if id(runner) not in outputs_by_runner:
                outputs_by_runner[id(runner)] = self.execute(
                    runner, inputs, fetched_outputs(runner, task.method_name))
            outputs = outputs_by_runner[id(runner)]
            if task.method_name == CLASSIFY_METHOD:
                results.append((task, "classification", classification_result(runner, outputs, n)))
            else:
                results.append((task, "regression", regression_result(runner, outputs, n)))
        return servable, results

    # ------------------------------------------------------------ servables

    def servable_for(self, spec) -> Servable:
        """ServerCore::GetServableHandle from a ModelSpec proto (None: no spec)."""
        if spec is None:
            return self.manager.servable("")
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            return self.manager.servable(spec.name, version=spec.version.value)
        if choice == "version_label":
            return self.manager.servable(spec.name, label=spec.version_label)
        return self.manager.servable(spec.name)

    # ------------------------------------------------------------ warmup

    def warmup(self, servable: Servable, iterations: int = 1) -> None:
        """RunSavedModelWarmup: replay assets.extra/tf_serving_warmup_requests."""
        path = os.path.join(servable.path, WARMUP_FILE)
        if not os.path.exists(path):
            return
        from tensorflow_serving.apis import prediction_log_pb2

        start = time.perf_counter()
        status = "OK"
        try:
            count = 0
            for record in _tf_records(path):
                try:
                    log_entry = prediction_log_pb2.PredictionLog.FromString(record)
                except Exception:
                    raise _invalid(f"Failed to parse warmup record: "
                                   f"{record.decode('utf-8', 'replace')} from {path}") from None
                for _ in range(max(1, iterations)):
                    self._replay(servable, log_entry)
                count += 1
                if count > MAX_WARMUP_RECORDS:
                    raise _invalid(f"Number of warmup records exceeds the maximum "
                                   f"({MAX_WARMUP_RECORDS}) at {path}")
            log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d",
                     path, count)
        except ServingError as e:
            status = e.code_name
            raise
        finally:
            if self.metrics is not None:
                self.metrics.record_warmup(servable.path, status, (time.perf_counter() - start) * 1e6)

    def _replay(self, servable: Servable, entry) -> None:
        from serving.tensor_proto import to_ndarray

        kind = entry.WhichOneof("log_type")
        if kind == "predict_log":
            request = entry.predict_log.request
            inputs = {alias: to_ndarray(t, alias) for alias, t in request.inputs.items()}
            runner, outputs = self.prepare_predict(servable, request.model_spec.signature_name,
                                                   inputs, request.output_filter)
            self.execute(runner, inputs, outputs)
        elif kind in ("classify_log", "regress_log"):
            request = getattr(entry, kind).request
            prepare = self.prepare_classify if kind == "classify_log" else self.prepare_regress
            runner = prepare(servable, request.model_spec.signature_name)
            method = CLASSIFY_METHOD if kind == "classify_log" else REGRESS_METHOD
            self.execute(runner, self.examples_input(serialized_examples(request.input)),
                         fetched_outputs(runner, method))
        elif kind == "multi_inference_log":
            request = entry.multi_inference_log.request
            inputs = self.examples_input(serialized_examples(request.input))
            for task in request.tasks:
                runner = self._signature(servable, task.model_spec.signature_name)
                self.execute(runner, inputs, fetched_outputs(runner, task.method_name))
        else:
            raise ServingError(errors.UNIMPLEMENTED, f"Unsupported log_type for warmup: {kind}")


# ---------------------------------------------------------------- helpers


def batch_signature(runner: SignatureRunner, aliases):
    """What, besides the signature, keys a Run's batching queue: None when it fetches all the
    signature's output tensors, else the set of tensor names it fetches."""
    if aliases is None:
        return None
    wanted = frozenset(runner.outputs[alias].name for alias in aliases if alias in runner.outputs)
    if wanted == frozenset(spec.name for spec in runner.outputs.values()):
        return None
    return wanted


def fetched_outputs(runner: SignatureRunner, method_name: str) -> list[str]:
    """The outputs Classify / Regress fetch: classes and/or scores, or outputs."""
    if method_name == CLASSIFY_METHOD:
        return [alias for alias in ("classes", "scores") if alias in runner.outputs]
    return ["outputs"]


def verify_inputs(runner: SignatureRunner, inputs: dict) -> None:
    """VerifyRequestInputsSize and saved_model::GetInputValues."""
    request, signature = set(inputs), set(runner.inputs)
    if len(request) != len(signature):
        raise _invalid(
            f"input size does not match signature: {len(request)}!={len(signature)} "
            f"len({{{_join(request)}}}) != len({{{_join(signature)}}}). "
            f"Sent extra: {{{_join(request - signature)}}}. "
            f"Missing but required: {{{_join(signature - request)}}}.")
    for alias in sorted(signature):
        if alias not in inputs:
            feed = runner.inputs[alias].name
            raise _invalid(f"Signature input alias: {alias}(feed name: {feed}) not found in request "
                           f"and no default value provided. Inputs expected to be in the request "
                           f"{{{_join(request)}}}, or default input alias set: ")


def serialized_examples(input_proto) -> list[bytes]:
    """InputToSerializedExampleTensor: context bytes prefix each example (proto merge)."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in input_proto.example_list.examples]
    if kind == "example_list_with_context":
        with_context = input_proto.example_list_with_context
        context = with_context.context.SerializeToString()
        return [context + e.SerializeToString() for e in with_context.examples]
    return []


def input_from_features(context, examples, input_proto) -> None:
    """REST feature dicts (tensors.examples_from_json) -> tensorflow.serving.Input: an
    example_list, or an example_list_with_context when there is a context; serialized_examples
    of it gives what TF Serving feeds (context bytes prefixing each example)."""

    def fill(example, features):
        for name, (kind, values) in features.items():
            feature = example.features.feature[name]
            if kind == "bytes":
                feature.bytes_list.value.extend(values)
            elif kind == "float":
                feature.float_list.value.extend(values)
            elif kind == "int64":
                feature.int64_list.value.extend(values)

    if context is not None:
        target = input_proto.example_list_with_context
        fill(target.context, context)
    else:
        target = input_proto.example_list
    target.SetInParent()
    for features in examples:
        fill(target.examples.add(), features)


def _check_classification_signature(runner: SignatureRunner) -> None:
    """PreProcessClassification."""
    if len(runner.inputs) != 1:
        raise _invalid("Expected one input Tensor.")
    if len(runner.outputs) not in (1, 2):
        raise _invalid(f"Expected one or two output Tensors, found {len(runner.outputs)}")
    if "inputs" not in runner.inputs:
        raise _invalid("No classification inputs found in SignatureDef: " + runner.debug_string())
    if "classes" not in runner.outputs and "scores" not in runner.outputs:
        raise _invalid('Expected classification signature outputs to contain at least one of '
                       '"classes" or "scores". Signature was: ' + runner.debug_string())


def _check_regression_signature(runner: SignatureRunner) -> None:
    """PreProcessRegression."""
    if len(runner.inputs) != 1:
        raise _invalid("Expected one input Tensor.")
    if len(runner.outputs) != 1:
        raise _invalid("Expected one output Tensor.")
    if "inputs" not in runner.inputs:
        raise _invalid("No regression inputs found in SignatureDef: " + runner.debug_string())
    if "outputs" not in runner.outputs:
        raise _invalid("No regression outputs found in SignatureDef: " + runner.debug_string())


def _dtype_name(array: np.ndarray) -> str:
    from serving.tensor_proto import dtype_of
    return _DATATYPE_NAMES.get(dtype_of(array), f"DT_{array.dtype.name.upper()}")


def _check_class_output(name: str, array: np.ndarray, dtype, dtype_name: str, n: int) -> None:
    """TF Serving's checks of a classify output: [batch, num_classes], its dtype, batch n."""
    if array.ndim != 2:
        raise _invalid(f"Expected Tensor shape: [batch_size num_classes] but got {_shape(array.shape)}")
    if array.dtype != dtype:
        raise _invalid(f"Expected {name} Tensor of {dtype_name}. Got: {_dtype_name(array)}")
    if array.shape[0] != n:
        raise _invalid(f"Expected {name} output batch size of {n}. Got: {array.shape[0]}")


def classification_result(runner: SignatureRunner, outputs: dict, n: int) -> list[list[tuple[bytes, float]]]:
    """PostProcessClassificationResult -> per example [(label, score)]."""
    classes = outputs.get("classes") if "classes" in runner.outputs else None
    scores = outputs.get("scores") if "scores" in runner.outputs else None
    if classes is not None:
        _check_class_output("classes", classes, np.object_, "DT_STRING", n)
    if scores is not None:
        _check_class_output("scores", scores, np.float32, "DT_FLOAT", n)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise _invalid(f"Tensors class and score should match in dim_size(1). Got "
                       f"{classes.shape[1]} vs. {scores.shape[1]}")
    num_classes = (classes if classes is not None else scores).shape[1]
    label_rows = classes.tolist() if classes is not None else None
    score_rows = scores.tolist() if scores is not None else None
    return [[(label_rows[i][c] if label_rows else b"", score_rows[i][c] if score_rows else 0.0)
             for c in range(num_classes)] for i in range(n)]


def regression_result(runner: SignatureRunner, outputs: dict, n: int) -> list[float]:
    """PostProcessRegressionResult."""
    value = outputs["outputs"]
    if not (value.ndim == 1 or (value.ndim == 2 and value.shape[1] == 1)):
        raise _invalid("Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
                       f"but got {_shape(value.shape)}")
    if value.shape[0] != n:
        raise _invalid(f"Input batch size did not match output batch size: {n} vs. {value.shape[0]}")
    if value.dtype != np.float32:
        raise _invalid(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_name(value)}")
    if value.size != n:
        raise _invalid(f"Expected output batch size to be {n}.  Got: {value.size}")
    return value.reshape(-1).tolist()


def _tf_records(path: str):
    """The records of a TFRecord file, read by TensorFlow's own reader (SequentialRecordReader),
    so a damaged file fails as in TF Serving: DATA_LOSS "corrupted record at <offset>" (CRC) or
    "truncated record at <offset>..."; a partial header at the end is the end of the file."""
    from tensorflow.python.lib.io import tf_record
    from tensorflow.python.util import deprecation

    with deprecation.silence():
        iterator = tf_record.tf_record_iterator(path)
    try:
        yield from iterator
    except Exception as e:
        error = errors.from_tf_error(e)
        if error.code == errors.DATA_LOSS:
            error = ServingError(errors.DATA_LOSS, error.message
                                 + ". Please verify your warmup data is in TFRecord format.")
        raise error from None
