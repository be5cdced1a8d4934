"""Rollout in process (no sockets): the model manager with a --model_config_file of two models,
and the data plane's shadow calls (after the answer, bounded), on the real classifiers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil

import numpy as np
import pytest

from rollout_models import STABLE_THRESHOLD, expected_scores

CONFIG = """model_config_list {{
  config {{ name: "clf" base_path: "{clf}" model_platform: "tensorflow" }}
  config {{ name: "plain" base_path: "{plain}" model_platform: "tensorflow" }}
}}
"""


def write_rollout(base, **fields):
    tmp = base / ".rollout.json.tmp"
    tmp.write_text(json.dumps(fields))
    os.replace(tmp, base / "rollout.json")


def manager_for(config_file):
    from serving import config as config_lib
    from serving.model_manager import ModelManager
    from serving.servable import load_servable

    manager = ModelManager(loader=lambda n, v, p: load_servable(n, v, p, {"serve"}),
                           max_num_load_retries=0)
    manager.apply_config(config_lib.model_server_config(
        config_lib.ServerOptions(model_config_file=str(config_file))))
    return manager


@pytest.fixture
def bases(rollout_models, tmp_path):
    clf, plain = tmp_path / "clf", tmp_path / "plain"
    shutil.copytree(rollout_models, clf)
    shutil.copytree(rollout_models / "1", clf / "3")  # a third version, never named at first
    shutil.copytree(rollout_models, plain)
    config = tmp_path / "models.config"
    config.write_text(CONFIG.format(clf=clf, plain=plain))
    return clf, plain, config


def test_each_model_of_a_config_file_follows_its_own_rollout_file(bases):
    from serving.errors import ServingError

    clf, plain, config = bases
    write_rollout(clf, strategy="blue_green", stable_version=1, hold_versions=[2], generation=1)
    manager = manager_for(config)
    try:
        # Aspired = stable + candidate + held; the newest version (3) is not loaded.
        assert manager.loaded_versions() == {"clf": [1, 2], "plain": [2]}
        assert manager.servable("clf").version == 1
        assert manager.servable("clf", label="stable").version == 1
        assert manager.servable("plain").version == 2  # no rollout.json: the version policy
        with pytest.raises(ServingError, match="Unrecognized servable version label: canary"):
            manager.servable("clf", label="canary")

        write_rollout(clf, strategy="canary", stable_version=2, candidate_version=3,
                      candidate_percent=100, generation=2)
        manager.poll()
        assert manager.loaded_versions()["clf"] == [2, 3]
        assert manager.route("clf", "any-key")[0].version == 3
        assert manager.servable("clf").version == 2  # unrouted calls (metadata...) get stable
        assert manager.servable("clf", label="canary").version == 3
        assert manager.rollout_status()["clf"]["policy"].generation == 2

        (clf / "rollout.json").write_text('{"strategy": "canary", "stable_version": 9}')
        manager.poll()
        status = manager.rollout_status()["clf"]
        assert status["policy"].generation == 2 and status["rejected"] == 1
        assert "rollout.json: field 'stable_version': version 9 has no directory" in status["error"]
        assert manager.route("clf", "any-key")[0].version == 3

        os.remove(clf / "rollout.json")  # the rollout ends: the version policy (newest) again
        manager.poll()
        assert manager.loaded_versions()["clf"] == [3]
        assert manager.route("clf") == (manager.servable("clf"), None, None)
        assert not manager.has_rollout("clf")
    finally:
        manager.stop()


def test_shadow_calls_start_after_the_answer_and_beyond_the_bound_are_skipped(bases):
    from tensorflow_serving.apis import predict_pb2

    from serving.data_plane import DataPlane, RequestContext
    from serving.inference import InferenceService
    from serving.metrics import ServingMetrics
    from serving.tensor_proto import from_ndarray, to_ndarray

    clf, _, config = bases
    write_rollout(clf, strategy="shadow", stable_version=1, candidate_version=2,
                  shadow_percent=100, generation=1)
    manager = manager_for(config)
    metrics = ServingMetrics()
    plane = DataPlane(InferenceService(manager, metrics), metrics=metrics, max_threads=2,
                      max_shadow_inflight=2)
    records = []
    plane.observers.append(records.append)
    n = 20

    async def run():
        requests = []
        for i in range(n):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "clf"
            from_ndarray(np.array([0.55], np.float32), request.inputs["x"])
            requests.append(request)
        async def answer(request):
            ctx = RequestContext("GRPC", {})
            response = await plane.predict(request, ctx)
            # Under load another request's shadow may finish first; never this one's.
            shadowed_first.append(any(r.shadow and r.ctx.request_id == ctx.request_id
                                      for r in records))
            return response

        responses = await asyncio.gather(*(answer(r) for r in requests))
        await asyncio.gather(*list(plane._shadow_tasks))
        return responses

    shadowed_first = []
    try:
        responses = asyncio.run(run())
    finally:
        plane.stop()
        manager.stop()
    for response in responses:
        assert response.model_spec.version.value == 1
        np.testing.assert_allclose(to_ndarray(response.outputs["scores"], "scores")[0],
                                   expected_scores([0.55], STABLE_THRESHOLD)[0], atol=1e-5)
    # Every answer was returned before its shadow call had run.
    assert shadowed_first == [False] * n
    shadows = [r for r in records if r.shadow]
    assert len(shadows) == 2 and all(r.version == 2 and r.error is None for r in shadows)
    by_id = {r.ctx.request_id: r for r in records if not r.shadow}
    assert all(r.ctx.request_id in by_id and r.ctx.parent is by_id[r.ctx.request_id].ctx
               for r in shadows)
    assert metrics.value(metrics.shadow_skipped_count, "clf", "2") == n - 2
    assert metrics.value(metrics.shadow_request_count, "clf", "2", "OK") == 2
    assert metrics.value(metrics.shadow_comparison_count, "clf", "2", "different") == 2


def test_shadow_comparison_of_classify_regress_and_predict_answers():
    from tensorflow_serving.apis import (classification_pb2, predict_pb2,
                                         regression_pb2)

    from serving.data_plane import CLASSIFY, PREDICT, REGRESS
    from serving.shadow import compare
    from serving.tensor_proto import from_ndarray

    def classification(rows):
        response = classification_pb2.ClassificationResponse()
        for scores in rows:
            c = response.result.classifications.add()
            for label, score in zip(("neg", "pos"), scores):
                c.classes.add(label=label, score=score)
        return response

    a = classification([(0.9, 0.1), (0.4, 0.6), (0.5, 0.5)])
    b = classification([(0.7, 0.3), (0.6, 0.4), (0.5, 0.5)])
    result = compare(CLASSIFY, a, b)
    assert (result.same, result.different) == (2, 1)
    assert result.distances == pytest.approx([0.2, 0.2, 0.0])

    def regression(values):
        response = regression_pb2.RegressionResponse()
        for v in values:
            response.result.regressions.add(value=v)
        return response

    result = compare(REGRESS, regression([1.0, 1000.0, 5.0]), regression([1.0, 1000.0001, 5.5]))
    # |a - b| <= 1e-6 * max(1, |a|): 1000 vs 1000.0001 agree (1e-4 <= 1e-3), 5 vs 5.5 do not.
    assert (result.same, result.different, result.distances) == (2, 1, [])

    def predict(**outputs):
        response = predict_pb2.PredictResponse()
        for alias, array in outputs.items():
            from_ndarray(np.asarray(array, np.float32), response.outputs[alias])
        return response

    result = compare(PREDICT, predict(scores=[[0.2, 0.8], [0.6, 0.4]]),
                     predict(scores=[[0.3, 0.7], [0.3, 0.7]]))
    assert (result.same, result.different) == (1, 1)
    assert result.distances == pytest.approx([0.1, 0.3])
    result = compare(PREDICT, predict(scores=[[0.2, 0.8]]), predict(scores=[[0.2, 0.3, 0.5]]))
    assert (result.same, result.different) == (0, 1)  # a different number of classes
    result = compare(PREDICT, predict(outputs=[[2.0], [3.0]]), predict(outputs=[[2.0], [3.1]]))
    assert (result.same, result.different) == (1, 1)


def test_a_new_stable_that_fails_to_load_keeps_the_previous_stable_serving(bases):
    """Found by trying to break it: with the candidate loaded, a stable_version that fails to
    load let the manager unload the previous stable (the candidate "served"), and the 0 %
    candidate answered every unpinned request."""
    from rollout_models import write_broken_version

    clf, plain, config = bases
    write_broken_version(clf / "4")
    write_rollout(clf, strategy="canary", stable_version=1, candidate_version=2, generation=1)
    manager = manager_for(config)
    try:
        assert manager.loaded_versions()["clf"] == [1, 2]
        write_rollout(clf, strategy="canary", stable_version=4, candidate_version=2,
                      candidate_percent=0, generation=2)
        for _ in range(3):
            manager.poll()
        assert 1 in manager.loaded_versions()["clf"]  # kept: version 4 never served
        assert {manager.route("clf", f"key-{i}")[0].version for i in range(50)} == {1}
    finally:
        manager.stop()
