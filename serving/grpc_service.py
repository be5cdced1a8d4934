"""tensorflow.serving.PredictionService and ModelService (plus grpc.health.v1) on grpc.aio.

Servicers derive from the stubs shipped in tensorflow-serving-api, so method names, message
types and the wire format are TF Serving's. Errors carry TF Serving's status codes and messages
(truncated to 1024 characters as grpc_status_util.cc does).

A transport only: each handler builds a RequestContext from the call's metadata, hands the
request proto to the DataPlane (serving/data_plane.py) shared with REST, and maps a
ServingError to a gRPC status. Every call, health checks included, is first admitted by
DataPlane.admit (serving/admission.py). Handlers are coroutines on one event loop; the data plane awaits
model calls on the batch scheduler or its thread pool, so waiting requests hold no thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import grpc
from tensorflow_serving.apis import (model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving import errors, protos
from serving.admission import API, HEALTH, AdmissionDenied
from serving.data_plane import REQUEST_ID_KEY, DataPlane, RequestContext
from serving.errors import ServingError

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 2 ** 31 - 1  # builder.SetMaxMessageSize(kint32max)
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
TRANSPORT = "GRPC"


async def _abort(context, error: ServingError):
    await context.abort(_STATUS_CODES.get(error.code, grpc.StatusCode.UNKNOWN), error.grpc_message())


def peer_address(peer: str) -> str:
    """The IP address of a grpc peer string: "ipv4:127.0.0.1:5000" -> "127.0.0.1",
    "ipv6:[::1]:5000" -> "::1"; anything else (e.g. "unix:/path") as is."""
    kind, _, rest = (peer or "").partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer or ""


def request_context(context) -> RequestContext:
    """RequestContext from a grpc.aio call: invocation metadata as headers (text values only;
    -bin keys carry bytes and are skipped), the peer's address."""
    headers = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            headers[key.lower()] = value
    return RequestContext(TRANSPORT, headers, peer=peer_address(context.peer()))


async def _admit(admit, context, ctx: RequestContext, endpoint: str) -> None:
    """admit (DataPlane.admit) for a gRPC call: a denial aborts it (UNAUTHENTICATED with
    trailing metadata www-authenticate, RESOURCE_EXHAUSTED with retry-after, whole seconds)."""
    try:
        admit(TRANSPORT, ctx.headers.get("authorization"), ctx.peer, endpoint)
    except AdmissionDenied as denied:
        trailing = []
        if denied.challenge:
            trailing.append(("www-authenticate", denied.challenge))
        if denied.retry_after is not None:
            trailing.append(("retry-after", str(denied.retry_after)))
        await context.abort(_STATUS_CODES[denied.code], denied.grpc_message(), tuple(trailing))


async def _call(context, data_plane: DataPlane, method, request, endpoint: str = API):
    """Admit, then run one data plane method for a gRPC handler; a ServingError aborts the
    call. The request id goes back in the initial metadata (x-request-id)."""
    ctx = request_context(context)
    await _admit(data_plane.admit, context, ctx, endpoint)
    await context.send_initial_metadata(((REQUEST_ID_KEY, ctx.request_id),))
    try:
        return await method(request, ctx)
    except ServingError as e:
        await _abort(context, e)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, data_plane: DataPlane):
        self.data_plane = data_plane

    async def Predict(self, request, context):
        return await _call(context, self.data_plane, self.data_plane.predict, request)

    async def Classify(self, request, context):
        return await _call(context, self.data_plane, self.data_plane.classify, request)

    async def Regress(self, request, context):
        return await _call(context, self.data_plane, self.data_plane.regress, request)

    async def MultiInference(self, request, context):
        return await _call(context, self.data_plane, self.data_plane.multi_inference, request)

    async def GetModelMetadata(self, request, context):
        return await _call(context, self.data_plane, self.data_plane.model_metadata, request)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, data_plane: DataPlane):
        self.data_plane = data_plane

    async def GetModelStatus(self, request, context):
        return await _call(context, self.data_plane, self.data_plane.model_status, request,
                           HEALTH)

    async def HandleReloadConfigRequest(self, request, context):
        return await _call(context, self.data_plane, self.data_plane.reload_config, request)


class HealthServicer:
    """grpc.health.v1.Health as grpc++'s default service: "", ModelService, PredictionService."""

    SERVICES = ("", "ModelService", "PredictionService")
    WATCH_POLL_SECONDS = 0.5

    def __init__(self, admit=None):
        """admit: DataPlane.admit, asked first on every call (endpoint "health")."""
        self.serving = True
        self._admit = admit
        self._stopped = threading.Event()

    async def _admitted(self, context) -> None:
        if self._admit is not None:
            await _admit(self._admit, context, request_context(context), HEALTH)

    def _status(self, service: str) -> int | None:
        if service not in self.SERVICES:
            return None
        return 1 if self.serving else 2  # SERVING / NOT_SERVING

    async def Check(self, request, context):
        await self._admitted(context)
        status = self._status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "")
        return protos.HealthCheckResponse(status=status)

    async def Watch(self, request, context):
        await self._admitted(context)
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


def build_grpc_server(data_plane: DataPlane, *, host: str, port: int, channel_arguments=(),
                      health: HealthServicer | None = None, credentials=None):
    """(server, bound port): a bound, not yet started grpc.aio server; call from a coroutine on
    the loop that will run it. credentials: grpc.ServerCredentials (TLS, serving/tls.py), else
    plaintext. Raises ServingError INVALID_ARGUMENT when the port cannot be bound."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.so_reuseport", 0)]
    options += list(channel_arguments)
    server = grpc.aio.server(options=options)
    prediction = PredictionServicer(data_plane)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    # The hot method also as a registered method: core matches it without a method-name lookup
    # and accepts its calls on a request chain of their own (registered handlers take precedence).
    server.add_registered_method_handlers(PREDICTION_SERVICE, {
        "Predict": grpc.unary_unary_rpc_method_handler(
            prediction.Predict, request_deserializer=predict_pb2.PredictRequest.FromString,
            response_serializer=predict_pb2.PredictResponse.SerializeToString)})
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(data_plane), server)
    if health is not None:
        server.add_generic_rpc_handlers((health.handler(),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:
        bound = 0
    if not bound:
        raise ServingError(errors.INVALID_ARGUMENT, "Failed to BuildAndStart gRPC server")
    return server, bound
