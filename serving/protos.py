"""Protos TF Serving reads that the tensorflow-serving-api wheel does not ship.

The wheel has ModelServerConfig but not MonitoringConfig (tensorflow_serving/config/
monitoring_config.proto), BatchingParameters (servables/tensorflow/session_bundle_config.proto)
SSLConfig (tensorflow_serving/config/ssl_config.proto) or the gRPC health service
(grpc/health/v1/health.proto, grpcio-health-checking is not in the lock). They are declared here with the same packages, names and field numbers, so text
configs written for TF Serving parse unchanged and the wire format matches.

One is pipewright's own: RequestLogFields, the fields the request log adds to
tensorflow.serving.LogMetadata (which has no request id or error) under field numbers TF
Serving does not use, 1000-1004. A reader with TF Serving's protos keeps them as unknown fields;
RequestLogFields.FromString(log_metadata.SerializeToString()) reads them.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf import wrappers_pb2  # noqa: F401  (registers google/protobuf/wrappers.proto)

_F = descriptor_pb2.FieldDescriptorProto


def _field(name, number, type_, *, type_name=None, repeated=False):
    field = _F(name=name, number=number, type=type_,
               label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if type_name:
        field.type_name = type_name
    return field


def _message(name, *fields):
    return descriptor_pb2.DescriptorProto(name=name, field=list(fields))


def _build_file(name, package, messages, deps=(), enums=(), services=()):
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(name)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto(
        name=name, package=package, syntax="proto3", dependency=list(deps),
        message_type=list(messages), enum_type=list(enums), service=list(services))
    pool.Add(proto)
    return pool.FindFileByName(name)


def _classes(file_descriptor, *names):
    return [message_factory.GetMessageClass(file_descriptor.message_types_by_name[n]) for n in names]


_monitoring_file = _build_file(
    "tensorflow_serving/config/monitoring_config.proto", "tensorflow.serving",
    [
        _message("PrometheusConfig",
                 _field("enable", 1, _F.TYPE_BOOL),
                 _field("path", 2, _F.TYPE_STRING)),
        _message("MonitoringConfig",
                 _field("prometheus_config", 1, _F.TYPE_MESSAGE,
                        type_name=".tensorflow.serving.PrometheusConfig")),
    ])
PrometheusConfig, MonitoringConfig = _classes(_monitoring_file, "PrometheusConfig", "MonitoringConfig")

# PEM text inline (not file paths), as server.cc BuildServerCredentialsFromSSLConfigFile uses it.
_ssl_file = _build_file(
    "tensorflow_serving/config/ssl_config.proto", "tensorflow.serving",
    [
        _message("SSLConfig",
                 _field("server_key", 1, _F.TYPE_STRING),
                 _field("server_cert", 2, _F.TYPE_STRING),
                 _field("custom_ca", 3, _F.TYPE_STRING),
                 _field("client_verify", 4, _F.TYPE_BOOL)),
    ])
(SSLConfig,) = _classes(_ssl_file, "SSLConfig")

_I64 = ".google.protobuf.Int64Value"
_batching_file = _build_file(
    "pipewright/serving/batching_parameters.proto", "tensorflow.serving",
    [
        _message("BatchingParameters",
                 _field("max_batch_size", 1, _F.TYPE_MESSAGE, type_name=_I64),
                 _field("batch_timeout_micros", 2, _F.TYPE_MESSAGE, type_name=_I64),
                 _field("max_enqueued_batches", 3, _F.TYPE_MESSAGE, type_name=_I64),
                 _field("num_batch_threads", 4, _F.TYPE_MESSAGE, type_name=_I64),
                 _field("thread_pool_name", 5, _F.TYPE_MESSAGE,
                        type_name=".google.protobuf.StringValue"),
                 _field("allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True),
                 _field("pad_variable_length_inputs", 7, _F.TYPE_BOOL),
                 _field("enable_large_batch_splitting", 8, _F.TYPE_MESSAGE,
                        type_name=".google.protobuf.BoolValue"),
                 _field("max_execution_batch_size", 9, _F.TYPE_MESSAGE, type_name=_I64)),
    ],
    deps=["google/protobuf/wrappers.proto"])
(BatchingParameters,) = _classes(_batching_file, "BatchingParameters")


_request_log_file = _build_file(
    "pipewright/serving/request_log.proto", "pipewright.serving",
    [
        _message("RequestLogFields",
                 _field("request_id", 1000, _F.TYPE_STRING),
                 _field("transport", 1001, _F.TYPE_STRING),
                 _field("error_code", 1002, _F.TYPE_INT32),
                 _field("error_message", 1003, _F.TYPE_STRING),
                 _field("route", 1004, _F.TYPE_STRING)),
    ])
(RequestLogFields,) = _classes(_request_log_file, "RequestLogFields")


def _load_health():
    try:  # the real package, if someone installs it, owns the descriptor
        from grpc_health.v1 import health_pb2
        return health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
    except ImportError:
        pass
    status_enum = descriptor_pb2.EnumDescriptorProto(name="ServingStatus", value=[
        descriptor_pb2.EnumValueDescriptorProto(name=n, number=i)
        for i, n in enumerate(["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"])])
    response = _message("HealthCheckResponse",
                        _field("status", 1, _F.TYPE_ENUM,
                               type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus"))
    response.enum_type.append(status_enum)
    health_file = _build_file(
        "grpc/health/v1/health.proto", "grpc.health.v1",
        [_message("HealthCheckRequest", _field("service", 1, _F.TYPE_STRING)), response])
    return tuple(_classes(health_file, "HealthCheckRequest", "HealthCheckResponse"))


HealthCheckRequest, HealthCheckResponse = _load_health()
HEALTH_SERVICE = "grpc.health.v1.Health"
