"""How a schema is inferred, accepted and declared: the rules SchemaGen and
`pipewright schema accept` share.

TFDV's inference (`tfdv.infer_schema`, tensorflow/data-validation
`tensorflow_data_validation/api/validation_api.py`) freezes what one day of data happened
to look like. Measured on TFDV 1.16:

- an INT feature whose values are all 0 or 1 (a first span where `day` is always 1) gets a
  `bool_domain`, so `day = 2` later is an anomaly;
- a feature present in every example gets `presence.min_fraction: 1` (required), whatever
  `infer_feature_shape` says; `infer_feature_shape=True` additionally replaces
  `value_count {min: 1 max: 1}` with a fixed `shape {dim {size: 1}}`, which Transform
  parses as a dense tensor and TFDV validates as "every example has exactly one value".

The rules here, applied after TFDV (`apply_declarations`):

- `bool_domain` is kept on an INT feature only when the pipeline declares it
  (`bool_features`); a declared feature gets one.
- Presence: `min_fraction` is cleared unless the feature is declared required
  (`required_features`, or the label): completeness of the training day does not make a
  feature required at serving. `min_count: 1` stays, so a column missing from a whole
  split is still an anomaly ("Column dropped").
- Shape: SchemaGen defaults to `infer_feature_shape=False` (value_count, no fixed shape);
  True is TFX SchemaGen's default and makes complete features required in effect.
- Environments (TFDV `default_environment` / `not_in_environment`, schema.proto): with a
  label, the schema has environments TRAINING and SERVING and the label is not in SERVING,
  so serving data is not required to carry it. ExampleValidator validates in TRAINING.

Only `infer` and `accept_onto` import TFDV; the rest works on the protos alone.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

TRAINING, SERVING = "TRAINING", "SERVING"
TRAIN = "train"
DECLARATIONS_FILE = "schema_gen.json"
DEFAULT_MAX_STRING_DOMAIN_SIZE = 100  # tfdv.infer_schema's default


class SchemaDeclarationError(ValueError):
    """A declaration names a feature the schema lacks, or one it cannot apply to."""


@dataclass(frozen=True)
class Declarations:
    """What the pipeline states about its data, beyond what statistics show.

    label_feature: present in TRAINING only (None: no environments).
    required_features: `presence.min_fraction = 1` (every example has them).
    bool_features: INT features with values 0/1 only (`bool_domain`).
    infer_feature_shape, exclude_splits, max_string_domain_size: how features new to the
    schema are inferred (SchemaGen's parameters of the same names)."""

    label_feature: str | None = None
    required_features: list[str] = field(default_factory=list)
    bool_features: list[str] = field(default_factory=list)
    infer_feature_shape: bool = False
    exclude_splits: list[str] = field(default_factory=list)
    max_string_domain_size: int = DEFAULT_MAX_STRING_DOMAIN_SIZE

    def write(self, directory: str) -> None:
        """Stored next to a schema (`schema_gen.json`), so accepting a change later infers
        new features the same way."""
        with open(os.path.join(directory, DECLARATIONS_FILE), "w", encoding="utf-8") as fh:
            json.dump(asdict(self), fh, indent=1, sort_keys=True)

    @classmethod
    def read(cls, directory: str) -> "Declarations":
        """Raises FileNotFoundError naming the file when the schema has none (it was not
        made by SchemaGen or `schema accept`), ValueError when it is not valid."""
        path = os.path.join(directory, DECLARATIONS_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist: the schema in {directory} was not "
                                    f"made by SchemaGen or `pipewright schema accept`")
        with open(path, encoding="utf-8") as fh:
            try:
                values = json.load(fh)
                return cls(**values)
            except (json.JSONDecodeError, TypeError) as exc:
                raise ValueError(f"{path}: not SchemaGen declarations: {exc}") from None


def base_split(splits: list[str]) -> str:
    """The split inference starts from: train, else the first."""
    return TRAIN if TRAIN in splits else splits[0]


def infer(per_split: dict[str, object], infer_feature_shape: bool,
          max_string_domain_size: int = DEFAULT_MAX_STRING_DOMAIN_SIZE):
    """A schema from the statistics of several splits (split -> DatasetFeatureStatisticsList):
    `tfdv.infer_schema` on the base split, widened with `tfdv.update_schema` by every other
    split, so that all of them conform. A string feature with more distinct values than
    `max_string_domain_size` gets no domain (any value is valid); one with fewer gets a
    domain of the values seen, so a value never seen is an anomaly. Declarations are not
    applied here."""
    import tensorflow_data_validation as tfdv

    splits = list(per_split)
    base = base_split(splits)
    schema = tfdv.infer_schema(per_split[base], infer_feature_shape=infer_feature_shape,
                               max_string_domain_size=max_string_domain_size)
    for split in splits:
        if split != base:
            schema = tfdv.update_schema(schema, per_split[split],
                                        infer_feature_shape=infer_feature_shape,
                                        max_string_domain_size=max_string_domain_size)
    return schema


def accept_onto(current, per_split: dict[str, object], infer_feature_shape: bool,
                max_string_domain_size: int = DEFAULT_MAX_STRING_DOMAIN_SIZE):
    """The current schema, changed so that these statistics conform: a feature whose type
    changed (or that was deprecated and is back) is replaced by its fresh inference, then
    `tfdv.update_schema` adds new features, widens domains and relaxes what the statistics
    contradict (a feature missing from the data is deprecated, as TFDV does; left to
    update_schema, a changed type would be deprecated too, i.e. no longer validated).
    Returns (schema, replaced feature names). Declarations are not applied here."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    fresh = infer(per_split, infer_feature_shape, max_string_domain_size)
    fresh_features = {f.name: f for f in fresh.feature}
    fresh_domains = {d.name: d for d in fresh.string_domain}
    accepted = schema_pb2.Schema()
    accepted.CopyFrom(current)
    replaced = []
    for feature in accepted.feature:
        new = fresh_features.get(feature.name)
        if new is None:
            continue
        if new.type != feature.type or feature.lifecycle_stage == schema_pb2.DEPRECATED:
            environments = list(feature.not_in_environment)
            feature.CopyFrom(new)
            feature.not_in_environment.extend(environments)
            replaced.append(feature.name)
            if new.HasField("domain") and new.domain in fresh_domains:
                kept = [d for d in accepted.string_domain if d.name != new.domain]
                del accepted.string_domain[:]
                accepted.string_domain.extend(kept + [fresh_domains[new.domain]])
    for split in per_split:
        accepted = tfdv.update_schema(accepted, per_split[split],
                                      infer_feature_shape=infer_feature_shape,
                                      max_string_domain_size=max_string_domain_size)
    return accepted, replaced


def apply_declarations(schema, declarations: Declarations) -> None:
    """Applies the rules of this module's docstring to `schema` in place. Raises
    SchemaDeclarationError naming a declared feature the schema lacks, or a bool feature
    that is not INT."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    features = {f.name: f for f in schema.feature}

    def declared(names: list[str], what: str) -> set[str]:
        missing = [n for n in names if n not in features]
        if missing:
            raise SchemaDeclarationError(
                f"SchemaGen {what} {missing}: not a feature of the schema (features: "
                f"{sorted(features)})")
        return set(names)

    label = declared([declarations.label_feature] if declarations.label_feature else [],
                     "label_feature")
    required = declared(declarations.required_features, "required_features") | label
    bools = declared(declarations.bool_features, "bool_features")
    for name in sorted(bools):
        if features[name].type != schema_pb2.INT:
            raise SchemaDeclarationError(
                f"SchemaGen bool_features: {name!r} is "
                f"{schema_pb2.FeatureType.Name(features[name].type)}, not INT; a bool_domain "
                f"applies to INT features whose values are 0 or 1")

    for feature in schema.feature:
        if feature.name in required:
            feature.presence.min_fraction = 1.0
            if feature.lifecycle_stage == schema_pb2.DEPRECATED:
                feature.ClearField("lifecycle_stage")  # a declared feature is always checked
        else:
            feature.presence.ClearField("min_fraction")
        if feature.type == schema_pb2.INT:
            if feature.name in bools:
                feature.bool_domain.SetInParent()
            elif feature.HasField("bool_domain"):
                feature.ClearField("bool_domain")
        if feature.name in label:
            if SERVING not in feature.not_in_environment:
                feature.not_in_environment.append(SERVING)
        elif SERVING in feature.not_in_environment:
            kept = [e for e in feature.not_in_environment if e != SERVING]
            del feature.not_in_environment[:]
            feature.not_in_environment.extend(kept)
    if label:
        for environment in (TRAINING, SERVING):
            if environment not in schema.default_environment:
                schema.default_environment.append(environment)


def validation_environment(schema) -> str | None:
    """TRAINING when the schema declares environments (TFDV then skips what is not in it),
    else None: every feature is validated."""
    return TRAINING if TRAINING in schema.default_environment else None


def describe_changes(before, after) -> list[str]:
    """One line per feature that differs between two schemas: added, removed, type,
    presence, domain, environments, lifecycle stage."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    old = {f.name: f for f in before.feature}
    new = {f.name: f for f in after.feature}
    kind = schema_pb2.FeatureType.Name
    lines = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is None:
            lines.append(f"+ {name}: new {kind(b.type)} feature")
            continue
        if b is None:
            lines.append(f"- {name}: removed")
            continue
        changes = []
        if a.type != b.type:
            changes.append(f"type {kind(a.type)} -> {kind(b.type)}")
        if a.presence.min_fraction != b.presence.min_fraction:
            changes.append(f"min_fraction {a.presence.min_fraction:g} -> "
                           f"{b.presence.min_fraction:g}")
        if a.WhichOneof("domain_info") != b.WhichOneof("domain_info"):
            changes.append(f"domain {a.WhichOneof('domain_info')} -> "
                           f"{b.WhichOneof('domain_info')}")
        if list(a.not_in_environment) != list(b.not_in_environment):
            changes.append(f"not_in_environment {list(a.not_in_environment)} -> "
                           f"{list(b.not_in_environment)}")
        if a.lifecycle_stage != b.lifecycle_stage:
            changes.append(f"lifecycle {schema_pb2.LifecycleStage.Name(a.lifecycle_stage)} -> "
                           f"{schema_pb2.LifecycleStage.Name(b.lifecycle_stage)}")
        if changes:
            lines.append(f"~ {name}: " + ", ".join(changes))
    old_domains = {d.name: set(d.value) for d in before.string_domain}
    for domain in after.string_domain:
        added = sorted(set(domain.value) - old_domains.get(domain.name, set()))
        if added and domain.name in old_domains:
            lines.append(f"~ domain {domain.name}: + {added}")
    return lines
