"""The penguin data half end to end on real TFDV, Beam and a real MLMD store:
ExampleGen -> StatisticsGen -> ImportSchemaGen / SchemaGen -> ExampleValidator, then
caching (full re-run, changed parameter, edited schema, changed input) and drift."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from tensorflow_metadata.proto.v0 import schema_pb2

from components.artifacts import ExampleAnomalies
from components.base import Param
from components.example_gen import ExampleGen
from components.statistics_gen import StatisticsGen
from components.tfmd_files import read_anomalies, read_schema, read_statistics
from pipelines.local_runner import run_pipeline
from pipelines.metadata import Metadata
from pipelines.pipeline import Pipeline
from tests.data_pipelines import (CURATED_SCHEMA, all_examples, copy_penguins, data_half,
                                  penguin_rows, write_csv)

STEPS = ["ExampleGen", "ImportSchemaGen", "StatisticsGen", "ExampleValidator", "SchemaGen"]
EXCLUDE = Param("statistics_exclude_splits", list[str], [], "splits StatisticsGen skips")


def _penguin_pipeline(workdir: Path):
    return data_half("penguin_data", workdir / "input", schema_file=workdir / "schema.pbtxt",
                     with_schema_gen=True, parameters=[EXCLUDE],
                     statistics_args={"exclude_splits": EXCLUDE})


@pytest.fixture(scope="session")
def penguin_run(tmp_path_factory):
    """One run of the data half on the penguin CSV, shared by the tests of this file. Its
    input and curated schema are copies, so tests may edit them (and put them back)."""
    workdir = tmp_path_factory.mktemp("penguin_data")
    copy_penguins(workdir / "input")
    shutil.copyfile(CURATED_SCHEMA, workdir / "schema.pbtxt")
    home = workdir / "home"
    result = run_pipeline(_penguin_pipeline(workdir), home=home)
    return workdir, home, result


def _rerun(workdir: Path, home: Path, **kwargs):
    return run_pipeline(_penguin_pipeline(workdir), home=home, **kwargs)


def test_penguin_data_half_runs_end_to_end(penguin_run):
    _, home, result = penguin_run
    assert result.ok, result.failure
    assert set(result.steps) == set(STEPS)
    assert all(step.status == "executed" for step in result.steps.values())

    examples = result.steps["ExampleGen"].outputs["examples"]
    assert examples.splits == ["train", "eval"] and examples.span == 0
    assert examples.payload_format == "FORMAT_TF_EXAMPLE" and examples.input_fingerprint
    by_split = all_examples(examples)
    rows = [row for split_rows in by_split.values() for row in split_rows]
    assert len(rows) == 344
    # About 2 : 1, and every split has a fair share.
    assert 0.55 < len(by_split["train"]) / len(rows) < 0.78
    # Missing values stay missing: "NA" leaves the feature out, nothing is filled in.
    _, raw = penguin_rows()
    assert sum("bill_length_mm" not in row for row in rows) == sum(r[2] == "NA" for r in raw) == 2
    assert sum("sex" not in row for row in rows) == sum(r[6] == "NA" for r in raw) == 11
    first = next(row for row in rows if row.get("bill_length_mm") and row.get("sex"))
    assert isinstance(first["flipper_length_mm"][0], int)
    assert isinstance(first["bill_length_mm"][0], float)
    assert first["species"][0] in {"Adelie", "Chinstrap", "Gentoo"}

    statistics = result.steps["StatisticsGen"].outputs["statistics"]
    assert statistics.splits == ["train", "eval"]
    counts = {split: read_statistics(statistics, split).datasets[0].num_examples
              for split in statistics.splits}
    assert counts == {split: len(r) for split, r in by_split.items()}
    train = read_statistics(statistics, "train").datasets[0]
    features = {f.path.step[0]: f for f in train.features}
    assert set(features) == {"species", "island", "bill_length_mm", "bill_depth_mm",
                             "flipper_length_mm", "body_mass_g", "sex", "year"}
    assert features["body_mass_g"].num_stats.min >= 2700
    html = Path(statistics.path("statistics.html")).read_text()
    assert "facets" in html.lower() and len(html) > 1000

    anomalies = result.steps["ExampleValidator"].outputs["anomalies"]
    assert anomalies.anomaly_count == 0 and result.steps["ExampleValidator"].outcome == "ok"
    for split in ("train", "eval"):
        assert not read_anomalies(anomalies, split).anomaly_info
    report = Path(anomalies.path("report.txt")).read_text()
    assert "split train: no anomalies" in report and "split eval: no anomalies" in report

    # Lineage in MLMD: the anomalies come from these statistics, which come from these examples.
    metadata = Metadata(str(home / "metadata.sqlite"))
    assert [a.id for a in metadata.artifacts_of_type(ExampleAnomalies)] == [anomalies.id]
    producer = metadata.lineage(anomalies)["producers"][0]
    assert producer["inputs"]["statistics"].id == statistics.id
    assert metadata.lineage(statistics)["producers"][0]["inputs"]["examples"].id == examples.id


def test_schema_gen_infers_from_train_and_widens_with_eval(penguin_run):
    _, _, result = penguin_run
    schema = read_schema(result.steps["SchemaGen"].outputs["schema"].file)
    features = {f.name: f for f in schema.feature}
    domains = {d.name: list(d.value) for d in schema.string_domain}
    assert domains["species"] == ["Adelie", "Chinstrap", "Gentoo"]
    assert domains["island"] == ["Biscoe", "Dream", "Torgersen"]
    # Complete in the data, yet optional: SchemaGen requires only declared features
    # (required_features); min_count still guards a dropped column.
    assert not features["island"].presence.HasField("min_fraction")
    assert features["island"].presence.min_count == 1
    # Measurements have missing values in the data: not required, no fixed shape.
    assert features["bill_length_mm"].presence.min_fraction < 1.0
    assert not features["bill_length_mm"].HasField("shape")
    assert schema_pb2.FeatureType.Name(features["body_mass_g"].type) == "INT"
    assert schema_pb2.FeatureType.Name(features["bill_depth_mm"].type) == "FLOAT"


def test_rerun_is_fully_cached(penguin_run):
    workdir, home, first = penguin_run
    again = _rerun(workdir, home)
    assert again.ok
    assert {cid: step.status for cid, step in again.steps.items()} == {cid: "cached" for cid in STEPS}
    for cid, step in again.steps.items():
        assert {k: a.id for k, a in step.outputs.items()} == \
               {k: a.id for k, a in first.steps[cid].outputs.items()}


def test_changed_parameter_reruns_only_the_step_and_what_depends_on_it(penguin_run):
    workdir, home, first = penguin_run
    changed = _rerun(workdir, home, params={"statistics_exclude_splits": ["eval"]})
    assert changed.ok, changed.failure
    status = {cid: step.status for cid, step in changed.steps.items()}
    assert status == {"ExampleGen": "cached", "ImportSchemaGen": "cached",
                      "StatisticsGen": "executed", "ExampleValidator": "executed",
                      "SchemaGen": "executed"}
    statistics = changed.steps["StatisticsGen"].outputs["statistics"]
    assert statistics.splits == ["train"]
    assert not os.path.exists(statistics.split_uri("eval"))
    assert changed.steps["ExampleValidator"].outputs["anomalies"].splits == ["train"]


def test_edited_schema_file_reruns_import_and_its_consumers(penguin_run):
    workdir, home, first = penguin_run
    schema_file = workdir / "schema.pbtxt"
    original = schema_file.read_text()
    try:
        schema_file.write_text(original + "\n# reviewed again: no change to the contract\n")
        result = _rerun(workdir, home)
    finally:
        schema_file.write_text(original)
    status = {cid: step.status for cid, step in result.steps.items()}
    assert status == {"ExampleGen": "cached", "ImportSchemaGen": "executed",
                      "StatisticsGen": "executed", "ExampleValidator": "executed",
                      "SchemaGen": "executed"}
    # Back to the original content: the original executions are reused.
    assert all(s.status == "cached" for s in _rerun(workdir, home).steps.values())


def test_changed_input_file_reruns_example_gen(penguin_run):
    workdir, home, first = penguin_run
    csv_path = workdir / "input" / "penguins.csv"
    original = csv_path.read_bytes()
    header, rows = penguin_rows()
    try:
        write_csv(csv_path, header, rows[:-10])
        result = _rerun(workdir, home)
    finally:
        csv_path.write_bytes(original)
    assert result.ok, result.failure
    assert result.steps["ExampleGen"].status == "executed"
    assert result.steps["ImportSchemaGen"].status == "cached"
    examples = result.steps["ExampleGen"].outputs["examples"]
    old = first.steps["ExampleGen"].outputs["examples"]
    assert examples.input_fingerprint != old.input_fingerprint
    assert sum(len(r) for r in all_examples(examples).values()) == 334


@pytest.fixture(scope="module")
def drift_input(tmp_path_factory):
    """Span 1 holds only Adelie penguins, span 2 all of them: the species mix drifts."""
    base = tmp_path_factory.mktemp("drift")
    header, rows = penguin_rows()
    write_csv(base / "span-1" / "data.csv", header, [r for r in rows if r[0] == "Adelie"])
    write_csv(base / "span-2" / "data.csv", header, rows)
    return base


SPAN_RANGE = Param("span_range", list[int] | None, None, "[first, last] span to read")


def _drift_pipeline(base: Path, **validator_args):
    return data_half("drift", base, input_pattern="span-{SPAN}/*.csv",
                     validator_args={"drift_thresholds": {"species": 0.1}, **validator_args},
                     parameters=[SPAN_RANGE], example_gen_args={"span_range": SPAN_RANGE})


def test_drift_against_the_previous_span_halts_the_run(drift_input, tmp_path):
    pipeline = _drift_pipeline(drift_input)
    first = run_pipeline(pipeline, home=tmp_path, params={"span_range": [1, 1]})
    assert first.ok, first.failure
    report = Path(first.steps["ExampleValidator"].outputs["anomalies"].path("report.txt")).read_text()
    assert "drift not checked: no statistics of an earlier span" in report

    second = run_pipeline(pipeline, home=tmp_path)  # the newest span: 2
    validator = second.steps["ExampleValidator"]
    assert validator.status == "executed" and validator.outcome == "halted"
    assert not second.ok and "species" in second.failure and "Linfty" in second.failure
    anomalies = validator.outputs["anomalies"]  # a halt still publishes the anomalies
    assert anomalies.span == 2 and anomalies.anomaly_count >= 1
    drift = read_anomalies(anomalies, "train")
    assert "species" in drift.anomaly_info
    report = Path(anomalies.path("report.txt")).read_text()
    previous = first.steps["StatisticsGen"].outputs["statistics"]
    assert f"against span 1 (statistics #{previous.id})" in report
    assert "species: L_INFTY" in report

    warned = run_pipeline(_drift_pipeline(drift_input, fail_on_anomalies=False), home=tmp_path)
    assert warned.ok and warned.steps["ExampleValidator"].outcome == "ok"
    assert warned.steps["ExampleValidator"].outputs["anomalies"].anomaly_count >= 1
    assert warned.steps["StatisticsGen"].status == "cached"


def test_skew_between_train_and_eval_is_reported(penguin_run, tmp_path):
    workdir, _, _ = penguin_run
    pipeline = data_half("skew", workdir / "input", schema_file=CURATED_SCHEMA,
                         validator_args={"skew_thresholds": {"island": 0.001,
                                                             "body_mass_g": 0.5},
                                         "fail_on_anomalies": False})
    result = run_pipeline(pipeline, home=tmp_path)
    assert result.ok, result.failure
    anomalies = result.steps["ExampleValidator"].outputs["anomalies"]
    train = read_anomalies(anomalies, "train")
    assert "island" in train.anomaly_info  # categorical: L-infinity over a tiny threshold
    assert "body_mass_g" not in train.anomaly_info  # numeric: Jensen-Shannon under 0.5
    report = Path(anomalies.path("report.txt")).read_text()
    assert "skew: against split eval" in report
    assert "body_mass_g: JENSEN_SHANNON_DIVERGENCE" in report


def test_statistics_gen_runs_beam_with_the_pipeline_beam_args(penguin_run, tmp_path):
    workdir, _, _ = penguin_run
    gen = ExampleGen(input_base=str(workdir / "input"))
    stats = StatisticsGen(examples=gen.outputs.examples)
    pipeline = Pipeline("beam_args", [gen, stats], beam_args=["--runner=NoSuchRunner"])
    result = run_pipeline(pipeline, home=tmp_path)
    assert result.steps["ExampleGen"].status == "executed"
    assert result.steps["StatisticsGen"].status == "failed"
    assert "NoSuchRunner" in result.failure


def test_stats_options_reach_tfdv_and_a_wrong_one_is_named(penguin_run, tmp_path):
    workdir, home, _ = penguin_run
    gen = ExampleGen(input_base=str(workdir / "input"))
    sketch = StatisticsGen(examples=gen.outputs.examples, stats_options={
        "experimental_use_sketch_based_topk_uniques": True, "num_top_values": 2})
    result = run_pipeline(Pipeline("sketch", [gen, sketch]), home=tmp_path / "a")
    assert result.ok, result.failure
    stats = read_statistics(result.steps["StatisticsGen"].outputs["statistics"], "train")
    island = next(f for f in stats.datasets[0].features if f.path.step == ["island"])
    assert island.string_stats.unique == 3  # three islands: the sketch is exact on few values
    assert len(island.string_stats.top_values) == 2  # num_top_values reached TFDV

    wrong = StatisticsGen(examples=gen.outputs.examples, stats_options={"num_top_valu": 2})
    result = run_pipeline(Pipeline("wrong", [gen, wrong]), home=tmp_path / "b")
    assert result.steps["StatisticsGen"].status == "failed"
    assert "stats_options: ['num_top_valu'] is not an argument of tfdv.StatsOptions" in \
        result.failure


def test_show_summarizes_statistics_schema_and_anomalies(penguin_run, capsys):
    from pipelines import cli

    _, home, result = penguin_run
    shown = {}
    for component_id, key in (("StatisticsGen", "statistics"), ("ImportSchemaGen", "schema"),
                              ("ExampleValidator", "anomalies")):
        artifact = result.steps[component_id].outputs[key]
        assert cli.main(["show", str(artifact.id), "--home", str(home)]) == 0
        shown[key] = capsys.readouterr().out
    counts = {split: read_statistics(result.steps["StatisticsGen"].outputs["statistics"], split)
              .datasets[0].num_examples for split in ("train", "eval")}
    assert f"split train: {counts['train']} examples" in shown["statistics"]
    assert "bill_length_mm" in shown["statistics"] and "HTML view:" in shown["statistics"]
    assert "species" in shown["schema"] and "Adelie" in shown["schema"]
    assert "split eval: no anomalies" in shown["anomalies"]


def test_beam_steps_name_their_runner_and_never_try_to_download_prism(penguin_run):
    _, _, result = penguin_run
    with open(result.steps["StatisticsGen"].log_path) as fh:
        log = fh.read()
    assert "Beam runner: FnApiRunner" in log
    assert "prism" not in log.lower(), "the default DirectRunner tried the Prism runner"
