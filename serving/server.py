"""Wires config, model manager, batching, metrics, gRPC and REST into one running server."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading

from serving import config as config_lib
from serving.config import ServerOptions
from serving.errors import ServingError

log = logging.getLogger("serving")


class ModelServer:
    """Build with options, start(), then wait() or stop(). Used by the CLI and by tests."""

    def __init__(self, options: ServerOptions):
        config_lib.validate_options(options)
        self.options = options
        # Parse every config file before the expensive TensorFlow import, so typos fail fast.
        self.model_config = config_lib.model_server_config(options)
        if self.model_config.WhichOneof("config") == "model_config_list":
            from serving import request_log
            request_log.policies(self.model_config.model_config_list.config,
                                 options.request_log_dir)  # a bad logging_config fails here
        self.batching_params = config_lib.batching_parameters(options) if options.enable_batching else None
        if self.batching_params is not None:
            from serving.batching import BatchOptions
            self.batch_options = BatchOptions(self.batching_params)  # bad parameters fail here
        self.monitoring = config_lib.monitoring_config(options)
        from serving import admission, tls
        self.token_file_stamp = (admission.file_stamp(options.auth_token_file)
                                 if options.auth_token_file else None)
        self.admission = admission.from_options(options)  # a bad token file fails here
        self.tls = tls.load_tls_config(options.ssl_config_file) if options.ssl_config_file else None
        self.grpc_port = None
        self.rest_port = None
        self._stopped = threading.Event()

    def start(self) -> None:
        from serving.batching import BatchScheduler
        from serving.data_plane import DataPlane
        from serving.data_quality import DataQuality
        from serving.grpc_service import HealthServicer, build_grpc_server
        from serving.inference import InferenceService
        from serving.metrics import ServingMetrics
        from serving.model_manager import ModelManager
        from serving.request_log import RequestLogger
        from serving.servable import load_servable

        options = self.options
        tags = {t for t in options.saved_model_tags.split(",") if t}
        self.metrics = ServingMetrics()
        self.data_quality = DataQuality(self.metrics)

        self.upstream = self.upstream_models = None
        if options.upstream_grpc_address:
            from serving.upstream import Upstream
            self.upstream = Upstream(options.upstream_grpc_address)

        def load(name, version, path):
            if self.upstream_models is not None:
                servable = self.upstream_models.load(name, version, path)
            else:
                servable = load_servable(name, version, path, tags)
            self.data_quality.version_loaded(name, version, path)  # its schema, when it loads
            return servable

        self.batcher = (BatchScheduler(self.batch_options, self.metrics.record_batch)
                        if self.batching_params is not None else None)
        self.manager = ModelManager(
            loader=load,
            poll_wait_seconds=options.file_system_poll_wait_seconds,
            max_num_load_retries=options.max_num_load_retries,
            load_retry_interval_micros=options.load_retry_interval_micros,
            allow_version_labels_for_unavailable_models=options.allow_version_labels_for_unavailable_models)
        self.service = InferenceService(self.manager, self.metrics, self.batcher)
        if self.upstream is not None:
            from serving.upstream import UpstreamModels
            # The upstream loads, warms up and runs the models; this manager follows it.
            self.upstream_models = UpstreamModels(
                self.upstream, self.manager,
                load_timeout_seconds=options.upstream_load_timeout_seconds,
                poll_wait_seconds=options.file_system_poll_wait_seconds)
            self.manager.listeners.append(self.upstream_models.sync_quietly)
            log.info("Forwarding model calls to the upstream model server at %s",
                     options.upstream_grpc_address)
        elif options.enable_model_warmup:
            iterations = options.num_request_iterations_for_warmup or 1
            self.manager._warmup = lambda servable: self.service.warmup(servable, iterations)
        self.manager.listeners.append(
            lambda: self.metrics.set_loaded(self.manager.loaded_versions(), self.manager.model_names()))
        self.manager.listeners.append(lambda: self.metrics.set_rollouts(self.manager.rollout_status()))
        self.manager.apply_config(self.model_config)
        self.manager.start()
        if self.upstream_models is not None:
            self.upstream_models.start()

        cpus = os.cpu_count() or 1
        # One pool for both transports' model calls: each keeps the threads its flag gives it.
        threads = (options.grpc_max_threads or 4 * cpus) + (
            (options.rest_api_num_threads or 4 * cpus) if options.rest_api_port else 0)
        self.data_plane = DataPlane(self.service, metrics=self.metrics, max_threads=threads,
                                    max_shadow_inflight=options.rollout_max_shadow_inflight,
                                    admission=self.admission)
        if self.admission.enabled:
            from serving.admission import describe
            log.info("Admission: %s", describe(self.admission))
        self.request_logger = RequestLogger(
            log_dir=options.request_log_dir, metrics=self.metrics,
            max_file_bytes=options.request_log_max_file_bytes,
            max_file_age_seconds=options.request_log_max_file_age_seconds,
            max_total_bytes=options.request_log_max_total_bytes,
            queue_size=options.request_log_queue_size, saved_model_tags=tags)
        self.request_logger.configure(self.manager.model_configs())
        self.manager.listeners.append(
            lambda: self.request_logger.configure(self.manager.model_configs()))
        self.request_logger.start()
        self.data_plane.observers.append(self.request_logger)
        self.data_plane.observers.append(self.data_quality)
        self.health = (HealthServicer(self.data_plane.admit)
                       if options.enable_grpc_healthcheck_service else None)

        async def start_grpc():
            server, port = build_grpc_server(
                self.data_plane, host=options.grpc_host, port=options.grpc_port,
                channel_arguments=config_lib.grpc_channel_arguments(options.grpc_channel_arguments),
                health=self.health,
                credentials=self.tls.grpc_credentials() if self.tls is not None else None)
            await server.start()
            return server, port

        self.grpc_loop = _new_event_loop()
        self._grpc_thread = threading.Thread(target=self.grpc_loop.run_forever, name="grpc-loop",
                                             daemon=True)
        self._grpc_thread.start()
        try:
            self.grpc_server, self.grpc_port = asyncio.run_coroutine_threadsafe(
                start_grpc(), self.grpc_loop).result()
        except BaseException:
            self.grpc_loop.call_soon_threadsafe(self.grpc_loop.stop)
            self.request_logger.stop()
            self.data_plane.stop()
            raise
        log.info("Running gRPC ModelServer at %s:%d%s ...", options.grpc_host, self.grpc_port,
                 "" if self.tls is None else
                 f" (TLS{', client certificates required' if self.tls.client_verify else ''})")

        self._config_poller = None
        if options.model_config_file and options.model_config_file_poll_wait_seconds > 0:
            self._config_poller = threading.Thread(target=self._poll_config_file, daemon=True)
            self._config_poller.start()
        if options.auth_token_file and options.auth_token_file_poll_wait_seconds > 0:
            threading.Thread(target=self._poll_token_file, name="token-file-poll",
                             daemon=True).start()

        self.loop = None
        if options.rest_api_port:
            if options.rest_api_port == options.grpc_port:
                log.error("server_options.http_port cannot be same as grpc_port. Please use a "
                          "different port for HTTP/REST API. Skipped exporting HTTP/REST API.")
            else:
                self._start_rest(options)

    def _start_rest(self, options: ServerOptions) -> None:
        from serving.rest import RestServer

        self.loop = _new_event_loop()
        self.rest = RestServer(
            self.data_plane, metrics=self.metrics,
            prometheus_path=config_lib.prometheus_path(self.monitoring),
            max_body_bytes=options.rest_api_max_body_bytes,
            enable_cors=options.rest_api_enable_cors_support,
            timeout_ms=options.rest_api_timeout_in_ms)
        ssl_context = self.tls.ssl_context() if self.tls is not None else None
        self.loop.run_until_complete(self.rest.start(options.rest_host, options.rest_api_port,
                                                     ssl_context=ssl_context))
        self.rest_port = options.rest_api_port
        log.info("Exporting %s/REST API at:%s:%d ...", "HTTP" if ssl_context is None else "HTTPS",
                 options.rest_host, self.rest_port)
        self._rest_thread = threading.Thread(target=self.loop.run_forever, name="rest-loop", daemon=True)
        self._rest_thread.start()

    def _poll_config_file(self) -> None:
        while not self._stopped.wait(self.options.model_config_file_poll_wait_seconds):
            try:
                config = config_lib.model_server_config(self.options)
            except ServingError as e:
                log.error("Failed to read ModelServerConfig file: %s", e.message)
                continue
            try:
                self.manager.apply_config(config)
            except ServingError as e:
                log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", e.message)
            except Exception:  # keep polling: the next edit of the file may fix it
                log.exception("PollFilesystemAndReloadConfig failed to ReloadConfig")

    def _poll_token_file(self) -> None:
        from serving.admission import TokenFileWatcher

        watcher = TokenFileWatcher(self.options.auth_token_file, self.admission,
                                   self.token_file_stamp)
        while not self._stopped.wait(self.options.auth_token_file_poll_wait_seconds):
            try:
                watcher.poll()
            except Exception:  # keep polling: the next edit of the file may fix it
                log.exception("Re-reading --auth_token_file failed")

    def wait(self) -> None:
        self._stopped.wait()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if getattr(self, "health", None) is not None:
            self.health.stop()
        if self.loop is not None:
            asyncio.run_coroutine_threadsafe(self.rest.stop(), self.loop).result(timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
        if getattr(self, "grpc_server", None) is not None:
            try:
                asyncio.run_coroutine_threadsafe(self.grpc_server.stop(grace=2), self.grpc_loop).result(timeout=5)
            except Exception:
                log.exception("gRPC server did not stop cleanly")
            self.grpc_loop.call_soon_threadsafe(self.grpc_loop.stop)
        if getattr(self, "request_logger", None) is not None:
            self.request_logger.stop()  # after the transports: writes what is queued, closes files
        if getattr(self, "data_plane", None) is not None:
            self.data_plane.stop()
        if getattr(self, "batcher", None) is not None:
            self.batcher.stop()
        if getattr(self, "upstream_models", None) is not None:
            self.upstream_models.stop()
        if getattr(self, "manager", None) is not None:
            self.manager.stop()
        if getattr(self, "upstream", None) is not None:
            self.upstream.close()


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def run(options: ServerOptions) -> int:
    server = ModelServer(options)
    server.start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server._stopped.set())
    print(f"pipewright serve: ready grpc={server.grpc_port} rest={server.rest_port or 0}", flush=True)
    server.wait()
    server._stopped.clear()
    server.stop()
    return 0
