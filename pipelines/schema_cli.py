"""`pipewright schema`: the pipeline's current schema — show it, or accept a run's data.

    pipewright schema show PIPELINE
    pipewright schema accept RUN_ID --pipeline PIPELINE
    pipewright schema accept --statistics ARTIFACT_ID --pipeline PIPELINE

Accepting is the explicit step of the schema lifecycle (TFDV: infer once, review, then
update the schema on purpose): the run's statistics are taken onto the current schema
(components.schema_inference.accept_onto: changed types re-inferred, then
`tfdv.update_schema`), the pipeline's declarations applied, and the result must validate
that run's statistics without anomalies. It is recorded in ML Metadata as a Schema
(origin "accepted", named like the SchemaGen output it replaces) produced by a
"SchemaAccept" execution in a run context of its own — as `pipewright rollback` records a
rollback — so LatestSchema resolves it on the next run. A curated file under
schemas/<pipeline>/ (ImportSchemaGen) is the other way; it is not changed here.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

from components.artifacts import ExampleStatistics, Schema
from components.schema_resolver import CurrentSchemaError, current_schema
from pipelines.home import Home
from pipelines.metadata import Metadata

EXECUTION_TYPE = "SchemaAccept"


class SchemaAcceptError(RuntimeError):
    """The change cannot be accepted; the message says why and what to do."""


def _schema_gen_ids(metadata: Metadata, pipeline: str) -> list[str]:
    """Component ids of SchemaGens that inferred or accepted a schema in this pipeline."""
    names = {a.name for a in metadata.artifacts_in_pipeline(pipeline, Schema)
             if a.origin in ("inferred", "accepted", "carried") and a.name.endswith(".schema")}
    return sorted(name[:-len(".schema")] for name in names)


def _pick_schema_gen(metadata: Metadata, pipeline: str, schema_gen_id: str | None) -> str:
    if schema_gen_id:
        return schema_gen_id
    ids = _schema_gen_ids(metadata, pipeline)
    if not ids:
        imported = [a for a in metadata.artifacts_in_pipeline(pipeline, Schema)
                    if a.origin == "imported" or (not a.origin and a.name.startswith("Import"))]
        if imported:
            raise SchemaAcceptError(
                f"pipeline {pipeline} takes its schema from a curated file "
                f"({imported[-1].source}, via {imported[-1].name.split('.')[0]}): edit and "
                f"review that file instead")
        raise SchemaAcceptError(f"no SchemaGen schema of pipeline {pipeline} is recorded in "
                                f"{metadata.uri}; run the pipeline first")
    if len(ids) > 1:
        raise SchemaAcceptError(f"pipeline {pipeline} has several SchemaGens {ids}; name one "
                                f"with --schema-gen")
    return ids[0]


def _check_pipeline_and_run(metadata: Metadata, pipeline: str, run_id: str | None) -> None:
    """Raises SchemaAcceptError when the store has no run of `pipeline`, or when `run_id`
    is a run of another pipeline, naming what the store has."""
    runs = metadata.runs()
    pipelines = sorted({r.get("pipeline_name") for r in runs})
    if pipeline not in pipelines:
        raise SchemaAcceptError(f"no run of pipeline {pipeline!r} is recorded in {metadata.uri};"
                                f" pipelines with runs there: {pipelines}")
    owners = sorted({r.get("pipeline_name") for r in runs if r.get("run_id") == run_id})
    if run_id is not None and owners and pipeline not in owners:
        raise SchemaAcceptError(f"run {run_id} is a run of pipeline {owners[0]!r}, not "
                                f"{pipeline!r}: accept it with --pipeline {owners[0]}")


def _run_context(metadata: Metadata, pipeline: str, run_id: str):
    runs = [r for r in metadata.runs(pipeline) if r.get("run_id") == run_id]
    if not runs:
        recent = [r.get("run_id") for r in metadata.runs(pipeline)][-5:]
        raise SchemaAcceptError(f"no run {run_id!r} of pipeline {pipeline} in {metadata.uri} "
                                f"(recent runs: {recent})")
    return metadata.run_context(pipeline, run_id)  # exists: found, not created


def _from_run(metadata: Metadata, pipeline: str, run_id: str, schema_gen_id: str):
    """(statistics, the schema SchemaGen published in that run) of a run."""
    run = _run_context(metadata, pipeline, run_id)
    record = metadata.latest_in_run(run, schema_gen_id)
    if record is None or record.state not in ("complete", "cached"):
        state = "did not run" if record is None else f"ended {record.state}"
        raise SchemaAcceptError(f"{schema_gen_id} {state} in run {run_id} of {pipeline} "
                                f"(execution {record.id if record else '-'}): there are no "
                                f"statistics of that run to accept")
    statistics = metadata.inputs_of_execution(record.id).get("statistics")
    published = metadata.outputs_of_execution(record.id).get("schema")
    if statistics is None or published is None:
        raise SchemaAcceptError(f"execution {record.id} of {schema_gen_id} in run {run_id} "
                                f"recorded no statistics input or schema output")
    return statistics, published


def _latest_published(metadata: Metadata, pipeline: str, schema_gen_id: str) -> Schema:
    published = [a for a in metadata.artifacts_in_pipeline(pipeline, Schema)
                 if a.name == f"{schema_gen_id}.schema"]
    if not published:
        raise SchemaAcceptError(f"{schema_gen_id} of pipeline {pipeline} published no schema")
    return published[-1]


def accept(pipeline: str, *, run_id: str | None = None, statistics_id: int | None = None,
           home: str | None = None, schema_gen_id: str | None = None) -> tuple[Schema, list[str]]:
    """Accepts the statistics of run `run_id` (the ones its SchemaGen read) or the
    ExampleStatistics artifact `statistics_id` as the pipeline's data: records and returns
    the new current schema, with one line per change (schema_inference.describe_changes).
    Raises SchemaAcceptError when there is no current schema (a curated-file pipeline, or
    one never run), when the run or artifact is unknown, or when the accepted schema would
    still find anomalies in those statistics (a declaration such as `required_features`
    contradicts them: change the pipeline, not the schema)."""
    from components.schema_inference import (Declarations, accept_onto, apply_declarations,
                                             describe_changes, validation_environment)
    from components.split_names import included_splits
    from components.tfmd_files import read_schema, read_statistics, write_schema

    if (run_id is None) == (statistics_id is None):
        raise SchemaAcceptError("give a RUN_ID or --statistics ARTIFACT_ID (one of them)")
    home_dir = Home.resolve(home)
    metadata = Metadata(home_dir.metadata_uri)
    _check_pipeline_and_run(metadata, pipeline, run_id)
    schema_gen_id = _pick_schema_gen(metadata, pipeline, schema_gen_id)
    if run_id is not None:
        statistics, published = _from_run(metadata, pipeline, run_id, schema_gen_id)
    else:
        found = metadata.artifacts_by_id([statistics_id])
        if not found or not isinstance(found[0], ExampleStatistics):
            what = type(found[0]).__name__ if found else "nothing"
            raise SchemaAcceptError(f"artifact {statistics_id} is {what}, not ExampleStatistics, "
                                    f"in {metadata.uri}")
        statistics = found[0]
        published = _latest_published(metadata, pipeline, schema_gen_id)
    try:
        current = current_schema(metadata, pipeline, schema_gen_id)
    except CurrentSchemaError as exc:
        raise SchemaAcceptError(str(exc)) from None
    if current is None:
        raise SchemaAcceptError(f"pipeline {pipeline} has no current schema of {schema_gen_id} "
                                f"(inferred or accepted) in {metadata.uri}; run it first")
    declarations = Declarations.read(published.uri)

    splits = included_splits(statistics, declarations.exclude_splits, logging.getLogger(__name__))
    per_split = {split: read_statistics(statistics, split) for split in splits}
    before = read_schema(current.file)
    schema, replaced = accept_onto(before, per_split, declarations.infer_feature_shape,
                                   declarations.max_string_domain_size)
    apply_declarations(schema, declarations)
    _check_conforms(schema, per_split, statistics, validation_environment(schema))
    changes = describe_changes(before, schema)
    where = f"run {run_id}" if run_id else f"artifact {statistics.id}"
    accepted = _record(metadata, home_dir, pipeline, schema_gen_id, schema, declarations,
                       statistics, current, where, write_schema)
    return accepted, changes


def _check_conforms(schema, per_split, statistics, environment) -> None:
    import tensorflow_data_validation as tfdv
    from components.anomaly_report import halt_message

    found = {split: tfdv.validate_statistics(stats, schema, environment=environment)
             for split, stats in per_split.items()}
    if any(a.anomaly_info or a.HasField("dataset_anomaly_info") for a in found.values()):
        raise SchemaAcceptError(
            f"statistics #{statistics.id} still do not conform after accepting them, because "
            f"of what the pipeline declares (SchemaGen label_feature / required_features / "
            f"bool_features): {halt_message(found)}. Fix the data, or change the declaration "
            f"in the pipeline")


def _record(metadata: Metadata, home: Home, pipeline: str, schema_gen_id: str, schema,
            declarations, statistics, current: Schema, where: str, write_schema) -> Schema:
    """A one-step run of the pipeline: SchemaAccept(statistics, current_schema) -> schema."""
    from pipelines.local_runner import new_run_id

    run_id = "schema-accept-" + new_run_id()
    run = metadata.run_context(pipeline, run_id, orchestrator="schema_accept",
                               parameters={"accepted": where, "statistics": statistics.id,
                                           "current_schema": current.id})
    execution_id = metadata.begin_execution(
        type_name=EXECUTION_TYPE, component_id="schema_accept", pipeline_name=pipeline, run=run,
        inputs={"statistics": statistics, "current_schema": current}, cache_key="",
        parameters={"accepted": where, "schema_gen_id": schema_gen_id}, log_path="")
    staging = home.staging_dir(execution_id)
    final = home.artifact_dir(pipeline, "schema_accept", "schema", execution_id)
    source = (f"accepted {where} (statistics #{statistics.id}) onto schema #{current.id}")
    try:
        os.makedirs(staging, exist_ok=True)
        write_schema(schema, os.path.join(staging, "schema.pbtxt"),
                     f"# Accepted with `pipewright schema accept`: {source}.\n")
        declarations.write(staging)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.rename(staging, final)
        accepted = Schema(uri=final, name=f"{schema_gen_id}.schema")
        accepted.set(source=source, origin="accepted")
        metadata.publish_execution(execution_id, pipeline_name=pipeline, run=run,
                                   outputs={"schema": accepted}, outcome="ok",
                                   outcome_reason=source, duration_s=0.0)
    except BaseException as exc:
        metadata.fail_execution(execution_id, f"{type(exc).__name__}: {exc}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        metadata.finish_run(run, "failed")
        raise
    metadata.finish_run(run, "succeeded")
    return accepted


def show(pipeline: str, home: str | None = None, schema_gen_id: str | None = None) -> int:
    """Prints the current schema's id, origin, source, how it was made, its environments
    and its features. For a pipeline whose schema is a curated file (ImportSchemaGen), the
    newest imported schema and its file. Raises SchemaAcceptError when none is recorded."""
    from components.tfmd_files import read_schema
    from pipelines import inspect_cli

    home_dir = Home.resolve(home)
    metadata = Metadata(home_dir.metadata_uri)
    if not schema_gen_id and not _schema_gen_ids(metadata, pipeline):
        imported = [a for a in metadata.artifacts_in_pipeline(pipeline, Schema)
                    if a.origin == "imported"]
        if not imported:
            _pick_schema_gen(metadata, pipeline, None)  # raises, saying what is missing
        print(f"current schema of {pipeline}: the curated file {imported[-1].source} "
              f"(imported by {imported[-1].name.split('.')[0]} as #{imported[-1].id})")
        return inspect_cli.print_artifact(home_dir.root, str(imported[-1].id))
    schema_gen_id = _pick_schema_gen(metadata, pipeline, schema_gen_id)
    found = current_schema(metadata, pipeline, schema_gen_id)
    if found is None:
        raise SchemaAcceptError(f"pipeline {pipeline} has no current schema of {schema_gen_id}")
    producer = metadata.lineage(found)["producers"][0]["execution"]
    print(f"current schema of {pipeline} ({schema_gen_id}): #{found.id}, {found.origin}: "
          f"{found.source}")
    print(f"  made by {metadata.execution_type_name(producer.id)} execution {producer.id} "
          f"in run {producer.run_id}")
    proto = read_schema(found.file)
    if proto.default_environment:
        outside = {f.name: list(f.not_in_environment) for f in proto.feature
                   if f.not_in_environment}
        print(f"  environments {list(proto.default_environment)}; not in: {outside}")
    return inspect_cli.print_artifact(home_dir.root, str(found.id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipewright schema",
                                     description="The pipeline's current schema.")
    sub = parser.add_subparsers(dest="command", required=True)
    home_help = "pipeline home; default $PIPEWRIGHT_HOME or .pipewright/"
    show_p = sub.add_parser("show", help="print the current schema and where it comes from")
    show_p.add_argument("pipeline")
    show_p.add_argument("--home", help=home_help)
    show_p.add_argument("--schema-gen", help="SchemaGen component id, if the pipeline has several")
    accept_p = sub.add_parser("accept", help="accept a run's data as the new current schema")
    accept_p.add_argument("run_id", nargs="?", help="the run whose statistics are accepted")
    accept_p.add_argument("--statistics", type=int, metavar="ARTIFACT_ID",
                          help="accept this ExampleStatistics artifact instead of a run's")
    accept_p.add_argument("--pipeline", required=True)
    accept_p.add_argument("--home", help=home_help)
    accept_p.add_argument("--schema-gen", help="SchemaGen component id, if the pipeline has several")
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            return show(args.pipeline, args.home, args.schema_gen)
        accepted, changes = accept(args.pipeline, run_id=args.run_id,
                                   statistics_id=args.statistics, home=args.home,
                                   schema_gen_id=args.schema_gen)
    except (SchemaAcceptError, CurrentSchemaError, LookupError, ValueError,
            FileNotFoundError) as exc:
        print(f"pipewright schema: {exc}", file=sys.stderr)
        return 1
    print(f"accepted: schema #{accepted.id} is now the current schema of {args.pipeline} "
          f"({accepted.source})")
    for line in changes or ["no change to the features"]:
        print(f"  {line}")
    return 0
