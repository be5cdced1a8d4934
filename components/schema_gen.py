"""SchemaGen (a schema inferred from statistics) and ImportSchemaGen (a curated schema)."""
from __future__ import annotations

import os
import shutil

from components.artifacts import ExampleStatistics, Schema
from components.base import Component, ExternalPath, Input, Output, Parameter, Step
from components.split_names import included_splits
from components.tfmd_files import read_schema, read_statistics, write_schema

TRAIN = "train"


class SchemaGen(Component):
    """Infers a schema with TFDV from the train split's statistics (the first split when
    there is no train split), then widens it with every other split's statistics, so that
    all of today's data conforms. Features seen in every example with one value get a
    fixed shape when `infer_feature_shape` is set."""

    statistics: Input[ExampleStatistics]
    schema: Output[Schema]
    infer_feature_shape: Parameter[bool] = True
    exclude_splits: Parameter[list[str]] = []

    def execute(self, step: Step) -> None:
        import tensorflow_data_validation as tfdv

        splits = included_splits(step.statistics, step.exclude_splits, step.log)
        base = TRAIN if TRAIN in splits else splits[0]
        schema = tfdv.infer_schema(read_statistics(step.statistics, base),
                                   infer_feature_shape=step.infer_feature_shape)
        for split in splits:
            if split != base:
                schema = tfdv.update_schema(schema, read_statistics(step.statistics, split),
                                            infer_feature_shape=step.infer_feature_shape)
        step.log.info("inferred %d features from splits %s (base %s)", len(schema.feature),
                      splits, base)
        header = (f"# Inferred by SchemaGen from the statistics of splits {', '.join(splits)} "
                  f"({base} first). Review it before relying on it.\n")
        write_schema(schema, step.schema.file, header)
        step.schema.set(source="inferred from " + (step.statistics.name or "statistics"))


class ImportSchemaGen(Component):
    """Publishes a curated schema file as a Schema artifact, after checking it parses as a
    tensorflow_metadata Schema text proto. Editing the file re-runs it (its content is part
    of the cache key)."""

    schema: Output[Schema]
    schema_file: Parameter[ExternalPath]

    def execute(self, step: Step) -> None:
        path = os.path.abspath(step.schema_file)
        schema = read_schema(path)
        shutil.copyfile(path, step.schema.file)
        step.log.info("imported %s: %d features", path, len(schema.feature))
        step.schema.set(source=path)
