"""The second example pipeline (pipelines/churn), end to end on its generated daily data:
a binary classifier, an inferred-then-guarded schema, the framework's signatures, and the
Evaluator judging AUC on the overall slice.

One pipeline home lives through, in order:
  night 1   2026-11-01: the schema is inferred, a model trained, validated, pushed (v1)
  night 2   2026-11-02: judged against v1 (the served baseline) and pushed (v2)
  bad days  one day each with a new column, "NaN" tokens in a number column, a required
            column missing in 20 % of rows, a category never seen, an empty file: each
            stops before Transform naming the feature (or the file), and v2 stays served
  accepted  `pipewright schema accept` takes the new-column day
  night 3   2026-11-03, with the new column: passes on the accepted schema, pushed (v3)
  gated     the same night with a declared slice threshold on channel=partner, a slice
            whose churn is noise: not blessed, nothing pushed
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from components.pusher import versions_on_disk
from components.signatures import describe, read_class_names
from pipelines import cli
from pipelines.churn import generate
from pipelines.churn.pipeline import MODULE_FILE, create_pipeline
from pipelines.local_runner import run_pipeline

NIGHTS = [dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)]
BAD_DAY = dt.date(2026, 11, 3)
PARAMS = {"train_steps": 200, "max_auc_drop": 0.05}
DATA_HALF = ["ExampleGen", "StatisticsGen", "LatestSchema", "SchemaGen", "ExampleValidator"]


def _with_referral_codes(rows):
    return [{**row, "referral_code": ["", "friend", "ad", "podcast"][i % 4]}
            for i, row in enumerate(rows)]


def _nan_tenure(rows):
    return [{**row, "tenure_months": "NaN" if i % 3 == 0 else row["tenure_months"]}
            for i, row in enumerate(rows)]


def _blank_charges(rows):
    return [{**row, "monthly_charge": "" if i % 5 == 0 else row["monthly_charge"]}
            for i, row in enumerate(rows)]


def _enterprise_plans(rows):
    return [{**row, "plan": "enterprise" if i % 20 == 0 else row["plan"]}
            for i, row in enumerate(rows)]


# name -> (rows -> rows, extra columns, what the failure must name)
BAD_DAYS = {
    "new_column": (_with_referral_codes, ["referral_code"], "referral_code (New column"),
    "nan_tokens": (_nan_tenure, [], "tenure_months"),
    "missing_required": (_blank_charges, [], "monthly_charge"),
    "new_category": (_enterprise_plans, [], "plan (Unexpected string values"),
}


@pytest.fixture(scope="module")
def life(tmp_path_factory):
    root = tmp_path_factory.mktemp("churn")
    days, home = root / "days", root / "home"
    out = {"home": home, "days": days}

    def run(pipeline=None, **params):
        return run_pipeline(pipeline or create_pipeline(), home=home, echo=lambda line: None,
                            params={"data_root": str(days), **PARAMS, **params})

    for night, date in enumerate(NIGHTS[:2], start=1):
        generate.write_day(days, date, generate.rows_for_day(date))
        out[f"night{night}"] = run()
        out[f"served_after_night{night}"] = versions_on_disk(home / "serving" / "churn")

    rows = generate.rows_for_day(BAD_DAY)
    for name, (change, extra, _) in BAD_DAYS.items():
        bad_root = root / f"bad-{name}"
        path = generate.write_day(bad_root, BAD_DAY, change(rows), generate.HEADER + extra)
        out[name] = (run(data_root=str(bad_root)), path)
    empty = bad_root.parent / "bad-empty" / BAD_DAY.isoformat() / generate.FILE_NAME
    empty.parent.mkdir(parents=True)
    empty.write_text("")
    out["empty_file"] = (run(data_root=str(empty.parents[1])), empty)
    out["served_after_bad_days"] = versions_on_disk(home / "serving" / "churn")

    new_column_run = out["new_column"][0].run_id
    out["accept_code"] = cli.main(["schema", "accept", new_column_run, "--pipeline", "churn",
                                   "--home", str(home)])
    generate.write_day(days, NIGHTS[2], _with_referral_codes(generate.rows_for_day(NIGHTS[2])),
                       generate.HEADER + ["referral_code"])
    out["night3"] = run()
    out["served_after_night3"] = versions_on_disk(home / "serving" / "churn")
    out["gated"] = run(create_pipeline(slice_thresholds={"channel=partner": 0.6}))
    out["served_after_gated"] = versions_on_disk(home / "serving" / "churn")
    return out


def _report(result, step: str, artifact: str) -> str:
    return Path(result.steps[step].outputs[artifact].path("report.txt")).read_text()


def test_three_nights_train_judge_against_the_served_model_and_push(life):
    for night in ("night1", "night2", "night3"):
        assert life[night].ok, life[night].summary()
    assert life["served_after_night1"] == [1]
    assert life["served_after_night2"] == [1, 2]
    assert life["served_after_night3"] == [1, 2, 3]
    first = _report(life["night1"], "Evaluator", "evaluation")
    assert "no baseline: first push" in first and "(binary task)" in first
    second = _report(life["night2"], "Evaluator", "evaluation")
    assert "served as version 1" in second, second.splitlines()[0]
    assert life["night2"].steps["LatestPushedModel"].outputs["baseline_model"].id == \
        life["night1"].steps["Trainer"].outputs["model"].id
    third = _report(life["night3"], "Evaluator", "evaluation")
    assert "served as version 2" in third, third.splitlines()[0]


def test_the_framework_signatures_serve_and_validate_without_signature_code(life):
    source = Path(str(MODULE_FILE)).read_text()
    for hand_written in ("signatures=", "get_concrete_function", "tf.TensorSpec",
                         "parse_example(serialized, raw"):
        assert hand_written not in source
    night1 = life["night1"]
    assert night1.steps["InfraValidator"].outputs["blessing"].blessed == 1
    model_dir = night1.steps["Trainer"].outputs["model"].serving_dir
    signatures = describe(model_dir)
    assert {"serving_default", "serving_raw", "classify", "transform_features",
            "transform_label"} <= set(signatures)
    assert signatures["serving_default"]["outputs"]["scores"] == ("DT_FLOAT", [-1, 2])
    assert read_class_names(model_dir) == ["stays", "churns"]
    served = life["home"] / "serving" / "churn" / "1"
    assert (served / "saved_model.pb").is_file()


def test_binary_metrics_are_on_the_positive_class_not_micro_averaged(life):
    report = _report(life["night1"], "Evaluator", "evaluation")
    overall = {line.split()[1]: float(line.split()[2]) for line in report.splitlines()
               if line.startswith("Overall ")}
    assert overall["auc"] > 0.8, overall
    # Micro-averaging the two score columns would make these three equal.
    assert len({overall["precision"], overall["recall"], overall["binary_accuracy"]}) == 3


def test_a_weak_slice_is_reported_not_gating_on_overall_auc(life):
    report = _report(life["night3"], "Evaluator", "evaluation")
    assert report.splitlines()[1].startswith("BLESSED")
    assert "Slices outside the overall bound auc >= 0.7 (reported, not gating" in report
    partner = next(line for line in report.splitlines()
                   if line.strip().startswith("channel=partner: auc"))
    assert float(partner.split("=")[-1]) < 0.6


def test_a_declared_slice_threshold_gates(life):
    gated = life["gated"]
    assert gated.steps["Trainer"].status == "cached"
    assert gated.steps["Evaluator"].status == "executed"
    blessing = gated.steps["Evaluator"].outputs["blessing"]
    assert blessing.blessed == 0
    assert "channel=partner" in blessing.reason and "auc" in blessing.reason
    assert gated.steps["Pusher"].outcome == "skipped"
    assert life["served_after_gated"] == [1, 2, 3]


@pytest.mark.parametrize("bad_day", sorted(BAD_DAYS))
def test_a_bad_day_stops_before_transform_naming_the_feature_and_file(life, bad_day):
    result, path = life[bad_day]
    named = BAD_DAYS[bad_day][2]
    assert not result.ok
    assert result.steps["ExampleValidator"].outcome == "halted", result.summary()
    assert named in result.failure and str(path) in result.failure, result.failure
    assert "Transform" not in result.steps
    assert life["served_after_bad_days"] == [1, 2]


def test_nan_tokens_stay_missing_values_of_a_number_column(life):
    result, _ = life["nan_tokens"]
    statistics = result.steps["StatisticsGen"].outputs["statistics"]
    from components.tfmd_files import read_statistics
    [dataset] = read_statistics(statistics, "train").datasets
    tenure = next(f for f in dataset.features if f.path.step == ["tenure_months"])
    assert tenure.WhichOneof("stats") == "num_stats"  # "NaN" did not make it a string
    assert "tenure_months (Column dropped: The feature was present in fewer examples than " \
        "expected: minimum fraction = 1.000000" in result.failure


def test_an_empty_file_fails_example_gen_naming_it(life):
    result, path = life["empty_file"]
    assert not result.ok
    assert result.steps["ExampleGen"].status == "failed"
    assert str(path) in result.failure
    assert life["served_after_bad_days"] == [1, 2]


def test_an_accepted_schema_change_passes_the_next_night(life):
    assert life["accept_code"] == 0
    night3 = life["night3"]
    assert "(accepted)" in night3.steps["LatestSchema"].reason
    assert night3.steps["ExampleValidator"].outputs["anomalies"].anomaly_count == 0
    assert night3.steps["Transform"].status == "executed"


def test_diff_of_two_nights_shows_schema_statistics_metrics_and_push(life, capsys):
    night2, night3 = life["night2"].run_id, life["night3"].run_id
    assert cli.main(["diff", night2, night3, "--home", str(life["home"])]) == 0
    out = capsys.readouterr().out
    assert f"pipeline churn: A = {night2} (succeeded), B = {night3} (succeeded)" in out
    assert "  + referral_code BYTES optional" in out  # the accepted schema change
    assert "referral_code        only in B" in out
    assert "plan                 string   missing 0.0% -> 0.0%  unique 4 -> 4  L-infinity" in out
    assert "  Overall                auc " in out
    assert "push Pusher.pushed_model: model" in out and "as version 2 -> model" in out
    assert "as version 3" in out
    assert cli.main(["runs", "churn", "--home", str(life["home"])]) == 0
    runs = capsys.readouterr().out
    night3_row = next(line for line in runs.splitlines() if night3 in line)
    assert "auc=0." in night3_row and " yes " in night3_row and " v3 " in night3_row
    assert cli.main(["diff", night2, "no-such-run", "--home", str(life["home"])]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err


def test_the_airflow_ui_view_shows_runs_steps_and_reports(life):
    """The plugin's app (pipelines/airflow_plugin.py) on this home, without sockets; the
    Airflow system test loads it into a real API server."""
    from fastapi.testclient import TestClient

    from pipelines.airflow_plugin import create_app

    client = TestClient(create_app(str(life["home"])))
    runs = client.get("/")
    assert runs.status_code == 200
    night3 = life["night3"].run_id
    row = runs.text[runs.text.index(f">{night3}<"):].split("</tr>")[0]
    assert "succeeded" in row and "auc=0." in row and "v3" in row
    bad, path = life["new_category"]
    run = client.get(f"/runs/churn/{bad.run_id}").text
    validator = run[run.index("<a id='ExampleValidator'>"):].split("</tr>")[0]
    assert "<span class='halted'>halted</span>" in validator and str(path) in validator
    assert "<svg" in run and "<title>statistics #" in run  # the lineage picture
    assert "diff?a=" in run  # compared with the run before it
    statistics = life["night3"].steps["StatisticsGen"].outputs["statistics"]
    page = client.get(f"/artifacts/{statistics.id}").text
    assert "TFDV facets view" in page and "plan" in page
    facets = client.get(f"/artifacts/{statistics.id}/files/statistics.html")
    assert facets.status_code == 200 and "facets" in facets.text
    escape = client.get(f"/artifacts/{statistics.id}/files/%2E%2E%2F%2E%2E%2Fmetadata.sqlite")
    assert escape.status_code == 404 and "has no file '../../metadata.sqlite'" in escape.text
    assert client.get("/artifacts/99999").status_code == 404
    diff = client.get("/diff", params={"a": life["night2"].run_id, "b": night3})
    assert diff.status_code == 200 and "+ referral_code BYTES optional" in diff.text
    assert client.get("/diff", params={"a": "nope", "b": night3}).status_code == 404


def test_schema_accept_names_the_pipeline_a_run_belongs_to(life, capsys):
    from tests import core_pipelines

    other = run_pipeline(core_pipelines.create_pipeline(), home=life["home"],
                         echo=lambda line: None)
    home = ["--home", str(life["home"])]
    assert cli.main(["schema", "accept", other.run_id, "--pipeline", "churn", *home]) == 1
    err = capsys.readouterr().err
    assert f"run {other.run_id} is a run of pipeline '{other.pipeline_name}', not 'churn'" in err
    assert cli.main(["schema", "accept", other.run_id, "--pipeline", "nope", *home]) == 1
    err = capsys.readouterr().err
    assert "no run of pipeline 'nope' is recorded" in err and "'churn'" in err


def test_deleted_artifact_files_are_named_not_a_stack_trace(life, capsys):
    """Last in this module: it moves night 1's statistics away (and back)."""
    import shutil

    from fastapi.testclient import TestClient

    from pipelines.airflow_plugin import create_app

    statistics = life["night1"].steps["StatisticsGen"].outputs["statistics"]
    moved = Path(statistics.uri + ".moved")
    shutil.move(statistics.uri, moved)
    try:
        client = TestClient(create_app(str(life["home"])))
        page = client.get(f"/artifacts/{statistics.id}")
        assert page.status_code == 200 and "cannot show it" in page.text, page.text[:500]
        assert "Lineage" in page.text  # the rest of the page still works
        night1, night2 = life["night1"].run_id, life["night2"].run_id
        assert cli.main(["diff", night1, night2, "--home", str(life["home"])]) == 0
        out = capsys.readouterr().out
        assert f"statistics StatisticsGen.statistics: #{statistics.id} " in out
        assert "split train: (files gone)" in out and "evaluation Evaluator" in out
        assert cli.main(["show", str(statistics.id), "--home", str(life["home"])]) == 2
        assert "are gone:" in capsys.readouterr().err
    finally:
        shutil.move(moved, statistics.uri)
