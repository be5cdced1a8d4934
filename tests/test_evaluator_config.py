"""An EvalConfig is honoured or rejected, never altered: the Evaluator's handling of model
specs, thresholds without a baseline, configs without thresholds, the slices the typed
parameters gate, and what its reports say about the baseline.

The checks on the config itself need no model. The runs reuse the session's trained penguin
(tests/conftest.py) in a copy of its home, so every step upstream of the Evaluator is cached
and only the Evaluator (and a Pusher) executes. The reports against a served baseline are
checked on the real pipeline's second model in tests/test_model_half.py."""
from __future__ import annotations

import glob
import os
import shutil
from types import SimpleNamespace

import pytest

from components.artifacts import Model, PushedModel
from components.base import ExternalPath
from components.evaluator import (CHANGE_SKIPPED, NO_THRESHOLDS, EvalConfigError,
                                  _baseline_push, _baseline_text, plan_eval_config)
from pipelines.pipeline import Pipeline

SPEC = ('label_key: "species" signature_name: "serving_default" '
        'preprocessing_function_names: "transform_label"')
SLICES = 'slicing_specs {} slicing_specs { feature_keys: "island" }'
ACCURACY_CHANGE_ONLY = '''metrics_specs { metrics { class_name: "SparseCategoricalAccuracy"
  threshold { change_threshold { direction: HIGHER_IS_BETTER absolute { value: -0.01 } } } } }'''


def _config(text: str):
    import tensorflow_model_analysis as tfma
    from google.protobuf import text_format

    return text_format.Parse(text, tfma.EvalConfig())


# -- the config alone ---------------------------------------------------------------------
def test_three_model_specs_are_rejected_naming_the_field():
    config = _config(f"model_specs {{ {SPEC} }} " * 3)
    with pytest.raises(EvalConfigError, match=r"model_specs: the EvalConfig has 3 model spec"):
        plan_eval_config(config, has_baseline=True)
    two_candidates = _config(f"model_specs {{ name: 'a' {SPEC} }} "
                             f"model_specs {{ name: 'b' {SPEC} }}")
    with pytest.raises(EvalConfigError, match=r"model_specs: .*2 candidate"):
        plan_eval_config(two_candidates, has_baseline=False)


def test_a_baseline_spec_must_match_the_candidate_spec():
    matching = _config(f"model_specs {{ {SPEC} }} "
                       f"model_specs {{ name: 'served' is_baseline: true {SPEC} }} "
                       + ACCURACY_CHANGE_ONLY)
    plan = plan_eval_config(matching, has_baseline=True)
    assert [(s.name, s.is_baseline) for s in plan.config.model_specs] == [
        ("candidate", False), ("served", True)]  # names as written, "candidate" if none
    assert plan.baseline_name == "served" and not plan.change_thresholds_skipped

    differing = _config(f"model_specs {{ {SPEC} }} model_specs {{ is_baseline: true "
                        f"label_key: 'island' signature_name: 'serving_raw' }}")
    with pytest.raises(EvalConfigError, match=r"model_specs: the baseline spec differs from "
                       r"the candidate spec in \['label_key', 'preprocessing_function_names', "
                       r"'signature_name'\]"):
        plan_eval_config(differing, has_baseline=True)


def test_without_a_baseline_only_the_baseline_spec_and_change_thresholds_are_set_aside():
    written = _config(f"model_specs {{ {SPEC} }} model_specs {{ is_baseline: true {SPEC} }} "
                      + ACCURACY_CHANGE_ONLY)
    plan = plan_eval_config(written, has_baseline=False)
    assert plan.change_thresholds_skipped and not plan.has_thresholds
    assert [s.name for s in plan.config.model_specs] == ["candidate"]
    assert not plan.config.metrics_specs[0].metrics[0].threshold.HasField("change_threshold")
    assert written.metrics_specs[0].metrics[0].threshold.HasField("change_threshold"), \
        "the config as written is not modified"

    # With a baseline model, a one-spec config gains the baseline spec TFX would add.
    plan = plan_eval_config(_config(f"model_specs {{ {SPEC} }} " + ACCURACY_CHANGE_ONLY),
                            has_baseline=True)
    assert [(s.name, s.is_baseline) for s in plan.config.model_specs] == [
        ("candidate", False), ("baseline", True)]
    assert plan.has_thresholds and not plan.change_thresholds_skipped


def test_typed_parameters_gate_the_overall_slice_only():
    from pipelines import registry

    evaluator = registry.load("penguin").component("Evaluator")
    step = SimpleNamespace(**evaluator.resolve_parameters({}))
    config = evaluator.typed_eval_config(step, "multiclass")
    (accuracy,) = [m for m in config.metrics_specs[0].metrics
                   if m.class_name == "SparseCategoricalAccuracy"]
    assert not accuracy.HasField("threshold")  # a MetricConfig.threshold gates every slice
    (scoped,) = accuracy.per_slice_thresholds
    assert list(scoped.slicing_specs) == [type(scoped.slicing_specs[0])()]  # overall only
    assert scoped.threshold.value_threshold.lower_bound.value == pytest.approx(0.6)
    assert scoped.threshold.HasField("change_threshold")


def test_the_baseline_push_must_be_the_baseline_model_s_and_the_report_names_its_version():
    baseline = Model(id=12)
    push = PushedModel(id=40)
    push.set(pushed=1, pushed_version=3, pushed_destination="/srv/penguin", model_id=12)
    step = SimpleNamespace(baseline_model=baseline, baseline_pushed_model=push)
    assert _baseline_text(baseline, _baseline_push(step)) == \
        "against baseline model 12, served as version 3 in /srv/penguin"
    assert _baseline_text(baseline, None) == "against baseline model 12"

    with pytest.raises(ValueError, match="push of model 11, not of the baseline model 12"):
        push.set(model_id=11)
        _baseline_push(step)
    with pytest.raises(ValueError, match="given but no baseline_model"):
        _baseline_push(SimpleNamespace(baseline_model=None, baseline_pushed_model=push))


# -- runs on the session's trained model --------------------------------------------------
@pytest.fixture
def home(trained_penguin, tmp_path):
    """A copy of the trained penguin's home: its steps are cached here, its artifacts read.
    Without the serving directory (its pushes are recorded under the original path): every
    run here is a first push, with no baseline."""
    copy = tmp_path / "home"
    shutil.copytree(trained_penguin.home, copy, ignore=shutil.ignore_patterns("serving"))
    return str(copy)


def _penguin(**evaluator_parameters) -> Pipeline:
    from pipelines import registry

    pipeline = registry.load("penguin")
    pipeline.component("Evaluator").parameters.update(evaluator_parameters)
    return pipeline


def _run(pipeline: Pipeline, home: str, **params):
    from pipelines.local_runner import run_pipeline

    return run_pipeline(pipeline, home=home, params=params, echo=lambda line: None)


def _config_file(tmp_path, text: str) -> ExternalPath:
    path = tmp_path / "eval_config.pbtxt"
    path.write_text(text)
    return ExternalPath(str(path))


def _read(artifact, name: str = "report.txt") -> str:
    with open(artifact.path(name)) as fh:
        return fh.read()


def test_change_thresholds_only_first_run_is_blessed_and_pushed(home, tmp_path):
    config = _config_file(tmp_path, f"model_specs {{ {SPEC} }} {SLICES} {ACCURACY_CHANGE_ONLY}")
    run = _run(_penguin(eval_config_file=config), home)
    assert run.ok, run.summary()
    blessing = run.steps["Evaluator"].outputs["blessing"]
    assert blessing.blessed == 1, blessing.reason
    assert blessing.reason == f"{CHANGE_SKIPPED}; no value thresholds configured"
    assert blessing.baseline_model_id is None and blessing.baseline_version is None
    assert os.path.exists(blessing.path("BLESSED"))
    assert ("(no baseline: first push; value thresholds only, change thresholds skipped)"
            in _read(blessing))
    assert run.steps["Pusher"].outputs["pushed_model"].pushed == 1  # a baseline can now exist


def test_config_without_thresholds_is_not_blessed(home, tmp_path):
    config = _config_file(tmp_path, f"model_specs {{ {SPEC} }} {SLICES} metrics_specs "
                                    f"{{ metrics {{ class_name: 'SparseCategoricalAccuracy' }} }}")
    run = _run(_penguin(eval_config_file=config), home)
    assert run.ok, run.summary()
    blessing = run.steps["Evaluator"].outputs["blessing"]
    assert blessing.blessed == 0
    assert blessing.reason == NO_THRESHOLDS
    assert f"NOT BLESSED: {NO_THRESHOLDS}" in _read(blessing)
    assert run.steps["Pusher"].outcome == "skipped"


def test_three_model_specs_fail_the_evaluator(home, tmp_path):
    config = _config_file(tmp_path, f"model_specs {{ {SPEC} }} " * 3 + SLICES)
    run = _run(_penguin(eval_config_file=config), home)
    assert run.steps["Evaluator"].status == "failed"
    assert "model_specs: the EvalConfig has 3 model spec" in run.failure
    assert "Pusher" in run.not_run


def _example_count(trained_penguin) -> int:
    import tensorflow as tf

    files = sorted(glob.glob(trained_penguin.eval_examples))
    return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def test_a_typed_threshold_gates_the_overall_slice_and_a_config_file_what_it_says(
        trained_penguin, home, tmp_path):
    # ExampleCount as the threshold metric, bounded below by the eval split's size: the
    # overall slice meets it exactly and every island and sex slice, being smaller, misses.
    rows = _example_count(trained_penguin)
    typed = _run(_penguin(threshold_metric="ExampleCount"), home, accuracy_threshold=rows)
    assert typed.ok, typed.summary()
    blessing = typed.steps["Evaluator"].outputs["blessing"]
    assert blessing.blessed == 1, blessing.reason

    # The same threshold in a config file, as a MetricConfig.threshold, gates every slice.
    config = _config_file(tmp_path, f"""model_specs {{ {SPEC} }} {SLICES}
        metrics_specs {{ metrics {{ class_name: "ExampleCount"
          threshold {{ value_threshold {{ lower_bound {{ value: {rows} }} }} }} }} }}""")
    written = _run(_penguin(eval_config_file=config), home)
    assert written.ok, written.summary()
    blessing = written.steps["Evaluator"].outputs["blessing"]
    assert blessing.blessed == 0
    assert "example_count = " in blessing.reason and "on island=" in blessing.reason
    assert "on Overall" not in blessing.reason
