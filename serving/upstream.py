"""Forwarding mode (`--upstream_grpc_address`): this server as the front door of another model
server speaking TF Serving's gRPC API (the real tensorflow_model_server, or `pipewright serve`).

Everything that enters at the DataPlane stays here: REST and gRPC, admission (tokens, rate
limits, TLS), rollout routing by `<base path>/rollout.json`, request logs, per-version metrics
and data quality. Only the model call leaves: the front door's model manager holds an
UpstreamServable per version instead of a loaded SavedModel, and the DataPlane hands a
Predict / Classify / Regress / MultiInference call on such a servable to Upstream.forward,
which sends it to the upstream's PredictionService with model_spec.version set to the version
the front door chose (labels are resolved here; the upstream never re-routes).

Which versions the upstream loads is driven from here (UpstreamModels): whenever the manager's
versions or labels change (rollout.json, the model config, a poll) the front door sends the
upstream ModelService.HandleReloadConfigRequest with each model's base_path,
`model_version_policy { specific { versions: ... } }` — every version the front door aspires
to or still serves — and `version_labels` ("stable", "canary", and the config's). TF Serving
(server_core.cc ServerCore::ReloadConfig -> UpdateModelVersionLabelMap, which runs before the
new versions are added) refuses the whole reload with FAILED_PRECONDITION "Request to assign
label to version N of model M, which is not currently available for inference" when a label
names a version that is not AVAILABLE yet; so a label is only sent once the upstream's
GetModelStatus reports its version AVAILABLE, and a second reload adds it. A version counts
as loaded here (AVAILABLE in the front door's GetModelStatus, hence routable) only once the
upstream's GetModelStatus says AVAILABLE, polled every STATUS_POLL_SECONDS; its signatures
come from the upstream's GetModelMetadata. The config is re-sent when the upstream lost a
version the front door serves (e.g. it restarted with its own config file).

Errors: an upstream status is passed to the client with its code and message; UNAVAILABLE
(unreachable upstream, REST 503) and DEADLINE_EXCEEDED (no answer in time, e.g. an upstream
never reached at start-up) name the upstream address; a call the upstream cancelled (e.g.
while shutting down) is UNAVAILABLE naming it, not CANCELLED (REST 499, "client closed").
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import grpc

from serving import errors
from serving.errors import ServingError
from serving.servable import MetadataCache, SignatureRunner

log = logging.getLogger(__name__)

STATUS_POLL_SECONDS = 0.2   # GetModelStatus polls while a version loads upstream
_AVAILABLE, _END = 30, 50   # tensorflow.serving.ModelVersionStatus.State
_KEEP = (10, 20, 30)        # START, LOADING, AVAILABLE
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # A restarted upstream is found again within seconds (gRPC's default backoff reaches 120 s).
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
]
_METHODS = ("Predict", "Classify", "Regress", "MultiInference")


class UpstreamServable(MetadataCache):
    """One version served by the upstream: what the DataPlane reads of a local Servable
    (name, version, path, signature_defs, runners for REST's input dtypes, cached) plus
    `upstream`, the Upstream its calls are forwarded to. Its runners have no function: a
    call that reached one instead of Upstream.forward fails FAILED_PRECONDITION."""

    def __init__(self, name: str, version: int, path: str, signature_defs, upstream: "Upstream"):
        self.name = name
        self.version = version
        self.path = path  # the version directory as the front door sees it (schema, classes)
        self.signature_defs = signature_defs
        self.runners = {key: SignatureRunner(key, sig, None) for key, sig in signature_defs.items()}
        self.upstream = upstream
        self._metadata_cache = {}


class Upstream:
    """A gRPC client of the upstream model server at `address` ("HOST:PORT"), with the
    official tensorflow_serving stubs."""

    def __init__(self, address: str, admin_timeout_seconds: float = 60.0):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.address = address
        self.admin_timeout = admin_timeout_seconds
        self.channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def error(self, e: grpc.RpcError) -> ServingError:
        """The upstream's status as a ServingError: same code and message; UNAVAILABLE (and a
        status without a code) and DEADLINE_EXCEEDED name the upstream; CANCELLED by the upstream
        becomes UNAVAILABLE naming it."""
        code = e.code() if hasattr(e, "code") else None
        details = (e.details() if hasattr(e, "details") else None) or str(e)
        if code is None or code == grpc.StatusCode.UNAVAILABLE:
            return ServingError(errors.UNAVAILABLE,
                                f"Upstream model server {self.address} is unavailable: {details}")
        if code == grpc.StatusCode.CANCELLED:
            # Not the client's doing (its cancel cancels the call here, and raises no
            # RpcError): the upstream ended the call, e.g. while shutting down. CANCELLED
            # would tell the client it closed the request (REST 499); UNAVAILABLE is retried.
            return ServingError(errors.UNAVAILABLE,
                                f"Upstream model server {self.address} cancelled the call "
                                f"(shutting down?): {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            # gRPC's own "Deadline Exceeded" (e.g. an upstream never reached while waited
            # for) would not say which server did not answer.
            return ServingError(errors.DEADLINE_EXCEEDED,
                                f"Upstream model server {self.address} did not answer in time: "
                                f"{details}")
        return ServingError(code.value[0], details)

    # ------------------------------------------------------------ the model call

    async def forward(self, method: str, request, version: int, timeout: float | None,
                      request_id: str):
        """Send a PredictionService call (method: "Predict", "Classify", "Regress" or
        "MultiInference") for `version` upstream and await its response proto. The request is
        copied with model_spec.version = version (each task's, for MultiInference; version 0
        is version 0, not "latest"), the client's request id as x-request-id metadata.
        timeout: seconds (None: none). Raises ServingError (the upstream's status)."""
        call = getattr(self.prediction, method).future(
            pinned(method, request, version), timeout=timeout,
            metadata=(("x-request-id", request_id),))
        try:
            return await _awaitable(call)
        except grpc.RpcError as e:
            raise self.error(e) from None

    # ------------------------------------------------------------ ModelService

    def model_status(self, name: str, version: int | None = None,
                     wait_for_ready: bool = False,
                     timeout: float | None = None) -> dict[int, tuple]:
        """GetModelStatus -> {version: (state, ServingError or None)}; {} when the upstream
        knows no version of the model (NOT_FOUND). wait_for_ready: wait (up to `timeout`
        seconds, default the admin timeout) for an upstream that is not reachable yet, e.g.
        still starting. Raises ServingError otherwise."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        try:
            response = self.models.GetModelStatus(
                request, timeout=self.admin_timeout if timeout is None else timeout,
                wait_for_ready=wait_for_ready)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise self.error(e) from None
        states = {}
        for entry in response.model_version_status:
            error = (ServingError(entry.status.error_code, entry.status.error_message)
                     if entry.status.error_code else None)
            states[entry.version] = (entry.state, error)
        return states

    def signature_defs(self, name: str, version: int):
        """GetModelMetadata(signature_def) of one version -> {key: SignatureDef}."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = name
        request.model_spec.version.SetInParent()
        request.model_spec.version.value = version
        request.metadata_field.append("signature_def")
        try:
            response = self.prediction.GetModelMetadata(request, timeout=self.admin_timeout)
        except grpc.RpcError as e:
            raise self.error(e) from None
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return dict(signature_map.signature_def)

    def reload_config(self, server_config) -> None:
        """HandleReloadConfigRequest; raises ServingError when the call or the reload fails."""
        from tensorflow_serving.apis import model_management_pb2

        request = model_management_pb2.ReloadConfigRequest()
        request.config.CopyFrom(server_config)
        try:
            response = self.models.HandleReloadConfigRequest(request, timeout=self.admin_timeout)
        except grpc.RpcError as e:
            raise self.error(e) from None
        if response.status.error_code:
            raise ServingError(response.status.error_code,
                               f"Upstream model server {self.address} refused the model config: "
                               f"{response.status.error_message}")


def pinned(method: str, request, version: int):
    """A copy of a Predict / Classify / Regress / MultiInference request whose model_spec (each
    task's, for MultiInference) names `version`: the version field set even for 0 (TF Serving's
    ServableRequestFromModelSpec reads has_version(), so 0 means version 0, not the latest),
    any version_label cleared (the same oneof). Raises ServingError UNIMPLEMENTED for another
    method."""
    if method not in _METHODS:
        raise ServingError(errors.UNIMPLEMENTED, f"{method} is not forwarded upstream")
    forwarded = type(request)()
    forwarded.CopyFrom(request)
    specs = ([task.model_spec for task in forwarded.tasks] if method == "MultiInference"
             else [forwarded.model_spec])
    for spec in specs:
        spec.version.SetInParent()
        spec.version.value = version
    return forwarded


def _awaitable(call) -> asyncio.Future:
    """A grpc.Future as an asyncio future of the running loop; cancelling the latter cancels
    the call."""
    loop = asyncio.get_running_loop()
    result = loop.create_future()

    def transfer(_):
        if result.done():
            return
        if call.cancelled():
            result.cancel()
            return
        error = call.exception()
        if error is not None:
            result.set_exception(error)
        else:
            result.set_result(call.result())

    call.add_done_callback(lambda _: loop.call_soon_threadsafe(transfer, None))
    result.add_done_callback(lambda f: call.cancel() if f.cancelled() else None)
    return result


class UpstreamModels:
    """Keeps the upstream's model config in step with the front door's model manager.

    load(name, version, path) is the manager's loader: it makes sure the upstream was asked
    for the version, waits until the upstream's GetModelStatus reports it AVAILABLE (or END
    with an error, which fails the load with that error; or load_timeout_seconds, which fails
    it DEADLINE_EXCEEDED), then reads its signatures. sync() (a manager listener, and every
    poll_wait_seconds on its own thread) sends HandleReloadConfigRequest when what the upstream
    should load changed, or the upstream lost a version the front door serves.
    """

    def __init__(self, upstream: Upstream, manager, *, load_timeout_seconds: float = 600.0,
                 poll_wait_seconds: float = 1.0):
        self.upstream = upstream
        self.manager = manager
        self.load_timeout = load_timeout_seconds
        self.poll_wait = poll_wait_seconds
        self._sent = None              # the last ModelServerConfig the upstream accepted
        self._failure: str | None = None  # why the last sync_quietly failed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ config

    def desired_config(self, states: dict[str, dict[int, tuple]]):
        """The ModelServerConfig the upstream should have, given its version states
        ({model: {version: (state, error)}}): labels only for versions AVAILABLE there."""
        from tensorflow_serving.config import model_server_config_pb2

        config = model_server_config_pb2.ModelServerConfig()
        config.model_config_list.SetInParent()
        for model, versions, labels in self.manager.kept_versions():
            available = states.get(model.name, {})
            if not versions:
                # Not polled here yet (the manager loads models one after another), or its
                # base path is unreadable: the upstream keeps what it serves, as leaving the
                # model out of the list would unload it.
                versions = sorted(v for v, (state, _) in available.items() if state in _KEEP)
                if not versions:
                    continue
            entry = config.model_config_list.config.add(
                name=model.name, base_path=model.base_path,
                model_platform=model.model_platform or "tensorflow")
            entry.model_version_policy.specific.versions.extend(versions)
            for label, version in sorted(labels.items()):
                if available.get(version, (None,))[0] == _AVAILABLE:
                    entry.version_labels[label] = version
        return config

    def sync(self, wait_for_ready: bool = False, timeout: float | None = None) -> None:
        """Send the desired config if it differs from the last one the upstream accepted, or
        the upstream lost a version the front door serves. Raises ServingError when the
        upstream cannot be reached (wait_for_ready: within `timeout` seconds, default the
        admin timeout) or refuses the config (the next sync tries again)."""
        with self._lock:
            states = {}
            lost = []
            for model, versions, _ in self.manager.kept_versions():
                states[model.name] = self.upstream.model_status(
                    model.name, wait_for_ready=wait_for_ready, timeout=timeout)
                serving = self.manager.loaded_versions().get(model.name, [])
                lost += [f"{model.name} version {v}" for v in serving
                         if states[model.name].get(v, (None,))[0] != _AVAILABLE]
            config = self.desired_config(states)
            if config == self._sent and not lost:
                return
            if lost:
                log.warning("upstream %s no longer serves %s: sending the model config again",
                            self.upstream.address, ", ".join(lost))
            self._sent = None
            self.upstream.reload_config(config)
            self._sent = config
            log.info("upstream %s: model config sent: %s", self.upstream.address,
                     "; ".join(f"{c.name} versions {list(c.model_version_policy.specific.versions)}"
                               f" labels {dict(sorted(c.version_labels.items()))}"
                               for c in config.model_config_list.config))

    def sync_quietly(self) -> None:
        """sync(), logging instead of raising (listeners and the poll thread): a failure once
        until it changes or the upstream answers again."""
        try:
            self.sync()
        except ServingError as e:
            if e.status_string() != self._failure:
                self._failure = e.status_string()
                log.error("upstream %s: model config not sent: %s (retrying every poll)",
                          self.upstream.address, self._failure)
            return
        except Exception:
            log.exception("upstream %s: model config not sent", self.upstream.address)
            return
        if self._failure is not None:
            log.info("upstream %s answers again", self.upstream.address)
            self._failure = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll, name="upstream-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_wait if self.poll_wait > 0 else 1.0):
            self.sync_quietly()

    # ------------------------------------------------------------ the manager's loader

    def load(self, name: str, version: int, path: str) -> UpstreamServable:
        """Wait for `version` of `name` to be AVAILABLE upstream; its UpstreamServable.
        Raises ServingError: the upstream's load error, UNAVAILABLE (unreachable upstream),
        DEADLINE_EXCEEDED (not AVAILABLE within load_timeout_seconds)."""
        from serving.model_manager import STATE_NAMES
        # The manager marked it LOADING: the config now names it. An upstream still starting
        # (compose starts both at once) is waited for, not counted as a failed load.
        deadline = time.monotonic() + self.load_timeout
        # Within the load timeout, not the admin one (60 s): --upstream_load_timeout_seconds
        # bounds the whole attempt; and without sync's lock, which the poll thread and the
        # manager's listeners take meanwhile.
        self.upstream.model_status(name, wait_for_ready=True, timeout=self.load_timeout)
        self.sync()
        state = None
        while True:
            state, error = self.upstream.model_status(name).get(version, (None, None))
            if state == _AVAILABLE:
                break
            if state == _END and error is not None:
                raise ServingError(error.code, f"upstream model server {self.upstream.address}: "
                                               f"{error.message}")
            if time.monotonic() > deadline or self._stop.is_set():
                raise ServingError(errors.DEADLINE_EXCEEDED,
                                   f"version {version} of model {name} did not become AVAILABLE on "
                                   f"upstream model server {self.upstream.address} within "
                                   f"{self.load_timeout:g} s (last state: "
                                   f"{STATE_NAMES.get(state, 'unknown to the upstream')})")
            self._stop.wait(STATUS_POLL_SECONDS)
        return UpstreamServable(name, version, path, self.upstream.signature_defs(name, version),
                                self.upstream)
