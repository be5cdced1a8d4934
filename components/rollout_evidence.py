"""Per-version live evidence for a rollout, read from the model server's Prometheus endpoint.

The server exports, per model and version (docs/rollout.md, serving/metrics.py):
  :pipewright:serving:version_request_count{model_name,version,status}   counter
  :pipewright:serving:version_request_latency{model_name,version}        histogram, microseconds
  :pipewright:serving:prediction_class_count{model_name,version,class}   counter
  :pipewright:serving:shadow_comparison_count{model_name,version,agreement}  counter
Counters only grow while a server runs, so a bake window's evidence is the difference of two
snapshots (the window's start and end). A counter that went down (the server restarted in
between) makes the window's evidence unusable: `window()` then reports `restarted`.

The text is parsed with prometheus_client's parser (the Prometheus text exposition format).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

REQUESTS = ":pipewright:serving:version_request_count"
LATENCY = ":pipewright:serving:version_request_latency"
CLASSES = ":pipewright:serving:prediction_class_count"
SHADOW = ":pipewright:serving:shadow_comparison_count"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
_WANTED = (REQUESTS, LATENCY + "_bucket", CLASSES, SHADOW)


class EvidenceUnavailable(RuntimeError):
    """The model server could not be read (down, no Prometheus endpoint, bad answer)."""


@dataclass
class Snapshot:
    """Counter values of one model at one time: {"metric|label=value,...": value}."""

    taken_at: float
    values: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"taken_at": self.taken_at, "values": self.values}

    @classmethod
    def from_json(cls, raw: dict) -> "Snapshot":
        return cls(float(raw["taken_at"]), {k: float(v) for k, v in raw["values"].items()})


def _key(metric: str, labels: dict[str, str]) -> str:
    return metric + "|" + ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def _split_key(key: str) -> tuple[str, dict[str, str]]:
    metric, _, rest = key.partition("|")
    labels = dict(item.split("=", 1) for item in rest.split(",") if item)
    return metric, labels


def parse_metrics(text: str, model_name: str, taken_at: float | None = None) -> Snapshot:
    """The rollout counters of `model_name` in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    snapshot = Snapshot(time.time() if taken_at is None else taken_at)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if family.type == "counter" and name.endswith("_total"):
                name = name[: -len("_total")]  # the parser's OpenMetrics naming
            if name not in _WANTED or sample.labels.get("model_name") != model_name:
                continue
            labels = {k: v for k, v in sample.labels.items() if k != "model_name"}
            snapshot.values[_key(name, labels)] = float(sample.value)
    return snapshot


@dataclass
class VersionEvidence:
    """What one version did in a window. latency_p99_micros: the upper bound of the
    histogram bucket holding the 99th percentile (None without requests)."""

    version: int
    requests: int = 0
    errors: int = 0
    latency_p99_micros: float | None = None
    class_counts: dict[str, int] = field(default_factory=dict)
    shadow_same: int = 0
    shadow_different: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def class_shares(self) -> dict[str, float]:
        total = sum(self.class_counts.values())
        return {c: n / total for c, n in self.class_counts.items()} if total else {}

    def to_json(self) -> dict:
        return {"version": self.version, "requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 6),
                "latency_p99_micros": self.latency_p99_micros,
                "class_counts": self.class_counts, "shadow_same": self.shadow_same,
                "shadow_different": self.shadow_different}


def window(start: Snapshot, end: Snapshot, versions: list[int]) -> tuple[dict[int, VersionEvidence], bool]:
    """Per-version evidence between two snapshots, and whether a counter went down (the
    server restarted: the evidence is then incomplete)."""
    evidence = {v: VersionEvidence(v) for v in versions}
    buckets: dict[int, list[tuple[float, float]]] = {v: [] for v in versions}
    restarted = False
    for key, value in end.values.items():
        delta = value - start.values.get(key, 0.0)
        if delta < 0:
            restarted = True
            continue
        metric, labels = _split_key(key)
        try:
            version = int(labels.get("version", ""))
        except ValueError:
            continue
        if version not in evidence:
            continue
        ev = evidence[version]
        if metric == REQUESTS:
            ev.requests += int(delta)
            if labels.get("status") != "OK":
                ev.errors += int(delta)
        elif metric == CLASSES and delta:
            ev.class_counts[labels.get("class", "?")] = int(delta)
        elif metric == SHADOW:
            if labels.get("agreement") == "same":
                ev.shadow_same += int(delta)
            else:
                ev.shadow_different += int(delta)
        elif metric == LATENCY + "_bucket":
            bound = float("inf") if labels.get("le") == "+Inf" else float(labels["le"])
            buckets[version].append((bound, delta))
    for version, cumulative in buckets.items():
        evidence[version].latency_p99_micros = _quantile(sorted(cumulative), 0.99)
    return evidence, restarted


def _quantile(cumulative: list[tuple[float, float]], q: float) -> float | None:
    """Upper bound of the first bucket whose cumulative count reaches q of the total."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    target = q * cumulative[-1][1]
    for bound, count in cumulative:
        if count >= target:
            return bound
    return cumulative[-1][0]


class PrometheusEvidence:
    """Reads a model server over REST: its Prometheus text and TF Serving's model status
    (GET /v1/models/{name}/versions/{v}, state AVAILABLE). `rest_url` e.g.
    "http://127.0.0.1:8501"."""

    def __init__(self, rest_url: str, timeout_s: float = 10.0):
        self.rest_url = rest_url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str) -> bytes:
        try:
            with urllib.request.urlopen(self.rest_url + path, timeout=self.timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise EvidenceUnavailable(f"GET {self.rest_url}{path}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise EvidenceUnavailable(f"GET {self.rest_url}{path}: {exc}") from None

    def snapshot(self, model_name: str) -> Snapshot:
        return parse_metrics(self._get(PROMETHEUS_PATH).decode("utf-8", "replace"), model_name)

    def available(self, model_name: str, version: int) -> bool:
        try:
            raw = json.loads(self._get(f"/v1/models/{model_name}/versions/{version}"))
        except EvidenceUnavailable:
            return False
        states = [s.get("state") for s in raw.get("model_version_status", [])]
        return "AVAILABLE" in states

    def __str__(self) -> str:
        return self.rest_url
