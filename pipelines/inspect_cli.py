"""Read-only views for the CLI: runs, lineage, artifact summaries. No TensorFlow here:
statistics, schema and anomalies are read with the tensorflow-metadata protos alone."""
from __future__ import annotations

import datetime as dt
import os

from components.artifacts import Artifact
from pipelines.home import Home
from pipelines.metadata import Metadata


def _metadata(home: str | None) -> Metadata:
    return Metadata(Home.resolve(home).metadata_uri)


def print_runs(home: str | None, pipeline: str | None) -> int:
    runs = _metadata(home).runs(pipeline)
    if not runs:
        print("no runs recorded")
        return 0
    for run in runs:
        started = dt.datetime.fromtimestamp(run.get("started_at") or 0).strftime("%Y-%m-%d %H:%M:%S")
        steps = ", ".join(f"{n} {s}" for s, n in sorted(run["steps"].items()))
        airflow = f"  airflow={run['airflow_run_id']}" if run.get("airflow_run_id") else ""
        print(f"{started}  {run['pipeline_name']}  {run['run_id']}  {run.get('state', '?')}"
              f"  [{steps}]{airflow}")
    return 0


def _describe(artifact: Artifact) -> str:
    props = ", ".join(f"{k}={v}" for k, v in sorted(artifact.properties.items()))
    return f"{type(artifact).__name__} #{artifact.id} {artifact.name}  {artifact.uri}  {props}"


def print_lineage(home: str | None, ref: str) -> int:
    metadata = _metadata(home)
    artifact = metadata.artifact(ref)
    graph = metadata.lineage(artifact)
    print(_describe(artifact))
    producers = graph["producers"]
    if producers:
        first = producers[0]
        record = first["execution"]
        print(f"  produced by {record.component_id} ({record.type_name}), execution {record.id}, "
              f"run {record.run_id}, {record.state}")
        for key, source in first["inputs"].items():
            print(f"    from {key}: {_describe(source)}")
        for reuse in producers[1:]:
            print(f"  reused (cached) by run {reuse['execution'].run_id}, "
                  f"execution {reuse['execution'].id}")
    else:
        print("  produced by: nothing recorded (imported or resolved)")
    consumers = graph["consumers"]
    if not consumers:
        print("  consumed by: nothing yet")
    for consumer in consumers:
        record = consumer["execution"]
        print(f"  consumed by {record.component_id} ({record.type_name}), execution {record.id}, "
              f"run {record.run_id}, {record.state}")
    return 0


def print_artifact(home: str | None, ref: str) -> int:
    artifact = _metadata(home).artifact(ref)
    print(_describe(artifact))
    viewer = _VIEWERS.get(type(artifact).__name__)
    if viewer:
        viewer(artifact)
    for name in ("report.txt", "report.html", "statistics.html"):
        for root, _, files in os.walk(artifact.uri):
            if name in files:
                print(f"  {name}: {os.path.join(root, name)}")
    return 0


def _per_split(artifact, file_name: str, message_class):
    """(split, parsed proto) for every split that has `file_name`."""
    for split in artifact.splits:
        path = os.path.join(artifact.split_uri(split), file_name)
        if os.path.exists(path):
            message = message_class()
            with open(path, "rb") as fh:
                message.ParseFromString(fh.read())
            yield split, message


def _show_statistics(artifact) -> None:
    from tensorflow_metadata.proto.v0 import statistics_pb2

    for split, stats in _per_split(artifact, "FeatureStats.pb",
                                   statistics_pb2.DatasetFeatureStatisticsList):
        for dataset in stats.datasets:
            print(f"  split {split}: {dataset.num_examples} examples")
            for feature in dataset.features:
                name = feature.path.step[-1] if feature.path.step else feature.name
                kind = feature.WhichOneof("stats")
                if kind == "num_stats":
                    s = feature.num_stats
                    common = s.common_stats
                    print(f"    {name:<22} numeric  missing={common.num_missing:<4} "
                          f"mean={s.mean:.3f} min={s.min:.3f} max={s.max:.3f}")
                elif kind == "string_stats":
                    s = feature.string_stats
                    common = s.common_stats
                    top = ", ".join(v.value for v in s.top_values[:3])
                    print(f"    {name:<22} string   missing={common.num_missing:<4} "
                          f"unique={s.unique} top=[{top}]")
    html = artifact.path("statistics.html")
    if os.path.exists(html):
        print(f"  HTML view: {html}")


def _show_schema(artifact) -> None:
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    with open(artifact.file) as fh:
        text_format.Parse(fh.read(), schema)
    for feature in schema.feature:
        kind = schema_pb2.FeatureType.Name(feature.type)
        domain = feature.WhichOneof("domain_info") or ""
        required = "required" if feature.presence.min_fraction >= 1 else "optional"
        print(f"    {feature.name:<22} {kind:<6} {required:<8} {domain}")
    for domain in schema.string_domain:
        print(f"    domain {domain.name}: {list(domain.value)}")


def _show_anomalies(artifact) -> None:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    for split, anomalies in _per_split(artifact, "SchemaDiff.pb", anomalies_pb2.Anomalies):
        if not anomalies.anomaly_info and not anomalies.HasField("dataset_anomaly_info"):
            print(f"  split {split}: no anomalies")
        for feature, info in sorted(anomalies.anomaly_info.items()):
            print(f"  split {split}: {feature}: {info.short_description} — {info.description}")


def _show_text_report(artifact) -> None:
    path = artifact.path("report.txt")
    if os.path.exists(path):
        with open(path) as fh:
            print(fh.read().rstrip())


def _show_infra_blessing(artifact) -> None:
    """Which server validated comes first: our own server proves less than TF Serving."""
    server = artifact.properties.get("server")
    requested = artifact.properties.get("requested_server") or ""
    if not server:
        print("  server: not recorded (validated before blessings recorded their server)")
    elif requested not in ("", "auto", server):
        print(f"  server: {server} — FALLBACK: serving_binary={requested!r} was requested "
              f"and could not run")
    else:
        print(f"  server: {server}" + (f" (serving_binary={requested!r})" if requested else ""))
    _show_text_report(artifact)


_VIEWERS = {
    "ExampleStatistics": _show_statistics,
    "Schema": _show_schema,
    "ExampleAnomalies": _show_anomalies,
    "ModelEvaluation": _show_text_report,
    "ModelBlessing": _show_text_report,
    "InfraBlessing": _show_infra_blessing,
}
