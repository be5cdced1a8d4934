"""gRPC conformance with the official tensorflow_serving.apis stubs."""

from __future__ import annotations

import json
import socket

import grpc
import numpy as np
import pytest
import requests

from serving_harness import ServerProcess


@pytest.fixture(scope="module")
def server(served_model, log_dir):
    proc = ServerProcess([f"--model_name={served_model.name}",
                          f"--model_base_path={served_model.base_path}",
                          "--enable_grpc_healthcheck_service=true"], log_dir, "grpc").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def channel(server):
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024),
               ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(server.grpc_target, options=options) as ch:
        yield ch


@pytest.fixture(scope="module")
def apis():
    from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                         get_model_status_pb2, inference_pb2, input_pb2,
                                         model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                         prediction_service_pb2_grpc, regression_pb2)
    return locals()


@pytest.fixture(scope="module")
def prediction(channel, apis):
    return apis["prediction_service_pb2_grpc"].PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel, apis):
    return apis["model_service_pb2_grpc"].ModelServiceStub(channel)


@pytest.fixture(scope="module")
def signature_inputs(server, served_model):
    """serving_default's input dtypes, read over REST metadata."""
    meta = requests.get(f"{server.rest}/v1/models/{served_model.name}/metadata", timeout=10).json()
    return meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]


def predict_request(apis, served_model, signature_inputs, **spec):
    import tensorflow as tf

    request = apis["predict_pb2"].PredictRequest()
    request.model_spec.name = served_model.name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    for alias, info in signature_inputs.items():
        values = [inst[alias] for inst in served_model.instances]
        from tensorflow.core.framework import types_pb2
        dtype = tf.dtypes.as_dtype(types_pb2.DataType.Value(info["dtype"]))
        if dtype == tf.string:
            values = [v.encode() if isinstance(v, str) else v for v in values]
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(values, dtype))
    return request


def rpc_error(call, *args) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30)
    return info.value.code(), info.value.details()


# ------------------------------------------------------------------ predict


def test_predict(prediction, apis, served_model, signature_inputs, server):
    import tensorflow as tf

    request = predict_request(apis, served_model, signature_inputs)
    response = prediction.Predict(request, timeout=30)
    assert response.model_spec.name == served_model.name
    assert response.model_spec.version.value == served_model.version
    assert response.model_spec.signature_name == "serving_default"
    rest = requests.post(f"{server.rest}/v1/models/{served_model.name}:predict",
                         data=json.dumps({"instances": served_model.instances}), timeout=30).json()
    rows = rest["predictions"]
    for alias, tensor in response.outputs.items():
        value = tf.make_ndarray(tensor)
        assert value.shape[0] == len(served_model.instances)
        expected = [row[alias] for row in rows] if isinstance(rows[0], dict) else rows
        if value.dtype.kind == "f":
            np.testing.assert_allclose(value, np.array(expected, dtype=np.float64), rtol=1e-6)


def test_predict_output_filter(prediction, apis, served_model, signature_inputs):
    request = predict_request(apis, served_model, signature_inputs)
    first = sorted(prediction.Predict(request, timeout=30).outputs)[0]
    request.output_filter.append(first)
    assert list(prediction.Predict(request, timeout=30).outputs) == [first]
    request.output_filter.append("nope")
    code, details = rpc_error(prediction.Predict, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("output tensor alias not found in signature: nope Outputs expected to be in the set {")
    del request.output_filter[:]
    request.output_filter.extend([first, first])
    assert rpc_error(prediction.Predict, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {first}")


def test_predict_input_errors(prediction, apis, served_model, signature_inputs):
    request = predict_request(apis, served_model, signature_inputs)
    request.inputs["bogus"].CopyFrom(request.inputs[next(iter(signature_inputs))])
    code, details = rpc_error(prediction.Predict, request)
    n = len(signature_inputs)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"input size does not match signature: {n + 1}!={n} len({{")
    assert details.endswith("Sent extra: {bogus}. Missing but required: {}.")
    request = predict_request(apis, served_model, signature_inputs)
    missing = sorted(signature_inputs)[0]
    del request.inputs[missing]
    code, details = rpc_error(prediction.Predict, request)
    if n > 1:
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.endswith(f"Missing but required: {{{missing}}}.")
    # A tensor whose content does not match its shape.
    request = predict_request(apis, served_model, signature_inputs)
    alias = sorted(signature_inputs)[0]
    request.inputs[alias].tensor_content = b"\x00" * 3
    assert rpc_error(prediction.Predict, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}")


def test_predict_wrong_dtype(prediction, apis, served_model, signature_inputs):
    import tensorflow as tf

    request = predict_request(apis, served_model, signature_inputs)
    order = sorted(signature_inputs)
    alias = order[0]
    wrong = tf.int32 if signature_inputs[alias]["dtype"] != "DT_INT32" else tf.float32
    shape = [d.size for d in request.inputs[alias].tensor_shape.dim]
    request.inputs[alias].CopyFrom(tf.make_tensor_proto(np.zeros(shape), wrong))
    code, details = rpc_error(prediction.Predict, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("Expects arg[0] to be ") and details.endswith(
        f" but {wrong.name} is provided")


def test_predict_model_spec_errors(prediction, apis, served_model, signature_inputs):
    request = predict_request(apis, served_model, signature_inputs, signature_name="nope")
    assert rpc_error(prediction.Predict, request) == (
        grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.')
    request = predict_request(apis, served_model, signature_inputs, version=999)
    assert rpc_error(prediction.Predict, request) == (
        grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({served_model.name}, 999)")
    request = predict_request(apis, served_model, signature_inputs, version_label="canary")
    assert rpc_error(prediction.Predict, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: canary")
    request = predict_request(apis, served_model, signature_inputs)
    request.model_spec.name = "nope"
    assert rpc_error(prediction.Predict, request) == (
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)")
    request.ClearField("model_spec")
    assert rpc_error(prediction.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    request.model_spec.signature_name = "serving_default"
    assert rpc_error(prediction.Predict, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")


# ------------------------------------------------------------------ classify / regress / multi


def _input(apis, served_model, examples):
    from serving.demo_model import make_example

    request_input = apis["input_pb2"].Input()
    for features in examples:
        request_input.example_list.examples.add().ParseFromString(make_example(features))
    return request_input


def test_classify(prediction, apis, served_model):
    if served_model.classify is None:
        pytest.skip("model has no classify signature")
    request = apis["classification_pb2"].ClassificationRequest()
    request.model_spec.name = served_model.name
    request.model_spec.signature_name = served_model.classify["signature_name"]
    request.input.CopyFrom(_input(apis, served_model, served_model.classify["examples"]))
    response = prediction.Classify(request, timeout=30)
    assert response.model_spec.version.value == served_model.version
    assert response.model_spec.signature_name == served_model.classify["signature_name"]
    assert len(response.result.classifications) == len(served_model.classify["examples"])
    request.ClearField("input")
    assert rpc_error(prediction.Classify, request) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    request.model_spec.signature_name = "nope"
    assert rpc_error(prediction.Classify, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, "No signature was found with the name: nope")


def test_regress(prediction, apis, served_model):
    if served_model.regress is None:
        pytest.skip("model has no regress signature")
    request = apis["regression_pb2"].RegressionRequest()
    request.model_spec.name = served_model.name
    request.model_spec.signature_name = served_model.regress["signature_name"]
    request.input.CopyFrom(_input(apis, served_model, served_model.regress["examples"]))
    response = prediction.Regress(request, timeout=30)
    assert len(response.result.regressions) == len(served_model.regress["examples"])


def test_multi_inference(prediction, apis, served_model):
    if served_model.classify is None or served_model.regress is None:
        pytest.skip("needs classify and regress signatures")
    request = apis["inference_pb2"].MultiInferenceRequest()
    for method, spec in (("tensorflow/serving/classify", served_model.classify),
                         ("tensorflow/serving/regress", served_model.regress)):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = served_model.name
        task.model_spec.signature_name = spec["signature_name"]
    request.input.CopyFrom(_input(apis, served_model, served_model.classify["examples"]))
    response = prediction.MultiInference(request, timeout=30)
    assert [r.WhichOneof("result") for r in response.results] == ["classification_result",
                                                                 "regression_result"]
    assert response.results[0].model_spec.version.value == served_model.version
    request.tasks[1].model_spec.signature_name = request.tasks[0].model_spec.signature_name
    assert rpc_error(prediction.MultiInference, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Duplicate evaluation of signature: {served_model.classify['signature_name']}")
    request.tasks[1].model_spec.name = "other"
    assert rpc_error(prediction.MultiInference, request)[1] == (
        "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
    request.tasks[1].model_spec.name = served_model.name
    request.tasks[1].method_name = "tensorflow/serving/predict"
    request.tasks[1].model_spec.signature_name = served_model.regress["signature_name"]
    assert rpc_error(prediction.MultiInference, request) == (
        grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature method_name: tensorflow/serving/predict")


# ------------------------------------------------------------------ metadata / status / reload


def test_get_model_metadata(prediction, apis, served_model, server):
    pb = apis["get_model_metadata_pb2"]
    request = pb.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = served_model.name
    response = prediction.GetModelMetadata(request, timeout=30)
    assert response.model_spec.name == served_model.name
    assert response.model_spec.version.value == served_model.version
    signature_map = pb.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    assert "serving_default" in signature_map.signature_def
    rest = requests.get(f"{server.rest}/v1/models/{served_model.name}/metadata", timeout=10).json()
    assert set(rest["metadata"]["signature_def"]["signature_def"]) == set(signature_map.signature_def)
    request.metadata_field[:] = ["graph"]
    assert rpc_error(prediction.GetModelMetadata, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Metadata field graph is not supported")
    del request.metadata_field[:]
    assert rpc_error(prediction.GetModelMetadata, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one metadata_field")


def test_get_model_status(models, apis, served_model):
    pb = apis["get_model_status_pb2"]
    request = pb.GetModelStatusRequest()
    request.model_spec.name = served_model.name
    response = models.GetModelStatus(request, timeout=30)
    assert [(s.version, s.state, s.status.error_code) for s in response.model_version_status] == [
        (served_model.version, pb.ModelVersionStatus.AVAILABLE, 0)]
    request.model_spec.version.value = 77
    assert rpc_error(models.GetModelStatus, request) == (
        grpc.StatusCode.NOT_FOUND, f"Could not find version 77 of model {served_model.name}")
    assert rpc_error(models.GetModelStatus, pb.GetModelStatusRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


def test_reload_config_with_labels(models, prediction, apis, served_model, signature_inputs):
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=served_model.name,
                                                base_path=str(served_model.base_path),
                                                model_platform="tensorflow")
    model.version_labels["stable"] = served_model.version
    def reload_request():
        return apis["model_management_pb2"].ReloadConfigRequest(config=config)

    response = models.HandleReloadConfigRequest(reload_request(), timeout=60)
    assert response.status.error_code == 0
    labelled = predict_request(apis, served_model, signature_inputs, version_label="stable")
    assert prediction.Predict(labelled, timeout=30).model_spec.version.value == served_model.version
    model.version_labels["canary"] = 4242
    assert rpc_error(models.HandleReloadConfigRequest, reload_request()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"Request to assign label to version 4242 of model {served_model.name}, which is not "
        "currently available for inference")
    del model.version_labels["canary"]
    model.base_path = "relative/path"
    assert rpc_error(models.HandleReloadConfigRequest, reload_request())[0] == (
        grpc.StatusCode.INVALID_ARGUMENT)


# ------------------------------------------------------------------ transport


def test_health_service(channel):
    from serving.protos import HealthCheckRequest, HealthCheckResponse

    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=HealthCheckRequest.SerializeToString,
                                response_deserializer=HealthCheckResponse.FromString)
    for service in ("", "PredictionService", "ModelService"):
        assert check(HealthCheckRequest(service=service), timeout=10).status == 1  # SERVING
    with pytest.raises(grpc.RpcError) as info:
        check(HealthCheckRequest(service="nope"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_messages_beyond_grpc_default_4mb(prediction, apis, served_model, signature_inputs):
    request = predict_request(apis, served_model, signature_inputs)
    request.inputs["padding"].string_val.append(b"x" * (6 * 1024 * 1024))
    code, details = rpc_error(prediction.Predict, request)
    # Received in full (no RESOURCE_EXHAUSTED): rejected for its extra input, like TF Serving.
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Sent extra: {padding}" in details


def test_garbage_on_grpc_port(server, prediction, apis, served_model, signature_inputs):
    for payload in (b"\x00" * 64, b"GET / HTTP/1.1\r\n\r\n", bytes(range(256)) * 8):
        with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10) as s:
            s.sendall(payload)
            try:
                s.recv(1024)
            except OSError:
                pass
    assert server.alive()
    response = prediction.Predict(predict_request(apis, served_model, signature_inputs), timeout=30)
    assert response.model_spec.version.value == served_model.version
