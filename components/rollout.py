"""Rollout: after the Pusher, bakes the pushed candidate on live traffic and promotes it or
rolls it back (components/rollout_controller.py), from the model server's per-version
evidence. Cached like any step: a re-run whose Pusher was cached (the same push) reuses the
verdict that push's rollout reached; an interrupted rollout publishes nothing."""
from __future__ import annotations

import os
import time

from components.artifacts import Artifact, PushedModel, STRING, INT
from components.base import Component, Input, Output, Parameter, Step
from components.rollout_controller import Decision, Settings, advance, history
from components.rollout_evidence import PrometheusEvidence
from components.rollout_labels import DelayedLabels
from components.rollout_policy import (ABORTED, IMMEDIATE, PROMOTED, ROLLED_BACK, read_policy,
                                       write_policy)

PENDING_POLL_S = 60.0  # a deferred task looks again at least this often (an abort, a promote)

SERVER_ENV = "PIPEWRIGHT_MODEL_SERVER_REST"  # set by `make up` for Airflow's processes


class RolloutReport(Artifact):
    """How a pushed model's rollout ended. `state`: promoted, rolled_back or none (nothing
    was rolled out); `evidence`: "live" (the model server's metrics) or "none" (no server to
    observe: the candidate was promoted without live evidence — a recorded fallback, see
    `fallback`). Files: report.txt and windows.json (every bake window and its guards)."""

    PROPERTIES = {"state": STRING, "pushed_version": INT, "stable_version": INT,
                  "reason": STRING, "evidence": STRING, "fallback": STRING, "server": STRING}


class Rollout(Component):
    """Drives the rollout the Pusher started (`rollout.json` beside the versions) to a verdict:
    every `bake_seconds` window it compares the candidate with the stable version on the
    model server's per-version metrics and widens its share, promotes it, or rolls it back.
    A rolled-back push is marked `rolled_back` in the metadata store: the Pusher never pushes
    that model again and it is never an Evaluator baseline.

    The server is read at `server_url` (its REST address, e.g. http://127.0.0.1:8501), else
    $PIPEWRIGHT_MODEL_SERVER_REST. Without either, nothing can be observed: the candidate is
    promoted at once, and the report says so (evidence "none", fallback "immediate").
    `labels` (a delayed-label file or directory, components/traffic_labels.py formats) feeds
    the policy's `min_live_accuracy` guard: joined to the server's request logs in `log_dir`
    (default `<home>/request_logs`), the candidate is judged once `min_labels` of its
    answers are labeled.
    In Airflow the task defers between windows (`pending`), so a bake holds no worker slot.
    Raises RolloutConfigError for an invalid rollout.json."""

    pushed_model: Input[PushedModel]
    rollout_report: Output[RolloutReport]
    model_name: Parameter[str]
    push_destination: Parameter[str] = ""
    server_url: Parameter[str] = ""
    min_requests: Parameter[int] = 20  # per version and window, for a guard to judge
    load_timeout_seconds: Parameter[float] = 600.0
    max_inconclusive: Parameter[int] = 3
    labels: Parameter[str] = ""
    log_dir: Parameter[str] = ""
    min_labels: Parameter[int] = 10

    def execute(self, step: Step) -> None:
        pushed, report = step.pushed_model, step.rollout_report
        report.set(state="none", pushed_version=pushed.pushed_version or 0, evidence="none",
                   fallback="", server="")
        policy = read_policy(pushed.pushed_destination) if pushed.pushed else None
        ended_here = policy is not None and policy.window.get("rolled_back_version") == \
            pushed.pushed_version  # rolled back or aborted by hand while this step waited
        if not pushed.pushed or policy is None or (not ended_here and pushed.pushed_version
                                                   not in (policy.candidate_version,
                                                           policy.stable_version)):
            why = ("nothing was pushed" if not pushed.pushed
                   else f"version {pushed.pushed_version} is not under a rollout")
            _write(report, why, [])
            step.skip(why)
            return
        url = step.server_url or os.environ.get(SERVER_ENV, "")
        if policy.in_progress and not url:
            self._promote_unobserved(step, policy)
            return
        if policy.in_progress:
            report.set(evidence="live", server=url)
            labels = delayed_labels(step.labels, step.log_dir, step.home, step.log)
            decision = drive(pushed.pushed_destination, step.model_name,
                             PrometheusEvidence(url), self.settings(step), step, labels)
        else:
            decision = Decision(policy.state, None, "none", policy.reason)
        self._record(step, decision)

    def settings(self, values) -> Settings:
        return Settings(min_requests=values.min_requests,
                        load_timeout_s=values.load_timeout_seconds,
                        max_inconclusive=values.max_inconclusive,
                        min_labels=values.min_labels)

    def pending(self, params: dict, serving_dir: str, home_root: str = "") -> float | None:
        """For a deferring orchestrator: advances the rollout once; seconds to wait before
        the next call, or None when the step can run (a verdict, or nothing to drive)."""
        from components.pusher import serving_base

        base = serving_base(serving_dir, params.get("push_destination", ""), params["model_name"])
        policy = read_policy(base)
        url = params.get("server_url") or os.environ.get(SERVER_ENV, "")
        if policy is None or not policy.in_progress or not url:
            return None
        settings = Settings(min_requests=params.get("min_requests", 20),
                            load_timeout_s=params.get("load_timeout_seconds", 600.0),
                            max_inconclusive=params.get("max_inconclusive", 3),
                            min_labels=params.get("min_labels", 10))
        labels = delayed_labels(params.get("labels", ""), params.get("log_dir", ""), home_root)
        wait_s = advance(base, params["model_name"], PrometheusEvidence(url), settings,
                         labels=labels).wait_s
        return None if wait_s is None else min(wait_s, PENDING_POLL_S)

    def _promote_unobserved(self, step: Step, policy) -> None:
        note = (f"no model server to observe (set server_url or ${SERVER_ENV}): version "
                f"{policy.candidate_version} promoted without live evidence "
                f"(fallback: immediate instead of {policy.strategy})")
        step.log.warning("%s", note)
        previous = policy.stable_version
        policy.stable_version, policy.candidate_version = policy.candidate_version, None
        policy.candidate_percent = policy.shadow_percent = 0.0
        policy.state, policy.reason, policy.window = PROMOTED, note, {}
        write_policy(step.pushed_model.pushed_destination, policy)
        step.rollout_report.set(fallback=IMMEDIATE)
        self._record(step, Decision(PROMOTED, None, "promoted", note), previous)

    def _record(self, step: Step, decision: Decision, previous: int | None = None) -> None:
        pushed, report = step.pushed_model, step.rollout_report
        policy = read_policy(pushed.pushed_destination)
        state = decision.state
        if policy is not None and policy.stable_version == pushed.pushed_version:
            state = PROMOTED
        report.set(state=state, reason=decision.reason or (policy.reason if policy else ""),
                   stable_version=policy.stable_version if policy else 0)
        if state in (ROLLED_BACK, ABORTED):
            pushed.set(rolled_back=1)
            step.metadata.update_artifact(pushed)
        windows = history(pushed.pushed_destination, pushed.pushed_version)
        _write(report, f"{state}: {report.reason}", windows)
        step.note(f"{state}: {report.reason}")


def delayed_labels(labels: str, log_dir: str, home_root: str, log=None) -> DelayedLabels | None:
    """The min_live_accuracy guard's evidence (None without `labels`). Raises
    FileNotFoundError naming a `labels` path that does not exist."""
    if not labels:
        return None
    if not os.path.exists(labels):
        raise FileNotFoundError(f"labels {labels} (the Rollout's delayed labels) does not exist")
    return DelayedLabels(labels, log_dir or os.path.join(home_root, "request_logs"), log)


def drive(base_path: str, model_name: str, evidence, settings: Settings, step: Step,
          labels: DelayedLabels | None = None) -> Decision:
    """Calls `advance` until a verdict, sleeping between windows (the local runner's way of
    waiting; Airflow defers instead). A termination signal stops it (StepInterrupted)."""
    while True:
        step.check_not_interrupted()
        decision = advance(base_path, model_name, evidence, settings, labels=labels)
        if decision.event not in ("waiting", "none"):
            step.log.info("rollout %s: %s", decision.event, decision.reason)
        if decision.wait_s is None:
            return decision
        deadline = time.monotonic() + decision.wait_s
        look_again = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            step.check_not_interrupted()
            if time.monotonic() >= look_again:  # a person may promote or abort meanwhile
                look_again = time.monotonic() + 5.0
                policy = read_policy(base_path)
                if policy is None or not policy.in_progress:
                    break
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _write(report: RolloutReport, summary: str, windows: list[dict]) -> None:
    import json

    with open(report.path("windows.json"), "w", encoding="utf-8") as fh:
        json.dump(windows, fh, indent=2, sort_keys=True)
    lines = [summary, ""]
    for entry in windows:
        lines.append(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(entry['time']))} UTC "
                     f"{entry['event']}: {entry['reason']}")
        for guard in entry.get("guards", []):
            verdict = {True: "passed", False: "FAILED", None: "open"}[guard["passed"]]
            lines.append(f"    {guard['guard']}: {guard['value']} (threshold "
                         f"{guard['threshold']}) {verdict} — {guard['detail']}")
    with open(report.path("report.txt"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
