"""Safe rollout (issue 10), server side: `pipewright serve` reading <base path>/rollout.json.

One server (single-model command line, as `make up` runs it) over two real classifiers that
disagree on a known share of inputs (tests/serving/rollout_models.py); each test writes the
policy it needs, atomically as the Pusher does, and waits for the server to report its
generation on the Prometheus page.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import shutil
import struct
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from rollout_models import (CANDIDATE_THRESHOLD, DISAGREEING_SHARE, GRID, STABLE_THRESHOLD,
                            expected_scores, write_broken_version)
from serving_harness import ServerProcess

MODEL = "clf"
METRICS = "/monitoring/prometheus/metrics"
PROBE_X = 0.55  # stable says class 1, the candidate class 0: an answer names its version
_generation = [0]


def write_rollout(base: Path, **fields) -> int:
    """What the Pusher / controller does: a temp file, then os.replace; a new generation."""
    _generation[0] += 1
    fields.setdefault("generation", _generation[0])
    tmp = base / f".rollout.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(fields))
    os.replace(tmp, base / "rollout.json")
    return fields["generation"]


def metrics(server) -> dict[str, float]:
    text = requests.get(server.rest + METRICS, timeout=10).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def series(name: str, **labels) -> str:
    """A series' key as the page prints it: model_name, version, then the other labels."""
    order = ["model_name", "version"] + [k for k in labels if k not in ("model_name", "version")]
    return name + "{" + ",".join(f'{k}="{labels[k]}"' for k in order if k in labels) + "}"


def delta(before: dict, after: dict, key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout} s")


def wait_generation(server, generation: int) -> None:
    key = series(":pipewright:serving:rollout_generation", model_name=MODEL)
    wait_for(lambda: metrics(server).get(key) == generation, what=f"generation {generation}")


def version_of_scores(x: float, scores) -> int:
    if np.allclose(scores, expected_scores([x], STABLE_THRESHOLD)[0], atol=1e-5):
        return 1
    if np.allclose(scores, expected_scores([x], CANDIDATE_THRESHOLD)[0], atol=1e-5):
        return 2
    raise AssertionError(f"scores {scores} are neither version's at x={x}")


def rest_predict(session, server, x: float, *, path: str = "", headers=None):
    r = session.post(f"{server.rest}/v1/models/{MODEL}{path}:predict",
                     data=json.dumps({"instances": [x]}), headers=headers, timeout=30)
    return r


def grpc_request(x: float, *, version: int | None = None, label: str | None = None):
    from tensorflow_serving.apis import predict_pb2

    from serving.tensor_proto import from_ndarray

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    from_ndarray(np.array([x], np.float32), request.inputs["x"])
    return request


def read_logs(root: Path, since: float = 0.0) -> list:
    """PredictionLogs of the closed files under root modified at or after `since` (TFRecord
    framing read directly: the canary test leaves thousands of records to skip fast)."""
    from tensorflow_serving.apis import prediction_log_pb2

    entries = []
    for path in sorted(p for p in root.rglob("*.tfrecord.gz") if not p.name.startswith(".")):
        if path.stat().st_mtime < since:
            continue
        data = gzip.decompress(path.read_bytes())
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            offset += 12  # length, its masked CRC
            entries.append(prediction_log_pb2.PredictionLog.FromString(data[offset:offset + length]))
            offset += length + 4  # the data's masked CRC
    return entries


@pytest.fixture(scope="module")
def base(rollout_models, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("rollout") / MODEL
    shutil.copytree(rollout_models, base)
    return base


@pytest.fixture(scope="module")
def request_log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rollout_request_log")


@pytest.fixture(scope="module")
def server(base, request_log_dir, log_dir, tmp_path_factory):
    monitoring = tmp_path_factory.mktemp("rollout_config") / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }\n")
    write_rollout(base, strategy="canary", stable_version=1, candidate_version=2,
                  candidate_percent=10)
    proc = ServerProcess([f"--model_name={MODEL}", f"--model_base_path={base}",
                          "--file_system_poll_wait_seconds=0.2", "--max_num_load_retries=0",
                          f"--monitoring_config_file={monitoring}",
                          f"--request_log_dir={request_log_dir}", "--request_log_sampling_rate=1",
                          "--request_log_max_file_age_seconds=0.3"], log_dir, "rollout").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def stub(server):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(server.grpc_target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def test_canary_gets_its_share_of_unpinned_requests_and_none_of_the_pinned(server, base, stub):
    wait_generation(server, write_rollout(base, strategy="canary", stable_version=1,
                                          candidate_version=2, candidate_percent=10))
    n = 5000
    before = metrics(server)

    body = json.dumps({"instances": [PROBE_X]})

    def rest_batch(count):
        # http.client: a tenth of requests' client cost, so 5,000 calls take seconds.
        connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
        got = Counter()
        try:
            for _ in range(count):
                connection.request("POST", f"/v1/models/{MODEL}:predict", body,
                                   {"Content-Type": "application/json"})
                response = connection.getresponse()
                text = response.read()
                assert response.status == 200, text
                got[version_of_scores(PROBE_X, json.loads(text)["predictions"][0])] += 1
        finally:
            connection.close()
        return got

    with ThreadPoolExecutor(4) as pool:
        rest = sum(pool.map(rest_batch, [n // 4] * 4), Counter())
    request = grpc_request(PROBE_X)
    grpc_versions = Counter()
    for start in range(0, n, 50):
        futures = [stub.Predict.future(request, timeout=30) for _ in range(50)]
        for future in futures:
            response = future.result()
            version = response.model_spec.version.value
            # The model_spec names the version whose answer it is.
            from serving.tensor_proto import to_ndarray
            assert version == version_of_scores(PROBE_X, to_ndarray(response.outputs["scores"], "scores")[0])
            grpc_versions[version] += 1
    for got in (rest, grpc_versions):
        assert sum(got.values()) == n and set(got) <= {1, 2}
        assert 0.08 <= got[2] / n <= 0.12, got

    with requests.Session() as session:
        for path in ("/versions/1", "/labels/stable", "/versions/2", "/labels/canary"):
            want = 1 if path in ("/versions/1", "/labels/stable") else 2
            for _ in range(100):
                r = rest_predict(session, server, PROBE_X, path=path)
                assert r.status_code == 200 and version_of_scores(
                    PROBE_X, r.json()["predictions"][0]) == want, (path, r.text)
    for version, label in ((1, None), (None, "stable"), (2, None), (None, "canary")):
        want = version or (1 if label == "stable" else 2)
        for _ in range(100):
            assert stub.Predict(grpc_request(PROBE_X, version=version, label=label),
                                timeout=30).model_spec.version.value == want

    after = metrics(server)
    route = lambda v, r: delta(before, after, series(  # noqa: E731
        ":pipewright:serving:route_count", model_name=MODEL, version=v, route=r))
    assert route(2, "canary") == rest[2] + grpc_versions[2]
    assert route(1, "stable") == rest[1] + grpc_versions[1]
    assert route(1, "pinned") == route(2, "pinned") == 400
    ok = lambda v: delta(before, after, series(  # noqa: E731
        ":pipewright:serving:version_request_count", model_name=MODEL, version=v, status="OK"))
    assert ok(1) == rest[1] + grpc_versions[1] + 400 and ok(2) == rest[2] + grpc_versions[2] + 400
    latency = delta(before, after, series(":pipewright:serving:version_request_latency_count",
                                          model_name=MODEL, version=2))
    assert latency == ok(2)
    # TF Serving's own series are unchanged: one count per call, whatever the version.
    assert delta(before, after, series(":tensorflow:serving:request_count",
                                       model_name=MODEL, status="OK")) == 2 * n + 800


def test_the_same_request_key_always_gets_the_same_version(server, base, stub):
    wait_generation(server, write_rollout(base, strategy="canary", stable_version=1,
                                          candidate_version=2, candidate_percent=30))
    keys = [f"customer-{i}" for i in range(150)]
    first = {}
    with requests.Session() as session:
        for attempt in range(3):
            for key in keys:
                r = rest_predict(session, server, PROBE_X, headers={"X-Request-Key": key})
                version = version_of_scores(PROBE_X, r.json()["predictions"][0])
                assert first.setdefault(key, version) == version, key
    for key in keys:  # gRPC metadata routes a key as the REST header does
        for _ in range(2):
            response = stub.Predict(grpc_request(PROBE_X), metadata=(("x-request-key", key),),
                                    timeout=30)
            assert response.model_spec.version.value == first[key], key
    assert 0.15 <= sum(v == 2 for v in first.values()) / len(keys) <= 0.45


def test_shadow_answers_from_stable_and_logs_and_compares_both(server, base, request_log_dir):
    wait_generation(server, write_rollout(base, strategy="shadow", stable_version=1,
                                          candidate_version=2, shadow_percent=100))
    before = metrics(server)
    started = time.time() - 1
    with requests.Session() as session:
        for i, x in enumerate(GRID):
            r = rest_predict(session, server, x, headers={"X-Request-Id": f"shadow-{i}"})
            assert r.status_code == 200
            # Only ever the stable answer.
            np.testing.assert_allclose(r.json()["predictions"][0],
                                       expected_scores([x], STABLE_THRESHOLD)[0], atol=1e-5)
    label = dict(model_name=MODEL, version=2)
    wait_for(lambda: delta(before, metrics(server), series(
        ":pipewright:serving:shadow_request_count", status="OK", **label)) == len(GRID),
        what="every shadow call finished")
    after = metrics(server)
    same = delta(before, after, series(":pipewright:serving:shadow_comparison_count",
                                       agreement="same", **label))
    different = delta(before, after, series(":pipewright:serving:shadow_comparison_count",
                                            agreement="different", **label))
    assert different / (same + different) == pytest.approx(DISAGREEING_SHARE)
    assert same + different == len(GRID)
    assert delta(before, after, series(":pipewright:serving:shadow_score_distance_count",
                                       **label)) == len(GRID)
    assert delta(before, after, series(":pipewright:serving:route_count", route="shadow",
                                       **label)) == len(GRID)
    # Shadow calls are evidence, not traffic: no per-version request of the candidate.
    assert delta(before, after, series(":pipewright:serving:version_request_count",
                                       status="OK", **label)) == 0

    from serving.request_log import request_log_fields
    from serving.tensor_proto import to_ndarray

    def pairs():
        found = {}
        for entry in read_logs(request_log_dir, since=started):
            extra = request_log_fields(entry)
            if extra.request_id.startswith("shadow-"):
                found.setdefault(extra.request_id, {})[extra.route] = entry
        return found if len(found) == len(GRID) and all(len(p) == 2 for p in found.values()) else None

    found = wait_for(pairs, what="both answers of every shadowed call in the request log")
    for i, x in enumerate(GRID):
        entries = found[f"shadow-{i}"]
        assert set(entries) == {"stable", "shadow"}
        for route, version, threshold in (("stable", 1, STABLE_THRESHOLD),
                                          ("shadow", 2, CANDIDATE_THRESHOLD)):
            log = entries[route].predict_log
            assert entries[route].log_metadata.model_spec.version.value == version
            np.testing.assert_allclose(to_ndarray(log.response.outputs["scores"], "scores")[0],
                                       expected_scores([x], threshold)[0], atol=1e-5)


def test_blue_green_swap_under_load_loses_no_request(server, base, stub):
    wait_generation(server, write_rollout(base, strategy="blue_green", stable_version=1,
                                          hold_versions=[2]))
    stop = threading.Event()
    phase = ["before"]  # "before" the rewrite, "switching" until it took effect, "after"
    failures: list = []
    seen = {"before": Counter(), "switching": Counter(), "after": Counter()}
    lock = threading.Lock()

    def note(version, started):
        with lock:
            seen[started][version] += 1

    def rest_worker():
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    started = phase[0]
                    r = rest_predict(session, server, PROBE_X)
                    if r.status_code != 200:
                        failures.append(("rest", r.status_code, r.text))
                        continue
                    note(version_of_scores(PROBE_X, r.json()["predictions"][0]), started)
                except Exception as e:
                    failures.append(("rest", repr(e)))

    def grpc_worker():
        request = grpc_request(PROBE_X)
        while not stop.is_set():
            try:
                started = phase[0]
                note(stub.Predict(request, timeout=30).model_spec.version.value, started)
            except grpc.RpcError as e:
                failures.append(("grpc", e.code(), e.details()))

    workers = [threading.Thread(target=rest_worker) for _ in range(2)] + \
              [threading.Thread(target=grpc_worker) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)
        phase[0] = "switching"
        generation = write_rollout(base, strategy="blue_green", stable_version=2, hold_versions=[1])
        wait_generation(server, generation)
        time.sleep(0.3)  # requests already in flight at the swap finish on version 1
        phase[0] = "after"
        time.sleep(1.0)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=60)
    assert not failures, failures[:5]
    assert set(seen["before"]) == {1} and set(seen["after"]) == {2}, seen
    assert seen["before"][1] > 50 and seen["after"][2] > 50, seen
    # The held version is still loaded: an instant revert needs no load.
    status = requests.get(f"{server.rest}/v1/models/{MODEL}", timeout=10).json()
    states = {int(s["version"]): s["state"] for s in status["model_version_status"]}
    assert states[1] == states[2] == "AVAILABLE"


def test_an_invalid_rollout_file_is_rejected_naming_the_field_and_the_last_good_policy_kept(
        server, base, stub):
    good = write_rollout(base, strategy="canary", stable_version=1, candidate_version=2,
                         candidate_percent=50)
    wait_generation(server, good)
    rejected = series(":pipewright:serving:rollout_config_rejected", model_name=MODEL)
    for bad, field in (({"steps_percent": [5, 25, 25]}, "steps_percent"),
                       ({"guards": {"max_error_rate": 2}}, "guards"),
                       ({"candidate_percent": 140}, "candidate_percent"),
                       ({"stable_version": ...}, "stable_version")):
        count = metrics(server).get(rejected, 0)
        fields = dict(strategy="canary", stable_version=1, candidate_version=2,
                      candidate_percent=10)
        fields.update(bad)
        write_rollout(base, **{k: v for k, v in fields.items() if v is not ...})
        wait_for(lambda: metrics(server).get(rejected, 0) == count + 1, what=f"{field} rejected")
        log = server.log_path.read_text()
        assert re.search(rf"rollout\.json: field '{field}': .*keeping generation {good} ", log), \
            log[-2000:]
        # The last good policy (50 % canary) still routes.
        versions = Counter(stub.Predict(grpc_request(PROBE_X), timeout=30).model_spec.version.value
                           for _ in range(200))
        assert versions[1] > 50 and versions[2] > 50, versions
        assert metrics(server)[series(":pipewright:serving:rollout_generation",
                                      model_name=MODEL)] == good


def test_a_candidate_that_fails_to_load_leaves_stable_serving_everything(server, base, stub):
    staging = base / ".tmp-3"
    write_broken_version(staging)
    os.rename(staging, base / "3")
    wait_generation(server, write_rollout(base, strategy="canary", stable_version=1,
                                          candidate_version=3, candidate_percent=50))

    def version_3_failed():
        status = requests.get(f"{server.rest}/v1/models/{MODEL}", timeout=10).json()
        return any(s["version"] == "3" and s["state"] == "END" and s["status"]["error_code"] != "OK"
                   for s in status["model_version_status"])

    wait_for(version_3_failed, what="version 3 failed to load")
    before = metrics(server)
    with requests.Session() as session:
        for _ in range(100):
            r = rest_predict(session, server, PROBE_X)
            assert version_of_scores(PROBE_X, r.json()["predictions"][0]) == 1
    for _ in range(100):
        assert stub.Predict(grpc_request(PROBE_X), timeout=30).model_spec.version.value == 1
    after = metrics(server)
    assert delta(before, after, series(":pipewright:serving:route_count", model_name=MODEL,
                                       version=1, route="stable")) == 200
    assert not any(k.startswith(":pipewright:serving:route_count") and 'version="3"' in k
                   for k in after)
    # Pinning the label of a candidate that is not loaded is an error, not a re-route.
    r = requests.post(f"{server.rest}/v1/models/{MODEL}/labels/canary:predict",
                      data=json.dumps({"instances": [PROBE_X]}), timeout=30)
    assert r.status_code == 404 and "Specific(clf, 3)" in r.text
