"""rollout.json parsing and the routing decision, in process (no sockets, no TensorFlow)."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from serving.rollout import (RolloutError, Routes, build_routes, key_point, parse_policy,
                             read_policy)

PATH = "/models/clf/rollout.json"
ON_DISK = {1, 2, 3}


def policy(**fields):
    data = {"strategy": "canary", "stable_version": 1, "candidate_version": 2,
            "candidate_percent": 10}
    data.update(fields)
    return parse_policy({k: v for k, v in data.items() if v is not ...}, PATH, ON_DISK)


def test_a_full_policy_parses_into_an_immutable_value():
    p = policy(shadow_percent=5, hold_versions=[3, 3], steps_percent=[5, 25, 50, 100],
               bake_seconds=600, guards={"max_error_rate_ratio": 1.5, "min_shadow_agreement": 0.9},
               state="baking", generation=4, step_index=1, reason="step", updated_at="2026-11-30",
               window={"start": 1})
    assert (p.strategy, p.stable_version, p.candidate_version) == ("canary", 1, 2)
    assert (p.candidate_percent, p.shadow_percent) == (10.0, 5.0)
    assert p.hold_versions == (3,) and p.steps_percent == (5.0, 25.0, 50.0, 100.0)
    assert p.aspired_versions == {1, 2, 3}
    assert p.labels == {"stable": 1, "canary": 2}
    assert dict(p.guards) == {"max_error_rate_ratio": 1.5, "min_shadow_agreement": 0.9}
    with pytest.raises(AttributeError):
        p.candidate_percent = 50
    with pytest.raises(TypeError):
        p.guards["max_error_rate_ratio"] = 9


@pytest.mark.parametrize("fields, field, words", [
    ({"stable_version": ...}, "stable_version", "missing"),
    ({"strategy": ...}, "strategy", "missing"),
    ({"strategy": "yolo"}, "strategy", "not one of"),
    ({"stable_version": -1}, "stable_version", "integer >= 0"),
    ({"stable_version": True}, "stable_version", "integer >= 0"),
    ({"stable_version": 7}, "stable_version", "no directory"),
    ({"candidate_version": 9}, "candidate_version", "no directory"),
    ({"candidate_version": 1}, "candidate_version", "equals stable_version"),
    ({"candidate_percent": 100.5}, "candidate_percent", "[0, 100]"),
    ({"candidate_percent": -1}, "candidate_percent", "[0, 100]"),
    ({"candidate_percent": "10"}, "candidate_percent", "[0, 100]"),
    ({"shadow_percent": 101}, "shadow_percent", "[0, 100]"),
    ({"candidate_version": None}, "candidate_percent", "no candidate_version"),
    ({"strategy": "shadow"}, "candidate_percent", "strategy shadow"),
    ({"candidate_version": None, "candidate_percent": 0, "shadow_percent": 5}, "shadow_percent",
     "no candidate_version"),
    ({"steps_percent": [5, 25, 25, 100]}, "steps_percent", "not strictly increasing"),
    ({"steps_percent": [50, 25]}, "steps_percent", "not strictly increasing"),
    ({"steps_percent": [0, 50]}, "steps_percent", "(0, 100]"),
    ({"steps_percent": [5, 150]}, "steps_percent", "(0, 100]"),
    ({"hold_versions": [1, "2"]}, "hold_versions", "list of integers"),
    ({"bake_seconds": 0}, "bake_seconds", "> 0"),
    ({"guards": {"max_error_rate": 2}}, "guards", "unknown guard 'max_error_rate'"),
    ({"guards": {"max_error_rate_ratio": -1}}, "guards", "a guard that can never pass"),
    ({"guards": {"min_shadow_agreement": 2}}, "guards", "a guard that can never pass"),
    ({"guards": {"min_live_accuracy": "high"}}, "guards", "must be a number"),
    ({"guards": [1]}, "guards", "object"),
    ({"state": "done"}, "state", "not one of"),
    ({"generation": 1.5}, "generation", "integer >= 0"),
    ({"candidate_precent": 10}, "candidate_precent", "unknown key"),
])
def test_invalid_policies_name_the_file_and_the_field(fields, field, words):
    with pytest.raises(RolloutError) as caught:
        policy(**fields)
    error = caught.value
    assert error.path == PATH and error.field == field
    assert str(error).startswith(f"{PATH}: field '{field}': ")
    assert words in str(error)


def test_read_policy_absent_invalid_json_and_valid(tmp_path):
    assert read_policy(str(tmp_path), ON_DISK) is None
    (tmp_path / "rollout.json").write_text("{strategy: canary")
    with pytest.raises(RolloutError, match=r"rollout\.json: not valid JSON"):
        read_policy(str(tmp_path), ON_DISK)
    (tmp_path / "rollout.json").write_text('{"strategy": "canary", "stable_version": 1, '
                                           '"candidate_version": 2, "candidate_percent": 5, '
                                           '"candidate_percent": 50}')
    with pytest.raises(RolloutError, match="key 'candidate_percent' appears twice"):
        read_policy(str(tmp_path), ON_DISK)
    (tmp_path / "rollout.json").write_text(json.dumps({"strategy": "blue_green", "stable_version": 2,
                                                      "hold_versions": [1]}))
    p = read_policy(str(tmp_path), ON_DISK)
    assert (p.strategy, p.stable_version, p.hold_versions, p.candidate_version) == \
        ("blue_green", 2, (1,), None)


def servables(*versions):
    return {v: SimpleNamespace(version=v) for v in versions}


def test_unpinned_calls_go_to_the_candidate_at_its_share():
    loaded = servables(1, 2)
    routes = build_routes(policy(candidate_percent=10), loaded, None)
    random.seed(7)
    picks = [routes.route(None) for _ in range(20_000)]
    canary = sum(1 for servable, route, _ in picks if route == "canary")
    assert all((s.version, r) in ((1, "stable"), (2, "canary")) for s, r, _ in picks)
    assert 0.09 <= canary / len(picks) <= 0.11
    assert all(shadow is None for _, _, shadow in picks)


def test_a_request_key_always_gets_the_same_version_and_keeps_it_as_the_share_grows():
    loaded = servables(1, 2)
    at10 = build_routes(policy(candidate_percent=10), loaded, None)
    at25 = build_routes(policy(candidate_percent=25), loaded, None)
    keys = [f"user-{i}" for i in range(4000)]
    first = {k: at10.route(k)[0].version for k in keys}
    assert all(at10.route(k)[0].version == first[k] for k in keys)
    share = sum(v == 2 for v in first.values()) / len(keys)
    assert 0.08 <= share <= 0.12
    # Monotone: a key on the candidate at 10 % stays there at 25 %.
    assert all(at25.route(k)[0].version == 2 for k in keys if first[k] == 2)
    assert key_point("user-1", b"canary") == key_point("user-1", b"canary")
    assert 0 <= key_point("", b"canary") < 100


def test_shadow_mirrors_its_share_and_answers_from_stable():
    loaded = servables(1, 2)
    routes = build_routes(policy(strategy="shadow", candidate_percent=0, shadow_percent=30), loaded, None)
    picks = [routes.route(f"k{i}") for i in range(5000)]
    assert all(s.version == 1 and r == "stable" for s, r, _ in picks)
    shadowed = sum(1 for _, _, shadow in picks if shadow is not None)
    assert 0.27 <= shadowed / len(picks) <= 0.33
    assert all(shadow.version == 2 for _, _, shadow in picks if shadow is not None)


@pytest.mark.parametrize("strategy", ["immediate", "blue_green"])
def test_only_the_canary_strategy_routes_to_the_candidate(strategy):
    routes = build_routes(policy(strategy=strategy, candidate_percent=50), servables(1, 2), None)
    picks = [routes.route(f"k{i}") for i in range(300)]
    assert {(servable.version, route) for servable, route, _ in picks} == {(1, "stable")}


def test_a_candidate_not_available_leaves_stable_at_100_percent():
    routes = build_routes(policy(candidate_percent=100), servables(1), None)
    assert routes.candidate is None and routes.fallback is None
    assert {routes.route(f"k{i}")[0].version for i in range(200)} == {1}


def test_stable_not_yet_available_falls_back_loudly_to_the_previous_stable():
    before = build_routes(policy(stable_version=1, candidate_version=None, candidate_percent=0),
                          servables(1, 3), None)
    # Blue-green to version 3 while a newer, unrelated version 2 is not stable: the previous
    # stable (1) keeps serving, and the fallback says so.
    loaded = servables(1, 2)
    after = build_routes(policy(stable_version=3, candidate_version=2, candidate_percent=0),
                         loaded, Routes(before.policy, loaded[1]))
    assert after.stable.version == 1 and "stable_version 3 is not available" in after.fallback
    assert after.candidate.version == 2
    assert build_routes(policy(), {}, None) is None
