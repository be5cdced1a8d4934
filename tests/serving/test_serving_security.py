"""The front door of `python -m serving` (docs/serving-security.md): TLS on both ports from
TF Serving's --ssl_config_file, bearer tokens, per-client rate limits, and the start-up
refusals of bad security config. Real servers on loopback, the official tensorflow_serving
stubs over grpc.secure_channel, http.client over ssl; the certificates are generated here.

Two servers: `tls_server` (TLS with client_verify, plus a rate limit keyed by peer address:
clients bind 127.0.0.2 / 127.0.0.3) and `auth_server` (tokens, health and metrics exempt,
a rate limit keyed by token). Each test uses a client (token or source address) of its own, so
rate limits never leak from one test into another.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

import certs
from serving_harness import REPO, ServerProcess, free_port

RATE, BURST = 2, 4
TOKENS = {name: f"{name}-{'0123456789abcdef' * 2}" for name in
          ("alice", "bob", "carol", "dave", "erin", "frank", "grace")}


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def pki() -> certs.Pki:
    return certs.make_pki()


@pytest.fixture(scope="module")
def servers(demo_model, pki, log_dir, tmp_path_factory):
    """Both servers, started at the same time (each spends most of its start importing TF)."""
    home = tmp_path_factory.mktemp("security")
    config = home / "ssl.config"
    config.write_text(certs.ssl_config_text(pki, client_verify=True))
    config.chmod(0o600)
    tls = ServerProcess([f"--model_name={demo_model.name}",
                         f"--model_base_path={demo_model.base_path}",
                         f"--ssl_config_file={config}",
                         f"--rate_limit_requests_per_second={RATE}",
                         f"--rate_limit_burst={BURST}"], log_dir, "tls")
    tokens = home / "tokens"
    tokens.write_text("# clients of the security tests\n\n" + "\n".join(TOKENS.values()) + "\n")
    tokens.chmod(0o600)
    monitoring = home / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n')
    auth = ServerProcess([f"--model_name={demo_model.name}",
                          f"--model_base_path={demo_model.base_path}",
                          f"--auth_token_file={tokens}", "--auth_exempt=health,metrics",
                          "--auth_token_file_poll_wait_seconds=0.5",
                          f"--monitoring_config_file={monitoring}",
                          "--enable_grpc_healthcheck_service=true",
                          "--rest_api_enable_cors_support=true",
                          f"--rate_limit_requests_per_second={RATE}",
                          f"--rate_limit_burst={BURST}"], log_dir, "auth")
    auth.token_file = tokens
    with ThreadPoolExecutor(2) as pool:
        started = [pool.submit(proc.start) for proc in (tls, auth)]
    try:
        for future in started:
            future.result()
        yield tls, auth
    finally:
        tls.stop()
        auth.stop()


@pytest.fixture(scope="module")
def tls_server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def auth_server(servers):
    return servers[1]


def client_context(pki: certs.Pki, client: certs.KeyCert | None, tmp_path) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=pki.ca.cert.decode())
    if client is not None:
        (tmp_path / "client.pem").write_bytes(client.cert + client.key)
        context.load_cert_chain(tmp_path / "client.pem")
    return context


def https(server, context, method, path, body=None, headers=None, source="127.0.0.1"):
    conn = http.client.HTTPSConnection("127.0.0.1", server.rest_port, context=context, timeout=30,
                                       source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def plain(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def predict_body(model) -> bytes:
    return json.dumps({"instances": model.instances}).encode()


def grpc_predict_request(model):
    from tensorflow_serving.apis import predict_pb2

    from serving.tensor_proto import from_ndarray

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model.name
    request.model_spec.signature_name = "single"  # x float32[-1,3] -> y float32[-1]
    from_ndarray(np.array([[1.0, 2.0, 3.0]], dtype=np.float32), request.inputs["x"])
    return request


def prediction_stub(channel):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def bearer(name: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def rpc_code(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=20, **kwargs)
    return info.value.code()


# ------------------------------------------------------------------ TLS


def test_grpc_over_tls_with_client_certificate(tls_server, pki, demo_model):
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert,
                                               private_key=pki.client.key,
                                               certificate_chain=pki.client.cert)
    with grpc.secure_channel(tls_server.grpc_target, credentials) as channel:
        response = prediction_stub(channel).Predict(grpc_predict_request(demo_model), timeout=30)
    y = np.frombuffer(response.outputs["y"].tensor_content, dtype=np.float32) \
        if response.outputs["y"].tensor_content else np.array(response.outputs["y"].float_val)
    assert y.shape == (1,) and np.isfinite(y).all()
    assert response.model_spec.version.value == demo_model.version


@pytest.mark.parametrize("who", ["no certificate", "stranger's certificate", "plaintext"])
def test_grpc_refuses_clients_without_a_verified_certificate(tls_server, pki, demo_model, who):
    if who == "plaintext":
        channel = grpc.insecure_channel(tls_server.grpc_target)
    else:
        client = pki.stranger_client if who == "stranger's certificate" else None
        channel = grpc.secure_channel(tls_server.grpc_target, grpc.ssl_channel_credentials(
            root_certificates=pki.ca.cert, private_key=client.key if client else None,
            certificate_chain=client.cert if client else None))
    with channel:
        code = rpc_code(prediction_stub(channel).Predict, grpc_predict_request(demo_model))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_rest_over_https_with_client_certificate(tls_server, pki, demo_model, tmp_path):
    context = client_context(pki, pki.client, tmp_path)
    status, headers, body = https(tls_server, context, "POST",
                                  f"/v1/models/{demo_model.name}:predict", predict_body(demo_model))
    assert status == 200, body
    assert len(json.loads(body)["predictions"]) == len(demo_model.instances)
    status, _, body = https(tls_server, context, "GET", f"/v1/models/{demo_model.name}")
    assert status == 200 and b"AVAILABLE" in body


@pytest.mark.parametrize("who", ["no certificate", "stranger's certificate"])
def test_https_refuses_clients_without_a_verified_certificate(tls_server, pki, demo_model,
                                                              tmp_path, who):
    client = pki.stranger_client if who == "stranger's certificate" else None
    context = client_context(pki, client, tmp_path)
    # TLS 1.3 reports the refused certificate on the client's first read, not in the handshake.
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        https(tls_server, context, "GET", f"/v1/models/{demo_model.name}")


def test_plain_http_to_the_tls_port_gets_no_http_answer(tls_server, demo_model):
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain(tls_server, "GET", f"/v1/models/{demo_model.name}")


def test_rate_limit_by_peer_address(tls_server, pki, demo_model, tmp_path):
    """Without tokens the client is its IP address: a burst from 127.0.0.2 is throttled while
    127.0.0.3 keeps being served, interleaved."""
    context = client_context(pki, pki.client, tmp_path)
    path, body = f"/v1/models/{demo_model.name}:predict", predict_body(demo_model)
    statuses, others, retry_after = [], [], None
    start = time.monotonic()
    for i in range(3 * BURST):
        status, headers, _ = https(tls_server, context, "POST", path, body, source="127.0.0.2")
        statuses.append(status)
        if status == 429:
            retry_after = headers.get("Retry-After")
            others.append(https(tls_server, context, "POST", path, body, source="127.0.0.3")[0])
    elapsed = time.monotonic() - start
    admitted = statuses.count(200)
    assert statuses.count(429) >= 1 and admitted + statuses.count(429) == len(statuses), statuses
    assert BURST <= admitted <= BURST + RATE * elapsed + 1, (statuses, elapsed)
    assert retry_after is not None and int(retry_after) >= 1
    assert others and others.count(200) >= min(len(others), BURST), others


# ------------------------------------------------------------------ tokens


def test_rest_needs_a_bearer_token(auth_server, demo_model):
    path, body = f"/v1/models/{demo_model.name}:predict", predict_body(demo_model)
    status, headers, text = plain(auth_server, "POST", path, body)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="pipewright-serving"'
    assert headers["Content-Type"] == "application/json"
    assert list(json.loads(text)) == ["error"] and "bearer token" in json.loads(text)["error"]

    status, headers, text = plain(auth_server, "POST", path, body,
                                 {"Authorization": "Bearer not-a-token-of-this-server"})
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert json.loads(text) == {"error": "Invalid bearer token"}
    # Nothing about the models leaks before authentication: an unknown model is 401 too.
    assert plain(auth_server, "GET", "/v1/models/nonexistent/metadata")[0] == 401

    status, _, text = plain(auth_server, "POST", path, body, bearer("alice"))
    assert status == 200, text
    assert len(json.loads(text)["predictions"]) == len(demo_model.instances)
    status, _, text = plain(auth_server, "GET", f"/v1/models/{demo_model.name}/metadata",
                           headers={"Authorization": "bearer " + TOKENS["alice"]})  # scheme: any case
    assert status == 200 and b"signature_def" in text


def _peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_refused_request_body_is_not_buffered(auth_server, demo_model):
    """The token is checked once the headers are in: a refused request's body (100 MiB here)
    is read past, never held in memory."""
    size, chunk = 100 << 20, b"x" * (1 << 20)
    before = _peak_rss_bytes(auth_server.proc.pid)
    conn = http.client.HTTPConnection("127.0.0.1", auth_server.rest_port, timeout=60)
    try:
        conn.putrequest("POST", f"/v1/models/{demo_model.name}:predict")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        for _ in range(size // len(chunk)):
            conn.send(chunk)
        response = conn.getresponse()
        assert response.status == 401 and b"bearer token" in response.read()
    finally:
        conn.close()
    grown = _peak_rss_bytes(auth_server.proc.pid) - before
    assert grown < size // 4, f"peak RSS grew by {grown} bytes"


def test_cors_preflight_needs_no_token_and_allows_sending_one(auth_server, demo_model):
    """Browsers send a preflight without credentials; its answer must let them send the
    Authorization header, and the 401 itself carries CORS headers so the page can read it."""
    path = f"/v1/models/{demo_model.name}:predict"
    status, headers, _ = plain(auth_server, "OPTIONS", path,
                               headers={"Origin": "https://app.example"})
    assert status == 200
    assert headers["Access-Control-Allow-Headers"] == "Content-Type, Authorization"
    status, headers, _ = plain(auth_server, "POST", path, predict_body(demo_model),
                               {"Origin": "https://app.example"})
    assert status == 401 and headers["Access-Control-Allow-Origin"] == "*"


def test_grpc_needs_a_bearer_token(auth_server, demo_model):
    request = grpc_predict_request(demo_model)
    with grpc.insecure_channel(auth_server.grpc_target) as channel:
        stub = prediction_stub(channel)
        assert rpc_code(stub.Predict, request) == grpc.StatusCode.UNAUTHENTICATED
        assert rpc_code(stub.Predict, request, metadata=[("authorization", "Bearer wrong")]) \
            == grpc.StatusCode.UNAUTHENTICATED
        response = stub.Predict(request, timeout=30,
                                metadata=[("authorization", f"Bearer {TOKENS['bob']}")])
        assert response.model_spec.version.value == demo_model.version


def test_health_and_metrics_are_exempt(auth_server, demo_model):
    from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc)

    from serving import protos

    status, _, text = plain(auth_server, "GET", f"/v1/models/{demo_model.name}")
    assert status == 200 and b"AVAILABLE" in text
    status, _, text = plain(auth_server, "GET", "/monitoring/prometheus/metrics")
    assert status == 200
    # The refusals of the other tests are counted, by transport and reason.
    assert b':pipewright:serving:admission_rejected_count{entrypoint="REST",reason="unauthenticated"}' \
        in text
    with grpc.insecure_channel(auth_server.grpc_target) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=protos.HealthCheckRequest.SerializeToString,
                                    response_deserializer=protos.HealthCheckResponse.FromString)
        assert check(protos.HealthCheckRequest(service=""), timeout=10).status == 1  # SERVING
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = demo_model.name
        (entry,) = models.GetModelStatus(request, timeout=10).model_version_status
        assert entry.version == demo_model.version
        # Metadata is not health: it needs a token.
        from tensorflow_serving.apis import get_model_metadata_pb2
        metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata.model_spec.name = demo_model.name
        assert rpc_code(prediction_stub(channel).GetModelMetadata, metadata) \
            == grpc.StatusCode.UNAUTHENTICATED


def test_rate_limit_by_token_across_rest_and_grpc(auth_server, demo_model):
    """One token is one client on both transports: carol's REST burst runs out of her bucket,
    her next gRPC call is RESOURCE_EXHAUSTED, and dave, served in between, is not affected."""
    path, body = f"/v1/models/{demo_model.name}:predict", predict_body(demo_model)
    statuses, dave = [], []
    conn = http.client.HTTPConnection("127.0.0.1", auth_server.rest_port, timeout=30)
    start = time.monotonic()
    try:
        for _ in range(3 * BURST):  # one keep-alive connection: as fast as the server answers
            conn.request("POST", path, body=body, headers=bearer("carol"))
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            if response.status == 429:
                retry_after = response.getheader("Retry-After")
                dave.append(plain(auth_server, "POST", path, body, bearer("dave"))[0])
    finally:
        conn.close()
    elapsed = time.monotonic() - start
    admitted = statuses.count(200)
    assert statuses.count(429) >= 1 and admitted + statuses.count(429) == len(statuses), statuses
    assert BURST <= admitted <= BURST + RATE * elapsed + 1, (statuses, elapsed)
    assert int(retry_after) >= 1
    assert dave and dave.count(200) >= min(len(dave), BURST), dave

    with grpc.insecure_channel(auth_server.grpc_target) as channel:
        stub = prediction_stub(channel)
        request = grpc_predict_request(demo_model)
        with pytest.raises(grpc.RpcError) as info:
            for _ in range(BURST + 1):
                stub.Predict(request, timeout=30,
                             metadata=[("authorization", f"Bearer {TOKENS['carol']}")])
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Rate limit exceeded" in info.value.details()
        assert int(dict(info.value.trailing_metadata())["retry-after"]) >= 1
        stub.Predict(request, timeout=30, metadata=[("authorization", f"Bearer {TOKENS['erin']}")])


def _replace(path, text: str) -> None:
    """Write path atomically, as a secret manager would (temp file, then rename)."""
    temp = path.with_name(path.name + ".new")
    temp.write_text(text)
    temp.chmod(0o600)
    temp.replace(path)


def _status_with(server, model, token: str) -> int:
    return plain(server, "GET", f"/v1/models/{model.name}/metadata",
                 headers={"Authorization": f"Bearer {token}"})[0]


def _wait_for(predicate, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_token_rotation_without_restart(auth_server, demo_model):
    """--auth_token_file_poll_wait_seconds: grace's token is revoked and heidi's added by
    rewriting the file; then a broken file (no tokens) is logged and the last good tokens stay."""
    heidi = "heidi-" + "fedcba9876543210" * 2
    assert _status_with(auth_server, demo_model, heidi) == 401
    kept = [token for name, token in TOKENS.items() if name != "grace"]
    _replace(auth_server.token_file, "\n".join(kept + [heidi]) + "\n")
    assert _wait_for(lambda: _status_with(auth_server, demo_model, heidi) == 200)
    assert _status_with(auth_server, demo_model, TOKENS["grace"]) == 401
    log_text = auth_server.log_path.read_text()
    assert f"Reloaded 7 bearer tokens from --auth_token_file {auth_server.token_file}" in log_text

    _replace(auth_server.token_file, "# everything revoked by mistake\n")
    assert _wait_for(lambda: "Keeping the last good bearer tokens" in auth_server.log_path.read_text())
    assert f"--auth_token_file {auth_server.token_file}: no tokens" in auth_server.log_path.read_text()
    assert _status_with(auth_server, demo_model, heidi) == 200
    assert _status_with(auth_server, demo_model, "still-not-a-token-0123456789") == 401


def test_tokens_never_reach_the_log(auth_server, demo_model):
    plain(auth_server, "POST", f"/v1/models/{demo_model.name}:predict", predict_body(demo_model),
         {"Authorization": "Bearer leaked-if-logged-0123456789"})
    log_text = auth_server.log_path.read_text()
    assert "bearer tokens: 7" in log_text  # the server said what is on...
    for token in list(TOKENS.values()) + ["leaked-if-logged-0123456789", "heidi-fedcba98"]:
        assert token not in log_text  # ...and never a token


# ------------------------------------------------------------------ refusing to start


def _start_fails(args: list[str], tmp_path) -> str:
    """`python -m serving` with args must exit non-zero at start; returns its stderr. A server
    that starts anyway is stopped as soon as it says it is ready, and fails the test."""
    import os

    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(tmp_path / "stderr", "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "serving", f"--port={free_port()}",
                                 f"--rest_api_port={free_port()}", f"--model_base_path={tmp_path}",
                                 *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr)
        try:
            ready = b"ready" in proc.stdout.readline()
        finally:
            if proc.poll() is None:
                proc.kill()
            code = proc.wait(timeout=60)
            proc.stdout.close()
    text = (tmp_path / "stderr").read_text()
    assert not ready and code != 0, text
    return text


@pytest.mark.parametrize("case", ["missing", "empty", "comments only", "short token"])
def test_bad_token_file_stops_the_server(tmp_path, case):
    tokens = tmp_path / "tokens"
    if case != "missing":
        tokens.write_text({"empty": "", "comments only": "# nobody\n\n",
                           "short token": "# ok\nshort\n"}[case])
    stderr = _start_fails([f"--auth_token_file={tokens}"], tmp_path)
    assert f"--auth_token_file {tokens}" in stderr, stderr
    if case == "short token":
        assert f"{tokens}:2: token shorter than 16 characters" in stderr and "short\n" not in stderr


@pytest.mark.parametrize("case", ["missing", "unparsable", "key mismatch", "verify without ca"])
def test_bad_ssl_config_stops_the_server(tmp_path, pki, case):
    config = tmp_path / "ssl.config"
    quoted = {k: '"' + v.decode().replace("\n", "\\n") + '"' for k, v in
              {"key": pki.server.key, "cert": pki.server.cert, "other": pki.client.key}.items()}
    text = {"unparsable": "server_key: [\n",
            "key mismatch": f"server_key: {quoted['other']}\nserver_cert: {quoted['cert']}\n",
            "verify without ca": f"server_key: {quoted['key']}\nserver_cert: {quoted['cert']}\n"
                                 "client_verify: true\n"}.get(case)
    if text is not None:
        config.write_text(text)
    stderr = _start_fails([f"--ssl_config_file={config}"], tmp_path)
    assert str(config) in stderr, stderr
    expected = {"missing": "No such file or directory", "unparsable": "Invalid protobuf file",
                "key mismatch": "server_key: does not match server_cert",
                "verify without ca": "client_verify: true needs custom_ca"}[case]
    assert expected in stderr, stderr
