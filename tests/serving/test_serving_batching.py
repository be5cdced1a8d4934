"""Server-side batching: concurrent requests are merged, answers stay per request."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest
import requests

from serving import demo_model as dm
from serving_harness import ServerProcess


@pytest.fixture(scope="module")
def server(demo_model, log_dir, tmp_path_factory):
    config_dir = tmp_path_factory.mktemp("batching_config")
    (config_dir / "batching.config").write_text(
        "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 5000 }\n"
        "max_enqueued_batches { value: 1000 }\nnum_batch_threads { value: 1 }\n"
        "allowed_batch_sizes: 4\nallowed_batch_sizes: 8\n")
    (config_dir / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    proc = ServerProcess(["--model_name=demo", f"--model_base_path={demo_model.base_path}",
                          "--enable_batching=true",
                          f"--batching_parameters_file={config_dir / 'batching.config'}",
                          f"--monitoring_config_file={config_dir / 'monitoring.config'}"],
                         log_dir, "batching").start()
    yield proc
    proc.stop()


def test_concurrent_requests_are_batched_and_answered_individually(server):
    url = f"{server.rest}/v1/models/demo:predict"
    failures, results = [], {}

    def client(k: int):
        session = requests.Session()
        for j in range(10):
            instance = {"x": [float(k), float(j), 1.0], "count": k * 100 + j, "tag": f"t{k}-{j}"}
            r = session.post(url, data=json.dumps({"instances": [instance]}), timeout=30)
            if r.status_code != 200:
                failures.append(r.text)
                continue
            results[(k, j)] = (instance, r.json()["predictions"][0])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(results) == 120
    for instance, prediction in results.values():
        expected = dm.expected_outputs([instance["x"]], [instance["count"]], [instance["tag"]])
        assert prediction["doubled"] == instance["count"] * 2
        assert prediction["total"] == pytest.approx(float(expected["total"][0]))
        np.testing.assert_allclose(prediction["scores"], expected["scores"][0], rtol=1e-6)
    metrics = requests.get(f"{server.rest}/monitoring/prometheus/metrics", timeout=10).text
    batches = int(re.search(r':pipewright:serving:batch_size_count\{signature="serving_default"\} (\d+)',
                            metrics).group(1))
    assert batches < 120  # some requests shared a batch


def test_task_larger_than_max_batch_size(server):
    r = requests.post(f"{server.rest}/v1/models/demo:predict",
                      data=json.dumps({"instances": dm.SAMPLE_INSTANCES * 5}), timeout=30)
    assert r.status_code == 400
    assert r.json()["error"] == "Task size 10 is larger than maximum input batch size 8"


def test_classify_through_the_batcher(server):
    r = requests.post(f"{server.rest}/v1/models/demo:classify",
                      data=json.dumps({"signature_name": "classify", "examples": dm.SAMPLE_EXAMPLES}),
                      timeout=30)
    assert r.status_code == 200 and len(r.json()["results"]) == 2
