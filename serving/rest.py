"""TF Serving's HTTP/REST API (http_server.cc, http_rest_api_handler.cc) on asyncio + httptools.

A transport only, as TF Serving's REST handler is: JSON is parsed into the very request proto
the gRPC service receives (PredictRequest, ClassificationRequest, ...), the DataPlane
(serving/data_plane.py) shared with gRPC answers it, and the response proto is written as TF
Serving's JSON. One event loop parses HTTP and JSON and writes responses; the data plane awaits
model calls on the batch scheduler or its thread pool, so a slow model never stalls the loop.
Requests on one connection are answered in order (HTTP/1.1 pipelining). Every request is first
admitted by DataPlane.admit (bearer token, rate limit: serving/admission.py), before its body is
parsed; with --ssl_config_file the port speaks HTTPS only (serving/tls.py).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import urllib.parse
import zlib
from collections import deque

import httptools
from google.protobuf import json_format

from serving import errors, jsontext, tensors
from serving.admission import API, HEALTH, METRICS, PREFLIGHT, AdmissionDenied
from serving.data_plane import (CLASSIFY, GET_MODEL_METADATA, GET_MODEL_STATUS, PREDICT, REGRESS,
                                SIGNATURE_DEF, DataPlane, RequestContext, as_serving_error)
from serving.errors import ServingError
from serving.inference import input_from_features
from serving.ints import simple_atoi64

log = logging.getLogger(__name__)

_API_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL | re.ASCII)
_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE | re.DOTALL | re.ASCII)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE | re.DOTALL | re.ASCII)
_ORIGIN = re.compile(r"https?://")
MAX_GZIP_BYTES = 100 * 1024 * 1024  # ZLib::kMaxUncompressedBytes
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            409: "Conflict", 413: "Request Entity Too Large", 429: "Too Many Requests",
            499: "Client Closed Request", 500: "Internal Server Error", 501: "Not Implemented",
            503: "Service Unavailable", 504: "Gateway Timeout"}
_JSON = b"application/json"


def _evhttp_error_page(status: int) -> bytes:
    """libevent's evhttp_send_error body."""
    reason = _REASONS.get(status, "Error")
    return (f"<HTML><HEAD>\n<TITLE>{status} {reason}</TITLE>\n</HEAD><BODY>\n<H1>{reason}</H1>\n"
            "</BODY></HTML>\n").encode()


class _Request:
    __slots__ = ("method", "target", "headers", "body", "keep_alive", "too_large", "peer", "denied")

    def __init__(self, peer: str = ""):
        self.peer = peer  # the client's IP address
        self.method = ""
        self.target = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.keep_alive = True
        self.too_large = False
        self.denied = None  # the 401 / 429 response, decided once the headers are in


_METHODS = {"predict": PREDICT, "classify": CLASSIFY, "regress": REGRESS}
TRANSPORT = "REST"


class RestServer:
    def __init__(self, data_plane: DataPlane, *, metrics=None, prometheus_path: str | None = None,
                 max_body_bytes: int = 1 << 30, enable_cors: bool = False, timeout_ms: int = 30000):
        self.data_plane = data_plane
        self.metrics = metrics
        self.prometheus_path = prometheus_path
        self.max_body_bytes = max_body_bytes
        self.enable_cors = enable_cors
        self.timeout_s = timeout_ms / 1000 if timeout_ms > 0 else None
        self._metadata_json: dict[tuple[str, int], tuple[object, bytes]] = {}
        self._server = None

    async def start(self, host: str, port: int, ssl_context=None) -> None:
        """Listen on host:port; HTTPS when ssl_context (serving/tls.py) is given: the TLS
        handshake comes first, so a plain HTTP client gets no HTTP answer."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _HttpProtocol(self), host, port,
                                                reuse_address=True, backlog=1024, ssl=ssl_context)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    # ------------------------------------------------------------ dispatch

    async def handle(self, request: _Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if request.denied is not None:
            return request.denied
        target, path_only = _target(request)
        if request.too_large:
            return 413, [(b"Content-Type", b"text/html")], _evhttp_error_page(413)
        if self.prometheus_path is not None and path_only == self.prometheus_path:
            return self._prometheus(target)
        if not _API_PATH.fullmatch(target):
            return 404, [(b"Content-Type", b"text/html")], _evhttp_error_page(404)
        return await self._api(request, target)

    def _endpoint(self, request: _Request, target: str, path_only: str) -> str:
        if self.prometheus_path is not None and path_only == self.prometheus_path:
            return METRICS
        if request.method == "OPTIONS":
            return PREFLIGHT
        if request.method == "GET":
            match = _STATUS_PATH.fullmatch(target)
            if match and match.group(1) and not match.group(4):  # model status, not metadata
                return HEALTH
        return API

    def admit(self, request: _Request):
        """DataPlane.admit, before anything else (called when the headers are in: a refused
        request's body is read past, never buffered); None when admitted, else the response:
        401 with WWW-Authenticate or 429 with Retry-After, TF Serving's JSON error body."""
        target, path_only = _target(request)
        authorization = request.headers.get(b"authorization")
        try:
            self.data_plane.admit(TRANSPORT, None if authorization is None
                                  else authorization.decode("latin-1"),
                                  request.peer, self._endpoint(request, target, path_only))
        except AdmissionDenied as denied:
            headers = [(b"Content-Type", _JSON)] + self._cors_headers()
            if denied.challenge:
                headers.append((b"WWW-Authenticate", denied.challenge.encode("ascii")))
            if denied.retry_after is not None:
                headers.append((b"Retry-After", b"%d" % denied.retry_after))
            return denied.http_status, headers, jsontext.error_body(denied.message)
        return None

    def _cors_headers(self) -> list[tuple[bytes, bytes]]:
        if not self.enable_cors:
            return []
        # TF Serving allows Content-Type only; a browser must also be allowed to send the token.
        allowed = (b"Content-Type, Authorization" if self.data_plane.admission.authenticating
                   else b"Content-Type")
        return [(b"Access-Control-Allow-Origin", b"*"),
                (b"Access-Control-Allow-Methods", b"POST, GET"),
                (b"Access-Control-Allow-Headers", allowed)]

    def _prometheus(self, target: str):
        headers = [(b"Content-Type", b"text/plain")]
        if target != self.prometheus_path:
            return 400, headers, (f"Unexpected path: {target}. Should be "
                                  f"{self.prometheus_path}").encode()
        # Label values are raw bytes in TF Serving (a model name from a URL need not be UTF-8).
        body = self.metrics.render().encode("utf-8", "surrogateescape") if self.metrics else b"\n"
        return 200, headers, body

    async def _api(self, request: _Request, target: str):
        headers = [(b"Content-Type", _JSON)] + self._cors_headers()
        if request.method == "OPTIONS":
            origin = request.headers.get(b"origin", b"").decode("latin-1")
            if _ORIGIN.search(origin):
                return 200, headers, b""
            return 400, headers, b""
        ctx = RequestContext(
            TRANSPORT, {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.items()},
            timeout=self.timeout_s, peer=request.peer)
        headers.append((b"X-Request-Id", ctx.request_id.encode("ascii")))
        try:
            body = await self._process(request, target, ctx)
            status = 200
        except Exception as e:  # a bug must not take the server down
            error = as_serving_error(e)
            # Failed before the data plane was called (or in formatting): still one record.
            self.data_plane.reject(ctx, ctx.method, ctx.model_name, error)
            status, body = error.http_status, jsontext.error_body(error.message)
        return status, headers, body

    async def _process(self, request: _Request, target: str, ctx: RequestContext) -> bytes:
        method = request.method
        model_name, api = "", ""
        if method == "POST":
            match = _PREDICTION_PATH.fullmatch(target)
        elif method == "GET":
            match = _STATUS_PATH.fullmatch(target)
        else:
            match = None
        version = label = None
        subresource = ""
        if match:
            if method == "POST":
                name, version_text, label_text, api = match.groups()
                ctx.method = _METHODS.get(api.lower(), "")
            else:
                name, version_text, label_text, subresource = match.groups()
                subresource = subresource or ""
                ctx.method = GET_MODEL_METADATA if subresource else GET_MODEL_STATUS
            model_name = urllib.parse.unquote(name, errors="surrogateescape") if name else ""
            ctx.model_name, ctx.api_label = model_name, api
            if version_text:
                version = simple_atoi64(version_text)
                if version is None:
                    raise ServingError(errors.INVALID_ARGUMENT,
                                       f"Failed to convert version: {version_text} to numeric.")
            if label_text:
                label = urllib.parse.unquote(label_text, errors="surrogateescape")
            if version is not None and label is not None:
                raise ServingError(errors.INVALID_ARGUMENT,
                                   f"Both model version ({version}) and model version label "
                                   f"({label}) cannot be supplied.")
        if match and method == "POST":
            body = _decode_body(request)
            if api == "predict":
                return await self._predict(ctx, model_name, version, label, body)
            if api in ("classify", "regress"):
                return await self._classify_regress(ctx, api, model_name, version, label, body)
        elif match and method == "GET":
            if not model_name:
                raise ServingError(errors.INVALID_ARGUMENT, "Missing model name in request.")
            if subresource == "metadata":
                return await self._metadata(ctx, model_name, version, label)
            return await self._status(ctx, model_name, version)
        raise ServingError(errors.INVALID_ARGUMENT, f"Malformed request: {method} {target}")

    # ------------------------------------------------------------ APIs

    async def _predict(self, ctx, name, version, label, body: bytes) -> bytes:
        from tensorflow_serving.apis import predict_pb2

        from serving.tensor_proto import to_ndarray

        doc = jsontext.loads(body)
        signature_name = tensors.parse_signature_name(doc)
        request = predict_pb2.PredictRequest()
        _model_spec(self.data_plane, ctx, request.model_spec, name, version, label, signature_name)
        dtypes = self.data_plane.input_dtypes(request.model_spec, ctx)
        fmt, inputs = tensors.predict_inputs(doc, dtypes, signature_name)
        for alias, array in inputs.items():
            array_to_request_tensor(array, request.inputs[alias])

        def encode(response):
            return tensors.predict_response_json(
                {alias: to_ndarray(response.outputs[alias], alias) for alias in sorted(response.outputs)},
                fmt)

        return await self.data_plane.predict(request, ctx, encode)

    async def _classify_regress(self, ctx, api, name, version, label, body: bytes) -> bytes:
        from tensorflow_serving.apis import classification_pb2, regression_pb2

        doc = jsontext.loads(body)
        signature_name = tensors.parse_signature_name(doc)
        context, examples = tensors.examples_from_json(doc)
        if api == "classify":
            request = classification_pb2.ClassificationRequest()
        else:
            request = regression_pb2.RegressionRequest()
        _model_spec(self.data_plane, ctx, request.model_spec, name, version, label, signature_name)
        input_from_features(context, examples, request.input)
        if api == "classify":
            return await self.data_plane.classify(request, ctx, lambda response: tensors.classify_response_json(
                [[(c.label.encode("utf-8", "surrogateescape"), c.score) for c in row.classes]
                 for row in response.result.classifications]))
        return await self.data_plane.regress(request, ctx, lambda response: tensors.regress_response_json(
            [r.value for r in response.result.regressions]))

    async def _status(self, ctx, name, version) -> bytes:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        _model_spec(self.data_plane, ctx, request.model_spec, name, version, None, None)
        return await self.data_plane.model_status(request, ctx, lambda response: json_format.MessageToJson(
            response, including_default_value_fields=True, preserving_proto_field_name=True,
            indent=1).encode())

    async def _metadata(self, ctx, name, version, label) -> bytes:
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF])
        _model_spec(self.data_plane, ctx, request.model_spec, name, version, label, None)
        return await self.data_plane.model_metadata(request, ctx, self._metadata_body)

    def _metadata_body(self, response) -> bytes:
        # The data plane caches the response per servable; its JSON is cached here alike.
        key = (response.model_spec.name, response.model_spec.version.value)
        cached = self._metadata_json.get(key)
        if cached is None or cached[0] is not response:
            cached = self._metadata_json[key] = (response, metadata_json(response))
        return cached[1]


def _target(request: _Request) -> tuple[str, str]:
    """(request target, its path without query or fragment); an absolute-form target
    (http://host/path) becomes its path."""
    target = request.target.decode("latin-1")
    if target.startswith(("http://", "https://")):
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    return target, target.split("?", 1)[0].split("#", 1)[0]


def _model_spec(data_plane: DataPlane, ctx: RequestContext, spec, name: str, version: int | None,
                label: str | None, signature_name: str | None) -> None:
    """The ModelSpec http_rest_api_handler.cc builds from the URL (and signature_name).
    Names that are not UTF-8 fail with the error their lookup gives (see
    DataPlane.unrepresentable_spec_error)."""
    try:
        spec.name = name
        if version is not None:
            spec.version.value = version
        elif label is not None:
            spec.version_label = label
        if signature_name:
            spec.signature_name = signature_name
    except ValueError:  # UnicodeEncodeError: a surrogate-escaped byte
        raise data_plane.unrepresentable_spec_error(ctx.method, name, version, label,
                                                    signature_name) from None


def array_to_request_tensor(array, proto) -> None:
    """A parsed JSON input as a TensorProto: tensor_content for fixed-width numbers (one
    memcpy each way), the typed fields otherwise; to_ndarray gives the array back unchanged."""
    from serving.tensor_proto import dtype_of, from_ndarray
    from serving.tensors import DT_STRING

    dtype = dtype_of(array)
    if dtype and dtype != DT_STRING and array.dtype.kind in "biuf" and array.size:
        proto.dtype = dtype
        for size in array.shape:
            proto.tensor_shape.dim.add(size=size)
        proto.tensor_content = array.tobytes()
    else:
        from_ndarray(array, proto)


def metadata_json(response) -> bytes:
    """ToJsonString(GetModelMetadataResponse): fields printed one by one and concatenated."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF].Unpack(signature_map)
    options = dict(including_default_value_fields=True, preserving_proto_field_name=True, indent=1)
    text = ("{\n\"model_spec\":" + json_format.MessageToJson(response.model_spec, **options) + ",\n"
            + "\"metadata\": {\"signature_def\": " + json_format.MessageToJson(signature_map, **options)
            + "}\n}\n")
    return text.encode()


def _decode_body(request: _Request) -> bytes:
    body = bytes(request.body)
    if b"gzip" in request.headers.get(b"content-encoding", b""):
        try:
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            body = decompressor.decompress(body, MAX_GZIP_BYTES)
            if decompressor.unconsumed_tail:
                return b""  # larger than ZLib::kMaxUncompressedBytes: TF Serving drops the body
        except (zlib.error, gzip.BadGzipFile):
            return b""
    return body


class _HttpProtocol(asyncio.Protocol):
    def __init__(self, server: RestServer):
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.current: _Request | None = None
        self.pending: deque[_Request] = deque()
        self.busy = False
        self.closing = False
        self._header_name = b""
        self.peer = ""

    def connection_made(self, transport):
        self.transport = transport
        peername = transport.get_extra_info("peername")
        if isinstance(peername, (tuple, list)) and peername:
            self.peer = str(peername[0])

    def connection_lost(self, exc):
        self.closing = True

    def data_received(self, data: bytes):
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400)
        except httptools.HttpParserError:
            self._fail(400)

    def _fail(self, status: int):
        if self.transport is not None and not self.transport.is_closing():
            body = _evhttp_error_page(status)
            self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
                                 b"Connection: close\r\n\r\n" % (status, _REASONS[status].encode(), len(body))
                                 + body)
            self.transport.close()
        self.closing = True

    # httptools callbacks
    def on_message_begin(self):
        self.current = _Request(self.peer)

    def on_url(self, url: bytes):
        self.current.target += url

    def on_header(self, name: bytes, value: bytes):
        self.current.headers[name.lower()] = value

    def on_headers_complete(self):
        request = self.current
        request.method = self.parser.get_method().decode("latin-1")
        request.keep_alive = self.parser.should_keep_alive()
        request.denied = self.server.admit(request)
        length = request.headers.get(b"content-length")
        if request.denied is not None:
            pass  # no 100 Continue: the body is not wanted
        elif (length is not None and length.isdigit()
                and (len(length) > 19 or int(length) > self.server.max_body_bytes)):
            request.too_large = True
        elif request.headers.get(b"expect", b"").lower() == b"100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes):
        request = self.current
        if request.too_large or request.denied is not None:
            return
        request.body += body
        if len(request.body) > self.server.max_body_bytes:
            request.too_large = True
            request.body = bytearray()

    def on_message_complete(self):
        request, self.current = self.current, None
        if request.too_large:
            request.keep_alive = False
        self.pending.append(request)
        if len(self.pending) > 64:
            self.transport.pause_reading()
        if not self.busy:
            self.busy = True
            asyncio.ensure_future(self._serve_pending())

    async def _serve_pending(self):
        try:
            while self.pending and not self.closing:
                request = self.pending.popleft()
                try:
                    status, headers, body = await self.server.handle(request)
                except Exception:  # a bug must neither hang the connection nor stop the server
                    log.exception("REST request failed")
                    status, headers, body = 500, [(b"Content-Type", b"text/html")], _evhttp_error_page(500)
                    request.keep_alive = False
                if self.closing or self.transport.is_closing():
                    return
                head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Error").encode())]
                for name, value in headers:
                    head.append(name + b": " + value + b"\r\n")
                head.append(b"Content-Length: %d\r\n" % len(body))
                if not request.keep_alive:
                    head.append(b"Connection: close\r\n")
                head.append(b"\r\n")
                self.transport.write(b"".join(head) + body)
                if not request.keep_alive:
                    self.transport.close()
                    self.closing = True
                    return
                if len(self.pending) <= 16:
                    self.transport.resume_reading()
        finally:
            self.busy = False
