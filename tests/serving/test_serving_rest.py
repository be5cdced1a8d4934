"""REST conformance: plain HTTP (requests) against `python -m serving` with a real SavedModel."""

from __future__ import annotations

import gzip
import json
import socket

import numpy as np
import pytest
import requests

from serving_harness import ServerProcess

MAX_BODY = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def server(served_model, log_dir, tmp_path_factory):
    config_dir = tmp_path_factory.mktemp("rest_config")
    monitoring = config_dir / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n')
    proc = ServerProcess([f"--model_name={served_model.name}",
                          f"--model_base_path={served_model.base_path}",
                          f"--monitoring_config_file={monitoring}",
                          f"--rest_api_max_body_bytes={MAX_BODY}"], log_dir, "rest").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def url(server, served_model):
    return f"{server.rest}/v1/models/{served_model.name}"


def post(url, body, **kwargs):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(url, data=data, timeout=30, **kwargs)


def error_of(response) -> str:
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    return body["error"]


# ------------------------------------------------------------------ status and metadata


def test_model_status(url, served_model):
    r = requests.get(url, timeout=10)
    assert r.status_code == 200
    assert r.json() == {"model_version_status": [{
        "version": str(served_model.version), "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]}
    # The C++ JSON printer's layout: one-space indent.
    assert r.text.startswith('{\n "model_version_status": [\n  {\n   "version": ')


def test_model_status_of_version(url, served_model):
    assert requests.get(f"{url}/versions/{served_model.version}", timeout=10).status_code == 200
    r = requests.get(f"{url}/versions/987", timeout=10)
    assert r.status_code == 404
    assert error_of(r) == f"Could not find version 987 of model {served_model.name}"


def test_model_status_errors(server):
    r = requests.get(f"{server.rest}/v1/models/nope", timeout=10)
    assert (r.status_code, error_of(r)) == (404, "Could not find any versions of model nope")
    r = requests.get(f"{server.rest}/v1/models", timeout=10)
    assert (r.status_code, error_of(r)) == (400, "Missing model name in request.")


def test_paths_are_case_insensitive(server, served_model):
    r = requests.get(f"{server.rest}/V1/MODELS/{served_model.name}", timeout=10)
    assert r.status_code == 200


def test_metadata(url, served_model):
    r = requests.get(f"{url}/metadata", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["model_spec"] == {"name": served_model.name, "signature_name": "",
                                  "version": str(served_model.version)}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    for alias in served_model.instances[0]:
        info = default["inputs"][alias]
        assert info["dtype"].startswith("DT_") and "tensor_shape" in info
    assert r.text.startswith('{\n"model_spec":{\n "name": ')
    r2 = requests.get(f"{url}/versions/{served_model.version}/metadata", timeout=10)
    assert r2.json() == body


def test_metadata_errors(url, server):
    r = requests.get(f"{url}/labels/canary/metadata", timeout=10)
    assert (r.status_code, error_of(r)) == (400, "Unrecognized servable version label: canary")
    r = requests.get(f"{server.rest}/v1/models/nope/metadata", timeout=10)
    assert (r.status_code, error_of(r)) == (404, "Servable not found for request: Latest(nope)")


# ------------------------------------------------------------------ predict


def test_predict_row_format(url, served_model):
    r = post(f"{url}:predict", {"instances": served_model.instances})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == len(served_model.instances)


def test_predict_columnar_format(url, served_model):
    names = list(served_model.instances[0])
    columns = {n: [inst[n] for inst in served_model.instances] for n in names}
    r = post(f"{url}:predict", {"inputs": columns if len(names) > 1 else columns[names[0]]})
    assert r.status_code == 200, r.text
    row = post(f"{url}:predict", {"instances": served_model.instances}).json()["predictions"]
    outputs = r.json()["outputs"]
    if isinstance(row[0], dict):
        for name in row[0]:
            assert [p[name] for p in row] == outputs[name]
    else:
        assert row == outputs


def test_predict_on_version_path(url, served_model):
    r = post(f"{url}/versions/{served_model.version}:predict", {"instances": served_model.instances})
    assert r.status_code == 200
    r = post(f"{url}/versions/424242:predict", {"instances": served_model.instances})
    assert (r.status_code, error_of(r)) == (
        404, f"Servable not found for request: Specific({served_model.name}, 424242)")
    r = post(f"{url}/labels/stable:predict", {"instances": served_model.instances})
    assert (r.status_code, error_of(r)) == (400, "Unrecognized servable version label: stable")


def test_predict_unknown_model_and_signature(server, url, served_model):
    r = post(f"{server.rest}/v1/models/nope:predict", {"instances": served_model.instances})
    assert (r.status_code, error_of(r)) == (404, "Servable not found for request: Latest(nope)")
    r = post(f"{url}:predict", {"signature_name": "nope", "instances": served_model.instances})
    assert (r.status_code, error_of(r)) == (
        400, 'Serving signature name: "nope" not found in signature def')
    r = post(f"{url}:predict", {"signature_name": 3, "instances": served_model.instances})
    assert r.status_code == 400
    assert error_of(r).endswith("not formatted correctly. 'signature_name' key must be a string value.")


@pytest.mark.parametrize("body, message", [
    (b"", "JSON Parse error: The document is empty"),
    (b"{", "JSON Parse error: Missing a name for object member. at offset: 1"),
    (b'{"instances": [1,', "JSON Parse error: Invalid value. at offset: 17"),
    (b'{"instances" [1]}', "JSON Parse error: Missing a colon after a name of object member. at offset: 13"),
    (b"[1, 2]", "JSON Value: [\n    1,\n    2\n] Is not object"),
    (b"{} {}", "JSON Parse error: The document root must not be followed by other values. at offset: 3"),
    (b"\xff\xfe", "JSON Parse error: Invalid value. at offset: 0"),
])
def test_malformed_json(url, body, message):
    r = post(f"{url}:predict", body)
    assert (r.status_code, error_of(r)) == (400, message)


def test_request_shape_errors(url, served_model):
    instances = served_model.instances
    r = post(f"{url}:predict", {"instances": instances, "inputs": instances})
    assert r.status_code == 400
    assert error_of(r).endswith("Not formatted correctly expecting only one of 'inputs' or "
                                "'instances' keys to exist ")
    r = post(f"{url}:predict", {"foo": 1})
    assert (r.status_code, error_of(r)) == (400, "Missing 'inputs' or 'instances' key")
    r = post(f"{url}:predict", {"instances": []})
    assert r.status_code == 400 and error_of(r).endswith("No values in 'instances' array")
    r = post(f"{url}:predict", {"instances": {"a": 1}})
    assert r.status_code == 400 and error_of(r).endswith("Expecting 'instances' to be an list/array")


def test_error_body_layout(url):
    r = post(f"{url}:predict", {"foo": 1})
    assert r.text == '{\n    "error": "Missing \'inputs\' or \'instances\' key"\n}'


def test_gzip_body(url, served_model):
    body = gzip.compress(json.dumps({"instances": served_model.instances}).encode())
    r = post(f"{url}:predict", body, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    plain = post(f"{url}:predict", {"instances": served_model.instances})
    assert r.json() == plain.json()
    # Undecodable gzip reaches the JSON parser as an empty body, as in TF Serving.
    r = post(f"{url}:predict", b"not gzip", headers={"Content-Encoding": "gzip"})
    assert (r.status_code, error_of(r)) == (400, "JSON Parse error: The document is empty")


def test_oversized_body_is_refused_and_server_keeps_serving(url, served_model):
    r = post(f"{url}:predict", b"[" + b"1," * MAX_BODY + b"1]")
    assert r.status_code == 413
    assert post(f"{url}:predict", {"instances": served_model.instances}).status_code == 200


def test_non_api_paths_and_methods(server, url):
    r = requests.get(f"{server.rest}/healthz", timeout=10)
    assert r.status_code == 404 and "<H1>Not Found</H1>" in r.text
    r = requests.put(f"{url}:predict", data="{}", timeout=10)
    assert (r.status_code, error_of(r)) == (400, f"Malformed request: PUT /v1/models/{url.rsplit('/', 1)[1]}:predict")
    r = requests.get(f"{url}:predict", timeout=10)
    assert r.status_code == 400 and error_of(r).startswith("Malformed request: GET ")
    r = post(url, {})
    assert r.status_code == 400 and error_of(r).startswith("Malformed request: POST ")


def test_garbage_http_does_not_hurt_others(server, url, served_model):
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as s:
        s.sendall(b"\x00\x01\x02 garbage \r\n\r\n")
        reply = s.recv(1000)
        assert reply.startswith(b"HTTP/1.1 400")
    assert post(f"{url}:predict", {"instances": served_model.instances}).status_code == 200


def test_pipelined_requests_answer_in_order(server, served_model):
    body = json.dumps({"instances": served_model.instances}).encode()
    one = (f"POST /v1/models/{served_model.name}:predict HTTP/1.1\r\nHost: x\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    status = (f"GET /v1/models/{served_model.name} HTTP/1.1\r\nHost: x\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as s:
        s.sendall(one + status + one)
        data = b""
        while data.count(b"HTTP/1.1 200") < 3:
            chunk = s.recv(65536)
            assert chunk
            data += chunk
    first, second, third = data.split(b"HTTP/1.1 200 OK")[1:]
    assert b"predictions" in first and b"model_version_status" in second and b"predictions" in third


# ------------------------------------------------------------------ classify / regress


def test_classify(url, served_model):
    if served_model.classify is None:
        pytest.skip("model has no classify signature")
    r = post(f"{url}:classify", served_model.classify)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(served_model.classify["examples"])
    for classes in results:
        for label, score in classes:
            assert isinstance(label, str) and isinstance(score, float)


def test_regress(url, served_model):
    if served_model.regress is None:
        pytest.skip("model has no regress signature")
    r = post(f"{url}:regress", served_model.regress)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(served_model.regress["examples"])
    assert r.text.startswith('{\n    "results": [') and r.text.endswith("]\n}")


def test_classify_request_errors(url):
    r = post(f"{url}:classify", {"signature_name": "classify"})
    assert r.status_code == 400 and error_of(r).endswith(
        "When method is classify, key 'examples' is expected and was not found")
    r = post(f"{url}:classify", {"examples": []})
    assert r.status_code == 400 and error_of(r).endswith("'examples' value is an empty array")
    r = post(f"{url}:classify", {"examples": [1]})
    assert (r.status_code, error_of(r)) == (400, "Example must be JSON object but got JSON Number")
    r = post(f"{url}:regress", {"examples": [{"x": [1.0, 2]}]})
    assert (r.status_code, error_of(r)) == (400, "Unexpected element type in feature: x expecting type: float")
    r = post(f"{url}:regress", {"signature_name": "nope", "examples": [{"x": 1.0}]})
    assert (r.status_code, error_of(r)) == (400, "No signature was found with the name: nope")


# ------------------------------------------------------------------ monitoring


def test_prometheus_metrics(server, url, served_model):
    post(f"{url}:predict", {"instances": served_model.instances})
    post(f"{url}:predict", {"foo": 1})
    r = requests.get(f"{server.rest}/monitoring/prometheus/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/plain"
    text = r.text
    name = served_model.name
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert f':tensorflow:serving:request_count{{model_name="{name}",status="OK"}}' in text
    assert f':tensorflow:serving:request_count{{model_name="{name}",status="INVALID_ARGUMENT"}}' in text
    assert (f':tensorflow:serving:request_latency_bucket{{model_name="{name}",API="predict",'
            f'entrypoint="REST",le="10"}}') in text
    assert f':pipewright:serving:request_count{{model_name="{name}",API="predict",entrypoint="REST",status="OK"}}' in text
    assert f':pipewright:serving:loaded_versions{{model_name="{name}"}} 1' in text
    r = requests.get(f"{server.rest}/monitoring/prometheus/metrics?x=1", timeout=10)
    assert r.status_code == 400 and r.text.startswith("Unexpected path: ")
