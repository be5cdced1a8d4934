"""Model lifecycle: version swaps under load, corrupt versions, half-written directories, policies."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import grpc
import pytest
import requests

from serving import demo_model as dm
from serving_harness import ServerProcess


@pytest.fixture(scope="module")
def base_path(demo_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("lifecycle") / "demo"
    base.mkdir()
    shutil.copytree(demo_model_dir / "1", base / "1")
    return base


@pytest.fixture(scope="module")
def server(base_path, log_dir, tmp_path_factory):
    monitoring = tmp_path_factory.mktemp("lifecycle_config") / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }\n")
    proc = ServerProcess([f"--model_name=demo", f"--model_base_path={base_path}",
                          "--file_system_poll_wait_seconds=0.2", "--max_num_load_retries=0",
                          f"--monitoring_config_file={monitoring}"], log_dir, "lifecycle").start()
    yield proc
    proc.stop()


def publish(base_path, version: int, source) -> None:
    """What the Pusher does: write a complete directory aside, then rename it into place."""
    staging = base_path / f".tmp-{version}"
    if callable(source):
        source(staging)
    else:
        shutil.copytree(source, staging)
    os.rename(staging, base_path / str(version))


def status(server) -> dict[int, tuple[str, str]]:
    body = requests.get(f"{server.rest}/v1/models/demo", timeout=10).json()
    return {int(s["version"]): (s["state"], s["status"]["error_code"]) for s in body["model_version_status"]}


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def grpc_predict_version(stub, request) -> int:
    return stub.Predict(request, timeout=30).model_spec.version.value


@pytest.fixture(scope="module")
def grpc_client(server):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(server.grpc_target)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "demo"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0, 2.0, 3.0]], tf.float32))
    request.inputs["count"].CopyFrom(tf.make_tensor_proto([2], tf.int64))
    request.inputs["tag"].CopyFrom(tf.make_tensor_proto([b"a"]))
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel), request
    channel.close()


def test_half_written_versions_are_ignored(server, base_path):
    shutil.copytree(base_path / "1", base_path / ".tmp-9")
    (base_path / "not-a-version").mkdir()
    time.sleep(1.0)
    assert status(server) == {1: ("AVAILABLE", "OK")}
    shutil.rmtree(base_path / ".tmp-9")


def test_version_swap_under_load_loses_no_request(server, base_path, grpc_client):
    stub, request = grpc_client
    body = json.dumps({"instances": dm.SAMPLE_INSTANCES})
    stop = threading.Event()
    failures: list = []
    seen_versions: set[int] = set()
    counts = {"rest": 0, "grpc": 0}

    def rest_worker():
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.post(f"{server.rest}/v1/models/demo:predict", data=body, timeout=30)
                if r.status_code != 200:
                    failures.append(("rest", r.status_code, r.text))
                counts["rest"] += 1
            except Exception as e:  # pragma: no cover - reported below
                failures.append(("rest", repr(e)))

    def grpc_worker():
        while not stop.is_set():
            try:
                seen_versions.add(grpc_predict_version(stub, request))
                counts["grpc"] += 1
            except grpc.RpcError as e:
                failures.append(("grpc", e.code(), e.details()))

    workers = [threading.Thread(target=rest_worker) for _ in range(2)] + [threading.Thread(target=grpc_worker)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.5)
        publish(base_path, 2, base_path / "1")
        wait_for(lambda: status(server).get(2) == ("AVAILABLE", "OK") and 2 in seen_versions)
        wait_for(lambda: status(server).get(1, ("",))[0] == "END")
        time.sleep(0.5)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert failures == []
    assert {1, 2} <= seen_versions
    assert counts["rest"] > 20 and counts["grpc"] > 20
    assert status(server) == {2: ("AVAILABLE", "OK"), 1: ("END", "OK")}


def test_corrupt_version_leaves_the_old_one_serving(server, base_path, grpc_client):
    stub, request = grpc_client

    def corrupt(path):
        shutil.copytree(base_path / "2", path)
        (path / "saved_model.pb").write_bytes(b"\x08\x01garbage")

    publish(base_path, 3, corrupt)
    state = wait_for(lambda: status(server).get(3, ("",))[0] == "END" and status(server)[3])
    assert state[1] != "OK"
    body = requests.get(f"{server.rest}/v1/models/demo/versions/3", timeout=10).json()
    assert body["model_version_status"][0]["status"]["error_message"]
    time.sleep(1.0)  # several polls later, the failed latest version still holds version 2 up
    assert status(server)[2] == ("AVAILABLE", "OK")
    assert grpc_predict_version(stub, request) == 2
    r = requests.post(f"{server.rest}/v1/models/demo:predict",
                      data=json.dumps({"instances": dm.SAMPLE_INSTANCES}), timeout=30)
    assert r.status_code == 200


def test_version_policies_via_reload(server, base_path, grpc_client):
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    from tensorflow_serving.config import model_server_config_pb2

    stub, request = grpc_client
    channel = grpc.insecure_channel(server.grpc_target)
    models = model_service_pb2_grpc.ModelServiceStub(channel)

    def reload(policy_text: str, labels=None):
        config = model_server_config_pb2.ModelServerConfig()
        model = config.model_config_list.config.add(name="demo", base_path=str(base_path),
                                                    model_platform="tensorflow")
        from google.protobuf import text_format
        text_format.Parse(policy_text, model.model_version_policy)
        for label, version in (labels or {}).items():
            model.version_labels[label] = version
        models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                         timeout=120)

    reload("specific { versions: 1 versions: 2 }")
    wait_for(lambda: status(server).get(1) == ("AVAILABLE", "OK"))
    reload("specific { versions: 1 versions: 2 }", labels={"stable": 1, "canary": 2})
    request.model_spec.version_label = "stable"
    assert grpc_predict_version(stub, request) == 1
    request.model_spec.version_label = "canary"
    assert grpc_predict_version(stub, request) == 2
    request.model_spec.ClearField("version_label")
    assert grpc_predict_version(stub, request) == 2  # Latest among those serving
    reload("latest { num_versions: 1 }")
    wait_for(lambda: status(server).get(1, ("",))[0] == "END")
    assert status(server)[2] == ("AVAILABLE", "OK")
    channel.close()


def test_warmup_was_replayed(server):
    text = requests.get(f"{server.rest}/monitoring/prometheus/metrics", timeout=10).text
    assert ':tensorflow:serving:model_warmup_latency_count{model_path="' in text
    assert 'status="OK"}' in text
    assert ':pipewright:serving:loaded_versions{model_name="demo"} 1' in text
