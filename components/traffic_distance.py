"""Distances between two TFDV statistics of one feature, for the TrafficMonitor.

Three measures, every one recorded for every feature that both sides have:

- L-infinity distance (categorical features) and Jensen-Shannon divergence (numeric
  features), computed by TFDV itself: `tfdv.validate_statistics` with a skew or drift
  comparator on each feature (set as ExampleValidator sets them, components/example_validator
  `_set_comparators`) fills `Anomalies.drift_skew_info` with the measured value and the
  threshold of every compared feature, over threshold or not (TFDV's C++ validator,
  tensorflow_data_validation/anomalies/; the message is tensorflow_metadata/proto/v0/
  anomalies.proto `DriftSkewInfo`; tests/test_traffic_monitor.py checks a value is present
  for every feature, under threshold too).
- Population Stability Index, computed here from the histograms TFDV wrote:

      PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

  over the buckets i, where e_i is the baseline's ("expected") share of the feature's
  non-missing values in bucket i and a_i the compared ("actual") statistics' share, each
  floored at PSI_EPSILON so that an empty bucket gives a finite, large term. Source: B.
  Yurdakul, "Statistical Properties of Population Stability Index", PhD dissertation,
  Western Michigan University, 2018 (eq. 1), after N. Siddiqi, "Credit Risk Scorecards",
  Wiley 2006, ch. 8, whose rule of thumb is < 0.1 no shift, 0.1-0.25 moderate, > 0.25
  significant (PSI_THRESHOLD). Buckets: for a categorical feature, its values (TFDV's
  `string_stats.rank_histogram`, or `top_values` when no rank histogram was kept); for a
  numeric feature, the baseline's STANDARD histogram (TFDV: equal-width buckets between the
  minimum and the maximum), the first and last bucket extended to -inf / +inf, with the
  compared histogram's counts redistributed onto those buckets assuming values spread
  uniformly inside each of its own buckets.

No TensorFlow here: only the tensorflow-metadata protos.
"""
from __future__ import annotations

import math

PSI_EPSILON = 1e-4
PSI_THRESHOLD = 0.25
CATEGORICAL_THRESHOLD = 0.2  # L-infinity: the largest change of one value's share
NUMERIC_THRESHOLD = 0.1  # Jensen-Shannon divergence (log base 2 in TFDV, so in [0, 1])


def feature_stats_by_name(statistics) -> dict[str, object]:
    """{feature name: FeatureNameStatistics} of the first dataset of a
    DatasetFeatureStatisticsList ({} when it has no dataset)."""
    if not statistics.datasets:
        return {}
    found = {}
    for feature in statistics.datasets[0].features:
        name = feature.path.step[-1] if feature.path.step else feature.name
        found[name] = feature
    return found


def num_examples(statistics) -> int:
    return sum(d.num_examples for d in statistics.datasets)


def is_categorical(schema_feature) -> bool:
    """As ExampleValidator decides: BYTES, or an INT with a categorical int_domain."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    return schema_feature.type == schema_pb2.BYTES or (
        schema_feature.HasField("int_domain") and schema_feature.int_domain.is_categorical)


def distribution(feature_stats, categorical: bool) -> list[tuple[object, float]]:
    """The feature's distribution as [(bucket, count)]: (value, count) for a categorical
    feature (rank histogram, else top values), ((low, high), count) per STANDARD histogram
    bucket for a numeric one. [] when TFDV kept none (e.g. no value present)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    if feature_stats is None:
        return []
    if categorical:
        string_stats = feature_stats.string_stats
        if string_stats.rank_histogram.buckets:
            return [(b.label, b.sample_count) for b in string_stats.rank_histogram.buckets]
        if string_stats.top_values:
            return [(v.value, v.frequency) for v in string_stats.top_values]
        # An INT feature declared categorical: TFDV still gives it numeric stats.
    histograms = feature_stats.num_stats.histograms
    standard = [h for h in histograms if h.type == statistics_pb2.Histogram.STANDARD]
    if not standard:
        return []
    return [((b.low_value, b.high_value), b.sample_count) for b in standard[0].buckets]


def _shares(counts: list[float]) -> list[float]:
    total = sum(counts)
    if total <= 0:
        return [0.0] * len(counts)
    return [c / total for c in counts]


def _rebucket(actual: list[tuple[tuple[float, float], float]],
              edges: list[tuple[float, float]]) -> list[float]:
    """Counts of `actual` ((low, high), count) moved onto `edges` (the first and last
    extended to -inf / +inf), each source bucket spread uniformly over [low, high] (a
    zero-width bucket counts where its value falls)."""
    out = [0.0] * len(edges)
    bounds = [(-math.inf if i == 0 else lo, math.inf if i == len(edges) - 1 else hi)
              for i, (lo, hi) in enumerate(edges)]
    for (low, high), count in actual:
        if count <= 0:
            continue
        if high <= low:
            for i, (lo, hi) in enumerate(bounds):
                if lo <= low <= hi:
                    out[i] += count
                    break
            continue
        for i, (lo, hi) in enumerate(bounds):
            overlap = min(high, hi) - max(low, lo)
            if overlap > 0:
                out[i] += count * overlap / (high - low)
    return out


def psi(baseline_stats, compared_stats, categorical: bool) -> float | None:
    """The Population Stability Index of the compared statistics against the baseline (see
    the module docstring), or None when either side has no distribution to compare."""
    expected = distribution(baseline_stats, categorical)
    actual = distribution(compared_stats, categorical)
    if not expected or not actual:
        return None
    if categorical and expected and not isinstance(expected[0][0], tuple):
        labels = sorted({v for v, _ in expected} | {v for v, _ in actual})
        e_counts = dict(expected)
        a_counts = dict(actual)
        e = _shares([e_counts.get(v, 0.0) for v in labels])
        a = _shares([a_counts.get(v, 0.0) for v in labels])
    else:
        edges = [bucket for bucket, _ in expected]
        e = _shares([count for _, count in expected])
        a = _shares(_rebucket(actual, edges))
    if sum(e) == 0 or sum(a) == 0:
        return None
    total = 0.0
    for ei, ai in zip(e, a):
        ei, ai = max(ei, PSI_EPSILON), max(ai, PSI_EPSILON)
        total += (ai - ei) * math.log(ai / ei)
    return total


def measured_distances(anomalies, kind: str) -> dict[str, tuple[str, float, float]]:
    """{feature: (measure, value, threshold)} from Anomalies.drift_skew_info, kind "drift"
    or "skew"; measure is "L-infinity" or "Jensen-Shannon"."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    names = {anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY: "L-infinity",
             anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE: "Jensen-Shannon",
             anomalies_pb2.DriftSkewInfo.Measurement.NORMALIZED_ABSOLUTE_DIFFERENCE:
                 "normalized absolute difference"}
    found = {}
    for info in anomalies.drift_skew_info:
        feature = info.path.step[-1]
        measurements = info.drift_measurements if kind == "drift" else info.skew_measurements
        for m in measurements:
            found[feature] = (names.get(m.type, str(m.type)), m.value, m.threshold)
    return found


def side_by_side(baseline_stats, compared_stats, categorical: bool, left: str, right: str,
                 width: int = 20) -> list[str]:
    """Text lines showing the two distributions as shares per bucket, with bars:

        value                 training         window
        Biscoe                0.488 #########  0.151 ###
    """
    expected = distribution(baseline_stats, categorical)
    actual = distribution(compared_stats, categorical)
    if not expected and not actual:
        return ["    (no values on either side)"]

    def bar(share: float) -> str:
        return "#" * int(round(share * width))

    lines = [f"    {'bucket':<24} {left:<{width + 7}} {right}"]
    if categorical and (expected or actual) and not isinstance((expected or actual)[0][0], tuple):
        e_counts, a_counts = dict(expected), dict(actual)
        labels = sorted(set(e_counts) | set(a_counts),
                        key=lambda v: (-e_counts.get(v, 0), -a_counts.get(v, 0), str(v)))
        e = _shares([e_counts.get(v, 0.0) for v in labels])
        a = _shares([a_counts.get(v, 0.0) for v in labels])
        names = [v.decode() if isinstance(v, bytes) else str(v) for v in labels]
    else:
        base = expected or actual
        edges = [bucket for bucket, _ in base]
        e = _shares(_rebucket(expected, edges)) if expected else [0.0] * len(edges)
        a = _shares(_rebucket(actual, edges)) if actual else [0.0] * len(edges)
        names = [("<" if i == 0 else "") + f"{lo:.4g}..{hi:.4g}" + (">" if i == len(edges) - 1 else "")
                 for i, (lo, hi) in enumerate(edges)]
    for name, ei, ai in zip(names, e, a):
        lines.append(f"    {name[:24]:<24} {ei:5.3f} {bar(ei):<{width}}  {ai:5.3f} {bar(ai)}")
    return lines
