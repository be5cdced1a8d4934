"""SchemaGen (the pipeline's schema: inferred once, then carried) and ImportSchemaGen (a
curated schema)."""
from __future__ import annotations

import os
import shutil

from components.artifacts import ExampleStatistics, Schema
from components.base import (Component, ExternalPath, Input, OptionalInput, Output, Parameter,
                             Step)
from components.schema_inference import (DEFAULT_MAX_STRING_DOMAIN_SIZE, Declarations,
                                         apply_declarations, base_split, infer)
from components.split_names import included_splits
from components.tfmd_files import read_schema, read_statistics, write_schema

INFERRED, CARRIED, ACCEPTED, IMPORTED = "inferred", "carried", "accepted", "imported"


class SchemaGen(Component):
    """Publishes the schema ExampleValidator checks the data against, following the schema
    lifecycle TFDV describes (infer once, then validate new data against the reviewed
    schema, and update it only on purpose):

    - Without `current_schema` (the first run): infers it with TFDV from the train split's
      statistics (the first split when there is no train split), widened by every other
      split (`tfdv.infer_schema`, then `tfdv.update_schema`). origin "inferred".
    - With `current_schema` (wire `LatestSchema` from components.schema_resolver): does not
      infer; republishes that schema (origin "carried"), so today's statistics are checked
      against it and a new column, a changed type or a missing required feature is an
      anomaly. Changing it is an explicit step: `pipewright schema accept`.
    - Either way the pipeline's declarations are applied (components.schema_inference):
      `label_feature` is in environment TRAINING only (TFDV environments; the schema gets
      default_environment TRAINING and SERVING); `required_features` (and the label) get
      `presence.min_fraction: 1`, every other feature is optional (`min_count: 1` only) even
      when complete today; INT features keep a `bool_domain` only when in `bool_features`.
    - `infer_feature_shape` (default False, unlike TFX's SchemaGen): True gives features
      complete in the statistics a fixed `shape` [1] instead of `value_count` [1, 1], which
      makes them required in effect (Transform parses them as dense tensors).
    - `max_string_domain_size` (tfdv.infer_schema's, default 100): a string feature with
      at most that many distinct values gets a domain of the values seen, so a value never
      seen is an anomaly; set it below a long-tailed feature's count (countries, device
      names) so its new rare values are not.

    Writes `schema.pbtxt` and `schema_gen.json` (the declarations, so a later
    `pipewright schema accept` infers new features the same way). Raises
    SchemaDeclarationError (a ValueError) naming a declared feature the schema lacks."""

    imports_tensorflow = True

    statistics: Input[ExampleStatistics]
    current_schema: OptionalInput[Schema]
    schema: Output[Schema]
    infer_feature_shape: Parameter[bool] = False
    exclude_splits: Parameter[list[str]] = []
    label_feature: Parameter[str | None] = None
    required_features: Parameter[list[str]] = []
    bool_features: Parameter[list[str]] = []
    max_string_domain_size: Parameter[int] = DEFAULT_MAX_STRING_DOMAIN_SIZE

    def execute(self, step: Step) -> None:
        declarations = Declarations(
            label_feature=step.label_feature, required_features=list(step.required_features),
            bool_features=list(step.bool_features), infer_feature_shape=step.infer_feature_shape,
            exclude_splits=list(step.exclude_splits),
            max_string_domain_size=step.max_string_domain_size)
        current = step.current_schema
        if current is not None:
            schema = read_schema(current.file)
            origin = CARRIED
            source = f"current schema #{current.id} ({current.origin}: {current.source})"
            step.note(f"validating against schema #{current.id} ({current.origin})")
            header = (f"# The current schema #{current.id} of this pipeline, republished by "
                      f"SchemaGen ({current.origin}: {current.source}). Change it with "
                      f"`pipewright schema accept`.\n")
        else:
            splits = included_splits(step.statistics, step.exclude_splits, step.log)
            schema = infer({split: read_statistics(step.statistics, split) for split in splits},
                           step.infer_feature_shape, step.max_string_domain_size)
            origin = INFERRED
            source = (f"inferred from {step.statistics.name or 'statistics'} "
                      f"#{step.statistics.id}")
            step.note(f"inferred {len(schema.feature)} features (first run)")
            header = (f"# Inferred by SchemaGen from the statistics of splits {', '.join(splits)} "
                      f"({base_split(splits)} first). Review it before relying on it.\n")
        apply_declarations(schema, declarations)
        write_schema(schema, step.schema.file, header)
        declarations.write(step.schema.uri)
        step.schema.set(source=source, origin=origin)


class ImportSchemaGen(Component):
    """Publishes a curated schema file as a Schema artifact (origin "imported"), after
    checking it parses as a tensorflow_metadata Schema text proto. Editing the file re-runs
    it (its content is part of the cache key)."""

    schema: Output[Schema]
    schema_file: Parameter[ExternalPath]

    def execute(self, step: Step) -> None:
        path = os.path.abspath(step.schema_file)
        schema = read_schema(path)
        shutil.copyfile(path, step.schema.file)
        step.log.info("imported %s: %d features", path, len(schema.feature))
        step.schema.set(source=path, origin=IMPORTED)
