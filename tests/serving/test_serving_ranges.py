"""Numbers and names from disk and from requests are checked as TF Serving checks them, and
malformed files get TF Serving's status codes: nothing of the kind is a 500 / INTERNAL.

The server serves four models from a --model_config_file:
  demo        1/ plus directories that are not versions: 99999999999999999999/ (a good
              SavedModel whose name overflows int64), 9223372036854775808/, 1.0/, +2/, ٣/
  broken      1/ whose saved_model.pb is garbage
  broken_txt  1/ holding only a garbage saved_model.pbtxt
  bad_warmup  1/ whose warmup file fails its CRC
"""

from __future__ import annotations

import json
import shutil
import time

import grpc
import pytest
import requests

from serving import config as config_lib
from serving import demo_model as dm
from serving.ints import INT64_MAX, INT64_MIN, safe_strto32, safe_strto64, simple_atoi64
from serving.model_manager import _versions_on_disk
from serving_harness import ServerProcess

BIG = "99999999999999999999"


# ------------------------------------------------------------------ parsing, no server


def test_int_parsers_follow_tsl_and_absl():
    assert safe_strto64("9223372036854775807") == INT64_MAX
    assert safe_strto64("-9223372036854775808") == INT64_MIN
    for text in ("9223372036854775808", "-9223372036854775809", BIG, "9" * 5000, "", "-",
                 "+5", "1_000", "1.0", "0x10", "\u0663", "1 2", "--1"):
        assert safe_strto64(text) is None, text
    assert [safe_strto64(t) for t in (" 7\n", "007", "-0")] == [7, 7, 0]
    assert (simple_atoi64("+5"), simple_atoi64("+-5"), simple_atoi64("+ 5")) == (5, None, None)
    assert (safe_strto32("2147483647"), safe_strto32("2147483648")) == (2147483647, None)


def test_version_directories_are_strict_int64_names(tmp_path):
    names = ["1", BIG, "9223372036854775807", "9223372036854775808", "-3", "1.0", "+2",
             "\u0663", "1_0", ".tmp-5", "07", "7"]
    for name in names:
        (tmp_path / name).mkdir()
    (tmp_path / "12").write_text("a file is not a version directory")
    versions = _versions_on_disk(str(tmp_path))
    assert sorted(versions) == [-3, 1, 7, INT64_MAX]
    assert versions[7] == str(tmp_path / "7")  # of "07" and "7", the later name wins


def test_config_files_with_numbers_beyond_int64_are_invalid(tmp_path, capsys):
    from serving.cli import main

    config = tmp_path / "models.config"
    for extra in (f"model_version_policy {{ specific {{ versions: {BIG} }} }}",
                  f'version_labels {{ key: "stable" value: {BIG} }}'):
        config.write_text('model_config_list { config { name: "m" base_path: "/m" '
                          f'model_platform: "tensorflow" {extra} }} }}')
        assert main([f"--model_config_file={config}"]) == 1
        assert f"INVALID_ARGUMENT: Invalid protobuf file: '{config}'" in capsys.readouterr().err


def test_unreadable_config_files_get_the_errno_status():
    from serving.errors import ServingError

    options = config_lib.ServerOptions(model_config_file="/nonexistent/models.config")
    with pytest.raises(ServingError) as info:
        config_lib.model_server_config(options)
    assert info.value.status_string() == (
        "NOT_FOUND: /nonexistent/models.config; No such file or directory")
    options = config_lib.ServerOptions(monitoring_config_file="/")
    with pytest.raises(ServingError) as info:
        config_lib.monitoring_config(options)
    assert info.value.status_string() == "NOT_FOUND: /; No such device"


def test_grpc_channel_argument_values_are_int32_or_strings():
    assert config_lib.grpc_channel_arguments("a=12,b=-3,c=2147483648,d=x,e=1_0") == [
        ("a", 12), ("b", -3), ("c", "2147483648"), ("d", "x"), ("e", "1_0")]


# ------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def models_root(demo_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ranges")
    demo = root / "demo"
    shutil.copytree(demo_model_dir / "1", demo / "1")
    shutil.copytree(demo_model_dir / "1", demo / BIG)
    for name in ("9223372036854775808", "1.0", "+2", "\u0663"):
        (demo / name).mkdir()
    shutil.copytree(demo_model_dir / "1", root / "broken" / "1")
    (root / "broken" / "1" / "saved_model.pb").write_bytes(b"\x08\x01garbage")
    (root / "broken_txt" / "1").mkdir(parents=True)
    (root / "broken_txt" / "1" / "saved_model.pbtxt").write_text("meta_graphs { nope }")
    shutil.copytree(demo_model_dir / "1", root / "bad_warmup" / "1")
    warmup = root / "bad_warmup" / "1" / "assets.extra" / "tf_serving_warmup_requests"
    data = bytearray(warmup.read_bytes())
    data[20] ^= 0xFF  # inside the first record's data: its CRC no longer matches
    warmup.write_bytes(bytes(data))
    return root


MODELS = ("demo", "broken", "broken_txt", "bad_warmup")


def model_server_config(models_root, **labels):
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for name in MODELS:
        model = config.model_config_list.config.add(name=name, base_path=str(models_root / name),
                                                    model_platform="tensorflow")
        if name == "demo":
            for label, version in labels.items():
                model.version_labels[label] = version
    return config


@pytest.fixture(scope="module")
def server(models_root, log_dir):
    from google.protobuf import text_format

    config = models_root / "models.config"
    config.write_text(text_format.MessageToString(model_server_config(models_root)))
    monitoring = models_root / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }\n")
    proc = ServerProcess([f"--model_config_file={config}", "--file_system_poll_wait_seconds=0.2",
                          "--max_num_load_retries=0", f"--monitoring_config_file={monitoring}"],
                         log_dir, "ranges").start()
    time.sleep(1.0)  # several polls of the base paths
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def stubs(server):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
               model_service_pb2_grpc.ModelServiceStub(channel))


def rpc_error(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    return info.value.code(), info.value.details()


def predict_request(name="demo", **spec):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0, 2.0, 3.0]], tf.float32))
    request.inputs["count"].CopyFrom(tf.make_tensor_proto([2], tf.int64))
    request.inputs["tag"].CopyFrom(tf.make_tensor_proto([b"a"]))
    return request


def status_request(name, version=None):
    from tensorflow_serving.apis import get_model_status_pb2

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return request


def metadata_request(name="demo", version=None):
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return request


def test_version_dirs_beyond_int64_are_not_versions(server, stubs):
    prediction, models = stubs
    url = f"{server.rest}/v1/models/demo"
    r = requests.get(url, timeout=10)
    assert (r.status_code, r.json()) == (200, {"model_version_status": [{
        "version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    r = requests.get(f"{url}/metadata", timeout=10)
    assert r.status_code == 200 and r.json()["model_spec"]["version"] == "1"
    r = requests.post(f"{url}:predict", data=json.dumps({"instances": dm.SAMPLE_INSTANCES}), timeout=30)
    assert r.status_code == 200
    response = models.GetModelStatus(status_request("demo"), timeout=30)
    assert [(s.version, s.state, s.status.error_code) for s in response.model_version_status] == [
        (1, 30, 0)]
    assert prediction.GetModelMetadata(metadata_request(), timeout=30).model_spec.version.value == 1
    assert prediction.Predict(predict_request(), timeout=30).model_spec.version.value == 1


def test_rest_url_versions_are_int64(server):
    url = f"{server.rest}/v1/models/demo"
    for version in (BIG, "9223372036854775808", "9" * 5000):
        message = f"Failed to convert version: {version} to numeric."
        for method, path in (("GET", ""), ("GET", "/metadata"), ("POST", ":predict"),
                             ("POST", ":classify")):
            r = requests.request(method, f"{url}/versions/{version}{path}", timeout=30,
                                 data=json.dumps({"instances": dm.SAMPLE_INSTANCES}))
            assert (r.status_code, r.json()) == (400, {"error": message}), (method, path)
    r = requests.get(f"{url}/versions/9223372036854775807", timeout=10)
    assert (r.status_code, r.json()) == (
        404, {"error": "Could not find version 9223372036854775807 of model demo"})
    r = requests.post(f"{url}/versions/00000000000000000000001:predict", timeout=30,
                      data=json.dumps({"instances": dm.SAMPLE_INSTANCES}))
    assert r.status_code == 200  # leading zeros: still version 1
    r = requests.get(f"{url}/versions/-1", timeout=10)
    assert (r.status_code, r.json()) == (
        400, {"error": "Malformed request: GET /v1/models/demo/versions/-1"})


def test_grpc_versions_across_the_int64_range(stubs):
    prediction, models = stubs
    for version in (INT64_MAX, INT64_MIN, -1):
        assert rpc_error(prediction.Predict, predict_request(version=version)) == (
            grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific(demo, {version})")
        assert rpc_error(prediction.GetModelMetadata, metadata_request(version=version)) == (
            grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific(demo, {version})")
        assert rpc_error(models.GetModelStatus, status_request("demo", version)) == (
            grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model demo")


def test_labels_and_names_that_are_not_utf8(server, stubs):
    prediction, _ = stubs
    body = json.dumps({"instances": dm.SAMPLE_INSTANCES})
    r = requests.post(f"{server.rest}/v1/models/demo/labels/%FF:predict", data=body, timeout=30)
    assert r.status_code == 400
    assert r.content == b'{\n    "error": "Unrecognized servable version label: \xff"\n}'
    r = requests.post(f"{server.rest}/v1/models/%FF%FE:predict", data=body, timeout=30)
    assert r.status_code == 404
    assert requests.get(f"{server.rest}/v1/models/%FF", timeout=10).status_code == 404
    # Such a name becomes a metrics label; the metrics page must still render.
    r = requests.get(f"{server.rest}/monitoring/prometheus/metrics", timeout=10)
    assert r.status_code == 200
    assert b':tensorflow:serving:request_count{model_name="\xff\xfe",status="NOT_FOUND"} 1' in r.content
    assert rpc_error(prediction.Predict, predict_request(version_label="")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: ")


def test_reload_config_label_beyond_the_versions_on_disk(models_root, stubs):
    from tensorflow_serving.apis import model_management_pb2

    _, models = stubs
    # A base path no file system can list (a NUL in it) is a model without versions, not a crash.
    config = model_server_config(models_root)
    config.model_config_list.config.add(name="nul", base_path=f"{models_root}/x\0y",
                                        model_platform="tensorflow")
    models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                     timeout=60)
    assert rpc_error(models.GetModelStatus, status_request("nul")) == (
        grpc.StatusCode.NOT_FOUND, "Could not find any versions of model nul")
    for version in (INT64_MAX, INT64_MIN):
        request = model_management_pb2.ReloadConfigRequest(
            config=model_server_config(models_root, far=version))
        assert rpc_error(models.HandleReloadConfigRequest, request) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            f"Request to assign label to version {version} of model demo, which is not currently "
            "available for inference")


def test_huge_tensor_shapes_are_parsing_errors(stubs):
    prediction, _ = stubs
    from tensorflow.core.framework import tensor_pb2, types_pb2

    request = predict_request()
    x = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    x.tensor_shape.dim.add(size=1 << 62)
    x.tensor_shape.dim.add(size=4)  # 2**64 elements: not a valid TensorShape
    request.inputs["x"].CopyFrom(x)
    assert rpc_error(prediction.Predict, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: x")


@pytest.mark.parametrize("name, code, number, message", [
    ("broken", "DATA_LOSS", 15, "Can't parse {base}/saved_model.pb as binary proto"),
    ("broken_txt", "DATA_LOSS", 15, "Can't parse {base}/saved_model.pbtxt as text proto"),
    ("bad_warmup", "DATA_LOSS", 15,
     "corrupted record at 12. Please verify your warmup data is in TFRecord format."),
])
def test_malformed_model_files_get_tf_serving_status_codes(server, stubs, models_root, name, code,
                                                           number, message):
    prediction, models = stubs
    message = message.format(base=models_root / name / "1")
    r = requests.get(f"{server.rest}/v1/models/{name}", timeout=10)
    assert (r.status_code, r.json()) == (200, {"model_version_status": [{
        "version": "1", "state": "END", "status": {"error_code": code, "error_message": message}}]})
    response = models.GetModelStatus(status_request(name), timeout=30)
    assert [(s.version, s.state, s.status.error_code, s.status.error_message)
            for s in response.model_version_status] == [(1, 50, number, message)]
    r = requests.post(f"{server.rest}/v1/models/{name}:predict",
                      data=json.dumps({"instances": dm.SAMPLE_INSTANCES}), timeout=30)
    assert (r.status_code, r.json()) == (404, {"error": f"Servable not found for request: Latest({name})"})
    assert rpc_error(prediction.Predict, predict_request(name)) == (
        grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
