"""Forwarding mode (issue 10, docker-compose): `pipewright serve --upstream_grpc_address=...`
as the front door of a TF Serving compatible upstream.

The upstream is our own server, in this process (there is no tensorflow_model_server binary
here), made to behave as TF Serving does where ours differs: it ignores rollout.json and
serves what its model config says (at start the newest version only), so every other version
it loads, and every label it knows, came from the front door's HandleReloadConfigRequest; and
its reload checks the labels against the versions AVAILABLE at that moment, then answers
without waiting for new versions of a model it already serves (server_core.cc ReloadConfig:
UpdateModelVersionLabelMap first, then WaitUntilModelsAvailable for new models only), each
load taking a while — so the front door has to poll GetModelStatus for them. The front door is a
`python -m serving` subprocess on the same model config file (the rollout classifiers, with a
canary rollout.json, and the demo model for Classify / Regress / MultiInference). Requests go
through the official stubs and plain HTTP; what reached the upstream is read from the
upstream's own per-version request metrics.
"""

from __future__ import annotations

import http.client
import json
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from rollout_models import GRID, write_broken_version
from serving_harness import ServerProcess, free_port
from test_serving_rollout import (MODEL, PROBE_X, delta, grpc_request, metrics, read_logs,
                                  series, version_of_scores, wait_for, wait_generation,
                                  write_rollout)

CANARY_PERCENT = 20
LOAD_SECONDS = 0.5  # each load upstream
RELOAD = "HandleReloadConfigRequest"
AVAILABLE, END = 30, 50  # ModelVersionStatus.State


@pytest.fixture(scope="module")
def base(rollout_models, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("forward") / MODEL
    shutil.copytree(rollout_models, base)
    write_rollout(base, strategy="canary", stable_version=1, candidate_version=2,
                  candidate_percent=CANARY_PERCENT)
    return base


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("forward_config") / "monitoring.config"
    path.write_text("prometheus_config { enable: true }\n")
    return path


LOGGING = ('logging_config { log_collector_config { type: "tfrecord" filename_prefix: "requests" }'
           ' sampling_config { sampling_rate: 1 } }')


def write_models_config(path: Path, base: Path, demo_model, clf_extra: str = "") -> Path:
    path.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{name}" base_path: "{model_path}" model_platform: "tensorflow" {extra} }}\n'
        for name, model_path, extra in ((MODEL, base, clf_extra),
                                        (demo_model.name, demo_model.base_path, ""))) + "}\n")
    return path


@pytest.fixture(scope="module")
def models_config(base, demo_model, tmp_path_factory) -> Path:
    """The upstream's model config (TF Serving's open-source binary refuses a logging_config)."""
    return write_models_config(tmp_path_factory.mktemp("forward_models") / "models.config",
                               base, demo_model)


@pytest.fixture(scope="module")
def front_door_config(base, demo_model, tmp_path_factory) -> Path:
    """The same models; the front door logs clf's requests."""
    return write_models_config(tmp_path_factory.mktemp("forward_models") / "front.config",
                               base, demo_model, LOGGING)


@pytest.fixture(scope="module")
def request_log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("forward_request_log")


class InProcessUpstream:
    """Our ModelServer as the upstream: rest (base URL), grpc_target, reloads (the
    CallRecords of every HandleReloadConfigRequest it received)."""

    def __init__(self, server):
        self.server = server
        self.rest = f"http://127.0.0.1:{server.rest_port}"
        self.grpc_target = f"127.0.0.1:{server.grpc_port}"
        self.reloads = []


@pytest.fixture(scope="module")
def upstream(models_config, monitoring, demo_model):
    from serving import model_manager, servable
    from serving.config import ServerOptions
    from serving.server import ModelServer

    load_servable = servable.load_servable

    def slow_load(*args):
        time.sleep(LOAD_SECONDS)
        return load_servable(*args)

    with pytest.MonkeyPatch.context() as patch, ThreadPoolExecutor(1) as loads:
        # TF Serving knows no rollout.json: the upstream follows its model config only.
        patch.setattr(model_manager, "read_policy", lambda *args, **kwargs: None)
        patch.setattr(servable, "load_servable", slow_load)
        server = ModelServer(ServerOptions(
            grpc_port=free_port(), rest_api_port=free_port(),
            model_config_file=str(models_config), file_system_poll_wait_seconds=0.2,
            max_num_load_retries=0, monitoring_config_file=str(monitoring)))
        server.start()
        server.data_plane._reload_config = lambda request, ctx: tf_serving_reload(
            server.manager, request, loads)
        up = InProcessUpstream(server)
        server.data_plane.observers.append(
            lambda record: up.reloads.append(record) if record.method == RELOAD else None)
        # The latest version of each, as configured.
        assert server.manager.loaded_versions() == {MODEL: [2], demo_model.name: [1]}
        yield up
        server.stop()


async def tf_serving_reload(manager, request, loads):
    """HandleReloadConfigRequest as TF Serving answers it (see the module docstring): the
    labels checked now (FAILED_PRECONDITION), the versions loaded after the answer, in order."""
    from tensorflow_serving.apis import model_management_pb2

    manager._resolve_labels(request.config.model_config_list)
    config = type(request.config)()
    config.CopyFrom(request.config)
    loads.submit(manager.apply_config, config)
    response = model_management_pb2.ReloadConfigResponse()
    response.status.error_code = 0
    return response


@pytest.fixture(scope="module")
def front_door(upstream, front_door_config, monitoring, request_log_dir, log_dir):
    proc = ServerProcess([f"--model_config_file={front_door_config}",
                          f"--request_log_dir={request_log_dir}",
                          "--request_log_max_file_age_seconds=0.3",
                          f"--upstream_grpc_address={upstream.grpc_target}",
                          "--file_system_poll_wait_seconds=0.2", "--max_num_load_retries=0",
                          f"--monitoring_config_file={monitoring}"], log_dir, "front_door").start()
    yield proc
    proc.stop()


def stubs(target: str):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(target)
    return (channel, prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel))


@pytest.fixture(scope="module")
def front(front_door):
    channel, prediction, models = stubs(front_door.grpc_target)
    yield prediction, models
    channel.close()


@pytest.fixture(scope="module")
def direct(upstream):
    channel, prediction, models = stubs(upstream.grpc_target)
    yield prediction, models
    channel.close()


def version_states(models, name=MODEL) -> dict[int, int]:
    from tensorflow_serving.apis import get_model_status_pb2

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return {s.version: s.state for s in models.GetModelStatus(request, timeout=10).model_version_status}


def upstream_ok(before, after, version) -> float:
    return delta(before, after, series(":pipewright:serving:version_request_count",
                                       model_name=MODEL, version=version, status="OK"))


def test_the_upstream_loads_every_version_the_policy_needs_labels_once_available(
        front_door, upstream, front, direct, base, demo_model):
    assert version_states(direct[1]) == {1: AVAILABLE, 2: AVAILABLE}
    assert version_states(front[1]) == {1: AVAILABLE, 2: AVAILABLE}
    assert upstream.reloads, "the front door sent no HandleReloadConfigRequest"
    # The upstream applies TF Serving's label rule: a label naming a version that was not
    # AVAILABLE yet would have failed the reload (FAILED_PRECONDITION).
    assert [r.error for r in upstream.reloads if r.error is not None] == []
    configs = [{c.name: c for c in r.request.config.model_config_list.config}
               for r in upstream.reloads]
    # The front door names its own base paths: both read them (a shared volume in compose).
    assert all(set(c) == {MODEL, demo_model.name} and c[MODEL].base_path == str(base)
               for c in configs)
    # Only what TF Serving needs: no logging_config (its open-source binary refuses one).
    assert not any(c[MODEL].HasField("logging_config") for c in configs)
    last = configs[-1][MODEL]
    assert list(last.model_version_policy.specific.versions) == [1, 2]
    assert dict(last.version_labels) == {"stable": 1, "canary": 2}
    demo = configs[-1][demo_model.name]  # no rollout.json: its version policy (latest)
    assert list(demo.model_version_policy.specific.versions) == [1] and not demo.version_labels
    # Version 1 was not loaded upstream when the first config asked for it: no label for it.
    first = configs[0][MODEL]
    assert list(first.model_version_policy.specific.versions) == [1, 2]
    assert "stable" not in first.version_labels
    # The labels now work on the upstream itself, for clients that call it directly.
    for label, version in (("stable", 1), ("canary", 2)):
        response = direct[0].Predict(grpc_request(PROBE_X, label=label), timeout=10)
        assert response.model_spec.version.value == version


def test_answers_equal_the_upstreams_for_the_routed_version(front_door, upstream, front, direct):
    from tensorflow_serving.apis import get_model_metadata_pb2

    seen = Counter()
    for x in GRID[40:70] * 2:  # where the versions' scores differ beyond float noise
        response = front[0].Predict(grpc_request(x), timeout=10)
        version = response.model_spec.version.value
        seen[version] += 1
        assert response == direct[0].Predict(grpc_request(x, version=version), timeout=10)
        assert version_of_scores(x, _scores(response)) == version
    assert set(seen) == {1, 2}, seen  # 60 unpinned calls at 20 %: both versions answered
    with requests.Session() as session:
        for path, version in (("", None), ("/versions/1", 1), ("/labels/canary", 2)):
            for x in (0.45, PROBE_X, 0.65):  # the versions disagree clearly here
                body = json.dumps({"instances": [x]})
                got = session.post(f"{front_door.rest}/v1/models/{MODEL}{path}:predict", data=body,
                                   timeout=10)
                assert got.status_code == 200, got.text
                answered = version or version_of_scores(x, got.json()["predictions"][0])
                want = session.post(f"{upstream.rest}/v1/models/{MODEL}/versions/{answered}:predict",
                                    data=body, timeout=10)
                assert got.json() == want.json()
            metadata = session.get(f"{front_door.rest}/v1/models/{MODEL}{path}/metadata", timeout=10)
            want_version = version or 1  # unpinned metadata: the stable version
            want = session.get(f"{upstream.rest}/v1/models/{MODEL}/versions/{want_version}/metadata",
                               timeout=10)
            assert metadata.status_code == 200 and metadata.json() == want.json()
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    request.model_spec.version.value = 2
    assert front[0].GetModelMetadata(request, timeout=10) == direct[0].GetModelMetadata(request, timeout=10)


def _scores(response):
    from serving.tensor_proto import to_ndarray

    return to_ndarray(response.outputs["scores"], "scores")[0]


def test_the_canary_gets_its_share_of_unpinned_requests_upstream(front_door, upstream, front):
    n = 1000
    before = metrics(upstream)
    front_before = metrics(front_door)
    body = json.dumps({"instances": [PROBE_X]})
    connection = http.client.HTTPConnection("127.0.0.1", front_door.rest_port, timeout=30)
    rest = Counter()
    try:
        for _ in range(n // 2):
            connection.request("POST", f"/v1/models/{MODEL}:predict", body,
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            text = response.read()
            assert response.status == 200, text
            rest[version_of_scores(PROBE_X, json.loads(text)["predictions"][0])] += 1
    finally:
        connection.close()
    grpc_versions = Counter()
    request = grpc_request(PROBE_X)
    for _ in range(n // 2 // 50):
        for future in [front[0].Predict.future(request, timeout=30) for _ in range(50)]:
            grpc_versions[future.result().model_spec.version.value] += 1
    after = metrics(upstream)
    # What the upstream ran, per version: every call was forwarded, pinned to the routed version.
    ran = {v: upstream_ok(before, after, v) for v in (1, 2)}
    assert ran[1] + ran[2] == n
    assert ran[2] == rest[2] + grpc_versions[2]
    assert abs(ran[2] / n - CANARY_PERCENT / 100) <= 0.04, ran
    front_after = metrics(front_door)
    assert delta(front_before, front_after, series(
        ":pipewright:serving:route_count", model_name=MODEL, version=2, route="canary")) == ran[2]


def test_pinned_requests_are_never_rerouted(front_door, upstream, front):
    before = metrics(upstream)
    per = 25
    with requests.Session() as session:
        for path, want in (("/versions/1", 1), ("/labels/stable", 1), ("/versions/2", 2),
                           ("/labels/canary", 2)):
            for _ in range(per):
                r = session.post(f"{front_door.rest}/v1/models/{MODEL}{path}:predict",
                                 data=json.dumps({"instances": [PROBE_X]}), timeout=10)
                assert r.status_code == 200 and version_of_scores(
                    PROBE_X, r.json()["predictions"][0]) == want, (path, r.text)
    for version, label, want in ((1, None, 1), (None, "stable", 1), (2, None, 2),
                                 (None, "canary", 2)):
        for _ in range(per):
            response = front[0].Predict(grpc_request(PROBE_X, version=version, label=label),
                                        timeout=10)
            assert response.model_spec.version.value == want
    after = metrics(upstream)
    assert upstream_ok(before, after, 1) == upstream_ok(before, after, 2) == 4 * per


def test_upstream_errors_keep_their_status_code(front_door, upstream, front, direct):
    from tensorflow_serving.apis import predict_pb2

    from serving.tensor_proto import from_ndarray

    bad = predict_pb2.PredictRequest()
    bad.model_spec.name = MODEL
    bad.model_spec.version.value = 1
    from_ndarray(np.array([0.5], np.float32), bad.inputs["not_x"])
    with pytest.raises(grpc.RpcError) as got:
        front[0].Predict(bad, timeout=10)
    with pytest.raises(grpc.RpcError) as want:
        direct[0].Predict(bad, timeout=10)
    assert got.value.code() == want.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert got.value.details() == want.value.details()
    body = json.dumps({"inputs": {"x": [[0.5]]}})  # rank 2: the signature takes rank 1
    r = requests.post(f"{front_door.rest}/v1/models/{MODEL}/versions/1:predict", data=body,
                      timeout=10)
    direct_r = requests.post(f"{upstream.rest}/v1/models/{MODEL}/versions/1:predict", data=body,
                             timeout=10)
    assert r.status_code == direct_r.status_code == 400
    assert r.json() == direct_r.json()


def test_shadow_calls_are_forwarded_and_both_answers_logged_by_the_front_door(
        front_door, upstream, base, request_log_dir):
    from serving.request_log import request_log_fields
    from serving.tensor_proto import to_ndarray

    wait_generation(front_door, write_rollout(base, strategy="shadow", stable_version=1,
                                              candidate_version=2, shadow_percent=100))
    before, front_before = metrics(upstream), metrics(front_door)
    xs = GRID[40:70]
    with requests.Session() as session:
        for i, x in enumerate(xs):
            r = session.post(f"{front_door.rest}/v1/models/{MODEL}:predict",
                             data=json.dumps({"instances": [x]}),
                             headers={"X-Request-Id": f"fwd-shadow-{i}"}, timeout=10)
            assert r.status_code == 200 and version_of_scores(x, r.json()["predictions"][0]) == 1

    def pairs():
        found = {}
        for entry in read_logs(request_log_dir):
            extra = request_log_fields(entry)
            if extra.request_id.startswith("fwd-shadow-"):
                found.setdefault(extra.request_id, {})[extra.route] = entry
        return found if len(found) == len(xs) and all(len(p) == 2 for p in found.values()) else None

    found = wait_for(pairs, what="both answers of every shadowed call in the front door's log")
    for i, x in enumerate(xs):
        for route, version in (("stable", 1), ("shadow", 2)):
            entry = found[f"fwd-shadow-{i}"][route]
            assert entry.log_metadata.model_spec.version.value == version
            assert version_of_scores(x, to_ndarray(entry.predict_log.response.outputs["scores"],
                                                   "scores")[0]) == version
    after = metrics(upstream)
    # Both calls ran upstream, each on its version; the front door compared the answers.
    assert upstream_ok(before, after, 1) == upstream_ok(before, after, 2) == len(xs)
    compared = sum(delta(front_before, metrics(front_door), series(
        ":pipewright:serving:shadow_comparison_count", model_name=MODEL, version=2,
        agreement=agreement)) for agreement in ("same", "different"))
    assert compared == len(xs)


def test_classify_regress_and_multi_inference_are_forwarded(front_door, upstream, front, direct,
                                                           demo_model):
    from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

    from serving.demo_model import make_example

    def fill(request, signature, version=None):
        spec = request.model_spec
        spec.name, spec.signature_name = demo_model.name, signature
        if version is not None:
            spec.version.value = version
        for features in demo_model.classify["examples"]:
            request.input.example_list.examples.add().ParseFromString(make_example(features))
        return request

    before = metrics(upstream)
    for version in (None, 1):
        classify = fill(classification_pb2.ClassificationRequest(), "classify", version)
        regress = fill(regression_pb2.RegressionRequest(), "regress", version)
        got = front[0].Classify(classify, timeout=10)
        assert got.result.classifications and got == direct[0].Classify(
            fill(classification_pb2.ClassificationRequest(), "classify", 1), timeout=10)
        got = front[0].Regress(regress, timeout=10)
        assert got.result.regressions and got == direct[0].Regress(
            fill(regression_pb2.RegressionRequest(), "regress", 1), timeout=10)
    assert delta(before, metrics(upstream), series(
        ":pipewright:serving:version_request_count", model_name=demo_model.name, version=1,
        status="OK")) == 4 + 4  # the front door's calls ran upstream, beside the direct ones
    multi = inference_pb2.MultiInferenceRequest()
    for method, signature in (("tensorflow/serving/classify", "classify"),
                              ("tensorflow/serving/regress", "regress")):
        task = multi.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = demo_model.name, signature
    multi.input.CopyFrom(fill(classification_pb2.ClassificationRequest(), "classify").input)
    assert front[0].MultiInference(multi, timeout=10) == direct[0].MultiInference(multi, timeout=10)
    with requests.Session() as session:
        for verb in ("classify", "regress"):
            body = json.dumps({"signature_name": verb, "examples": demo_model.classify["examples"]})
            got = session.post(f"{front_door.rest}/v1/models/{demo_model.name}:{verb}", data=body,
                               timeout=10)
            want = session.post(f"{upstream.rest}/v1/models/{demo_model.name}/versions/1:{verb}",
                                data=body, timeout=10)
            assert got.status_code == want.status_code == 200 and got.json() == want.json()


def last_config(upstream) -> dict:
    """{model name: ModelConfig} of the last HandleReloadConfigRequest the upstream received."""
    return {c.name: c for c in upstream.reloads[-1].request.config.model_config_list.config}


def test_an_upstream_that_lost_a_version_gets_the_config_again(front_door, upstream, base, front,
                                                               direct):
    from serving import config as config_lib

    # Blue-green: 2 serves, 1 is held (loaded, no label), for an instant revert.
    write_rollout(base, strategy="blue_green", stable_version=2, hold_versions=[1])
    wait_for(lambda: dict(last_config(upstream)[MODEL].version_labels) == {"stable": 2},
             timeout=30, what="blue-green config upstream")
    assert list(last_config(upstream)[MODEL].model_version_policy.specific.versions) == [1, 2]
    # As a TF Serving restarted with its own config file would: the newest version only. What
    # the front door wants has not changed; what the upstream serves has.
    sent = len(upstream.reloads)
    upstream.server.manager.apply_config(config_lib.model_server_config(upstream.server.options))
    assert version_states(direct[1])[1] == END
    wait_for(lambda: version_states(direct[1]).get(1) == AVAILABLE, timeout=30,
             what="held version 1 loaded upstream again")
    assert len(upstream.reloads) > sent
    assert [r.error for r in upstream.reloads if r.error is not None] == []
    assert front[0].Predict(grpc_request(PROBE_X, version=1), timeout=10).model_spec.version.value == 1


def test_a_policy_change_reaches_the_upstream_config(front_door, upstream, base, front, direct):
    # The candidate is promoted: version 1 is not needed any more, here or upstream.
    write_rollout(base, strategy="immediate", stable_version=2)
    wait_for(lambda: version_states(direct[1]).get(1) == END, timeout=30,
             what="version 1 unloaded upstream")
    assert [r.error for r in upstream.reloads if r.error is not None] == []
    last = last_config(upstream)[MODEL]
    assert list(last.model_version_policy.specific.versions) == [2]
    assert dict(last.version_labels) == {"stable": 2}
    assert version_states(front[1]) == {1: END, 2: AVAILABLE}
    assert direct[0].Predict(grpc_request(PROBE_X, label="stable"),
                             timeout=10).model_spec.version.value == 2
    for _ in range(20):
        assert front[0].Predict(grpc_request(PROBE_X), timeout=10).model_spec.version.value == 2


def test_a_candidate_that_fails_to_load_upstream_leaves_stable_serving(front_door, upstream, base,
                                                                       front, direct):
    from tensorflow_serving.apis import get_model_status_pb2

    write_broken_version(base / "3")
    write_rollout(base, strategy="canary", stable_version=2, candidate_version=3,
                  candidate_percent=50)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    request.model_spec.version.value = 3

    def ended(models):
        """Version 3's ModelVersionStatus once END; None before (NOT_FOUND: not seen yet)."""
        try:
            (entry,) = models.GetModelStatus(request, timeout=10).model_version_status
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e
            return None
        return entry if entry.state == END else None

    upstream_status = wait_for(lambda: ended(direct[1]), timeout=30, what="3 failed upstream")
    front_status = wait_for(lambda: ended(front[1]), timeout=30, what="3 failed in the front door")
    assert upstream_status.status.error_code == front_status.status.error_code != 0
    assert front_status.status.error_message.startswith(
        f"upstream model server {upstream.grpc_target}: ")
    assert upstream_status.status.error_message in front_status.status.error_message
    for _ in range(40):
        assert front[0].Predict(grpc_request(PROBE_X), timeout=10).model_spec.version.value == 2


def test_an_unreachable_upstream_answers_unavailable_naming_it(front_door, upstream, front):
    # Last in the module: the upstream stops for good.
    upstream.server.stop()
    with pytest.raises(grpc.RpcError) as got:
        front[0].Predict(grpc_request(PROBE_X), timeout=10)
    assert got.value.code() == grpc.StatusCode.UNAVAILABLE
    assert upstream.grpc_target in got.value.details()
    r = requests.post(f"{front_door.rest}/v1/models/{MODEL}:predict",
                      data=json.dumps({"instances": [PROBE_X]}), timeout=10)
    assert r.status_code == 503 and upstream.grpc_target in r.json()["error"], r.text
    assert front_door.alive()


def test_the_forwarded_request_names_the_chosen_version_even_version_0():
    from tensorflow_serving.apis import inference_pb2, predict_pb2

    from serving.upstream import pinned

    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.version_label = MODEL, "canary"
    forwarded = pinned("Predict", request, 0)
    assert forwarded.model_spec.WhichOneof("version_choice") == "version"
    assert forwarded.model_spec.version.value == 0
    assert request.model_spec.version_label == "canary"  # the client's request, as logged
    multi = inference_pb2.MultiInferenceRequest()
    for signature in ("a", "b"):
        multi.tasks.add().model_spec.name = MODEL
    assert [t.model_spec.HasField("version") and t.model_spec.version.value
            for t in pinned("MultiInference", multi, 3).tasks] == [3, 3]


def test_an_upstream_never_reached_is_named_when_waiting_for_it_times_out():
    """Start-up waits for an upstream that is not up yet (wait_for_ready); when it never
    comes, the load error names the upstream, not only gRPC's "Deadline Exceeded"."""
    from serving.errors import ServingError
    from serving.upstream import Upstream

    address = f"127.0.0.1:{free_port()}"  # nothing listens
    upstream = Upstream(address, admin_timeout_seconds=0.5)
    try:
        with pytest.raises(ServingError) as info:
            upstream.model_status(MODEL, wait_for_ready=True)
    finally:
        upstream.close()
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert info.value.message.startswith(
        f"Upstream model server {address} did not answer in time: "), info.value.message


def test_a_call_the_upstream_cancels_is_unavailable_naming_it_not_cancelled():
    """An upstream that ends a forwarded call with CANCELLED (our own server does so for
    calls in flight when it shuts down) did not see the client close the request: the
    client gets UNAVAILABLE (retryable, REST 503) naming the upstream, not CANCELLED (499)."""
    import asyncio

    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving.errors import ServingError
    from serving.upstream import Upstream

    class Cancelling(prediction_service_pb2_grpc.PredictionServiceServicer):
        async def Predict(self, request, context):
            await context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")

    async def forward_once():
        server = grpc.aio.server()
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Cancelling(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        upstream = Upstream(f"127.0.0.1:{port}")
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        try:
            with pytest.raises(ServingError) as info:
                await upstream.forward("Predict", request, 1, 10, "r-1")
        finally:
            upstream.close()
            await server.stop(None)
        return port, info.value

    port, error = asyncio.run(forward_once())
    assert error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert error.message == (f"Upstream model server 127.0.0.1:{port} cancelled the call "
                             f"(shutting down?): CANCELLED")


def test_upstream_load_timeout_bounds_the_wait_for_an_upstream_never_reached(tmp_path):
    """--upstream_load_timeout_seconds bounds a load attempt whole: waiting for an upstream
    that never comes up used the 60 s admin timeout instead. The version ends with the
    error naming the upstream."""
    from tensorflow_serving.config import model_server_config_pb2

    from serving.model_manager import ModelManager
    from serving.upstream import Upstream, UpstreamModels

    (tmp_path / MODEL / "1").mkdir(parents=True)
    address = f"127.0.0.1:{free_port()}"  # nothing listens
    upstream = Upstream(address)
    models = None
    manager = ModelManager(loader=lambda *args: models.load(*args), max_num_load_retries=0)
    models = UpstreamModels(upstream, manager, load_timeout_seconds=1.0)
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=MODEL, base_path=str(tmp_path / MODEL),
                                        model_platform="tensorflow")
    started = time.monotonic()
    try:
        manager.apply_config(config)
    finally:
        manager.stop()
        upstream.close()
    elapsed = time.monotonic() - started
    [(version, state, error)] = manager.version_status(MODEL)
    assert (version, state) == (1, END), (state, error)
    assert error.message.startswith(f"Upstream model server {address} did not answer in time")
    assert elapsed < 15, elapsed
