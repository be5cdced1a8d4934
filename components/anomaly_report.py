"""Readable text for TFDV anomalies: one line per feature anomaly, drift and skew figures."""
from __future__ import annotations

DATASET = "(dataset)"


def feature_anomalies(anomalies) -> list[tuple[str, str, str]]:
    """(feature, short description, description) for each anomaly, dataset-level first."""
    found = []
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        found.append((DATASET, info.short_description, info.description))
    if anomalies.data_missing:
        found.append((DATASET, "No data", "the split holds no examples"))
    for name, info in sorted(anomalies.anomaly_info.items()):
        found.append((name, info.short_description, info.description))
    return found


def _measurements(anomalies, field: str) -> list[str]:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    lines = []
    for info in anomalies.drift_skew_info:
        feature = ".".join(info.path.step)
        for measurement in getattr(info, field):
            kind = anomalies_pb2.DriftSkewInfo.Measurement.Type.Name(measurement.type)
            verdict = "over" if measurement.value > measurement.threshold else "within"
            lines.append(f"{feature}: {kind} {measurement.value:.4f} ({verdict} threshold "
                         f"{measurement.threshold:g})")
    return lines


def split_section(split: str, anomalies, drift_note: str, skew_note: str) -> list[str]:
    found = feature_anomalies(anomalies)
    lines = [f"split {split}: " + (f"{len(found)} anomal{'y' if len(found) == 1 else 'ies'}"
                                   if found else "no anomalies")]
    lines += [f"  {feature}: {short} — {description}" for feature, short, description in found]
    if drift_note:
        lines.append(f"  drift: {drift_note}")
        lines += [f"    {line}" for line in _measurements(anomalies, "drift_measurements")]
    if skew_note:
        lines.append(f"  skew: {skew_note}")
        lines += [f"    {line}" for line in _measurements(anomalies, "skew_measurements")]
    return lines


def halt_message(per_split: dict[str, object], input_files: list[str] | None = None) -> str:
    """One line: each split's anomalies, feature by feature, and the files they came from."""
    parts = []
    for split, anomalies in per_split.items():
        found = feature_anomalies(anomalies)
        if found:
            parts.append(f"split {split}: " + "; ".join(
                f"{feature} ({short}: {description})" for feature, short, description in found))
    where = f" in {', '.join(input_files)}" if input_files else ""
    return f"data anomalies{where} — " + " | ".join(parts)
