"""Retraining on evidence: turns a TrafficMonitor report into a retraining alert, at most one
per cooldown.

`RetrainingAlert` reads the report's distances.json (components/traffic_monitor.py). The
report *alerts* when a feature's skew or drift crosses its threshold, or when the live
accuracy of a served version (delayed labels, components/traffic_labels.py) is below its
threshold. An alert is *emitted* (the orchestrator turns it into an asset event: the
Airflow adapter emits `alert.json` as the event's `extra`, pipelines/airflow_adapter.py) only
when `asset_uri` names the asset to emit to and no alert was emitted to that asset within
`cooldown_hours` before; otherwise it is *suppressed*, and the step ends skipped with the
reason (Airflow: a skipped task emits no asset event). A report without an alert ends the
step skipped too. Every decision is recorded as an `AlertDecision` artifact (alert.json
holds the decision and, when emitted, the event's extra), so the cooldown reads the last
emitted alert back from ML Metadata, whichever process decided it.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time

from components.artifacts import Artifact
from components.base import Component, Input, Output, Parameter, Step
from components.traffic_monitor import DISTANCES_FILE, TrafficReport

ALERT_FILE = "alert.json"
EVENT_FILE = "asset_event.json"  # an output file the Airflow adapter emits as the event extra


class AlertDecision(Artifact):
    """What one report decided: `alert` (1: skew, drift or live accuracy crossed a
    threshold), `emitted` (1: an asset event was requested), `suppressed` (1: an alert
    within the cooldown of the last emitted one), `reason`, the report and served version
    it is about, `decided_at` (UNIX seconds) and `cooldown_until` (UNIX seconds: no other
    alert is emitted to `asset_uri` before)."""

    PROPERTIES = {"alert": int, "emitted": int, "suppressed": int, "reason": str,
                  "report_id": int, "model_name": str, "model_version": int,
                  "flagged_features": list, "reasons": list, "decided_at": float,
                  "cooldown_until": float, "asset_uri": str}


def alert_reasons(result: dict) -> list[str]:
    """Why a report (distances.json) alerts, one line per cause; [] for no alert.
    Skew and drift list their flagged features; live accuracy names each version below
    its threshold with its accuracy and label count."""
    reasons = []
    features = result.get("features") or {}
    for kind in ("skew", "drift"):
        flagged = sorted(name for name, f in features.items()
                         if (f.get(kind) or {}).get("flagged"))
        if flagged:
            reasons.append(f"{kind}: {', '.join(flagged)}")
    quality = result.get("live_quality") or {}
    for version, measured in sorted((quality.get("versions") or {}).items()):
        if measured.get("below_threshold"):
            reasons.append(f"live accuracy of version {version}: {measured['accuracy']:.4f} < "
                           f"{quality['threshold']:g} ({measured['labeled']} labels)")
    return reasons


def decide(result: dict, last_emitted: dict | None, *, now: float, cooldown_seconds: float,
           can_emit: bool) -> dict:
    """The decision for one report. last_emitted: the newest earlier emitted decision
    ({"decided_at": UNIX seconds, "report_id": ...}) or None. Returns {"alert", "emit",
    "suppressed", "reason", "reasons", "cooldown_until"}: emit only when there is an alert,
    `can_emit` (an asset to emit to) and `now` is at least `cooldown_seconds` after the last
    emitted alert."""
    reasons = alert_reasons(result)
    if not reasons:
        verdict = result.get("verdict", "?")
        return {"alert": False, "emit": False, "suppressed": False, "reasons": [],
                "reason": f"no alert: verdict {verdict}, every threshold held",
                "cooldown_until": last_emitted["cooldown_until"] if last_emitted else 0.0}
    if last_emitted is not None and now < last_emitted["decided_at"] + cooldown_seconds:
        until = last_emitted["decided_at"] + cooldown_seconds
        return {"alert": True, "emit": False, "suppressed": True, "reasons": reasons,
                "reason": f"alert suppressed by the cooldown: alert #{last_emitted['id']} "
                          f"(report #{last_emitted['report_id']}) started a retraining at "
                          f"{iso(last_emitted['decided_at'])}; the next alert can start one "
                          f"from {iso(until)} ({'; '.join(reasons)})",
                "cooldown_until": until}
    if not can_emit:
        return {"alert": True, "emit": False, "suppressed": False, "reasons": reasons,
                "reason": f"alert ({'; '.join(reasons)}); no asset to emit to: retraining "
                          f"starts only from the monitoring DAG",
                "cooldown_until": last_emitted["cooldown_until"] if last_emitted else 0.0}
    return {"alert": True, "emit": True, "suppressed": False, "reasons": reasons,
            "reason": f"alert emitted: {'; '.join(reasons)}",
            "cooldown_until": now + cooldown_seconds}


def event_extra(result: dict, report_id: int, reasons: list[str]) -> dict:
    """The asset event's extra: what a retraining run records about its trigger. Distances
    per feature are kept small: the measured values and thresholds, no distributions."""
    features = {}
    for name, f in (result.get("features") or {}).items():
        features[name] = {"threshold": f["threshold"], "psi_threshold": f["psi_threshold"],
                          "flagged": f["flagged"]}
        for kind in ("skew", "drift"):
            side = f.get(kind)
            features[name][kind] = None if side is None else {
                "distance": side["distance"], "psi": side["psi"], "flagged": side["flagged"]}
    quality = result.get("live_quality")
    return {"report_id": report_id,
            "model_name": result.get("model_name"),
            "model_version": result.get("served_version"),
            "served_model_id": result.get("served_model_id"),
            "window_start": result.get("window_start"), "window_end": result.get("window_end"),
            "verdict": result.get("verdict"), "flagged_features": result.get("flagged", []),
            "reasons": reasons, "distances": features,
            "live_quality": None if not quality else {
                k: quality.get(k) for k in ("threshold", "labels", "joined", "unjoined",
                                            "versions")}}


class RetrainingAlert(Component):
    """Decides whether a TrafficMonitor report starts a retraining (module docstring).

    Parameters: `asset_uri`, the asset the orchestrator emits the alert to ("" when run by
    `pipewright monitor`: the decision is reported, nothing is emitted); `cooldown_hours`
    (>= 0): after an emitted alert, further alerts to the same asset within this many hours
    are suppressed. Output `alert` (AlertDecision) holds alert.json and, when emitted,
    asset_event.json (the event's extra). Skips the step when nothing is emitted. Raises
    ValueError for a negative cooldown.
    """

    report: Input[TrafficReport]
    alert: Output[AlertDecision]
    asset_uri: Parameter[str] = ""
    cooldown_hours: Parameter[float] = 6.0

    def execute(self, step: Step) -> None:
        if step.cooldown_hours < 0:
            raise ValueError(f"cooldown_hours must be >= 0, got {step.cooldown_hours}")
        with open(step.report.path(DISTANCES_FILE), encoding="utf-8") as fh:
            result = json.load(fh)
        last = last_emitted(step.metadata, step.pipeline_name, step.asset_uri)
        now = time.time()
        decision = decide(result, last, now=now, cooldown_seconds=step.cooldown_hours * 3600,
                          can_emit=bool(step.asset_uri))
        record = {**decision, "decided_at": now, "report_id": step.report.id,
                  "asset_uri": step.asset_uri, "cooldown_hours": step.cooldown_hours,
                  "last_emitted": last}
        if decision["emit"]:
            extra = event_extra(result, step.report.id, decision["reasons"])
            record["event_extra"] = extra
            with open(step.alert.path(EVENT_FILE), "w", encoding="utf-8") as fh:
                json.dump(extra, fh, indent=1, sort_keys=True)
        with open(step.alert.path(ALERT_FILE), "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=1, sort_keys=True)
        version = result.get("served_version")
        step.alert.set(alert=int(decision["alert"]), emitted=int(decision["emit"]),
                       suppressed=int(decision["suppressed"]), reason=decision["reason"],
                       report_id=step.report.id, model_name=result.get("model_name") or "",
                       model_version=int(version) if version is not None else -1,
                       flagged_features=list(result.get("flagged") or []),
                       reasons=decision["reasons"], decided_at=now,
                       cooldown_until=float(decision["cooldown_until"] or 0.0),
                       asset_uri=step.asset_uri)
        if decision["suppressed"]:
            step.log.warning("%s", decision["reason"])
        if decision["emit"]:
            step.note(decision["reason"])
        else:
            step.skip(decision["reason"])


def last_emitted(metadata, pipeline_name: str, asset_uri: str) -> dict | None:
    """The newest AlertDecision of this pipeline that emitted to `asset_uri`, as
    {"id", "report_id", "decided_at", "cooldown_until"}; None when none did (or no asset)."""
    if metadata is None or not asset_uri:
        return None
    emitted = [a for a in metadata.artifacts_in_pipeline(pipeline_name, AlertDecision)
               if a.emitted == 1 and a.asset_uri == asset_uri]
    if not emitted:
        return None
    newest = max(emitted, key=lambda a: (a.decided_at or 0.0, a.id))
    return {"id": newest.id, "report_id": newest.report_id, "decided_at": newest.decided_at,
            "cooldown_until": newest.cooldown_until}


def iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_decision(alert: AlertDecision) -> dict:
    """alert.json of a decision (what `pipewright show` prints)."""
    with open(os.path.join(alert.uri, ALERT_FILE), encoding="utf-8") as fh:
        return json.load(fh)
