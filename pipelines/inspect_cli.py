"""Read-only views for the CLI: runs, lineage, artifact summaries. No TensorFlow here:
statistics, schema and anomalies are read with the tensorflow-metadata protos alone."""
from __future__ import annotations

import datetime as dt
import json
import os
import re

from components.artifacts import Artifact
from pipelines.home import Home
from pipelines.metadata import Metadata


def open_metadata(home: str | None) -> Metadata:
    """The home's metadata store, opened only if it exists: reading commands must not
    create an empty store in a wrong home (and then report "no artifact")."""
    home_dir = Home.resolve(home)
    uri = home_dir.metadata_uri
    if "://" not in uri and not os.path.isfile(uri):
        raise LookupError(f"no metadata store in {home_dir.root} ({uri} does not exist): "
                          f"nothing has run in this home; pass --home DIR or set "
                          f"PIPEWRIGHT_HOME to the home the pipeline ran in")
    return Metadata(uri)


def print_runs(home: str | None, pipeline: str | None) -> int:
    """One row per run, oldest first: start, pipeline, run id, state, step states, the
    overall value of the Evaluator's threshold metric (its metrics.json), the blessing,
    the pushed version, and the parameters the run set."""
    metadata = open_metadata(home)
    runs = metadata.runs(pipeline)
    if not runs:
        print("no runs recorded")
        return 0
    rows = [("started", "pipeline", "run", "state", "steps", "train", "eval", "blessed",
             "pushed", "parameters")]
    for run in runs:
        started = dt.datetime.fromtimestamp(run.get("started_at") or 0).strftime("%Y-%m-%d %H:%M:%S")
        steps = ", ".join(f"{n} {s}" for s, n in sorted(run["steps"].items()))
        loss, metric, blessed, pushed = _key_results(metadata, run)
        params = json.loads(run.get("parameters") or "{}")
        rows.append((started, run["pipeline_name"], run["run_id"], run.get("state", "?"), steps,
                     loss, metric, blessed, pushed,
                     " ".join(f"{k}={v}" for k, v in sorted(params.items()))
                     + (f"  airflow={run['airflow_run_id']}" if run.get("airflow_run_id") else "")
                     + "".join(f"  alert=TrafficReport#{t.get('report_id')}"
                               for t in _triggers(run))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _key_results(metadata: Metadata, run: dict) -> tuple[str, str, str, str]:
    """("loss=0.4123", "auc=0.8496", "yes"/"no"/"-", "v3"/"v3 rolled back"/"-") for one run: the last
    training loss the Trainer's TensorBoard logs hold (its last_scalars.json), the
    Evaluator's threshold metric (metrics.json), the ModelBlessing and the PushedModel
    with the Rollout step's verdict (cached steps count: their outputs are this run's too)."""
    from components.evaluator import METRICS_FILE
    from components.trainer import SCALARS_FILE
    from pipelines.run_diff import step_outputs

    loss, metric, blessed, pushed, rollout = "-", "-", "-", "-", ""
    for _, outputs in step_outputs(metadata, run).values():
        for artifact in outputs.values():
            kind = type(artifact).__name__
            if kind == "ModelRun" and os.path.isfile(artifact.path(SCALARS_FILE)):
                with open(artifact.path(SCALARS_FILE), encoding="utf-8") as fh:
                    scalars = json.load(fh)
                losses = sorted(tag for tag in scalars if tag.split("/")[-1] == "loss")
                train = [t for t in losses if "valid" not in t and "eval" not in t]
                if train or losses:
                    loss = f"loss={scalars[(train or losses)[0]]['value']:.4g}"
            elif kind == "ModelEvaluation" and os.path.isfile(artifact.path(METRICS_FILE)):
                with open(artifact.path(METRICS_FILE), encoding="utf-8") as fh:
                    evaluation = json.load(fh)
                name = evaluation.get("threshold_metric")
                value = evaluation.get("slices", {}).get("Overall", {}).get(name, {})
                if value.get("candidate") is not None:
                    metric = f"{name}={value['candidate']:.4f}"
            elif kind == "ModelBlessing":
                blessed = "yes" if artifact.blessed else "no"
            elif kind == "PushedModel" and artifact.pushed:
                pushed = f"v{artifact.pushed_version}"
            elif kind == "RolloutReport" and artifact.properties.get("state") in (
                    "promoted", "rolled_back", "aborted"):  # by name: the class may not be
                # imported here
                rollout = artifact.properties["state"].replace("_", " ")
    if pushed != "-" and rollout:
        pushed = f"{pushed} {rollout}"
    return loss, metric, blessed, pushed


_ID_REF = re.compile(r"(?:[A-Za-z_][\w.]*=)?#?(?P<id>\d+)")  # 7, #7, examples=#7


def find_artifact(metadata: Metadata, ref: str | int) -> Artifact:
    """The artifact `ref` names: an ML Metadata artifact id (`7`, `#7`, or `scaled=#7` as
    the run summary prints them — a word starting with `#` is a comment to the shell),
    the artifact's URI, or any path inside its directory (the
    nearest enclosing directory that is an artifact's URI). Artifact directories are
    named by the id of the execution that produced them, not the artifact id: a bare
    number that is also a directory here holding a different artifact is refused as
    ambiguous. Raises LookupError naming the reference and the store when nothing
    matches, ValueError for the ambiguous number."""
    text = str(ref).strip()
    match = _ID_REF.fullmatch(text)
    if match:
        number = match["id"]
        try:
            by_id = metadata.artifact(int(number))
        except KeyError:
            by_id = None
        at_path = None if not text.isdigit() or not os.path.isdir(text) else \
            _artifact_at_path(metadata, text)
        if by_id is not None and at_path is not None and at_path.id != by_id.id:
            raise ValueError(
                f"{text!r} is ambiguous: artifact #{by_id.id} ({by_id.name}) or the directory "
                f"{os.path.abspath(text)}, which holds artifact #{at_path.id} ({at_path.name}) "
                f"— artifact directories are named by execution id; pass '#{by_id.id}' or "
                f"./{text}")
        found = by_id or at_path
        if found is None:
            raise LookupError(f"no artifact #{number} in {_store(metadata)} "
                              f"(artifact directories are named by execution id; the run "
                              f"summary lists artifact ids as outputs: key=#id)")
        return found
    found = _artifact_at_path(metadata, text)
    if found is None:
        raise LookupError(f"{text!r} is neither an artifact URI nor a path inside an artifact "
                          f"directory recorded in {_store(metadata)} (checked "
                          f"{os.path.abspath(text)} and its parent directories)")
    return found


def _store(metadata: Metadata) -> str:
    """The store for a message: its file, or no URI when it is a database (a password)."""
    if "://" in metadata.uri and not metadata.uri.startswith("sqlite://"):
        return "the metadata store at $PIPEWRIGHT_METADATA"
    return f"the metadata store {metadata.uri}"


def _artifact_at_path(metadata: Metadata, path: str) -> Artifact | None:
    """The artifact whose URI is `path` or its nearest parent directory, else None."""
    path = os.path.abspath(os.path.expanduser(path)).rstrip(os.sep) or os.sep
    while True:
        try:
            return metadata.artifact(path)
        except KeyError:
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent


def _describe(artifact: Artifact) -> str:
    props = ", ".join(f"{k}={v}" for k, v in sorted(artifact.properties.items()))
    return f"{type(artifact).__name__} #{artifact.id} {artifact.name}  {artifact.uri}  {props}"


def print_lineage(home: str | None, ref: str) -> int:
    metadata = open_metadata(home)
    artifact = find_artifact(metadata, ref)
    graph = metadata.lineage(artifact)
    print(_describe(artifact))
    producers = graph["producers"]
    if producers:
        first = producers[0]
        record = first["execution"]
        print(f"  produced by {record.component_id} ({record.type_name}), execution {record.id}, "
              f"run {record.run_id}, {record.state}")
        for line in trigger_lines(metadata, record.run_id):
            print(f"    {line}")
        for key, source in first["inputs"].items():
            print(f"    from {key}: {_describe(source)}")
        for reuse in producers[1:]:
            print(f"  reused (cached) by run {reuse['execution'].run_id}, "
                  f"execution {reuse['execution'].id}")
    else:
        print("  produced by: nothing recorded (imported or resolved)")
    for run in runs_triggered_by(metadata, artifact.id):
        print(f"  alerted: started run {run['run_id']} of {run['pipeline_name']} "
              f"({run.get('state', '?')}, airflow {run.get('airflow_run_id') or '-'})")
    consumers = graph["consumers"]
    if not consumers:
        print("  consumed by: nothing yet")
    for consumer in consumers:
        record = consumer["execution"]
        print(f"  consumed by {record.component_id} ({record.type_name}), execution {record.id}, "
              f"run {record.run_id}, {record.state}")
    return 0


def _triggers(run: dict) -> list[dict]:
    return json.loads(run.get("triggered_by") or "[]")


def trigger_lines(metadata: Metadata, run_id: str) -> list[str]:
    """What started the run `run_id` when an alert did: the asset event, its monitor run
    and the TrafficReport it carried (artifact id, flagged features, served version)."""
    lines = []
    for run in metadata.runs():
        if run.get("run_id") != run_id:
            continue
        for trigger in _triggers(run):
            extra = trigger.get("extra") or {}
            lines.append(
                f"run {run_id} was started by the retraining alert {trigger['asset']} of "
                f"{trigger.get('source_dag_id')} run {trigger.get('source_run_id')}: "
                f"TrafficReport #{trigger.get('report_id')} (model {extra.get('model_name')} "
                f"version {extra.get('model_version')}; "
                f"{'; '.join(extra.get('reasons') or []) or 'no reason recorded'})")
    return lines


def runs_triggered_by(metadata: Metadata, report_id: int | None) -> list[dict]:
    """The runs an alert carrying TrafficReport `report_id` started."""
    return [run for run in metadata.runs()
            if any(t.get("report_id") == report_id for t in _triggers(run))]


def print_artifact(home: str | None, ref: str) -> int:
    metadata = open_metadata(home)
    artifact = find_artifact(metadata, ref)
    print(_describe(artifact))
    if not os.path.isdir(artifact.uri):
        raise FileNotFoundError(f"the files of {type(artifact).__name__} #{artifact.id} are "
                                f"gone: {artifact.uri} does not exist (deleted after it was "
                                f"recorded)")
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


def _show_alert(artifact) -> None:
    """A RetrainingAlert decision: emitted, suppressed or no alert, and why (read from the
    properties: `pipewright show` does not import the component's module)."""
    p = artifact.properties
    state = ("emitted" if p.get("emitted") else "suppressed (cooldown)" if p.get("suppressed")
             else "alert, not emitted" if p.get("alert") else "no alert")
    print(f"  {state}: {p.get('reason')}")
    print(f"  report: TrafficReport #{p.get('report_id')}, model {p.get('model_name')} "
          f"version {p.get('model_version')}")
    if p.get("asset_uri"):
        until = dt.datetime.fromtimestamp(p.get("cooldown_until") or 0, dt.timezone.utc)
        print(f"  asset {p['asset_uri']}; no other alert emitted before "
              f"{until:%Y-%m-%dT%H:%M:%SZ}")


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
    "PushedModel": _show_text_report,
    "RolloutReport": _show_text_report,  # every bake window with its guards
    "TrafficReport": _show_text_report,
    "AlertDecision": _show_alert,
}
