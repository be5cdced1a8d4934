"""The schema lifecycle on real TFDV statistics and a real MLMD store: the first night
infers, later nights validate against the current schema (LatestSchema -> SchemaGen), a
change is an anomaly until `pipewright schema accept` takes it, environments keep the label
out of SERVING, and a curated-schema pipeline (ImportSchemaGen) is unaffected.

Nights are spans of generated CSVs (`day-<N>/data.csv`) read by the real ExampleGen ->
StatisticsGen -> LatestSchema -> SchemaGen -> ExampleValidator."""
from __future__ import annotations

from pathlib import Path

import pytest
from tensorflow_metadata.proto.v0 import schema_pb2

from components.example_gen import ExampleGen
from components.example_validator import ExampleValidator
from components.schema_gen import SchemaGen
from components.schema_inference import (SERVING, TRAINING, Declarations,
                                         SchemaDeclarationError, apply_declarations)
from components.schema_resolver import LatestSchema
from components.statistics_gen import StatisticsGen
from components.tfmd_files import read_anomalies, read_schema, read_statistics
from pipelines import cli, registry
from pipelines.local_runner import run_pipeline
from pipelines.metadata import Metadata
from pipelines.pipeline import Pipeline
from tests.data_pipelines import copy_penguins, data_half, write_csv

NAME = "nightly"
STEPS = ["ExampleGen", "StatisticsGen", "LatestSchema", "SchemaGen", "ExampleValidator"]
CITIES = ["north", "south", "east"]


def _pipeline(input_base: Path) -> Pipeline:
    gen = ExampleGen(input_base=str(input_base), input_pattern="day-{SPAN}/data.csv")
    stats = StatisticsGen(examples=gen.outputs.examples)
    latest = LatestSchema(statistics=stats.outputs.statistics)
    schema_gen = SchemaGen(statistics=stats.outputs.statistics,
                           current_schema=latest.outputs.schema, label_feature="label",
                           required_features=["user_id"], bool_features=["label"])
    validator = ExampleValidator(statistics=stats.outputs.statistics,
                                 schema=schema_gen.outputs.schema)
    return Pipeline(NAME, [gen, stats, latest, schema_gen, validator])


def _write_day(input_base: Path, span: int, *, new_column=False, string_amounts=False,
               blank_user_ids=False, blank_clicks=False, drop_label=False, rows=45) -> None:
    header = ["user_id", "day", "amount", "city", "clicks", "label"]
    header += ["coupon"] if new_column else []
    body = []
    for i in range(rows):
        row = {"user_id": "" if blank_user_ids and i % 4 == 0 else str(1000 + i),
               "day": str(span),  # span 1: every value is 1 (TFDV would infer a bool)
               "amount": "unknown" if string_amounts and i % 5 == 0 else f"{(i % 9) * 1.25 + 0.5}",
               "city": CITIES[i % 3],
               "clicks": "" if blank_clicks and i % 3 == 0 else str(i % 5),
               "label": str(i % 2), "coupon": f"c{i % 2}"}
        body.append([row[column] for column in header])
    if drop_label:
        keep = [i for i, column in enumerate(header) if column != "label"]
        header = [header[i] for i in keep]
        body = [[r[i] for i in keep] for r in body]
    write_csv(input_base / f"day-{span}" / "data.csv", header, body)


def _anomalous_features(result) -> dict[str, set[str]]:
    anomalies = result.steps["ExampleValidator"].outputs["anomalies"]
    return {split: set(read_anomalies(anomalies, split).anomaly_info)
            for split in anomalies.splits}


def _features(schema_artifact) -> dict[str, schema_pb2.Feature]:
    return {f.name: f for f in read_schema(schema_artifact.file).feature}


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """The nights of one pipeline home, in order; each test reads the nights it needs.
    Night 2 breaks the data in every way at once; night 3 has only changes a user accepts
    (run 3 is accepted, then re-run); night 4 is like night 3."""
    workdir = tmp_path_factory.mktemp("schema_lifecycle")
    base, home = workdir / "input", workdir / "home"
    pipeline = _pipeline(base)

    def run():
        return run_pipeline(pipeline, home=home, echo=lambda line: None)

    out = {"home": home, "base": base}
    _write_day(base, 1)
    out["night1"] = run()
    out["night1_again"] = run()
    _write_day(base, 2, new_column=True, string_amounts=True, blank_user_ids=True,
               blank_clicks=True, drop_label=True)
    out["night2"] = run()
    _write_day(base, 3, new_column=True, string_amounts=True)
    out["night3"] = run()
    return out


def test_first_night_infers_with_declarations_and_no_frozen_bools(nights):
    result = nights["night1"]
    assert result.ok, result.summary()
    assert {cid: s.status for cid, s in result.steps.items()} == {
        "ExampleGen": "executed", "StatisticsGen": "executed", "LatestSchema": "resolved",
        "SchemaGen": "executed", "ExampleValidator": "executed"}
    assert "no current schema" in result.steps["LatestSchema"].reason
    schema_artifact = result.steps["SchemaGen"].outputs["schema"]
    assert schema_artifact.origin == "inferred"
    statistics = result.steps["StatisticsGen"].outputs["statistics"]
    assert schema_artifact.source == f"inferred from StatisticsGen.statistics #{statistics.id}"
    features = _features(schema_artifact)
    # `day` is 1 in every row: TFDV alone infers a bool_domain; undeclared, it is dropped.
    day = read_statistics(statistics, "train").datasets[0]
    day_stats = next(f for f in day.features if f.path.step[0] == "day").num_stats
    assert day_stats.min == day_stats.max == 1
    assert features["day"].type == schema_pb2.INT and not features["day"].HasField("bool_domain")
    # The label is declared bool (0/1) and lives in TRAINING only.
    assert features["label"].HasField("bool_domain")
    assert list(features["label"].not_in_environment) == [SERVING]
    assert list(read_schema(schema_artifact.file).default_environment) == [TRAINING, SERVING]
    # Complete today, yet optional unless declared; min_count 1 still guards the column.
    assert not features["clicks"].presence.HasField("min_fraction")
    assert features["clicks"].presence.min_count == 1
    assert features["user_id"].presence.min_fraction == 1.0  # declared required
    assert features["label"].presence.min_fraction == 1.0  # the label is required in TRAINING
    # infer_feature_shape=False: value_count, no fixed shape.
    assert not features["amount"].HasField("shape") and features["amount"].value_count.max == 1
    assert Declarations.read(schema_artifact.uri).required_features == ["user_id"]
    report = Path(result.steps["ExampleValidator"].outputs["anomalies"].path("report.txt"))
    assert "environment TRAINING" in report.read_text()


def test_rerun_with_nothing_changed_is_cached(nights):
    first, again = nights["night1"], nights["night1_again"]
    assert again.ok, again.summary()
    status = {cid: s.status for cid, s in again.steps.items()}
    assert status == {**{cid: "cached" for cid in STEPS}, "LatestSchema": "resolved"}
    # The schema inferred from these very statistics is not fed back into its SchemaGen.
    assert "no current schema" in again.steps["LatestSchema"].reason
    assert again.steps["SchemaGen"].outputs["schema"].id == \
        first.steps["SchemaGen"].outputs["schema"].id


def test_second_night_changes_are_anomalies_naming_each_feature(nights):
    result = nights["night2"]
    first_schema = nights["night1"].steps["SchemaGen"].outputs["schema"]
    assert not result.ok and result.steps["ExampleValidator"].outcome == "halted"
    # SchemaGen did not re-infer: it republished the current schema, wired as an input.
    schema_gen = result.steps["SchemaGen"]
    carried = schema_gen.outputs["schema"]
    assert carried.origin == "carried" and f"#{first_schema.id}" in carried.source
    assert read_schema(carried.file) == read_schema(first_schema.file)
    metadata = Metadata(str(nights["home"] / "metadata.sqlite"))
    producer = metadata.lineage(carried)["producers"][0]
    assert producer["inputs"]["current_schema"].id == first_schema.id
    assert producer["execution"].cache_key  # a real, cacheable execution

    by_split = _anomalous_features(result)
    for split, features in by_split.items():
        # coupon: new column; amount: strings in a FLOAT column; user_id: declared required
        # and blank in some rows; label: dropped in TRAINING. Not `day` (2 is fine: no bool)
        # and not `clicks` (blank in some rows, but optional).
        assert features == {"coupon", "amount", "user_id", "label"}, split
    anomalies = result.steps["ExampleValidator"].outputs["anomalies"]
    info = read_anomalies(anomalies, "train").anomaly_info
    assert info["coupon"].short_description == "New column"
    assert "Expected data of type: FLOAT but got STRING" in info["amount"].description
    assert "minimum fraction = 1" in info["user_id"].description
    assert info["label"].short_description == "Column dropped"
    for feature in ("coupon (New column", "amount (Unexpected data type", "user_id",
                    "label (Column dropped"):
        assert feature in result.failure


def test_label_is_not_required_in_serving(nights):
    import tensorflow_data_validation as tfdv

    schema = read_schema(nights["night2"].steps["SchemaGen"].outputs["schema"].file)
    statistics = nights["night2"].steps["StatisticsGen"].outputs["statistics"]
    stats = read_statistics(statistics, "train")
    serving = set(tfdv.validate_statistics(stats, schema, environment=SERVING).anomaly_info)
    training = set(tfdv.validate_statistics(stats, schema, environment=TRAINING).anomaly_info)
    assert "label" in training and "label" not in serving
    assert serving == training - {"label"}


def test_accept_refuses_data_that_breaks_a_declaration(nights, capsys):
    run_id = nights["night2"].run_id
    code = cli.main(["schema", "accept", run_id, "--pipeline", NAME,
                     "--home", str(nights["home"])])
    err = capsys.readouterr().err
    assert code == 1
    assert "still do not conform" in err and "user_id" in err and "label (Column dropped" in err
    assert "coupon" not in err and "amount" not in err  # those the acceptance would take
    metadata = Metadata(str(nights["home"] / "metadata.sqlite"))
    from components.artifacts import Schema
    assert not [a for a in metadata.artifacts_in_pipeline(NAME, Schema) if a.origin == "accepted"]


def test_accept_makes_the_next_night_pass(nights, capsys):
    home, base = nights["home"], nights["base"]
    night3 = nights["night3"]
    assert not night3.ok
    assert all(f == {"coupon", "amount"} for f in _anomalous_features(night3).values())

    code = cli.main(["schema", "accept", night3.run_id, "--pipeline", NAME, "--home", str(home)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "+ coupon: new BYTES feature" in out
    assert "~ amount: type FLOAT -> BYTES" in out

    metadata = Metadata(str(home / "metadata.sqlite"))
    from components.artifacts import Schema
    [accepted] = [a for a in metadata.artifacts_in_pipeline(NAME, Schema)
                  if a.origin == "accepted"]
    assert accepted.name == "SchemaGen.schema"
    producer = metadata.lineage(accepted)["producers"][0]
    assert metadata.execution_type_name(producer["execution"].id) == "SchemaAccept"
    statistics = night3.steps["StatisticsGen"].outputs["statistics"]
    assert producer["inputs"]["statistics"].id == statistics.id
    assert producer["inputs"]["current_schema"].id == \
        nights["night1"].steps["SchemaGen"].outputs["schema"].id
    assert any(r["run_id"].startswith("schema-accept-") and r["state"] == "succeeded"
               for r in metadata.runs(NAME))
    features = _features(accepted)
    assert features["amount"].type == schema_pb2.BYTES
    assert features["coupon"].type == schema_pb2.BYTES
    assert not features["coupon"].presence.HasField("min_fraction")  # undeclared: optional
    assert features["user_id"].presence.min_fraction == 1.0  # declarations still hold

    assert cli.main(["schema", "show", NAME, "--home", str(home)]) == 0
    shown = capsys.readouterr().out
    assert f"#{accepted.id}, accepted: accepted run {night3.run_id}" in shown
    assert "made by SchemaAccept execution" in shown
    assert "environments ['TRAINING', 'SERVING']; not in: {'label': ['SERVING']}" in shown

    pipeline = _pipeline(base)
    rerun = run_pipeline(pipeline, home=home, echo=lambda line: None)  # the accepted night
    assert rerun.ok, rerun.summary()
    assert rerun.steps["StatisticsGen"].status == "cached"
    assert rerun.steps["SchemaGen"].outputs["schema"].source.startswith(
        f"current schema #{accepted.id} (accepted")

    _write_day(base, 4, new_column=True, string_amounts=True)
    night4 = run_pipeline(pipeline, home=home, echo=lambda line: None)
    assert night4.ok, night4.summary()
    assert night4.steps["ExampleValidator"].outputs["anomalies"].anomaly_count == 0
    assert f"current schema #{accepted.id} (accepted)" in night4.steps["LatestSchema"].reason


def test_declarations_name_what_they_cannot_apply_to():
    schema = schema_pb2.Schema()
    for name, kind in (("day", schema_pb2.INT), ("amount", schema_pb2.FLOAT)):
        feature = schema.feature.add(name=name, type=kind)
        feature.presence.min_fraction = 1.0
    schema.feature[0].bool_domain.SetInParent()
    with pytest.raises(SchemaDeclarationError, match=r"label_feature \['target'\]: not a "
                                                     r"feature of the schema \(features: "
                                                     r"\['amount', 'day'\]\)"):
        apply_declarations(schema, Declarations(label_feature="target"))
    with pytest.raises(SchemaDeclarationError, match="'amount' is FLOAT, not INT"):
        apply_declarations(schema, Declarations(bool_features=["amount"]))
    apply_declarations(schema, Declarations())
    assert not schema.feature[0].HasField("bool_domain")
    assert not any(f.presence.HasField("min_fraction") for f in schema.feature)
    assert not schema.default_environment


def test_curated_schema_pipeline_is_unaffected(tmp_path, capsys):
    penguin = registry.load("penguin")
    kinds = {type(c).__name__ for c in penguin.components}
    assert "ImportSchemaGen" in kinds and not kinds & {"SchemaGen", "LatestSchema"}

    copy_penguins(tmp_path / "input")
    result = run_pipeline(data_half("curated", tmp_path / "input"), home=tmp_path / "home",
                          echo=lambda line: None)
    assert result.ok, result.summary()
    imported = result.steps["ImportSchemaGen"].outputs["schema"]
    assert imported.origin == "imported"
    anomalies = result.steps["ExampleValidator"].outputs["anomalies"]
    assert anomalies.anomaly_count == 0
    assert "environment" not in Path(anomalies.path("report.txt")).read_text().splitlines()[0]

    code = cli.main(["schema", "accept", result.run_id, "--pipeline", "curated",
                     "--home", str(tmp_path / "home")])
    err = capsys.readouterr().err
    assert code == 1 and "curated file" in err and str(imported.source) in err
    assert cli.main(["schema", "show", "curated", "--home", str(tmp_path / "home")]) == 0
    shown = capsys.readouterr().out
    assert f"the curated file {imported.source} (imported by ImportSchemaGen as " \
           f"#{imported.id})" in shown
