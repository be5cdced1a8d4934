"""Request logging: logging_config / --request_log_* -> gzip TFRecords of PredictionLog."""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from serving_harness import ServedModel, ServerProcess


def grpc_predict_request(model: ServedModel, version: int | None = None):
    from tensorflow_serving.apis import predict_pb2

    from serving.tensor_proto import from_ndarray

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model.name
    if version is not None:
        request.model_spec.version.value = version
    from_ndarray(np.array([i["x"] for i in model.instances], np.float32), request.inputs["x"])
    from_ndarray(np.array([i["count"] for i in model.instances], np.int64), request.inputs["count"])
    tags = np.empty(len(model.instances), dtype=object)
    tags[:] = [i["tag"].encode() for i in model.instances]
    from_ndarray(tags, request.inputs["tag"])
    return request


def read_logs(root: Path) -> tuple[list, list[Path]]:
    """(PredictionLogs of every closed file under root, oldest file first; the files)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    files = sorted((p for p in root.rglob("*.tfrecord.gz") if not p.name.startswith(".")),
                   key=lambda p: p.name.rsplit("-", 1)[1])  # by sequence number
    entries = []
    for path in files:
        for record in tf.data.TFRecordDataset(str(path), compression_type="GZIP"):
            entries.append(prediction_log_pb2.PredictionLog.FromString(record.numpy()))
    return entries, files


def dot_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file()]


def fields(entry):
    from serving.request_log import request_log_fields
    return request_log_fields(entry)


def metric(server: ServerProcess, name: str) -> dict[str, float]:
    text = requests.get(f"{server.rest}/monitoring/prometheus/metrics", timeout=10).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(name)}


@pytest.fixture
def monitoring(tmp_path) -> Path:
    path = tmp_path / "monitoring.config"
    path.write_text("prometheus_config { enable: true }\n")
    return path


@pytest.fixture(scope="module")
def stub():
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    return prediction_service_pb2_grpc.PredictionServiceStub


def test_sampled_rest_and_grpc_requests_are_logged_at_the_sampling_rate(demo_model, log_dir, tmp_path,
                                                                          stub):
    logs = tmp_path / "request_logs"
    server = ServerProcess([f"--model_name={demo_model.name}", f"--model_base_path={demo_model.base_path}",
                            f"--request_log_dir={logs}", "--request_log_sampling_rate=0.25"],
                           log_dir, "request_log_sampling").start()
    n, rate = 400, 0.25
    try:
        url = f"{server.rest}/v1/models/{demo_model.name}:predict"
        body = json.dumps({"instances": demo_model.instances})
        with grpc.insecure_channel(server.grpc_target) as channel:
            predict = stub(channel).Predict
            request = grpc_predict_request(demo_model)
            for i in range(n // 2):
                r = requests.post(url, data=body, headers={"X-Request-Id": f"rest-{i}"}, timeout=30)
                assert r.status_code == 200 and r.headers["X-Request-Id"] == f"rest-{i}"
                _, call = predict.with_call(request, metadata=[("x-request-id", f"grpc-{i}")], timeout=30)
                assert dict(call.initial_metadata())["x-request-id"] == f"grpc-{i}"
    finally:
        server.stop()  # SIGTERM: the writer writes what is queued and closes its files

    entries, files = read_logs(logs)
    assert files and all(f.parent == logs / demo_model.name / str(demo_model.version) for f in files)
    assert all(re.fullmatch(r"requests-\d{8}T\d{12}Z-\d{6}\.tfrecord\.gz", f.name) for f in files)
    assert not dot_files(logs)
    # Binomial(400, 0.25): mean 100, sd 8.7; 5 sd either side fails once in ~3.5 million runs.
    sd = math.sqrt(n * rate * (1 - rate))
    assert n * rate - 5 * sd <= len(entries) <= n * rate + 5 * sd, len(entries)
    ids = [fields(e).request_id for e in entries]
    assert len(set(ids)) == len(ids)
    by_transport = {"REST": [], "GRPC": []}
    for entry, request_id in zip(entries, ids):
        extra = fields(entry)
        assert entry.WhichOneof("log_type") == "predict_log"
        assert request_id.startswith("rest-" if extra.transport == "REST" else "grpc-")
        by_transport[extra.transport].append(entry)
        meta = entry.log_metadata
        assert (meta.model_spec.name, meta.model_spec.version.value, meta.model_spec.signature_name) == (
            demo_model.name, demo_model.version, "serving_default")
        assert meta.sampling_config.sampling_rate == pytest.approx(rate)
        assert list(meta.saved_model_tags) == ["serve"] and meta.timestamp_secs > 0
        assert entry.predict_log.response.model_spec.version.value == demo_model.version
        assert extra.error_code == 0
    assert by_transport["REST"] and by_transport["GRPC"]
    # A REST request is logged as the PredictRequest the data plane answered.
    from serving.tensor_proto import to_ndarray
    for entry in by_transport["REST"][:3] + by_transport["GRPC"][:3]:
        request = entry.predict_log.request
        np.testing.assert_array_equal(to_ndarray(request.inputs["x"], "x"),
                                      np.array([i["x"] for i in demo_model.instances], np.float32))
        assert set(entry.predict_log.response.outputs) == {"scores", "total", "doubled", "tag_bytes"}


def test_generated_request_ids_failures_and_the_config_file_form(demo_model, log_dir, tmp_path,
                                                                  monitoring, stub):
    logs = tmp_path / "logs"
    config = tmp_path / "models.config"
    config.write_text(f"""model_config_list {{ config {{
      name: "{demo_model.name}" base_path: "{demo_model.base_path}" model_platform: "tensorflow"
      logging_config {{
        log_collector_config {{ type: "tfrecord" filename_prefix: "{logs}/demo_requests" }}
        sampling_config {{ sampling_rate: 1.0 }}
      }}
    }} }}
    """)
    server = ServerProcess([f"--model_config_file={config}", f"--monitoring_config_file={monitoring}"],
                           log_dir, "request_log_config").start()
    try:
        url = f"{server.rest}/v1/models/{demo_model.name}"
        r = requests.post(f"{url}:predict", data=json.dumps({"instances": demo_model.instances}), timeout=30)
        assert r.status_code == 200
        rest_id = r.headers["X-Request-Id"]
        with grpc.insecure_channel(server.grpc_target) as channel:
            predict = stub(channel).Predict
            _, call = predict.with_call(grpc_predict_request(demo_model), timeout=30)
            grpc_id = dict(call.initial_metadata())["x-request-id"]
            with pytest.raises(grpc.RpcError) as error:
                predict(grpc_predict_request(demo_model, version=7), metadata=[("x-request-id", "gone")],
                        timeout=30)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert re.fullmatch(r"[0-9a-f]{32}", rest_id) and re.fullmatch(r"[0-9a-f]{32}", grpc_id)
        bad = {"instances": [{"x": [1.0, 2.0], "count": 2, "tag": "a"}]}  # x is [-1, 3]
        r = requests.post(f"{url}:predict", data=json.dumps(bad), headers={"X-Request-Id": "bad-1"}, timeout=30)
        assert r.status_code == 400 and r.headers["X-Request-Id"] == "bad-1"
        r = requests.post(f"{url}:predict", data=b"{not json", headers={"X-Request-Id": "bad-2"}, timeout=30)
        assert r.status_code == 400
        failed = metric(server, ":pipewright:serving:request_log_failed_requests")
        assert failed == {
            ':pipewright:serving:request_log_failed_requests{model_name="demo",version="unresolved",status="NOT_FOUND"}': 1,
            ':pipewright:serving:request_log_failed_requests{model_name="demo",version="1",status="INVALID_ARGUMENT"}': 1,
            # the body that is not JSON never reached a version
            ':pipewright:serving:request_log_failed_requests{model_name="demo",version="unresolved",status="INVALID_ARGUMENT"}': 1,
        }
    finally:
        server.stop()

    entries, files = read_logs(logs)
    assert {f.parent for f in files} == {logs / "demo" / "1", logs / "demo" / "unresolved"}
    assert all(f.name.startswith("demo_requests-") for f in files)
    by_id = {fields(e).request_id: e for e in entries}
    assert set(by_id) == {rest_id, grpc_id, "gone", "bad-1"}  # the body that is not JSON: no proto
    assert fields(by_id[rest_id]).transport == "REST" and fields(by_id[grpc_id]).transport == "GRPC"
    gone = by_id["gone"]
    assert not gone.predict_log.HasField("response") and not gone.log_metadata.model_spec.HasField("version")
    assert (fields(gone).error_code, fields(gone).error_message) == (
        5, "Servable not found for request: Specific(demo, 7)")
    bad = by_id["bad-1"]
    assert not bad.predict_log.HasField("response") and bad.log_metadata.model_spec.version.value == 1
    assert fields(bad).error_code == 3 and fields(bad).error_message
    assert [d.size for d in bad.predict_log.request.inputs["x"].tensor_shape.dim] == [1, 2]


def test_rotation_by_size_and_the_byte_budget(demo_model, log_dir, tmp_path, monitoring):
    logs = tmp_path / "logs"
    budget = 6000
    server = ServerProcess([f"--model_name={demo_model.name}", f"--model_base_path={demo_model.base_path}",
                            f"--request_log_dir={logs}", "--request_log_sampling_rate=1",
                            "--request_log_max_file_bytes=2000", f"--request_log_max_total_bytes={budget}",
                            f"--monitoring_config_file={monitoring}"], log_dir, "request_log_rotation").start()
    n = 120
    try:
        url = f"{server.rest}/v1/models/{demo_model.name}:predict"
        body = json.dumps({"instances": demo_model.instances})
        for i in range(n):
            r = requests.post(url, data=body, headers={"X-Request-Id": f"r{i:04d}"}, timeout=30)
            assert r.status_code == 200
        deadline = time.monotonic() + 60
        while metric(server, ":pipewright:serving:request_log_records").get(
                ':pipewright:serving:request_log_records{model_name="demo",version="1"}', 0) < n:
            assert time.monotonic() < deadline
            time.sleep(0.05)  # the writer thread catches up (the queue holds them all)
        written = metric(server, ":pipewright:serving:request_log_bytes")
        removed = metric(server, ":pipewright:serving:request_log_removed_files")
    finally:
        server.stop()

    entries, files = read_logs(logs)
    assert len(files) >= 3  # several closed files survived, each ~2000 record bytes
    assert not dot_files(logs)
    assert sum(f.stat().st_size for f in files) <= budget
    assert written[':pipewright:serving:request_log_bytes{model_name="demo",version="1"}'] > 5 * budget
    assert removed[":pipewright:serving:request_log_removed_files"] > 0
    ids = [fields(e).request_id for e in entries]
    # The oldest files went: what is left is the newest requests, in order, up to the last.
    assert ids == [f"r{i:04d}" for i in range(n - len(ids), n)]


def test_a_stalled_writer_drops_and_counts_but_never_fails_a_request(data_plane, demo_model, tmp_path):
    from tensorflow_serving.config import model_server_config_pb2

    from serving.data_plane import RequestContext
    from serving.metrics import ServingMetrics
    from serving.request_log import RequestLogger

    stall = threading.Event()
    metrics = ServingMetrics()
    logger = RequestLogger(log_dir=str(tmp_path), metrics=metrics, queue_size=5, hold=stall)
    config = model_server_config_pb2.ModelConfig(name=demo_model.name)
    config.logging_config.sampling_config.sampling_rate = 1.0
    logger.configure([config])
    logger.start()
    waits = []

    def observer(record):  # the logger, timed: it must never wait for the writer
        start = time.perf_counter()
        logger(record)
        waits.append(time.perf_counter() - start)

    data_plane.observers.append(observer)
    try:
        async def send(count):
            for i in range(count):
                response = await data_plane.predict(grpc_predict_request(demo_model),
                                                    RequestContext("GRPC", {"x-request-id": f"s{i}"}))
                assert response.model_spec.version.value == demo_model.version
        asyncio.run(send(30))  # every request answered while the writer is stuck
        assert metrics.value(metrics.request_log_dropped, demo_model.name) == 25
        assert metrics.value(metrics.request_log_records) == 0
        assert len(waits) == 30 and max(waits) < 0.1
    finally:
        data_plane.observers.remove(observer)
        logger.stop()  # releases the writer: it writes the 5 queued records and closes the file
    entries, files = read_logs(tmp_path)
    assert [fields(e).request_id for e in entries] == [f"s{i}" for i in range(5)]
    assert metrics.value(metrics.request_log_records, demo_model.name, "1") == 5
    assert not dot_files(tmp_path)


def test_request_log_flags_and_logging_config_validation(tmp_path):
    from tensorflow_serving.config import model_server_config_pb2

    from serving import config as config_lib
    from serving import request_log
    from serving.errors import ServingError

    base = ["--model_name=m", "--model_base_path=/models/m"]
    options = config_lib.parse_args(base + [f"--request_log_dir={tmp_path}",
                                            "--request_log_sampling_rate=0.5"])
    config_lib.validate_options(options)
    (model,) = config_lib.model_server_config(options).model_config_list.config
    assert (model.logging_config.log_collector_config.type,
            model.logging_config.log_collector_config.filename_prefix,
            model.logging_config.sampling_config.sampling_rate) == ("tfrecord", "requests", 0.5)
    assert request_log.policy_for(model, str(tmp_path)).root == str(tmp_path)
    assert not config_lib.model_server_config(config_lib.parse_args(base)).model_config_list.config[0] \
        .HasField("logging_config")
    for extra, message in [
            (["--request_log_sampling_rate=0.5"], "--request_log_sampling_rate needs --request_log_dir"),
            (["--request_log_dir=/x", "--request_log_sampling_rate=1.5"], "must be in [0, 1]"),
            (["--request_log_dir=/x", "--request_log_queue_size=0"], "--request_log_queue_size must be positive"),
            (["--request_log_dir=/x", "--request_log_sampling_rate=0.5", "--model_config_file=/c"],
             "with --model_config_file give each model a logging_config")]:
        with pytest.raises(ServingError) as error:
            config_lib.validate_options(config_lib.parse_args(base + extra))
        assert message in error.value.message

    model = model_server_config_pb2.ModelConfig(name="m")
    model.logging_config.sampling_config.sampling_rate = 0.1
    model.logging_config.log_collector_config.type = "bigquery"
    with pytest.raises(ServingError) as error:
        request_log.policies([model], str(tmp_path))
    assert (error.value.code_name, error.value.message) == (
        "NOT_FOUND", "Cannot find LogCollector::Factory for type: bigquery")
    model.logging_config.log_collector_config.type = ""
    with pytest.raises(ServingError, match="--request_log_dir is not set"):
        request_log.policies([model], "")
    model.logging_config.log_collector_config.filename_prefix = "/abs/dir/pre"
    policy = request_log.policy_for(model, "")
    assert (policy.root, policy.prefix, policy.sampling_rate) == ("/abs/dir", "pre", pytest.approx(0.1))
    model.logging_config.sampling_config.sampling_rate = 0.0
    assert request_log.policies([model], "") == {}


def test_files_are_closed_by_age_and_renamed_only_when_closed(tmp_path):
    import tensorflow as tf

    from serving.log_files import LogFiles

    now = [1_000_000.0]
    files = LogFiles(max_file_bytes=1 << 20, max_file_age_seconds=60, max_total_bytes=1 << 30,
                     clock=lambda: now[0])
    files.write(str(tmp_path), "a/b", 3, "p", b"one")
    files.write(str(tmp_path), "a/b", 3, "p", b"two")
    directory = tmp_path / "a%2Fb" / "3"
    (temp,) = directory.iterdir()
    assert temp.name.startswith(".p-19700112T134640000000Z-")  # only the temporary name so far
    now[0] += 59
    files.rotate_old()
    assert [p.name.startswith(".") for p in directory.iterdir()] == [True]
    now[0] += 1
    files.rotate_old()
    (closed,) = directory.iterdir()
    assert closed.name == temp.name[1:]
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(closed), compression_type="GZIP")] == [
        b"one", b"two"]
    files.write(str(tmp_path), "a/b", None, "p", b"three")
    files.close_all()
    assert [p.name for p in (tmp_path / "a%2Fb" / "unresolved").iterdir()][0].startswith("p-")
