"""The Evaluator's baseline is the model being served, on real penguin models, a real
serving directory and a real MLMD store.

One story, built once (`nights`): night 1 pushes model A as v1; night 2 pushes B as v2;
`pipewright rollback` serves A again as v3; on night 3 the Evaluator blesses C but the
InfraValidator rejects it (never pushed); night 4's candidate D must be compared with A
(served as v3) — not with C (newest blessed), not with B (rolled back)."""
from __future__ import annotations

import os
import shutil

import pytest

from components.resolver import BaselineError, served_model
from pipelines.metadata import Metadata


def _penguin(**component_parameters):
    """The penguin pipeline with some component parameters changed: {id: {name: value}}."""
    from pipelines import registry

    pipeline = registry.load("penguin")
    for component_id, values in component_parameters.items():
        pipeline.component(component_id).parameters.update(values)
    return pipeline


def _run(pipeline, home: str, **params):
    from pipelines.local_runner import run_pipeline

    result = run_pipeline(pipeline, home=home, params=params, echo=lambda line: None)
    assert result.ok, result.summary()
    return result


def _report(run) -> str:
    with open(run.steps["Evaluator"].outputs["evaluation"].path("report.txt")) as fh:
        return fh.read()


# 101 eval examples: one more mistake is 0.01 accuracy; allow a little, so each new model
# is blessed whatever its last-digit luck (the change threshold still applies).
TOLERANT = {"Evaluator": {"change_threshold": 0.05}}


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    from pipelines.rollback import rollback

    home = str(tmp_path_factory.mktemp("served-baseline"))
    story = {"home": home}
    story["night1"] = _run(_penguin(), home, train_steps=200)
    story["night2"] = _run(_penguin(**TOLERANT), home, train_steps=220)
    story["rollback"] = rollback("penguin", home)
    story["night3"] = _run(_penguin(**TOLERANT, InfraValidator={"load_deadline_s": 0.001}),
                           home, train_steps=240)
    story["night4"] = _run(_penguin(**TOLERANT), home, train_steps=260)
    story["serving"] = story["night1"].steps["Pusher"].outputs["pushed_model"].pushed_destination
    return story


def _model(run):
    return run.steps["Trainer"].outputs["model"]


def test_first_push_has_no_baseline_and_says_so(nights):
    night1 = nights["night1"]
    assert "baseline_model" not in night1.steps["LatestPushedModel"].outputs
    assert "no baseline" in night1.steps["LatestPushedModel"].reason
    assert "no baseline" in _report(night1)
    assert night1.steps["Pusher"].outputs["pushed_model"].pushed_version == 1


def test_rollback_marks_the_replaced_push_and_serves_the_earlier_model(nights):
    a, b = _model(nights["night1"]), _model(nights["night2"])
    assert nights["night2"].steps["Evaluator"].outputs["blessing"].baseline_model_id == a.id
    assert nights["rollback"].model_id == a.id and nights["rollback"].pushed_version == 3
    metadata = Metadata(os.path.join(nights["home"], "metadata.sqlite"))
    [push_of_b] = [p for p in metadata.artifacts_of_type(type(nights["rollback"]))
                   if p.pushed and p.model_id == b.id]
    assert push_of_b.pushed_version == 2 and push_of_b.rolled_back == 1


def test_a_model_the_infra_validator_rejected_is_never_the_baseline(nights):
    night3 = nights["night3"]
    assert night3.steps["Evaluator"].outputs["blessing"].blessed == 1
    assert night3.steps["InfraValidator"].outputs["blessing"].blessed == 0
    assert night3.steps["Pusher"].outcome == "skipped"
    assert night3.steps["LatestPushedModel"].outputs["baseline_model"].id == \
        _model(nights["night1"]).id


def test_after_a_rollback_the_next_candidate_is_compared_with_the_served_model(nights):
    a, night4 = _model(nights["night1"]), nights["night4"]
    baseline = night4.steps["LatestPushedModel"].outputs
    assert baseline["baseline_model"].id == a.id
    assert baseline["baseline_pushed_model"].pushed_version == 3
    report = _report(night4)
    assert f"baseline model {a.id}" in report and "version 3" in report, report[:400]
    blessing = night4.steps["Evaluator"].outputs["blessing"]
    assert blessing.baseline_model_id == a.id and blessing.baseline_version == 3


def test_a_rerun_with_nothing_changed_executes_nothing(nights):
    before = sorted(os.listdir(nights["serving"]))
    again = _run(_penguin(**TOLERANT), nights["home"], train_steps=260)
    assert again.executed() == [], again.summary()
    assert again.steps["LatestPushedModel"].outputs["baseline_model"].id == \
        _model(nights["night1"]).id
    assert sorted(os.listdir(nights["serving"])) == before


def test_deleted_versions_and_models_change_the_baseline_or_fail_naming_the_path(nights, tmp_path):
    metadata = Metadata(os.path.join(nights["home"], "metadata.sqlite"))
    serving = nights["serving"]
    a, c = _model(nights["night1"]), _model(nights["night3"])
    aside = tmp_path / "aside"
    aside.mkdir()
    moved = []
    try:
        # Versions removed by hand: what serves now is the newest left; v2 was rolled back.
        for version in sorted((v for v in os.listdir(serving) if v.isdigit()), key=int)[2:]:
            shutil.move(os.path.join(serving, version), aside / version)
            moved.append((aside / version, os.path.join(serving, version)))
        assert sorted(v for v in os.listdir(serving) if v.isdigit()) == ["1", "2"]
        model, pushed = served_model(metadata, serving, c)
        assert (model.id, pushed.pushed_version) == (a.id, 1)

        # The served model's SavedModel gone from its artifact directory: an error naming
        # it, never a silent fall back to an older model or to none.
        shutil.move(a.serving_dir, aside / "model-a")
        moved.append((aside / "model-a", a.serving_dir))
        with pytest.raises(BaselineError, match=a.serving_dir):
            served_model(metadata, serving, c)
    finally:
        for source, target in reversed(moved):
            shutil.move(str(source), target)

    # Versions nobody pushed through the pipeline: an error naming the directory.
    foreign = tmp_path / "foreign" / "penguin"
    shutil.copytree(os.path.join(serving, "1"), foreign / "7")
    with pytest.raises(BaselineError, match=str(foreign)):
        served_model(metadata, str(foreign), c)
    assert served_model(metadata, str(tmp_path / "empty"), c) is None  # a first push
