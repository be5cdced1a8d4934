"""`pipewright serve` flags (TF Serving's names and defaults) and the text-proto configs they name.

Importing this module must stay cheap: no TensorFlow (tensorflow_serving.config protos are
plain protobuf; tensorflow_serving.apis would pull in all of TensorFlow).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
from dataclasses import dataclass, field

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving import errors, protos
from serving.errors import ServingError, INVALID_ARGUMENT
from serving.ints import safe_strto32

log = logging.getLogger(__name__)

TENSORFLOW_PLATFORM = "tensorflow"
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


@dataclass
class ServerOptions:
    grpc_port: int = 8500
    grpc_host: str = "127.0.0.1"
    rest_api_port: int = 0
    rest_host: str = "127.0.0.1"
    rest_api_num_threads: int = 0
    rest_api_timeout_in_ms: int = 30000
    rest_api_enable_cors_support: bool = False
    rest_api_max_body_bytes: int = 1 << 30
    enable_batching: bool = False
    batching_parameters_file: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    model_name: str = "default"
    model_base_path: str = ""
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60 * 1000 * 1000
    file_system_poll_wait_seconds: float = 1
    grpc_max_threads: int = 0
    grpc_channel_arguments: str = ""
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0
    monitoring_config_file: str = ""
    enable_grpc_healthcheck_service: bool = False
    allow_version_labels_for_unavailable_models: bool = False
    saved_model_tags: str = "serve"
    request_log_dir: str = ""
    request_log_sampling_rate: float = 0.0
    request_log_max_file_bytes: int = 64 << 20
    request_log_max_file_age_seconds: float = 300.0
    request_log_max_total_bytes: int = 1 << 30
    request_log_queue_size: int = 1024
    rollout_max_shadow_inflight: int = 16
    ssl_config_file: str = ""
    auth_token_file: str = ""
    auth_exempt: str = "health"
    auth_token_file_poll_wait_seconds: float = 0.0
    rate_limit_requests_per_second: float = 0.0
    rate_limit_burst: int = 0
    rate_limit_max_clients: int = 10000
    upstream_grpc_address: str = ""
    upstream_load_timeout_seconds: float = 600.0
    extra: dict = field(default_factory=dict)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipewright serve",
        description="TF Serving compatible model server (REST and gRPC) for Pusher outputs.",
    )
    d = ServerOptions()

    def flag(name, type_, default, help_):
        if type_ is bool:
            parser.add_argument(f"--{name}", type=_parse_bool, nargs="?", const=True,
                                default=default, help=help_, metavar="BOOL")
        else:
            parser.add_argument(f"--{name}", type=type_, default=default, help=help_)

    flag("port", int, d.grpc_port, "TCP port for gRPC (0 disables it is not allowed, as in TF Serving)")
    flag("grpc_host", str, None, "address gRPC binds; defaults to --host (pipewright extension)")
    flag("rest_api_port", int, d.rest_api_port, "port for HTTP/REST; 0 disables REST")
    flag("host", str, d.rest_host, "address REST binds, and gRPC unless --grpc_host is given "
         "(pipewright extension)")
    flag("rest_api_num_threads", int, d.rest_api_num_threads, "threads running REST inference")
    flag("rest_api_timeout_in_ms", int, d.rest_api_timeout_in_ms, "timeout for REST calls")
    flag("rest_api_enable_cors_support", bool, d.rest_api_enable_cors_support, "CORS headers")
    flag("rest_api_max_body_bytes", int, d.rest_api_max_body_bytes,
         "largest REST request body accepted (pipewright extension)")
    flag("enable_batching", bool, d.enable_batching, "enable server-side batching")
    flag("batching_parameters_file", str, d.batching_parameters_file,
         "ascii BatchingParameters proto")
    flag("model_config_file", str, d.model_config_file, "ascii ModelServerConfig proto")
    flag("model_config_file_poll_wait_seconds", int, d.model_config_file_poll_wait_seconds,
         "re-read --model_config_file this often (0: never)")
    flag("model_name", str, d.model_name, "model name (ignored with --model_config_file)")
    flag("model_base_path", str, d.model_base_path, "model base path (ignored with --model_config_file)")
    flag("max_num_load_retries", int, d.max_num_load_retries, "load retries after the first failure")
    flag("load_retry_interval_micros", int, d.load_retry_interval_micros, "interval between load retries")
    flag("file_system_poll_wait_seconds", float, d.file_system_poll_wait_seconds,
         "interval between polls of the model base paths")
    flag("grpc_max_threads", int, d.grpc_max_threads, "gRPC worker threads")
    flag("grpc_channel_arguments", str, d.grpc_channel_arguments, "comma separated key=value gRPC args")
    flag("enable_model_warmup", bool, d.enable_model_warmup,
         "replay assets.extra/tf_serving_warmup_requests before serving a version")
    flag("num_request_iterations_for_warmup", int, d.num_request_iterations_for_warmup,
         "times each warmup request is replayed")
    flag("monitoring_config_file", str, d.monitoring_config_file, "ascii MonitoringConfig proto")
    flag("enable_grpc_healthcheck_service", bool, d.enable_grpc_healthcheck_service,
         "serve grpc.health.v1.Health")
    flag("allow_version_labels_for_unavailable_models", bool,
         d.allow_version_labels_for_unavailable_models, "labels may name versions not yet loaded")
    flag("saved_model_tags", str, d.saved_model_tags, "comma separated MetaGraph tags")
    # Request logging (serving/request_log.py); pipewright extensions: TF Serving reads only
    # each model's logging_config, and its open-source binary refuses one.
    flag("request_log_dir", str, d.request_log_dir,
         "directory of the request logs: <dir>/<model>/<version>/<prefix>-<UTC time>-<seq>"
         ".tfrecord.gz, gzip TFRecords of tensorflow.serving.PredictionLog; used by every "
         "model with a logging_config (pipewright extension)")
    flag("request_log_sampling_rate", float, d.request_log_sampling_rate,
         "single-model command line: log this fraction (0..1) of the requests, i.e. "
         "logging_config { log_collector_config { type: \"tfrecord\" filename_prefix: "
         "\"requests\" } sampling_config { sampling_rate: RATE } }; needs --request_log_dir; "
         "with --model_config_file give each model a logging_config instead (pipewright extension)")
    flag("request_log_max_file_bytes", int, d.request_log_max_file_bytes,
         "start a new request log file once a file holds this many record bytes (before "
         "compression) (pipewright extension)")
    flag("request_log_max_file_age_seconds", float, d.request_log_max_file_age_seconds,
         "close a request log file this many seconds after it was opened (pipewright extension)")
    flag("request_log_max_total_bytes", int, d.request_log_max_total_bytes,
         "disk budget of the closed request log files; the oldest are removed past it "
         "(pipewright extension)")
    flag("request_log_queue_size", int, d.request_log_queue_size,
         "records waiting for the request log writer; more are dropped and counted, never "
         "waited for (pipewright extension)")
    flag("rollout_max_shadow_inflight", int, d.rollout_max_shadow_inflight,
         "shadow calls (rollout.json shadow_percent) running at once; beyond that a call is "
         "not mirrored and counted in :pipewright:serving:shadow_skipped_count; 0 turns "
         "shadowing off (pipewright extension)")
    # The front door (serving/tls.py, serving/admission.py); docs/serving-security.md.
    flag("ssl_config_file", str, d.ssl_config_file,
         "ascii SSLConfig proto (server_key, server_cert, custom_ca: PEM text; client_verify): "
         "TLS for gRPC as in TF Serving, and HTTPS with the same certificate on the REST port "
         "(pipewright extension)")
    flag("auth_token_file", str, d.auth_token_file,
         "bearer tokens, one per line ('#' comments): every request needs "
         "`Authorization: Bearer <token>` (REST header, gRPC metadata); 401 / UNAUTHENTICATED "
         "otherwise (pipewright extension)")
    flag("auth_token_file_poll_wait_seconds", float, d.auth_token_file_poll_wait_seconds,
         "re-read --auth_token_file this often when it changed (token rotation; a bad file is "
         "logged and the last good tokens stay); 0: never (pipewright extension)")
    flag("auth_exempt", str, d.auth_exempt,
         "comma separated endpoints that need no token and are not rate limited: health "
         "(grpc.health.v1, GetModelStatus, REST GET /v1/models/<name>), metrics (the Prometheus "
         "path); empty: none (pipewright extension)")
    flag("rate_limit_requests_per_second", float, d.rate_limit_requests_per_second,
         "per-client token bucket refill rate (client: the bearer token, else the peer IP); over "
         "it 429 / RESOURCE_EXHAUSTED; 0: no limit (pipewright extension)")
    flag("rate_limit_burst", int, d.rate_limit_burst,
         "per-client bucket size, requests; 0: the rate rounded up (pipewright extension)")
    flag("rate_limit_max_clients", int, d.rate_limit_max_clients,
         "clients whose buckets are kept; the least recently seen is dropped first "
         "(pipewright extension)")
    # Forwarding mode (serving/upstream.py); docs/rollout.md "In front of TF Serving".
    flag("upstream_grpc_address", str, d.upstream_grpc_address,
         "HOST:PORT (an IPv6 address in brackets: [::1]:8500) of a TF Serving compatible gRPC "
         "model server (e.g. tensorflow/serving) to "
         "forward model calls to: this server keeps REST and gRPC, rollout.json routing, "
         "request logs, per-version metrics, data quality and admission, and sends each "
         "Predict / Classify / Regress call upstream pinned to the version it chose; it drives "
         "the upstream's versions and labels with HandleReloadConfigRequest (model_version_policy "
         "specific) and needs to read the same base paths; empty: serve the models here "
         "(pipewright extension)")
    flag("upstream_load_timeout_seconds", float, d.upstream_load_timeout_seconds,
         "with --upstream_grpc_address: how long a version may take to become AVAILABLE "
         "upstream, reaching an upstream still starting included, "
         "before the load attempt fails (and is retried per --max_num_load_retries) "
         "(pipewright extension)")
    return parser


def _normalize(argv: list[str]) -> list[str]:
    # TF's flag parser accepts -flag=value as well as --flag=value.
    return [("-" + a) if a.startswith("-") and not a.startswith("--") and len(a) > 2 else a
            for a in argv]


def parse_args(argv: list[str]) -> ServerOptions:
    ns = build_parser().parse_args(_normalize(argv))
    # TF Serving's flag names are the options' names, except the ports and hosts.
    renamed = {"grpc_port": ns.port, "grpc_host": ns.grpc_host or ns.host, "rest_host": ns.host}
    same = {f.name: getattr(ns, f.name) for f in dataclasses.fields(ServerOptions)
            if f.name not in renamed and hasattr(ns, f.name)}
    return ServerOptions(**same, **renamed)


def validate_options(options: ServerOptions) -> None:
    """The checks server.cc BuildAndStart makes before anything starts."""
    if options.grpc_port == 0:
        raise ServingError(INVALID_ARGUMENT, "At least one of server_options.grpc_port or "
                           "server_options.grpc_socket_path must be set.")
    if not options.model_base_path and not options.model_config_file:
        raise ServingError(INVALID_ARGUMENT, "Both server_options.model_base_path and "
                           "server_options.model_config_file are empty!")
    if options.batching_parameters_file and not options.enable_batching:
        raise ServingError(INVALID_ARGUMENT, "server_options.batching_parameters_file is set "
                           "without setting server_options.enable_batching to true.")
    rate = options.request_log_sampling_rate
    if not 0.0 <= rate <= 1.0:
        raise ServingError(INVALID_ARGUMENT, f"--request_log_sampling_rate must be in [0, 1], got {rate}")
    if rate > 0 and options.model_config_file:
        raise ServingError(INVALID_ARGUMENT, "--request_log_sampling_rate is for the single-model "
                           "command line; with --model_config_file give each model a logging_config")
    if rate > 0 and not options.request_log_dir:
        raise ServingError(INVALID_ARGUMENT, "--request_log_sampling_rate needs --request_log_dir")
    if options.rollout_max_shadow_inflight < 0:
        raise ServingError(INVALID_ARGUMENT, "--rollout_max_shadow_inflight must be >= 0")
    for name in ("request_log_max_file_bytes", "request_log_max_file_age_seconds",
                 "request_log_max_total_bytes", "request_log_queue_size"):
        if getattr(options, name) <= 0:
            raise ServingError(INVALID_ARGUMENT, f"--{name} must be positive")
    if options.auth_token_file_poll_wait_seconds < 0:
        raise ServingError(INVALID_ARGUMENT, "--auth_token_file_poll_wait_seconds must be >= 0")
    if options.auth_token_file_poll_wait_seconds and not options.auth_token_file:
        raise ServingError(INVALID_ARGUMENT, "--auth_token_file_poll_wait_seconds is set without "
                           "--auth_token_file")
    if options.rate_limit_requests_per_second < 0:
        raise ServingError(INVALID_ARGUMENT, "--rate_limit_requests_per_second must be >= 0")
    if options.rate_limit_burst < 0:
        raise ServingError(INVALID_ARGUMENT, "--rate_limit_burst must be >= 0")
    if options.rate_limit_burst and not options.rate_limit_requests_per_second:
        raise ServingError(INVALID_ARGUMENT, "--rate_limit_burst is set without "
                           "--rate_limit_requests_per_second")
    if options.upstream_grpc_address:
        host, sep, port = options.upstream_grpc_address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ServingError(INVALID_ARGUMENT, "--upstream_grpc_address must be HOST:PORT, "
                               f"got {options.upstream_grpc_address!r}")
        if ":" in host and not (host.startswith("[") and host.endswith("]")):
            # gRPC reads an unbracketed "::1:8500" as the IPv6 address ::0.1.133.0, port 443.
            raise ServingError(INVALID_ARGUMENT, "--upstream_grpc_address must be HOST:PORT "
                               "with an IPv6 address in brackets, e.g. [::1]:8500, got "
                               f"{options.upstream_grpc_address!r}")
        own = {options.grpc_port: "--port", options.rest_api_port: "--rest_api_port"}
        if (host.strip("[]").lower() in {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::",
                                         options.grpc_host.strip("[]").lower()}
                and int(port) in own):
            raise ServingError(INVALID_ARGUMENT, f"--upstream_grpc_address "
                               f"{options.upstream_grpc_address} is this server's own "
                               f"{own[int(port)]}: the upstream must be another model server")
        if options.enable_batching:
            raise ServingError(INVALID_ARGUMENT, "--enable_batching has no effect with "
                               "--upstream_grpc_address: batch on the upstream model server")
    if not options.upstream_load_timeout_seconds > 0:  # NaN too: a load would never time out
        raise ServingError(INVALID_ARGUMENT, "--upstream_load_timeout_seconds must be positive")
    if options.rate_limit_max_clients <= 0:
        raise ServingError(INVALID_ARGUMENT, "--rate_limit_max_clients must be positive")


def read_file_bytes(path: str) -> bytes:
    """Env::NewReadOnlyMemoryRegionFromFile / ReadFileToString: an OS error becomes
    IOError(path, errno), i.e. the errno's canonical code and "<path>; <strerror>"."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        number = e.errno
        if isinstance(e, IsADirectoryError):  # open() succeeds in C; mmap() fails with ENODEV
            number = errno.ENODEV
        raise errors.io_error(path, number) from None


def parse_text_proto(path: str, message):
    """util/proto_util.h ParseProtoTextFile: the details go to the log, the status says
    INVALID_ARGUMENT "Invalid protobuf file: '<path>'"."""
    data = read_file_bytes(path)
    try:
        return text_format.Parse(data, message)
    except (text_format.ParseError, UnicodeDecodeError) as e:
        log.error("Error parsing text-format %s: %s", message.DESCRIPTOR.full_name, e)
        raise ServingError(INVALID_ARGUMENT, f"Invalid protobuf file: '{path}'") from None


def model_server_config(options: ServerOptions) -> model_server_config_pb2.ModelServerConfig:
    if options.model_config_file:
        return parse_text_proto(options.model_config_file, model_server_config_pb2.ModelServerConfig())
    config = model_server_config_pb2.ModelServerConfig()
    single = config.model_config_list.config.add()
    single.name = options.model_name
    single.base_path = options.model_base_path
    single.model_platform = TENSORFLOW_PLATFORM
    if options.request_log_sampling_rate > 0:
        single.logging_config.log_collector_config.type = "tfrecord"
        single.logging_config.log_collector_config.filename_prefix = "requests"
        single.logging_config.sampling_config.sampling_rate = options.request_log_sampling_rate
    return config


def validate_model_config_list(config_list) -> None:
    """server_core.cc ValidateModelConfigList plus the platform check."""
    names = set()
    for model in config_list.config:
        if model.name in names:
            raise ServingError(INVALID_ARGUMENT,
                               f"Illegal to list model {model.name} multiple times in config list")
        names.add(model.name)
    for model in config_list.config:
        if not os.path.isabs(model.base_path) and "://" not in model.base_path:
            raise ServingError(INVALID_ARGUMENT,
                               f"Expected model {model.name} to have an absolute path or URI; "
                               f"got base_path()={model.base_path}")
    for model in config_list.config:
        platform = model.model_platform or (TENSORFLOW_PLATFORM if model.model_type == 1 else "")
        if not platform:
            raise ServingError(INVALID_ARGUMENT, "Illegal setting neither ModelServerConfig::model_type"
                               " (deprecated) nor ModelServerConfig::model_platform.")
        if platform != TENSORFLOW_PLATFORM:
            raise ServingError(INVALID_ARGUMENT, f"Model {model.name} requested unsupported "
                               f"platform {platform}; this server serves only '{TENSORFLOW_PLATFORM}'")


def batching_parameters(options: ServerOptions):
    params = protos.BatchingParameters()
    if options.enable_batching:
        if options.batching_parameters_file:
            parse_text_proto(options.batching_parameters_file, params)
        else:
            params.thread_pool_name.value = "model_server_batch_threads"
    return params


def monitoring_config(options: ServerOptions):
    config = protos.MonitoringConfig()
    if options.monitoring_config_file:
        parse_text_proto(options.monitoring_config_file, config)
    return config


def prometheus_path(config) -> str | None:
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH


def grpc_channel_arguments(text: str) -> list[tuple[str, object]]:
    """server.cc: each value is passed as an int when safe_strto32 takes it, else as a string."""
    args = []
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        number = safe_strto32(value)
        args.append((key, value if number is None else number))
    return args
