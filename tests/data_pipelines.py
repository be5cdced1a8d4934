"""Shared helpers for the data-half tests: the penguin CSV, data-half pipelines built from
the real components, and reading examples back from an Examples artifact."""
from __future__ import annotations

import csv
import glob
import importlib.resources
import os
import shutil
from pathlib import Path

from components.example_gen import ExampleGen
from components.example_validator import ExampleValidator
from components.schema_gen import ImportSchemaGen, SchemaGen
from components.statistics_gen import StatisticsGen
from pipelines.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]
CURATED_SCHEMA = REPO / "schemas" / "penguin" / "schema.pbtxt"
PENGUIN_CSV = Path(str(importlib.resources.files("palmerpenguins") / "data" / "penguins.csv"))


def penguin_rows() -> tuple[list[str], list[list[str]]]:
    with open(PENGUIN_CSV, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def write_csv(path: str | Path, header: list[str], rows: list[list[str]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def copy_penguins(directory: str | Path, name: str = "penguins.csv") -> Path:
    target = Path(directory) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PENGUIN_CSV, target)
    return target


def example_gen_pipeline(name: str, **example_gen_args) -> Pipeline:
    return Pipeline(name, [ExampleGen(**example_gen_args)])


def data_half(name: str, input_base: str | Path, *, input_pattern: str = "*.csv",
              schema_file: str | Path = CURATED_SCHEMA, with_schema_gen: bool = False,
              statistics_args: dict | None = None, validator_args: dict | None = None,
              parameters: list | None = None, example_gen_args: dict | None = None) -> Pipeline:
    """ExampleGen -> StatisticsGen (guided by the curated schema) -> ExampleValidator against
    the curated schema (ImportSchemaGen), optionally SchemaGen on the same statistics."""
    gen = ExampleGen(input_base=str(input_base), input_pattern=input_pattern,
                     **(example_gen_args or {}))
    curated = ImportSchemaGen(schema_file=str(schema_file))
    stats = StatisticsGen(examples=gen.outputs.examples, schema=curated.outputs.schema,
                          **(statistics_args or {}))
    validator = ExampleValidator(statistics=stats.outputs.statistics,
                                 schema=curated.outputs.schema, **(validator_args or {}))
    components = [gen, curated, stats, validator]
    if with_schema_gen:
        components.append(SchemaGen(statistics=stats.outputs.statistics))
    return Pipeline(name, components, parameters=parameters or [])


def read_examples(examples, split: str) -> list[dict[str, list]]:
    """Every example of a split as {feature: [values]} (bytes decoded to str)."""
    import tensorflow as tf

    files = sorted(glob.glob(examples.file_pattern(split)))
    assert files, f"no files for split {split} in {examples.uri}"
    decoded = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy())
        row = {}
        for key, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            values = list(getattr(feature, kind).value) if kind else []
            row[key] = [v.decode() if isinstance(v, bytes) else v for v in values]
        decoded.append(row)
    return decoded


def all_examples(examples) -> dict[str, list[dict[str, list]]]:
    return {split: read_examples(examples, split) for split in examples.splits}


def artifact_dirs(home: str | Path, pipeline: str, component_id: str) -> list[str]:
    return glob.glob(os.path.join(str(home), "artifacts", pipeline, component_id, "*", "*"))
