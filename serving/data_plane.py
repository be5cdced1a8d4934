"""The one data plane behind REST and gRPC: status, metadata, predict, classify, regress.

Follows TF Serving's split (http_rest_api_handler.cc parses JSON into the very PredictRequest
the gRPC service receives, calls the same TensorflowPredictor::Predict, and formats the
PredictResponse as JSON) and KServe's DataPlane (one object both servers call). Transports
only parse, format and map errors; everything that happens to a request in between happens
here, once:

    transport -> DataPlane.admit (token, rate limit: serving/admission.py), before parsing
              -> RequestContext + tensorflow_serving request proto
              -> DataPlane.<method>(request, ctx)      (servable lookup, checks, model call)
              -> _finish: metrics, then every observer (request logging, ...) in one place
              -> response proto (or ServingError) -> transport
              -> (shadowed calls) the same call on the candidate, after the answer

Rollouts (serving/rollout.py) enter here too, once for both protocols: an unpinned Predict /
Classify / Regress call (no version, no label in its ModelSpec) is routed by the model's
rollout policy when its base path has a rollout.json (ModelManager.route, keyed by the REST
header X-Request-Key / gRPC metadata x-request-key when sent); a call naming a version or a
label is never re-routed. The version that answered is the one in the response's model_spec,
in the metrics and in the request log. A call the policy shadows is answered by stable; after
the answer is finished the same request runs on the candidate as a task of the event loop
(at most max_shadow_inflight at a time; beyond that it is skipped and counted), its answer is
compared with stable's (serving/shadow.py) and handed to the observers as a CallRecord with
shadow=True and the same request id. Shadow calls are not counted in TF Serving's metrics nor
in version_request_count.

Forwarding (--upstream_grpc_address, serving/upstream.py) enters here too, once: a servable
whose `upstream` is set is served by another model server, so Predict / Classify / Regress /
MultiInference on it become a gRPC call upstream pinned to the version resolved here (routing,
metrics, observers and shadow calls unchanged); metadata and status come from the servable
and the model manager as for a local version.

Methods are coroutines to be awaited on the transport's event loop. Model calls go to the
batch scheduler when batching is on, else to this object's thread pool; calls that block for
long (MultiInference, config reloads) run on the same pool.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Mapping

from serving import admission as admission_lib
from serving import errors
from serving.admission import Admission, AdmissionDenied
from serving.errors import ServingError
from serving.inference import (CLASSIFY_METHOD, REGRESS_METHOD, InferenceService,
                               classification_result, fetched_outputs, regression_result,
                               serialized_examples, verify_inputs)
from serving.rollout import REQUEST_KEY, ROUTE_PINNED, ROUTE_SHADOW
from serving.servable import DEFAULT_SIGNATURE

log = logging.getLogger(__name__)

# Method names: the PredictionService / ModelService RPC names.
PREDICT, CLASSIFY, REGRESS = "Predict", "Classify", "Regress"
MULTI_INFERENCE, GET_MODEL_METADATA = "MultiInference", "GetModelMetadata"
GET_MODEL_STATUS, RELOAD_CONFIG = "GetModelStatus", "HandleReloadConfigRequest"
SIGNATURE_DEF = "signature_def"
REQUEST_ID_KEY = "x-request-id"  # REST header X-Request-Id, gRPC metadata key x-request-id
_CLIENT_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
# TF Serving counts every REST request (http_rest_api_handler.cc ProcessRequest) but, over
# gRPC, only the inference RPCs (prediction_service_impl.cc).
_COUNTED_GRPC_METHODS = frozenset({PREDICT, CLASSIFY, REGRESS})
# The calls a rollout routes and the per-version metrics count.
ROUTED_METHODS = _COUNTED_GRPC_METHODS
DEFAULT_MAX_SHADOW_INFLIGHT = 16


def request_id_from(headers: Mapping[str, str]) -> str:
    """The client's x-request-id (1..128 printable ASCII characters, no spaces), else a new
    uuid4 hex string (32 characters)."""
    value = headers.get(REQUEST_ID_KEY)
    if isinstance(value, str) and _CLIENT_REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


@dataclass
class RequestContext:
    """What the data plane knows of one request besides its proto.

    transport: "REST" or "GRPC" (TF Serving's metrics entrypoint label).
    headers: request headers (REST) or invocation metadata (gRPC), names lower case.
    request_id: see request_id_from; transports return it to the client.
    api_label: the metrics API label; None means the method name (REST passes the URL verb,
        "predict", or "" for GETs, as TF Serving labels them).
    timeout: seconds a model call may take before DEADLINE_EXCEEDED (None: no limit).
    peer: the client's IP address (no port), for per-client rate limits.
    The data plane fills in method, model_name and version (the version that answered, once a
    servable was resolved) as the request proceeds, and, for models with a rollout, route
    ("stable", "canary", "pinned"; "shadow" on a shadow call's own context) and shadow (the
    candidate's servable when the call is to be mirrored). A shadow call's context has
    parent = the client call's context; `logged` is set by the request logger when it keeps
    the call (so it keeps the call's shadow too).
    """

    transport: str
    headers: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    api_label: str | None = None
    timeout: float | None = None
    peer: str = ""
    start: float = field(default_factory=time.perf_counter)
    method: str = ""
    model_name: str = ""
    version: int | None = None
    finished: bool = False
    servable: object = None
    route: str | None = None
    shadow: object = None
    parent: "RequestContext | None" = None
    logged: bool = False

    def __post_init__(self):
        if not self.request_id:
            self.request_id = request_id_from(self.headers)


@dataclass
class CallRecord:
    """One finished call, handed to every observer: request and response are the
    tensorflow_serving protos (request None when the transport failed before building one,
    response None on error); latency in microseconds."""

    ctx: RequestContext
    method: str
    model_name: str
    version: int | None
    request: object
    response: object
    error: ServingError | None
    latency_micros: float
    shadow: bool = False  # the candidate's answer to a shadowed call (ctx.parent: the call)


def as_serving_error(exc: BaseException) -> ServingError:
    """ServingError as is; anything else is a bug, logged, and answered as INTERNAL."""
    if isinstance(exc, ServingError):
        return exc
    log.error("request failed", exc_info=exc)
    return ServingError(errors.INTERNAL, f"{type(exc).__name__}: {exc}")


def _model_spec(spec, name: str, signature_name: str | None, version: int | None):
    """util.cc MakeModelSpec."""
    spec.Clear()
    spec.name = name
    if signature_name is not None:
        spec.signature_name = signature_name or DEFAULT_SIGNATURE
    if version is not None:
        spec.version.value = version


def _require_spec(request) -> None:
    if not request.HasField("model_spec"):
        raise ServingError(errors.INVALID_ARGUMENT, "Missing ModelSpec")


class DataPlane:
    """Status, metadata and inference on tensorflow_serving protos, for any transport.

    observers: callables taking a CallRecord, run after every call (success or failure) on
    the caller's event loop; they must not block, and their exceptions are logged, never
    raised to the request.
    max_shadow_inflight: shadow calls running at once (over all event loops); a call to be
    shadowed beyond that is not mirrored and counted in shadow_skipped_count.
    """

    def __init__(self, service: InferenceService, *, metrics=None, max_threads: int = 8,
                 max_shadow_inflight: int = DEFAULT_MAX_SHADOW_INFLIGHT,
                 admission: Admission | None = None):
        self.service = service
        self.admission = admission if admission is not None else Admission()
        self.manager = service.manager
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=max(1, max_threads),
                                           thread_name_prefix="data-plane")
        self.observers: list[Callable[[CallRecord], None]] = []
        self.max_shadow_inflight = max(0, max_shadow_inflight)
        self._shadow_slots = threading.BoundedSemaphore(self.max_shadow_inflight or 1)
        self._shadow_tasks: set = set()

    def stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ the front door

    def admit(self, transport: str, authorization: str | None, peer: str,
              endpoint: str = admission_lib.API) -> None:
        """Authentication and rate limit (serving/admission.py), which both transports call
        first for every request, exempt endpoints included (the Admission decides). Raises
        AdmissionDenied (UNAUTHENTICATED / RESOURCE_EXHAUSTED, with the challenge or
        retry-after to send), counted in :pipewright:serving:admission_rejected_count."""
        try:
            self.admission.admit(authorization, peer, endpoint)
        except AdmissionDenied as denied:
            if self.metrics is not None:
                self.metrics.count(self.metrics.admission_rejected, transport, denied.reason)
            raise

    # ------------------------------------------------------------ public API
    #
    # Each takes the request proto and a RequestContext, returns the response proto and raises
    # ServingError (TF Serving's code and message). `encode`, when given, turns the response
    # into the transport's body inside the call (so a formatting error fails the call, once, in
    # metrics and logs alike) and its result is returned instead.

    async def predict(self, request, ctx: RequestContext, encode=None):
        """PredictRequest -> PredictResponse (predict_util.cc RunPredict). Raises ServingError."""
        return await self._serve(ctx, PREDICT, request, self._predict, encode)

    async def classify(self, request, ctx: RequestContext, encode=None):
        """ClassificationRequest -> ClassificationResponse (classifier.cc)."""
        return await self._serve(ctx, CLASSIFY, request, self._classify, encode)

    async def regress(self, request, ctx: RequestContext, encode=None):
        """RegressionRequest -> RegressionResponse (regressor.cc)."""
        return await self._serve(ctx, REGRESS, request, self._regress, encode)

    async def multi_inference(self, request, ctx: RequestContext, encode=None):
        """MultiInferenceRequest -> MultiInferenceResponse (multi_inference.cc)."""
        return await self._serve(ctx, MULTI_INFERENCE, request, self._multi_inference, encode)

    async def model_metadata(self, request, ctx: RequestContext, encode=None):
        """GetModelMetadataRequest -> GetModelMetadataResponse (get_model_metadata_impl.cc);
        the response is cached per servable: treat it as read-only."""
        return await self._serve(ctx, GET_MODEL_METADATA, request, self._metadata, encode)

    async def model_status(self, request, ctx: RequestContext, encode=None):
        """GetModelStatusRequest -> GetModelStatusResponse (get_model_status_impl.cc)."""
        return await self._serve(ctx, GET_MODEL_STATUS, request, self._status, encode)

    async def reload_config(self, request, ctx: RequestContext, encode=None):
        """ReloadConfigRequest -> ReloadConfigResponse (model_service_impl.cc); loads the new
        versions before answering (seconds)."""
        return await self._serve(ctx, RELOAD_CONFIG, request, self._reload_config, encode)

    def input_dtypes(self, spec, ctx: RequestContext) -> dict[str, int]:
        """HttpRestApiHandler::GetInfoMap: {input alias: DataType} of the signature the spec
        names, for transports that must know dtypes to parse a request (REST JSON). Raises
        ServingError (NOT_FOUND servable, INVALID_ARGUMENT signature)."""
        servable = self._servable(spec, ctx)
        return self.service.input_dtypes_for_json(servable, spec.signature_name)

    def unrepresentable_spec_error(self, method: str, name: str, version: int | None,
                                   label: str | None, signature_name: str | None) -> ServingError:
        """The error for a request whose model name, label or signature name is not valid UTF-8
        (a REST URL or JSON body may carry any bytes; no proto string, hence no configured
        model, label or signature, can hold them): the lookup's own error, as TF Serving gives
        it for a name it does not know."""
        try:
            if method == GET_MODEL_STATUS:
                self.manager.version_status(name, version)
            else:
                servable = self.manager.servable(name, version, label)
                if signature_name is not None:
                    if method == PREDICT:
                        self.service.input_dtypes_for_json(servable, signature_name)
                    elif method == CLASSIFY:
                        self.service.prepare_classify(servable, signature_name)
                    elif method == REGRESS:
                        self.service.prepare_regress(servable, signature_name)
        except ServingError as e:
            return e
        return ServingError(errors.INVALID_ARGUMENT, "Request names are not valid UTF-8")

    def reject(self, ctx: RequestContext, method: str, model_name: str, error: ServingError,
               request=None) -> None:
        """Record a request the transport failed before (or instead of) calling the data
        plane, e.g. a malformed JSON body; no-op when the data plane already finished it."""
        if ctx.finished:
            return
        ctx.model_name = ctx.model_name or model_name
        self._finish(ctx, method, request, None, error)

    # ------------------------------------------------------------ the one place

    async def _serve(self, ctx: RequestContext, method: str, request, handler, encode):
        ctx.method = method
        spec = getattr(request, "model_spec", None)
        if spec is not None:
            ctx.model_name = spec.name
        try:
            response = await handler(request, ctx)
            result = response if encode is None else encode(response)
        except asyncio.CancelledError:
            self._finish(ctx, method, request, None,
                         ServingError(errors.CANCELLED, "Request was cancelled"))
            raise
        except Exception as e:
            error = as_serving_error(e)
            self._finish(ctx, method, request, None, error)
            raise error from None
        self._finish(ctx, method, request, response, None)
        if ctx.shadow is not None:
            self._start_shadow(ctx, method, request, response, handler)
        return result

    def _finish(self, ctx: RequestContext, method: str, request, response, error) -> None:
        ctx.finished = True
        latency = (time.perf_counter() - ctx.start) * 1e6
        if self.metrics is not None and (ctx.transport != "GRPC" or method in _COUNTED_GRPC_METHODS):
            api = method if ctx.api_label is None else ctx.api_label
            version = (str(ctx.version) if method in ROUTED_METHODS and ctx.version is not None
                       else None)
            self.metrics.record_request(ctx.model_name, api, ctx.transport,
                                        error.code_name if error is not None else "OK", latency,
                                        version, ctx.route)
        if self.observers:
            self._notify(CallRecord(ctx, method, ctx.model_name, ctx.version, request, response,
                                    error, latency))

    def _notify(self, record: CallRecord) -> None:
        for observer in self.observers:
            try:
                observer(record)
            except Exception:
                log.exception("data plane observer failed")

    def _servable(self, spec, ctx: RequestContext):
        """The servable a call runs on, resolved once per call (the REST predict path asks
        before the call, for the input dtypes): routed by the rollout for unpinned Predict /
        Classify / Regress calls, else ServerCore::GetServableHandle's."""
        servable = ctx.servable
        if servable is None:
            if ctx.method in ROUTED_METHODS and spec.WhichOneof("version_choice") is None:
                servable, ctx.route, ctx.shadow = self.manager.route(
                    spec.name, ctx.headers.get(REQUEST_KEY))
            else:
                servable = self.service.servable_for(spec)
                if ctx.method in ROUTED_METHODS and self.manager.has_rollout(spec.name):
                    ctx.route = ROUTE_PINNED
            ctx.servable = servable
        ctx.version = servable.version
        return servable

    # ------------------------------------------------------------ shadow calls

    def _start_shadow(self, ctx: RequestContext, method: str, request, response, handler) -> None:
        candidate = ctx.shadow
        if not self.max_shadow_inflight or not self._shadow_slots.acquire(blocking=False):
            if self.metrics is not None:
                self.metrics.record_shadow(ctx.model_name, str(candidate.version), None)
            return
        task = asyncio.get_running_loop().create_task(
            self._shadow(ctx, method, request, response, handler, candidate))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_done)

    def _shadow_done(self, task) -> None:
        self._shadow_tasks.discard(task)
        self._shadow_slots.release()

    async def _shadow(self, parent: RequestContext, method: str, request, stable_response,
                      handler, candidate) -> None:
        from serving.shadow import Comparison, compare

        ctx = RequestContext(parent.transport, parent.headers, request_id=parent.request_id,
                             timeout=parent.timeout, method=method, model_name=parent.model_name,
                             servable=candidate, route=ROUTE_SHADOW, parent=parent)
        response = error = None
        try:
            response = await handler(request, ctx)
        except asyncio.CancelledError:
            error = ServingError(errors.CANCELLED, "Shadow call was cancelled")
        except Exception as e:
            error = as_serving_error(e)
        latency = (time.perf_counter() - ctx.start) * 1e6
        comparison = Comparison()
        if response is not None:
            try:
                comparison = compare(method, stable_response, response)
            except Exception:
                log.exception("shadow comparison failed")
        if self.metrics is not None:
            self.metrics.record_shadow(ctx.model_name, str(candidate.version),
                                       error.code_name if error is not None else "OK",
                                       comparison.same, comparison.different,
                                       comparison.distances)
        if self.observers:
            self._notify(CallRecord(ctx, method, ctx.model_name, candidate.version, request,
                                    response, error, latency, shadow=True))

    async def _forward(self, ctx: RequestContext, request, servable):
        """The model call of a version served upstream (--upstream_grpc_address,
        serving/upstream.py): the same call, pinned to the version chosen here."""
        return await servable.upstream.forward(ctx.method, request, servable.version,
                                               ctx.timeout, ctx.request_id)

    async def _execute(self, ctx: RequestContext, runner, inputs, outputs=None):
        future = self.service.submit_on_loop(runner, inputs, outputs)
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(self.executor, runner.run, inputs)
        if ctx.timeout is None:
            return await future
        try:
            return await asyncio.wait_for(future, ctx.timeout)
        except asyncio.TimeoutError:
            raise ServingError(errors.DEADLINE_EXCEEDED, "Deadline Exceeded") from None

    # ------------------------------------------------------------ handlers

    async def _predict(self, request, ctx: RequestContext):
        from tensorflow_serving.apis import predict_pb2

        from serving.tensor_proto import from_ndarray, to_ndarray

        _require_spec(request)
        servable = self._servable(request.model_spec, ctx)
        if servable.upstream is not None:
            return await self._forward(ctx, request, servable)
        key = request.model_spec.signature_name or DEFAULT_SIGNATURE
        runner = servable.runners.get(key)
        if runner is None:
            raise ServingError(errors.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
        verify_inputs(runner, request.inputs)
        inputs = {alias: to_ndarray(request.inputs[alias], alias) for alias in runner.input_order}
        runner, outputs = self.service.prepare_predict(servable, key, inputs, request.output_filter)
        results = await self._execute(ctx, runner, inputs, outputs)
        response = predict_pb2.PredictResponse()
        _model_spec(response.model_spec, request.model_spec.name, key, servable.version)
        for alias in outputs:
            from_ndarray(results[alias], response.outputs[alias])
        return response

    async def _classify(self, request, ctx: RequestContext):
        from tensorflow_serving.apis import classification_pb2

        return await self._examples_method(
            request, ctx, classification_pb2.ClassificationResponse(),
            self.service.prepare_classify, CLASSIFY_METHOD,
            lambda result, runner, outputs, n: fill_classification(
                result, classification_result(runner, outputs, n)))

    async def _regress(self, request, ctx: RequestContext):
        from tensorflow_serving.apis import regression_pb2

        return await self._examples_method(
            request, ctx, regression_pb2.RegressionResponse(),
            self.service.prepare_regress, REGRESS_METHOD,
            lambda result, runner, outputs, n: fill_regression(
                result, regression_result(runner, outputs, n)))

    async def _examples_method(self, request, ctx: RequestContext, response, prepare,
                               method: str, fill):
        """Classify and Regress: the same call on serialized examples; only the signature
        method and how the result is filled differ."""
        _require_spec(request)
        servable = self._servable(request.model_spec, ctx)
        if servable.upstream is not None:
            return await self._forward(ctx, request, servable)
        runner = prepare(servable, request.model_spec.signature_name)
        inputs = self.service.examples_input(serialized_examples(request.input))
        _model_spec(response.model_spec, request.model_spec.name, request.model_spec.signature_name,
                    servable.version)
        n = len(inputs["inputs"])
        outputs = await self._execute(ctx, runner, inputs, fetched_outputs(runner, method))
        fill(response.result, runner, outputs, n)
        return response

    async def _multi_inference(self, request, ctx: RequestContext):
        from tensorflow_serving.apis import inference_pb2

        if request.tasks:
            ctx.model_name = request.tasks[0].model_spec.name
            servable = self.service.servable_for(request.tasks[0].model_spec)
            if servable.upstream is not None:
                ctx.version = servable.version
                return await self._forward(ctx, request, servable)
        # Runs its tasks one after another, blocking on each model call: off the loop.
        servable, results = await asyncio.get_running_loop().run_in_executor(
            self.executor, self.service.multi_inference, request)
        ctx.version = servable.version
        response = inference_pb2.MultiInferenceResponse()
        for task, kind, result in results:
            entry = response.results.add()
            _model_spec(entry.model_spec, task.model_spec.name, task.model_spec.signature_name,
                        servable.version)
            if kind == "classification":
                fill_classification(entry.classification_result, result)
            else:
                fill_regression(entry.regression_result, result)
        return response

    async def _metadata(self, request, ctx: RequestContext):
        _require_spec(request)
        if not request.metadata_field:
            raise ServingError(errors.INVALID_ARGUMENT,
                               "GetModelMetadataRequest must specify at least one metadata_field")
        for name in request.metadata_field:
            if name != SIGNATURE_DEF:
                raise ServingError(errors.INVALID_ARGUMENT, f"Metadata field {name} is not supported")
        servable = self._servable(request.model_spec, ctx)
        return servable.cached("grpc_metadata", lambda: metadata_response(servable))

    async def _status(self, request, ctx: RequestContext):
        from tensorflow_serving.apis import get_model_status_pb2

        _require_spec(request)
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for v, state, error in self.manager.version_status(spec.name, version):
            entry = response.model_version_status.add(version=v, state=state)
            entry.status.SetInParent()  # AddStatusToProto: always present, OK included
            if error is not None:
                entry.status.error_code = error.code
                entry.status.error_message = error.message
        return response

    async def _reload_config(self, request, ctx: RequestContext):
        from tensorflow_serving.apis import model_management_pb2

        if request.config.WhichOneof("config") != "model_config_list":
            raise ServingError(errors.INVALID_ARGUMENT,
                               "ServerModelConfig type not supported by HandleReloadConfigRequest."
                               " Only ModelConfigList is currently supported")
        await asyncio.get_running_loop().run_in_executor(
            self.executor, self.manager.apply_config, request.config)
        response = model_management_pb2.ReloadConfigResponse()
        for metric_name in request.metric_names:
            response.metric.add(name=metric_name, int64_value_increase=0)
        response.status.error_code = 0
        return response


def metadata_response(servable):
    """GetModelMetadataResponse{model_spec {name, version}, metadata["signature_def"]: Any
    packing a SignatureDefMap of every signature}."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response.metadata[SIGNATURE_DEF].Pack(signature_map)
    return response


def fill_classification(result_proto, result) -> None:
    """[[(label bytes, score)] per example] -> ClassificationResult."""
    for classes in result:
        classifications = result_proto.classifications.add()
        for label, score in classes:
            classifications.classes.add(label=label.decode("utf-8", "surrogateescape")
                                        if isinstance(label, bytes) else label, score=score)


def fill_regression(result_proto, values) -> None:
    for value in values:
        result_proto.regressions.add(value=value)
