"""Prometheus metrics in TF Serving's exposition format (util/prometheus_exporter.cc).

TF Serving's own series keep their names and labels (request_count{model_name,status},
request_latency{model_name,API,entrypoint} in microseconds, ...). Pipewright series add what
TF Serving lacks: request counts by API and entrypoint, the loaded versions, and the request
log's records, bytes, drops, removed files and failed requests (serving/request_log.py), and
live data quality per version (serving/data_quality.py documents those series), and the
per-version evidence of a rollout (serving/rollout.py, docs/rollout.md):

  :pipewright:serving:version_request_count{model_name,version,status}  counter: Predict /
      Classify / Regress calls whose version was resolved, by the version that answered;
      status "OK" or the error code name. Shadow calls are not counted here.
  :pipewright:serving:version_request_latency{model_name,version}  histogram, microseconds,
      the same calls (every status).
  :pipewright:serving:route_count{model_name,version,route}  counter, for models with a
      rollout.json: route "stable" / "canary" (unpinned calls, as routed), "pinned" (the call
      named a version or label), "shadow" (mirrored calls started on the candidate).
  :pipewright:serving:shadow_request_count{model_name,version,status}  counter: shadow calls
      finished on the candidate (version), by status.
  :pipewright:serving:shadow_skipped_count{model_name,version}  counter: shadow calls not
      made because the bound on concurrent shadow calls was reached.
  :pipewright:serving:shadow_comparison_count{model_name,version,agreement}  counter of rows
      (examples) of OK shadow calls: agreement "same" / "different" (serving/shadow.py).
  :pipewright:serving:shadow_score_distance{model_name,version}  histogram of the per-row
      L-infinity distance between stable and candidate scores (classifiers), 0..1.
  :pipewright:serving:rollout_generation{model_name}  gauge: the generation of the rollout
      policy in effect (-1: none).
  :pipewright:serving:rollout_config_rejected{model_name}  counter: rollout.json contents
      rejected by validation (the last good policy stays in effect).
"""

from __future__ import annotations

import threading
from bisect import bisect_left

# monitoring::Buckets::Exponential(10, 1.8, 33), plus the +Inf bucket.
LATENCY_BUCKETS = [10 * 1.8 ** i for i in range(33)]
# A regressor's predictions (serving/data_quality.py): fine steps on [0, 1] (probabilities,
# normalized targets), decades beyond; plus the +Inf bucket.
PREDICTION_BUCKETS = [-1e6, -1e4, -1e3, -100, -10, -1, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                      0.8, 0.9, 1, 10, 100, 1e3, 1e4, 1e6]

# Score distances are on [0, 1]: fine steps near 0, where agreeing models sit.
DISTANCE_BUCKETS = [0, 1e-6, 1e-4, 1e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1]


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _labels(names, values) -> str:
    return ",".join(f'{n}="{_label_value(v)}"' for n, v in zip(names, values))


class Counter:
    def __init__(self, name: str, labels: tuple[str, ...]):
        self.name = name
        self.labels = labels
        self.values: dict[tuple, int] = {}

    def inc(self, *label_values, amount: int = 1) -> None:
        self.values[label_values] = self.values.get(label_values, 0) + amount

    def render(self, lines: list[str]) -> None:
        lines.append(f"# TYPE {self.name} counter")
        for key, value in list(self.values.items()):
            labels = _labels(self.labels, key)
            lines.append(f"{self.name}{{{labels}}} {value}" if labels else f"{self.name} {value}")


class Gauge(Counter):
    def set(self, *label_values, value: int) -> None:
        self.values[label_values] = value

    def render(self, lines: list[str]) -> None:
        lines.append(f"# TYPE {self.name} gauge")
        for key, value in list(self.values.items()):
            lines.append(f"{self.name}{{{_labels(self.labels, key)}}} {value}")


class Histogram:
    def __init__(self, name: str, labels: tuple[str, ...], bounds=LATENCY_BUCKETS):
        self.name = name
        self.labels = labels
        self.bounds = bounds
        self.values: dict[tuple, list] = {}  # key -> [bucket counts..., sum]

    def observe(self, value: float, *label_values) -> None:
        cells = self.values.get(label_values)
        if cells is None:
            cells = self.values[label_values] = [0] * (len(self.bounds) + 1) + [0.0]
        cells[bisect_left(self.bounds, value)] += 1
        cells[-1] += value

    def render(self, lines: list[str]) -> None:
        lines.append(f"# TYPE {self.name} histogram")
        for key, cells in list(self.values.items()):
            labels = _labels(self.labels, key)
            prefix = f"{self.name}_bucket{{{labels}{',' if labels else ''}"
            total = 0
            for i, count in enumerate(cells[:-1]):
                total += count
                bound = "%g" % self.bounds[i] if i < len(self.bounds) else "+Inf"
                lines.append(f'{prefix}le="{bound}"}} {total}')
            lines.append(f"{self.name}_sum{{{labels}}} {'%g' % cells[-1]}")
            lines.append(f"{self.name}_count{{{labels}}} {total}")


class ServingMetrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.request_count = Counter(":tensorflow:serving:request_count", ("model_name", "status"))
        self.request_latency = Histogram(":tensorflow:serving:request_latency",
                                         ("model_name", "API", "entrypoint"))
        self.warmup_latency = Histogram(":tensorflow:serving:model_warmup_latency",
                                        ("model_path", "status"))
        self.requests_by_api = Counter(":pipewright:serving:request_count",
                                       ("model_name", "API", "entrypoint", "status"))
        self.loaded_versions = Gauge(":pipewright:serving:loaded_versions", ("model_name",))
        self.version_loaded = Gauge(":pipewright:serving:model_version_loaded",
                                    ("model_name", "version"))
        # Requests the front door refused (serving/admission.py): reason "unauthenticated" or
        # "rate_limited"; they are in no other series.
        self.admission_rejected = Counter(":pipewright:serving:admission_rejected_count",
                                          ("entrypoint", "reason"))
        self.batch_size = Histogram(":pipewright:serving:batch_size", ("signature",),
                                    bounds=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])
        # Request log (serving/request_log.py); bytes are serialized PredictionLog bytes
        # before compression, except request_log_removed_bytes (file sizes on disk).
        self.request_log_records = Counter(":pipewright:serving:request_log_records",
                                           ("model_name", "version"))
        self.request_log_bytes = Counter(":pipewright:serving:request_log_bytes",
                                         ("model_name", "version"))
        self.request_log_dropped = Counter(":pipewright:serving:request_log_dropped",
                                           ("model_name",))
        self.request_log_write_errors = Counter(":pipewright:serving:request_log_write_errors",
                                                ("model_name",))
        self.request_log_failed_requests = Counter(
            ":pipewright:serving:request_log_failed_requests", ("model_name", "version", "status"))
        self.request_log_removed_files = Counter(":pipewright:serving:request_log_removed_files", ())
        self.request_log_removed_bytes = Counter(":pipewright:serving:request_log_removed_bytes", ())
        # Data quality (serving/data_quality.py); counts are rows (examples).
        mv = ("model_name", "version")
        self.data_quality_schema_loaded = Gauge(":pipewright:serving:data_quality_schema_loaded", mv)
        self.data_quality_rows = Counter(":pipewright:serving:data_quality_rows", mv)
        self.feature_missing_count = Counter(":pipewright:serving:feature_missing_count",
                                             mv + ("feature",))
        self.feature_out_of_schema_count = Counter(
            ":pipewright:serving:feature_out_of_schema_count", mv + ("feature", "reason"))
        self.output_invalid_count = Counter(":pipewright:serving:output_invalid_count",
                                            mv + ("output", "reason"))
        self.prediction_class_count = Counter(":pipewright:serving:prediction_class_count",
                                              mv + ("class",))
        self.prediction_value = Histogram(":pipewright:serving:prediction_value", mv,
                                          bounds=PREDICTION_BUCKETS)

        # Rollout evidence (serving/rollout.py); see the module docstring.
        mvs = mv + ("status",)
        self.version_request_count = Counter(":pipewright:serving:version_request_count", mvs)
        self.version_request_latency = Histogram(":pipewright:serving:version_request_latency", mv)
        self.route_count = Counter(":pipewright:serving:route_count", mv + ("route",))
        self.shadow_request_count = Counter(":pipewright:serving:shadow_request_count", mvs)
        self.shadow_skipped_count = Counter(":pipewright:serving:shadow_skipped_count", mv)
        self.shadow_comparison_count = Counter(":pipewright:serving:shadow_comparison_count",
                                               mv + ("agreement",))
        self.shadow_score_distance = Histogram(":pipewright:serving:shadow_score_distance", mv,
                                               bounds=DISTANCE_BUCKETS)
        self.rollout_generation = Gauge(":pipewright:serving:rollout_generation", ("model_name",))
        self.rollout_config_rejected = Counter(":pipewright:serving:rollout_config_rejected",
                                               ("model_name",))

    def record_request(self, model_name: str, api: str, entrypoint: str, status: str,
                       latency_micros: float, version: str | None = None,
                       route: str | None = None) -> None:
        """One call: TF Serving's series; with version (a resolved Predict / Classify /
        Regress call) the per-version series; with route, route_count."""
        with self._lock:
            self.request_count.inc(model_name, status)
            self.requests_by_api.inc(model_name, api, entrypoint, status)
            if status == "OK":
                self.request_latency.observe(latency_micros, model_name, api, entrypoint)
            if version is not None:
                self.version_request_count.inc(model_name, version, status)
                self.version_request_latency.observe(latency_micros, model_name, version)
                if route is not None:
                    self.route_count.inc(model_name, version, route)

    def record_shadow(self, model_name: str, version: str, status: str | None,
                      same: int = 0, different: int = 0, distances=()) -> None:
        """One shadow call on the candidate `version`: status None = skipped (over the bound);
        same / different rows and per-row score distances when it answered."""
        with self._lock:
            if status is None:
                self.shadow_skipped_count.inc(model_name, version)
                return
            self.route_count.inc(model_name, version, "shadow")
            self.shadow_request_count.inc(model_name, version, status)
            if same:
                self.shadow_comparison_count.inc(model_name, version, "same", amount=same)
            if different:
                self.shadow_comparison_count.inc(model_name, version, "different", amount=different)
            for distance in distances:
                self.shadow_score_distance.observe(distance, model_name, version)

    def set_rollouts(self, status: dict[str, dict]) -> None:
        """status: ModelManager.rollout_status()."""
        with self._lock:
            for key in list(self.rollout_generation.values):
                self.rollout_generation.set(*key, value=-1)
            for name, entry in status.items():
                policy = entry["policy"]
                self.rollout_generation.set(name, value=policy.generation if policy else -1)
                self.rollout_config_rejected.values[(name,)] = entry["rejected"]

    def record_batch(self, signature: str, rows: int) -> None:
        with self._lock:
            self.batch_size.observe(rows, signature)

    def record_warmup(self, model_path: str, status: str, micros: float) -> None:
        with self._lock:
            self.warmup_latency.observe(micros, model_path, status)

    def set_loaded(self, loaded: dict[str, list[int]], known_models: list[str]) -> None:
        with self._lock:
            for name in known_models:
                self.loaded_versions.set(name, value=len(loaded.get(name, [])))
            for key in list(self.version_loaded.values):
                self.version_loaded.set(*key, value=0)
            for name, versions in loaded.items():
                for version in versions:
                    self.version_loaded.set(name, str(version), value=1)

    def count(self, counter: Counter, *label_values, amount: int = 1) -> None:
        """Add amount to one of this object's counters (thread-safe)."""
        with self._lock:
            counter.inc(*label_values, amount=amount)

    def set_gauge(self, gauge: Gauge, *label_values, value: int) -> None:
        with self._lock:
            gauge.set(*label_values, value=value)

    def add_all(self, counts: dict, histogram: Histogram | None = None, labels: tuple = (),
                values=()) -> None:
        """One call's updates under one lock: counts {(counter, label values): amount}, and
        values observed in histogram under labels."""
        if not counts and not values:
            return
        with self._lock:
            for (counter, label_values), amount in counts.items():
                counter.inc(*label_values, amount=amount)
            for value in values:
                histogram.observe(value, *labels)

    def value(self, counter: Counter, *label_values) -> int:
        """A counter's current value (0 when never counted); the sum over all label values
        when none are given."""
        with self._lock:
            if not label_values and counter.labels:
                return sum(counter.values.values())
            return counter.values.get(label_values, 0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            # The exporter walks a std::map keyed by metric name.
            metrics = [m for m in vars(self).values() if isinstance(m, (Counter, Histogram))]
            for metric in sorted(metrics, key=lambda m: m.name):
                if metric.values:
                    metric.render(lines)
        return "\n".join(lines) + "\n"
