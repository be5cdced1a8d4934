"""LatestSchema: the pipeline's current schema, resolved from ML Metadata."""
from __future__ import annotations

import os

from components.artifacts import ExampleStatistics, Schema
from components.base import Input, Output, Parameter, Resolver, Step

CURRENT_ORIGINS = ("inferred", "accepted")


class CurrentSchemaError(RuntimeError):
    """The current schema is recorded, but its file is gone."""


class LatestSchema(Resolver):
    """Resolves the pipeline's current schema for SchemaGen's `current_schema` input: the
    newest Schema that this pipeline's SchemaGen (`schema_gen_id`) inferred, or that a user
    accepted for it with `pipewright schema accept` (origin "inferred" or "accepted";
    SchemaGen's republished copies, origin "carried", are not candidates). Being an input,
    it is in SchemaGen's cache key and in the lineage, not a read hidden in the executor.

    Passed over: a schema SchemaGen inferred from these very `statistics`. On a re-run with
    nothing changed, the first run's inferred schema is then not fed back into the
    SchemaGen that inferred it, so that step's cache key (and everything downstream) stays
    the same — as LatestPushedModel passes over the candidate's own pushes. An accepted
    schema is never passed over: accepting a run's data makes that run pass when re-run.

    Outputs `schema`, absent when there is none yet (SchemaGen then infers). Raises
    CurrentSchemaError naming the file when the current schema's `schema.pbtxt` is gone.
    TFX's counterpart is a Resolver with the LatestArtifactStrategy on the schema channel
    (tfx/dsl/input_resolution/strategies/latest_artifact_strategy.py)."""

    statistics: Input[ExampleStatistics]
    schema: Output[Schema]
    schema_gen_id: Parameter[str] = "SchemaGen"

    def resolve(self, step: Step) -> dict[str, Schema | None]:
        found = current_schema(step.metadata, step.pipeline_name, step.schema_gen_id,
                               statistics=step.statistics)
        if found is None:
            step.note(f"no current schema: {step.schema_gen_id} infers one")
            return {"schema": None}
        step.note(f"current schema #{found.id} ({found.origin})")
        return {"schema": found}


def schema_candidates(metadata, pipeline_name: str, schema_gen_id: str) -> list[Schema]:
    """Schemas that were current at some time for this SchemaGen, oldest first."""
    name = f"{schema_gen_id}.schema"
    return [a for a in metadata.artifacts_in_pipeline(pipeline_name, Schema)
            if a.name == name and a.origin in CURRENT_ORIGINS]


def current_schema(metadata, pipeline_name: str, schema_gen_id: str = "SchemaGen", *,
                   statistics: ExampleStatistics | None = None) -> Schema | None:
    """The current schema (see LatestSchema), or None. With `statistics`, a schema inferred
    from exactly those statistics is passed over."""
    for schema in reversed(schema_candidates(metadata, pipeline_name, schema_gen_id)):
        if statistics is not None and schema.origin == "inferred" and \
                _inferred_from(metadata, schema) == statistics.id:
            continue
        if not os.path.isfile(schema.file):
            raise CurrentSchemaError(
                f"the current schema #{schema.id} of pipeline {pipeline_name} ({schema.origin}: "
                f"{schema.source}) is gone from {schema.file}; restore it, or accept a run's "
                f"statistics again (`pipewright schema accept`)")
        return schema
    return None


def _inferred_from(metadata, schema: Schema) -> int | None:
    """The id of the statistics the SchemaGen execution that made `schema` read."""
    producers = metadata.lineage(schema)["producers"]
    if not producers:
        return None
    source = producers[0]["inputs"].get("statistics")
    return source.id if source is not None else None
