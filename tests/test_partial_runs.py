"""Partial runs (`--until`, `--only`) and artifact references (`show`/`lineage` by id, #id,
URI or a path inside an artifact directory), on the core pipelines: real launcher, real
ML Metadata store."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.base import Component, Input, Output, Param, Parameter, Step
from pipelines.cli import main
from pipelines.home import Home
from pipelines.local_runner import run_pipeline
from pipelines.metadata import Metadata
from pipelines.partial_run import OUTSIDE, UpstreamUnavailable
from pipelines.pipeline import Pipeline
from tests import core_pipelines
from tests.core_pipelines import MakeNumbers, Numbers, Scale

PIPELINE_FILE = str(Path(core_pipelines.__file__))
REPO = Path(__file__).resolve().parents[1]


def _quiet(line: str) -> None:
    pass


def _read(artifact) -> list[int]:
    return [int(x) for x in Path(artifact.path("numbers.txt")).read_text().split()]


def _metadata(home) -> Metadata:
    return Metadata(Home.resolve(home).metadata_uri)


def _run_records(home, run_id: str) -> dict[str, object]:
    metadata = _metadata(home)
    context = metadata.run_context("numbers", run_id)
    return {r.component_id: r for r in metadata.executions_in_run(context)}


# -- --until --------------------------------------------------------------------------------

def test_until_runs_the_upstream_closure_only_and_a_later_full_run_reuses_it(tmp_path):
    pipeline = core_pipelines.create_pipeline()
    lines: list[str] = []
    until = run_pipeline(pipeline, home=tmp_path, until=["Scale"], echo=lines.append)
    assert until.ok, until.summary()
    assert until.executed() == ["MakeNumbers", "Scale"]
    assert until.not_run == {"Total": OUTSIDE}
    assert set(_run_records(tmp_path, until.run_id)) == {"MakeNumbers", "Scale"}
    assert "2 of 3 steps (--until Scale)" in lines[0]
    summary = lines[-1]
    made = until.steps["MakeNumbers"].outputs["numbers"]
    assert any(line.endswith(f"MakeNumbers            executed outputs: numbers=#{made.id}")
               for line in lines), lines
    assert f"outputs: numbers=#{made.id}" in summary
    assert any(line.startswith("Total") and "not run" in line and OUTSIDE in line
               for line in summary.splitlines()), summary

    full = run_pipeline(pipeline, home=tmp_path, echo=_quiet)
    assert full.ok, full.summary()
    assert {c: s.status for c, s in full.steps.items()} == {
        "MakeNumbers": "cached", "Scale": "cached", "Total": "executed"}
    assert full.steps["Scale"].outputs["scaled"].id == until.steps["Scale"].outputs["scaled"].id
    assert _read(full.steps["Total"].outputs["total"]) == [3 + 6]


def test_until_names_steps_of_the_pipeline_and_rerun_must_be_inside_the_selection(tmp_path):
    pipeline = core_pipelines.create_pipeline()
    with pytest.raises(ValueError, match=r"--until names no step of numbers: \['Scal'\]; "
                                         r"its steps are \['MakeNumbers', 'Scale', 'Total'\]"):
        run_pipeline(pipeline, home=tmp_path, until=["Scal"], echo=_quiet)
    with pytest.raises(ValueError, match="cannot be combined"):
        run_pipeline(pipeline, home=tmp_path, until=["Scale"], only=["Total"], echo=_quiet)
    with pytest.raises(ValueError, match=r"--rerun \['Total'\] is outside --until/--only"):
        run_pipeline(pipeline, home=tmp_path, until=["Scale"], rerun=["Total"], echo=_quiet)
    assert _metadata(tmp_path).runs() == [], "a rejected selection records no run"


# -- --only ---------------------------------------------------------------------------------

def test_only_reruns_a_middle_step_with_inputs_from_the_previous_run(tmp_path):
    pipeline = core_pipelines.create_pipeline()
    first = run_pipeline(pipeline, home=tmp_path, echo=_quiet)
    made = first.steps["MakeNumbers"].outputs["numbers"]

    only = run_pipeline(pipeline, home=tmp_path, only=["Scale"], params={"factor": 10},
                        echo=_quiet)
    assert only.ok, only.summary()
    assert only.executed() == ["Scale"]
    assert only.not_run == {"Total": OUTSIDE}
    reused = only.steps["MakeNumbers"]
    assert reused.status == "reused"
    assert reused.outputs["numbers"].id == made.id
    assert f"execution {first.steps['MakeNumbers'].execution_id} of run {first.run_id}" \
        in reused.reason
    assert _read(only.steps["Scale"].outputs["scaled"]) == [0, 10, 20]

    # Lineage stays truthful: the reuse is a CACHED execution in the new run with the old
    # execution's inputs and outputs, and Scale's recorded input is the old artifact.
    records = _run_records(tmp_path, only.run_id)
    assert {c: r.state for c, r in records.items()} == {"MakeNumbers": "cached",
                                                        "Scale": "complete"}
    metadata = _metadata(tmp_path)
    assert metadata.outputs_of_execution(records["MakeNumbers"].id)["numbers"].id == made.id
    assert metadata.inputs_of_execution(records["Scale"].id)["numbers"].id == made.id

    # The newest successful execution is the one taken: Total reads the factor-10 output.
    total = run_pipeline(pipeline, home=tmp_path, only=["Total"], echo=_quiet)
    assert total.ok, total.summary()
    assert total.executed() == ["Total"]
    assert total.steps["Scale"].outputs["scaled"].id == \
        only.steps["Scale"].outputs["scaled"].id
    assert _read(total.steps["Total"].outputs["total"]) == [3 + 30]

    # The cache is honoured: nothing changed for Scale, so it is not executed again.
    again = run_pipeline(pipeline, home=tmp_path, only=["Scale", "Total"],
                         params={"factor": 10}, echo=_quiet)
    assert {c: s.status for c, s in again.steps.items()} == {
        "MakeNumbers": "reused", "Scale": "cached", "Total": "cached"}


def test_only_without_an_upstream_execution_fails_naming_the_producer(tmp_path):
    pipeline = core_pipelines.create_pipeline()
    with pytest.raises(UpstreamUnavailable, match=r"Scale depend\(s\) on MakeNumbers, "
                       r"which has no successful execution .* with --until MakeNumbers first"):
        run_pipeline(pipeline, home=tmp_path, only=["Scale"], echo=_quiet)
    assert _metadata(tmp_path).runs() == [], "nothing is recorded for a run that cannot start"

    # In a process of its own: loading a pipeline file registers its artifact classes
    # anew, which would change the classes other tests in this process read back.
    cli = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", PIPELINE_FILE,
                          "--home", str(tmp_path), "--only", "Scale"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2, cli.stderr
    assert "pipewright: --only Scale:" in cli.stderr and "--until MakeNumbers" in cli.stderr

    # A failed producer is no producer; outputs gone from disk are not reused either.
    failed = run_pipeline(pipeline, home=tmp_path, until=["Scale"], params={"fail": True},
                          echo=_quiet)
    assert not failed.ok and failed.steps["Scale"].status == "failed"
    with pytest.raises(UpstreamUnavailable, match=r"Total depend\(s\) on Scale, which has no successful"):
        run_pipeline(pipeline, home=tmp_path, only=["Total"], echo=_quiet)
    shutil.rmtree(failed.steps["MakeNumbers"].outputs["numbers"].uri)
    with pytest.raises(UpstreamUnavailable, match=r"newest successful execution of MakeNumbers "
                       r"\(execution \d+, run .*\) has outputs missing on disk"):
        run_pipeline(pipeline, home=tmp_path, only=["Scale"], echo=_quiet)


# -- artifact references ---------------------------------------------------------------------

def test_show_and_lineage_accept_an_id_a_uri_or_a_path_inside_an_artifact_dir(tmp_path, capsys,
                                                                            monkeypatch):
    pipeline = core_pipelines.create_pipeline()
    run_pipeline(pipeline, home=tmp_path, echo=_quiet)
    # Cached executions take execution ids, so directory names and artifact ids part ways.
    second = run_pipeline(pipeline, home=tmp_path, rerun=["Scale"], echo=_quiet)
    scaled = second.steps["Scale"].outputs["scaled"]
    execution_dir = os.path.basename(scaled.uri)
    assert execution_dir == str(second.steps["Scale"].execution_id) != str(scaled.id)
    home = ["--home", str(tmp_path)]

    inside = os.path.join(scaled.uri, "numbers.txt")
    for ref in (inside, scaled.uri, str(scaled.id), f"#{scaled.id}", f"scaled=#{scaled.id}"):
        assert main(["lineage", ref, *home]) == 0, ref
        out = capsys.readouterr().out
        assert out.startswith(f"Numbers #{scaled.id} Scale.scaled"), (ref, out)
        assert "produced by Scale" in out and "consumed by Total" in out
        assert main(["show", ref, *home]) == 0, ref
        assert capsys.readouterr().out.startswith(f"Numbers #{scaled.id} Scale.scaled")

    # A bare number that is also a directory here holding another artifact is ambiguous.
    monkeypatch.chdir(os.path.dirname(scaled.uri))
    other = _metadata(tmp_path).artifact(int(execution_dir))
    assert other.id != scaled.id
    assert main(["show", execution_dir, *home]) == 2
    err = capsys.readouterr().err
    assert f"'{execution_dir}' is ambiguous: artifact #{other.id} ({other.name})" in err
    assert f"holds artifact #{scaled.id} (Scale.scaled)" in err
    assert main(["show", f"./{execution_dir}", *home]) == 0
    assert capsys.readouterr().out.startswith(f"Numbers #{scaled.id}")

    assert main(["show", str(tmp_path / "logs"), *home]) == 2
    assert "is neither an artifact URI nor a path inside an artifact directory" in \
        capsys.readouterr().err
    assert main(["lineage", "#9999", *home]) == 2
    assert "no artifact #9999 in the metadata store" in capsys.readouterr().err


class Gate(Component):
    """Checks the numbers: halts the run (publishing its verdict) when told to, as an
    ExampleValidator that found anomalies does."""

    numbers: Input[Numbers]
    verdict: Output[Numbers]
    reject: Parameter[bool] = False

    def execute(self, step: Step) -> None:
        with open(step.verdict.path("numbers.txt"), "w") as fh:
            fh.write("0" if step.reject else "1")
        if step.reject:
            step.halt("the numbers were rejected")


def test_only_honours_a_halt_of_a_step_it_runs_after(tmp_path):
    reject = Param("reject", bool, False)
    make = MakeNumbers()
    gate = Gate(numbers=make.outputs.numbers, reject=reject)
    scale = Scale(numbers=make.outputs.numbers).after(gate)  # ordered, passes no data
    pipeline = Pipeline("gated", [make, gate, scale], parameters=[reject])
    full = run_pipeline(pipeline, home=tmp_path, params={"reject": True}, echo=_quiet)
    assert not full.ok and full.steps["Gate"].outcome == "halted"

    only = run_pipeline(pipeline, home=tmp_path, only=["Scale"], echo=_quiet)
    assert not only.ok
    assert only.failure == "halted by Gate (reused): execution " \
        f"{full.steps['Gate'].execution_id} of run {full.run_id}: the numbers were rejected"
    assert only.steps["Gate"].status == "reused" and "Scale" not in only.steps
    assert only.not_run["Scale"].startswith("run halted: Gate (reused)")

    assert run_pipeline(pipeline, home=tmp_path, until=["Gate"], echo=_quiet).ok
    passed = run_pipeline(pipeline, home=tmp_path, only=["Scale"], echo=_quiet)
    assert passed.ok, passed.summary()
    assert passed.executed() == ["Scale"]
    assert passed.steps["Gate"].outcome == "ok"
