"""Drives one rollout (components/rollout_policy.py) a bake window at a time, from live evidence.

`advance()` is called whenever a window may have ended; it reads `rollout.json`, does at most
one transition, writes the file back and says how long to wait before the next call (None:
the rollout reached a final state). It keeps no state of its own, so the Rollout step can
call it from a loop (local runner) or from an Airflow task that defers between calls, and a
person can run `pipewright rollout` in between. Transitions:

  loading  -> baking        the candidate is AVAILABLE on the server (loaded and warmed);
                            canary: its share becomes the first step; shadow: mirroring
                            starts; blue_green: one window of stable alone (the reference),
                            then it takes 100 % at once, the old stable kept loaded
  loading  -> rolled_back   it is not AVAILABLE within `load_timeout_s`
  baking   -> baking        the window passed its guards: the next canary step
  baking   -> promoted      the last window passed (a canary step of 100 % is the promotion
                            itself): the candidate becomes stable (blue-green and shadow keep
                            the old stable loaded in hold_versions)
  baking   -> rolled_back   a guard failed, or `max_inconclusive` windows in a row had fewer
                            than `min_requests` requests on a version the guards compare
                            (no evidence is no promotion)

Guards (thresholds in the policy's `guards`; values per window, candidate against stable in
the same window — for blue-green, against stable's reference window before the switch):
  max_error_rate_ratio     max(rate_c, 1 %) / max(rate_s, 1 %): error rates under ERROR_RATE_FLOOR
                           are noise at a window's request counts, not a regression
  max_latency_p99_ratio    p99_c / p99_s (histogram bucket upper bounds)
  max_prediction_distance  L-infinity distance of predicted-class shares (TFDV's categorical
                           drift measure; tensorflow_data_validation/anomalies/metrics.cc)
  min_shadow_agreement     same / (same + different) over the candidate's shadowed rows
  min_live_accuracy        the candidate's accuracy on the delayed labels joined so far
                           (components/rollout_labels.py): judged once `min_labels` of its
                           answers have a label; until then, or without labels, "not judged"
                           (labels come late: their absence never holds a rollout back)
Under `shadow` the candidate answers no client, so the error and latency guards are not
judged; its shadow answers give the agreement and the predicted-class shares.
Practice followed: Flagger's canary analysis (step weights, an analysis per interval, a
failed-checks threshold before rollback) and Argo Rollouts' AnalysisRun "inconclusive".
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from components.rollout_evidence import EvidenceUnavailable, Snapshot, VersionEvidence, window
from components.rollout_policy import (BAKING, BLUE_GREEN, CANARY, LOADING, PROMOTED,
                                       ROLLED_BACK, SHADOW, RolloutPolicy, read_policy,
                                       write_policy)

HISTORY_FILE = "rollout_history.jsonl"
REFERENCE, SWITCHED = "reference", "switched"  # blue-green's two windows
ERROR_RATE_FLOOR = 0.01


@dataclass
class GuardResult:
    name: str
    threshold: float
    value: float | None
    passed: bool | None  # None: inconclusive (too little evidence) or not available
    detail: str = ""

    def to_json(self) -> dict:
        return {"guard": self.name, "threshold": self.threshold, "value": self.value,
                "passed": self.passed, "detail": self.detail}


@dataclass
class Decision:
    """What `advance` did. wait_s: seconds until the next call is useful (None: final)."""

    state: str
    wait_s: float | None
    event: str  # "waiting", "started", "advanced", "promoted", "rolled_back", "extended", "none"
    reason: str = ""
    guards: list[GuardResult] = field(default_factory=list)


@dataclass
class Settings:
    """min_requests: per compared version per window; load_timeout_s: for the candidate to
    become AVAILABLE; max_inconclusive: windows in a row without enough evidence;
    min_labels: the candidate's labeled answers before min_live_accuracy judges (>= 1).
    Raises ValueError for min_labels < 1."""

    min_requests: int = 20
    min_labels: int = 10
    load_timeout_s: float = 600.0
    max_inconclusive: int = 3

    def __post_init__(self):
        # min_labels 0 would judge a candidate with no labeled answer (accuracy 0/0).
        if self.min_labels < 1:
            raise ValueError(f"Rollout min_labels must be >= 1 (labeled answers before "
                             f"min_live_accuracy judges), got {self.min_labels}")


NOT_JUDGED = "not judged: "  # a guard that cannot apply (never blocks, never counts as open)


def evaluate_guards(policy: RolloutPolicy, candidate: VersionEvidence,
                    stable: VersionEvidence, min_requests: int,
                    live: dict[int, tuple[int, int]] | None = None,
                    min_labels: int = 10) -> list[GuardResult]:
    """Each guard's value for one window. Under `shadow` the candidate answers no client:
    error and latency guards are not judged (shadow calls are not client requests), and the
    prediction distance compares the classes of its shadow answers. `live`: {version:
    (labeled, correct)} from delayed labels (None: no labels configured)."""
    results = []
    shadow = policy.strategy == SHADOW
    answered = sum(candidate.class_counts.values()) if shadow else candidate.requests
    enough = answered >= min_requests and stable.requests >= min_requests
    short = (f"too little evidence: candidate {answered}, stable "
             f"{stable.requests} requests (need {min_requests} each)")
    for name, threshold in sorted(policy.guards.items()):
        if name == "min_live_accuracy":
            results.append(_live_accuracy(threshold, candidate.version, live, min_labels))
            continue
        if shadow and name in ("max_error_rate_ratio", "max_latency_p99_ratio"):
            results.append(GuardResult(name, threshold, None, None,
                                       NOT_JUDGED + "the candidate answers no client under "
                                       "shadow"))
            continue
        if name == "min_shadow_agreement":
            compared = candidate.shadow_same + candidate.shadow_different
            if compared < min_requests:
                results.append(GuardResult(name, threshold, None, None,
                                           f"too little evidence: {compared} shadowed rows"))
                continue
            value = candidate.shadow_same / compared
            results.append(GuardResult(name, threshold, round(value, 6), value >= threshold,
                                       f"{candidate.shadow_same} of {compared} rows agree"))
            continue
        if not enough:
            results.append(GuardResult(name, threshold, None, None, short))
            continue
        if name == "max_error_rate_ratio":
            value = (max(candidate.error_rate, ERROR_RATE_FLOOR)
                     / max(stable.error_rate, ERROR_RATE_FLOOR))
            detail = (f"errors {candidate.errors}/{candidate.requests} vs "
                      f"{stable.errors}/{stable.requests}")
        elif name == "max_latency_p99_ratio":
            if not candidate.latency_p99_micros or not stable.latency_p99_micros:
                results.append(GuardResult(name, threshold, None, None, "no latency"))
                continue
            value = candidate.latency_p99_micros / stable.latency_p99_micros
            detail = (f"p99 {candidate.latency_p99_micros:.0f} us vs "
                      f"{stable.latency_p99_micros:.0f} us")
        else:  # max_prediction_distance
            a, b = candidate.class_shares(), stable.class_shares()
            if not a or not b:
                results.append(GuardResult(name, threshold, None, None,
                                           "no predicted classes counted"))
                continue
            value = max(abs(a.get(c, 0.0) - b.get(c, 0.0)) for c in set(a) | set(b))
            detail = "class shares " + ", ".join(
                f"{c}: {a.get(c, 0):.2f} vs {b.get(c, 0):.2f}" for c in sorted(set(a) | set(b)))
        results.append(GuardResult(name, threshold, round(value, 6), value <= threshold, detail))
    return results


def _live_accuracy(threshold: float, version: int, live: dict[int, tuple[int, int]] | None,
                   min_labels: int) -> GuardResult:
    name = "min_live_accuracy"
    if live is None:
        return GuardResult(name, threshold, None, None,
                           NOT_JUDGED + "no delayed labels given to the rollout")
    labeled, correct = live.get(version, (0, 0))
    if labeled < min_labels:
        return GuardResult(name, threshold, None, None,
                           NOT_JUDGED + f"{labeled} of version {version}'s answers labeled so "
                           f"far (judged from {min_labels})")
    value = correct / labeled
    return GuardResult(name, threshold, round(value, 6), value >= threshold,
                       f"{correct} of {labeled} labeled answers of version {version} right")


def advance(base_path: str, model_name: str, evidence, settings: Settings = Settings(),
            now: float | None = None, labels=None) -> Decision:
    """One step of the rollout in `<base_path>/rollout.json` (see the module docstring).
    `evidence` has snapshot(model_name) -> Snapshot and available(model_name, version);
    `labels` (optional, rollout_labels.DelayedLabels) has counts(model_name) for the
    min_live_accuracy guard. Raises RolloutConfigError when the file is invalid."""
    now = time.time() if now is None else now
    policy = read_policy(base_path)
    if policy is None or not policy.in_progress:
        return Decision(policy.state if policy else "none", None, "none",
                        policy.reason if policy else "no rollout.json")
    if policy.state == LOADING:
        return _start(base_path, model_name, policy, evidence, settings, now)
    started = float(policy.window.get("started_at", now))
    remaining = started + policy.bake_seconds - now
    if remaining > 0:
        return Decision(policy.state, remaining, "waiting")
    return _judge(base_path, model_name, policy, evidence, settings, now, labels)


def _start(base_path, model_name, policy, evidence, settings, now) -> Decision:
    loading_since = float(policy.window.get("loading_since", policy.updated_at or now))
    if not evidence.available(model_name, policy.candidate_version):
        if now - loading_since > settings.load_timeout_s:
            return _roll_back(base_path, policy, now,
                              f"candidate version {policy.candidate_version} did not become "
                              f"AVAILABLE on {evidence} within {settings.load_timeout_s:.0f} s")
        return Decision(LOADING, min(5.0, policy.bake_seconds), "waiting",
                        f"waiting for version {policy.candidate_version} to load")
    try:
        snapshot = evidence.snapshot(model_name)
    except EvidenceUnavailable as exc:
        return Decision(LOADING, min(5.0, policy.bake_seconds), "waiting", str(exc))
    policy.state = BAKING
    policy.step_index = 0
    if policy.strategy == CANARY:
        policy.candidate_percent = policy.steps_percent[0]
    policy.window = {"started_at": now, "start": snapshot.to_json(), "inconclusive": 0}
    if policy.strategy == BLUE_GREEN:  # first a window of stable alone: the reference
        policy.window["phase"] = REFERENCE
    policy.reason = _routing(policy)
    write_policy(base_path, policy)
    record_event(base_path, policy, "started", policy.reason)
    return Decision(BAKING, policy.bake_seconds, "started", policy.reason)


def _routing(policy: RolloutPolicy) -> str:
    if policy.window.get("phase") == REFERENCE:
        return (f"measuring version {policy.stable_version} alone before switching to version "
                f"{policy.candidate_version} (it is loaded and held)")
    if policy.strategy == SHADOW:
        return (f"shadowing {policy.shadow_percent:g} % of requests to version "
                f"{policy.candidate_version}")
    return (f"{policy.candidate_percent:g} % of unpinned requests to version "
            f"{policy.candidate_version}")


def _judge(base_path, model_name, policy, evidence, settings, now, labels=None) -> Decision:
    try:
        end = evidence.snapshot(model_name)
    except EvidenceUnavailable as exc:
        return _inconclusive(base_path, policy, settings, now, f"no evidence: {exc}", [])
    start = Snapshot.from_json(policy.window["start"])
    switched = policy.window.get("phase") == SWITCHED
    new, old = rollout_versions(policy)
    found, restarted = window(start, end, [old, new])
    if restarted:
        policy.window.update(started_at=now, start=end.to_json())
        return _inconclusive(base_path, policy, settings, now,
                             "the model server restarted during the window", [])
    candidate, stable = found[new], found[old]
    if policy.window.get("phase") == REFERENCE:
        return _switch(base_path, policy, settings, now, end, stable)
    reference = stable
    if switched:  # the old version serves nobody now: its window before the switch
        reference = VersionEvidence(old, **policy.window["reference"])
    live = (labels.counts(model_name)
            if labels is not None and "min_live_accuracy" in policy.guards else None)
    guards = evaluate_guards(policy, candidate, reference, settings.min_requests, live,
                             settings.min_labels)
    record = {"candidate": candidate.to_json(), "stable": stable.to_json(),
              "guards": [g.to_json() for g in guards]}
    failed = [g for g in guards if g.passed is False]
    if failed:
        reason = "; ".join(f"{g.name} {g.value} beyond {g.threshold} ({g.detail})"
                           for g in failed)
        return _roll_back(base_path, policy, now, reason, guards, record)
    open_ = [g for g in guards if g.passed is None and not g.detail.startswith(NOT_JUDGED)]
    if open_:
        return _inconclusive(base_path, policy, settings, now,
                             "; ".join(f"{g.name}: {g.detail}" for g in open_), guards, record)
    return _next_step(base_path, policy, end, stable, now, guards, record)


def rollout_versions(policy: RolloutPolicy) -> tuple[int, int]:
    """(new version, old version) of the rollout. After a blue-green switch the new one is
    already the stable version and the old one is held (window "previous_stable")."""
    if policy.window.get("phase") == SWITCHED:
        return policy.stable_version, int(policy.window["previous_stable"])
    return policy.candidate_version, policy.stable_version


def _switch(base_path, policy, settings, now, end, stable) -> Decision:
    """Blue-green: stable's window alone is the reference; then all traffic switches (the
    server swaps a stable and a held version at its next poll, without a load)."""
    if stable.requests < settings.min_requests:
        return _inconclusive(base_path, policy, settings, now,
                             f"too little evidence: stable {stable.requests} requests (need "
                             f"{settings.min_requests}) to compare the switch with", [])
    old = policy.stable_version
    policy.stable_version, policy.candidate_version = policy.candidate_version, None
    policy.hold_versions = [old]
    policy.window = {"started_at": now, "start": end.to_json(), "inconclusive": 0,
                     "phase": SWITCHED, "previous_stable": old, "reference": {
                         k: v for k, v in stable.to_json().items()
                         if k in ("requests", "errors", "latency_p99_micros", "class_counts")}}
    policy.reason = (f"switched: version {policy.stable_version} serves every unpinned "
                     f"request, version {old} held loaded")
    write_policy(base_path, policy)
    record_event(base_path, policy, "switched", policy.reason, {"stable": stable.to_json()})
    return Decision(BAKING, policy.bake_seconds, "switched", policy.reason)


def _next_step(base_path, policy, end, stable, now, guards, record) -> Decision:
    # A step of 100 % is the promotion itself: stable would serve nobody to compare with.
    following = policy.step_index + 1
    last = (policy.strategy != CANARY or following >= len(policy.steps_percent)
            or policy.steps_percent[following] >= 100)
    if last:
        new, previous = rollout_versions(policy)
        policy.stable_version, policy.candidate_version = new, None
        policy.candidate_percent = policy.shadow_percent = 0.0
        policy.hold_versions = [previous] if policy.strategy in (BLUE_GREEN, SHADOW) else []
        policy.state = PROMOTED
        policy.reason = (f"promoted version {policy.stable_version}: every window passed its "
                         f"guards")
        policy.window = {}
        write_policy(base_path, policy)
        record_event(base_path, policy, "promoted", policy.reason, record)
        return Decision(PROMOTED, None, "promoted", policy.reason, guards)
    policy.step_index += 1
    policy.candidate_percent = policy.steps_percent[policy.step_index]
    policy.window = {"started_at": now, "start": end.to_json(), "inconclusive": 0}
    policy.reason = f"step {policy.step_index + 1}: " + _routing(policy)
    write_policy(base_path, policy)
    record_event(base_path, policy, "advanced", policy.reason, record)
    return Decision(BAKING, policy.bake_seconds, "advanced", policy.reason, guards)


def _inconclusive(base_path, policy, settings, now, why, guards, record=None) -> Decision:
    count = int(policy.window.get("inconclusive", 0)) + 1
    if count >= settings.max_inconclusive:
        return _roll_back(base_path, policy, now,
                          f"no evidence in {count} windows in a row ({why}); a candidate "
                          f"without evidence is not promoted", guards, record)
    policy.window["inconclusive"] = count
    policy.window["started_at"] = now  # the window grows: the start snapshot stays
    policy.reason = f"window extended ({count}/{settings.max_inconclusive}): {why}"
    write_policy(base_path, policy)
    record_event(base_path, policy, "extended", policy.reason, record)
    return Decision(policy.state, policy.bake_seconds, "extended", policy.reason, guards)


def _roll_back(base_path, policy, now, reason, guards=(), record=None) -> Decision:
    candidate, policy.stable_version = rollout_versions(policy)  # a switched blue-green reverts
    policy.candidate_version = None  # 0 % at once; the server unloads it after in-flight calls
    policy.candidate_percent = policy.shadow_percent = 0.0
    policy.hold_versions = []
    policy.state = ROLLED_BACK
    policy.reason = f"rolled back version {candidate}: {reason}"
    policy.window = {"rolled_back_version": candidate}
    write_policy(base_path, policy)
    record_event(base_path, policy, "rolled_back", policy.reason, record, candidate)
    return Decision(ROLLED_BACK, None, "rolled_back", policy.reason, list(guards))


def record_event(base_path, policy, event, reason, record=None, candidate=None) -> None:
    """Appends one event (with the policy's versions) to the rollout's history file."""
    entry = {"time": time.time(), "event": event, "generation": policy.generation,
             "strategy": policy.strategy, "stable_version": policy.stable_version,
             "candidate_version": candidate if candidate is not None
             else policy.candidate_version, "candidate_percent": policy.candidate_percent,
             "reason": reason, **(record or {})}
    with open(os.path.join(base_path, HISTORY_FILE), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")


def history(base_path: str, candidate_version: int | None = None) -> list[dict]:
    """The controller's events for this base path (all, or one candidate's), oldest first."""
    try:
        with open(os.path.join(base_path, HISTORY_FILE), encoding="utf-8") as fh:
            entries = [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []
    if candidate_version is None:
        return entries
    return [e for e in entries if e.get("candidate_version") == candidate_version
            or (e.get("event") == "promoted" and e.get("stable_version") == candidate_version)]
