"""tensorflow.serving.PredictionService and ModelService (plus grpc.health.v1) on grpc.aio.

Servicers derive from the stubs shipped in tensorflow-serving-api, so method names, message
types and the wire format are TF Serving's. Errors carry TF Serving's status codes and messages
(truncated to 1024 characters as grpc_status_util.cc does).

Handlers are coroutines on one event loop: parsing, checks and response building run inline
(tens of microseconds), model calls are awaited on the batch scheduler or, without batching, on
a thread pool, so any number of requests can wait for a batch without holding a thread each.
Calls that may block for long (MultiInference, config reloads) run on the thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc,
                                     regression_pb2)

from serving import errors, protos
from serving.errors import ServingError
from serving.inference import (CLASSIFY_METHOD, REGRESS_METHOD, InferenceService, _verify_inputs,
                               classification_result, fetched_outputs, regression_result,
                               serialized_examples)
from serving.servable import DEFAULT_SIGNATURE
from serving.tensor_proto import from_ndarray, to_ndarray

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 2 ** 31 - 1  # builder.SetMaxMessageSize(kint32max)
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
SIGNATURE_DEF = "signature_def"
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"


async def _abort(context, error: ServingError):
    await context.abort(_STATUS_CODES.get(error.code, grpc.StatusCode.UNKNOWN), error.grpc_message())


def _as_serving_error(exc: Exception) -> ServingError:
    if isinstance(exc, ServingError):
        return exc
    log.exception("gRPC request failed")
    return ServingError(errors.INTERNAL, f"{type(exc).__name__}: {exc}")


def _model_spec(spec, name: str, signature_name: str | None, version: int | None):
    """util.cc MakeModelSpec."""
    spec.Clear()
    spec.name = name
    if signature_name is not None:
        spec.signature_name = signature_name or DEFAULT_SIGNATURE
    if version is not None:
        spec.version.value = version


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, service: InferenceService, executor: ThreadPoolExecutor, metrics=None):
        self.service = service
        self.executor = executor
        self.metrics = metrics

    def _record(self, name: str, api: str, start: float, code_name: str) -> None:
        if self.metrics is not None:
            self.metrics.record_request(name, api, "GRPC", code_name, (time.perf_counter() - start) * 1e6)

    async def _execute(self, runner, inputs: dict[str, np.ndarray], outputs=None) -> dict[str, np.ndarray]:
        future = self.service.submit_on_loop(runner, inputs, outputs)
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(self.executor, runner.run, inputs)
        return await future

    async def Predict(self, request, context):
        start = time.perf_counter()
        name = request.model_spec.name
        try:
            response = await self._predict(request)
        except Exception as e:
            error = _as_serving_error(e)
            self._record(name, "Predict", start, error.code_name)
            await _abort(context, error)
        self._record(name, "Predict", start, "OK")
        return response

    async def _predict(self, request):
        if not request.HasField("model_spec"):
            raise ServingError(errors.INVALID_ARGUMENT, "Missing ModelSpec")
        servable = self.service.servable_for(request.model_spec)
        key = request.model_spec.signature_name or DEFAULT_SIGNATURE
        runner = servable.runners.get(key)
        if runner is None:
            raise ServingError(errors.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
        _verify_inputs(runner, request.inputs)
        inputs = {alias: to_ndarray(request.inputs[alias], alias) for alias in runner.input_order}
        runner, outputs = self.service.prepare_predict(servable, key, inputs, request.output_filter)
        results = await self._execute(runner, inputs, outputs)
        response = predict_pb2.PredictResponse()
        _model_spec(response.model_spec, request.model_spec.name, key, servable.version)
        for alias in outputs:
            from_ndarray(results[alias], response.outputs[alias])
        return response

    async def Classify(self, request, context):
        return await self._classify_or_regress(request, context, "Classify")

    async def Regress(self, request, context):
        return await self._classify_or_regress(request, context, "Regress")

    async def _classify_or_regress(self, request, context, api: str):
        start = time.perf_counter()
        name = request.model_spec.name
        try:
            if not request.HasField("model_spec"):
                raise ServingError(errors.INVALID_ARGUMENT, "Missing ModelSpec")
            servable = self.service.servable_for(request.model_spec)
            signature_name = request.model_spec.signature_name
            if api == "Classify":
                runner = self.service.prepare_classify(servable, signature_name)
                response = classification_pb2.ClassificationResponse()
            else:
                runner = self.service.prepare_regress(servable, signature_name)
                response = regression_pb2.RegressionResponse()
            _model_spec(response.model_spec, name, signature_name, servable.version)
            inputs = self.service.examples_input(serialized_examples(request.input))
            n = len(inputs["inputs"])
            method = CLASSIFY_METHOD if api == "Classify" else REGRESS_METHOD
            outputs = await self._execute(runner, inputs, fetched_outputs(runner, method))
            if api == "Classify":
                _fill_classification(response.result, classification_result(runner, outputs, n))
            else:
                _fill_regression(response.result, regression_result(runner, outputs, n))
        except Exception as e:
            error = _as_serving_error(e)
            self._record(name, api, start, error.code_name)
            await _abort(context, error)
        self._record(name, api, start, "OK")
        return response

    async def MultiInference(self, request, context):
        try:
            # Runs its tasks one after another, blocking on each model call: off the loop.
            servable, results = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.service.multi_inference, request)
            response = inference_pb2.MultiInferenceResponse()
            for task, kind, result in results:
                entry = response.results.add()
                _model_spec(entry.model_spec, task.model_spec.name, task.model_spec.signature_name,
                            servable.version)
                if kind == "classification":
                    _fill_classification(entry.classification_result, result)
                else:
                    _fill_regression(entry.regression_result, result)
        except Exception as e:
            await _abort(context, _as_serving_error(e))
        return response

    async def GetModelMetadata(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise ServingError(errors.INVALID_ARGUMENT, "Missing ModelSpec")
            if not request.metadata_field:
                raise ServingError(errors.INVALID_ARGUMENT,
                                   "GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != SIGNATURE_DEF:
                    raise ServingError(errors.INVALID_ARGUMENT, f"Metadata field {field} is not supported")
            servable = self.service.servable_for(request.model_spec)
            response = servable.cached("grpc_metadata", lambda: _metadata_response(servable))
        except Exception as e:
            await _abort(context, _as_serving_error(e))
        return response


def _metadata_response(servable):
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response.metadata[SIGNATURE_DEF].Pack(signature_map)
    return response


def _fill_classification(result_proto, result) -> None:
    for classes in result:
        classifications = result_proto.classifications.add()
        for label, score in classes:
            classifications.classes.add(label=label.decode("utf-8", "surrogateescape")
                                        if isinstance(label, bytes) else label, score=score)


def _fill_regression(result_proto, values) -> None:
    for value in values:
        result_proto.regressions.add(value=value)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager, executor: ThreadPoolExecutor):
        self.manager = manager
        self.executor = executor

    async def GetModelStatus(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise ServingError(errors.INVALID_ARGUMENT, "Missing ModelSpec")
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            response = get_model_status_pb2.GetModelStatusResponse()
            for v, state, error in self.manager.version_status(spec.name, version):
                entry = response.model_version_status.add(version=v, state=state)
                if error is not None:
                    entry.status.error_code = error.code
                    entry.status.error_message = error.message
        except Exception as e:
            await _abort(context, _as_serving_error(e))
        return response

    async def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise ServingError(errors.INVALID_ARGUMENT,
                                   "ServerModelConfig type not supported by HandleReloadConfigRequest."
                                   " Only ModelConfigList is currently supported")
            # Loads new versions before answering: seconds, off the loop.
            await asyncio.get_running_loop().run_in_executor(
                self.executor, self.manager.apply_config, request.config)
        except Exception as e:
            await _abort(context, _as_serving_error(e))
        for metric_name in request.metric_names:
            response.metric.add(name=metric_name, int64_value_increase=0)
        response.status.error_code = 0
        return response


class HealthServicer:
    """grpc.health.v1.Health as grpc++'s default service: "", ModelService, PredictionService."""

    SERVICES = ("", "ModelService", "PredictionService")
    WATCH_POLL_SECONDS = 0.5

    def __init__(self):
        self.serving = True
        self._stopped = threading.Event()

    def _status(self, service: str) -> int | None:
        if service not in self.SERVICES:
            return None
        return 1 if self.serving else 2  # SERVING / NOT_SERVING

    async def Check(self, request, context):
        status = self._status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "")
        return protos.HealthCheckResponse(status=status)

    async def Watch(self, request, context):
        last = None
        while not context.done() and not self._stopped.is_set():
            status = self._status(request.service)
            status = 3 if status is None else status  # SERVICE_UNKNOWN
            if status != last:
                last = status
                yield protos.HealthCheckResponse(status=status)
            await asyncio.sleep(self.WATCH_POLL_SECONDS)

    def stop(self):
        self.serving = False
        self._stopped.set()

    def handler(self):
        return grpc.method_handlers_generic_handler(protos.HEALTH_SERVICE, {
            "Check": grpc.unary_unary_rpc_method_handler(
                self.Check, request_deserializer=protos.HealthCheckRequest.FromString,
                response_serializer=protos.HealthCheckResponse.SerializeToString),
            "Watch": grpc.unary_stream_rpc_method_handler(
                self.Watch, request_deserializer=protos.HealthCheckRequest.FromString,
                response_serializer=protos.HealthCheckResponse.SerializeToString),
        })


def build_grpc_server(service: InferenceService, manager, *, host: str, port: int, max_threads: int,
                      channel_arguments=(), metrics=None, health: HealthServicer | None = None):
    """A bound, not yet started grpc.aio server; call from a coroutine on the loop that will run it.

    max_threads sizes the pool for model calls without batching and for blocking calls.
    """
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.so_reuseport", 0)]
    options += list(channel_arguments)
    executor = ThreadPoolExecutor(max_workers=max(1, max_threads), thread_name_prefix="grpc")
    server = grpc.aio.server(options=options)
    prediction = PredictionServicer(service, executor, metrics)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    # The hot method also as a registered method: core matches it without a method-name lookup
    # and accepts its calls on a request chain of their own (registered handlers take precedence).
    server.add_registered_method_handlers(PREDICTION_SERVICE, {
        "Predict": grpc.unary_unary_rpc_method_handler(
            prediction.Predict, request_deserializer=predict_pb2.PredictRequest.FromString,
            response_serializer=predict_pb2.PredictResponse.SerializeToString)})
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager, executor), server)
    if health is not None:
        server.add_generic_rpc_handlers((health.handler(),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        executor.shutdown(wait=False)
        raise ServingError(errors.INVALID_ARGUMENT, "Failed to BuildAndStart gRPC server")
    return server, bound, executor
