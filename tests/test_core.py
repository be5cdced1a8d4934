"""The framework core on a real MLMD store: definition checks, caching, atomic publication,
crash recovery, lineage and the CLI."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.artifacts import Examples, Model, Schema
from components.base import Component, ComponentDefinitionError, Input, Output, Param, Step
from pipelines.home import Home
from pipelines.local_runner import run_pipeline
from pipelines.metadata import Metadata
from pipelines.pipeline import Pipeline
from tests import core_pipelines
from tests.core_pipelines import MakeNumbers, Numbers, Scale, Total

REPO = Path(__file__).resolve().parents[1]
PIPEWRIGHT = [sys.executable, "-m", "pipelines.cli"]
PIPELINE_FILE = str(Path(core_pipelines.__file__))


def _read(artifact) -> list[int]:
    return [int(x) for x in Path(artifact.path("numbers.txt")).read_text().split()]


def _published(home: Path, component_id: str) -> list[str]:
    metadata = Metadata(Home.resolve(home).metadata_uri)
    return [a.uri for a in metadata.artifacts_of_type(Numbers) if a.name.startswith(component_id + ".")]


# -- definition ------------------------------------------------------------------------------

class NeedsSchema(Component):
    """Reads a schema."""

    schema: Input[Schema]
    model: Output[Model]

    def execute(self, step: Step) -> None:
        pass


def test_custom_component_runs_and_records_its_properties(tmp_path):
    result = run_pipeline(core_pipelines.create_pipeline(), home=tmp_path, params={"count": 4})
    assert result.ok, result.failure
    assert _read(result.steps["MakeNumbers"].outputs["numbers"]) == [0, 1, 2, 3]
    assert _read(result.steps["Total"].outputs["total"]) == [6 + 12]
    stored = Metadata(Home.resolve(tmp_path).metadata_uri).artifact(
        result.steps["MakeNumbers"].outputs["numbers"].id)
    assert stored.count == 4 and isinstance(stored, Numbers)


def test_type_mismatch_is_rejected_at_definition_naming_both_sides():
    make = MakeNumbers()
    with pytest.raises(ComponentDefinitionError, match=r"NeedsSchema: input 'schema' expects "
                       r"Schema but MakeNumbers.outputs.numbers is Numbers"):
        NeedsSchema(schema=make.outputs.numbers)


def test_missing_required_input_and_unknown_argument_are_rejected():
    with pytest.raises(ComponentDefinitionError, match="required input 'numbers'"):
        Scale()
    with pytest.raises(ComponentDefinitionError, match=r"unknown argument\(s\) \['factr'\]"):
        Scale(numbers=MakeNumbers().outputs.numbers, factr=3)
    with pytest.raises(TypeError, match="parameter 'factor': expected an integer"):
        Scale(numbers=MakeNumbers().outputs.numbers, factor="three")


def test_duplicate_ids_producer_outside_pipeline_and_cycles_are_rejected():
    make = MakeNumbers()
    with pytest.raises(ComponentDefinitionError, match="duplicate component id 'MakeNumbers'"):
        Pipeline("p", [make, MakeNumbers()])
    scale = Scale(numbers=make.outputs.numbers)
    with pytest.raises(ComponentDefinitionError, match=r"Scale.numbers reads MakeNumbers.outputs"
                       r".numbers .* but 'MakeNumbers' is not in the pipeline"):
        Pipeline("p", [scale])
    make.after(scale)
    with pytest.raises(ComponentDefinitionError, match="cycle .*MakeNumbers -> Scale -> MakeNumbers"
                       "|cycle .*Scale -> MakeNumbers -> Scale"):
        Pipeline("p", [make, scale])


def test_undeclared_runtime_parameter_is_rejected():
    make = MakeNumbers(count=Param("n", int, 3))
    with pytest.raises(ComponentDefinitionError, match="uses parameter 'n'"):
        Pipeline("p", [make])


def test_unknown_and_mistyped_run_parameters_are_rejected(tmp_path):
    pipeline = core_pipelines.create_pipeline()
    with pytest.raises(KeyError, match=r"no parameter\(s\) \['colour'\]"):
        run_pipeline(pipeline, home=tmp_path, params={"colour": "red"})
    with pytest.raises(TypeError, match="count.*expected an integer"):
        run_pipeline(pipeline, home=tmp_path, params={"count": "many"})


# -- caching -------------------------------------------------------------------------------------

def test_rerun_is_fully_cached_and_a_changed_parameter_reruns_only_what_depends_on_it(tmp_path):
    pipeline = core_pipelines.create_pipeline()
    first = run_pipeline(pipeline, home=tmp_path)
    assert first.executed() == ["MakeNumbers", "Scale", "Total"]
    again = run_pipeline(pipeline, home=tmp_path)
    assert again.executed() == []
    assert {s.status for s in again.steps.values()} == {"cached"}
    assert again.steps["Total"].outputs["total"].id == first.steps["Total"].outputs["total"].id

    changed = run_pipeline(pipeline, home=tmp_path, params={"factor": 10})
    assert changed.steps["MakeNumbers"].status == "cached"
    assert changed.executed() == ["Scale", "Total"]
    assert _read(changed.steps["Total"].outputs["total"]) == [3 + 30]

    without_cache = run_pipeline(pipeline, home=tmp_path, enable_cache=False)
    assert without_cache.executed() == ["MakeNumbers", "Scale", "Total"]


def test_cache_can_be_disabled_per_component(tmp_path):
    make = MakeNumbers(enable_cache=False)
    pipeline = Pipeline("p", [make, Total(numbers=make.outputs.numbers)])
    run_pipeline(pipeline, home=tmp_path)
    again = run_pipeline(pipeline, home=tmp_path)
    assert again.executed() == ["MakeNumbers", "Total"]  # new artifact id -> Total re-runs


# -- failure and atomic publication --------------------------------------------------------------

def test_failed_step_publishes_nothing_names_cause_and_log_and_rerun_redoes_it(tmp_path):
    pipeline = core_pipelines.create_pipeline()
    failed = run_pipeline(pipeline, home=tmp_path, params={"fail": True})
    assert not failed.ok
    assert "step Scale failed: RuntimeError: injected failure" in failed.failure
    log = failed.steps["Scale"].log_path
    assert log in failed.failure and "injected failure" in Path(log).read_text()
    assert failed.not_run == {"Total": "Scale failed"}
    assert _published(tmp_path, "Scale") == []
    assert not any((tmp_path / "staging").iterdir())
    assert not (tmp_path / "artifacts" / "numbers" / "Scale").exists() or not any(
        (tmp_path / "artifacts" / "numbers" / "Scale").rglob("numbers.txt"))

    metadata = Metadata(Home.resolve(tmp_path).metadata_uri)
    [run] = [r for r in metadata.runs("numbers")]
    assert run["state"] == "failed" and run["steps"] == {"complete": 1, "failed": 1}

    fixed = run_pipeline(pipeline, home=tmp_path)
    assert fixed.ok and fixed.executed() == ["Scale", "Total"]


def test_step_killed_midway_leaves_nothing_published_and_next_run_recovers(tmp_path):
    marker = tmp_path / "scale-started"
    env = {**os.environ, "PIPEWRIGHT_TEST_SLOW_SCALE": str(marker)}
    proc = subprocess.Popen(PIPEWRIGHT + ["run", PIPELINE_FILE, "--home", str(tmp_path)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "Scale never started"
            time.sleep(0.05)
        # The step has written part of its output into staging: kill the whole runner.
        assert list((tmp_path / "staging").rglob("numbers.txt"))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _published(tmp_path, "Scale") == []
    metadata = Metadata(Home.resolve(tmp_path).metadata_uri)
    [killed] = metadata.runs("numbers")
    # Its runner is gone: not "running" forever, and neither is the step it was running.
    assert killed["state"] == "failed" and killed["steps"] == {"complete": 1, "failed": 1}
    [staged] = list((tmp_path / "staging").iterdir())
    # As if it had died publishing: an output moved into place, with no record.
    unrecorded = tmp_path / "artifacts" / "numbers" / "Scale" / "scaled" / staged.name
    unrecorded.mkdir(parents=True)

    rerun = subprocess.run(PIPEWRIGHT + ["run", PIPELINE_FILE, "--home", str(tmp_path)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "(Scale) as failed: its process died" in rerun.stderr
    assert f"recorded run {killed['run_id']} as failed: its process died" in rerun.stderr
    assert "MakeNumbers            cached" in rerun.stderr
    assert len(_published(tmp_path, "Scale")) == 1
    assert not any((tmp_path / "staging").iterdir())  # the killed step's staging is removed
    assert not unrecorded.exists()
    metadata = Metadata(Home.resolve(tmp_path).metadata_uri)
    [first, second] = [r for r in metadata.runs("numbers")]
    assert first["steps"] == {"complete": 1, "failed": 1}
    assert (first["state"], second["state"]) == ("failed", "succeeded")
    assert metadata.abandon_dead_runs("numbers") == []  # recorded: nothing left to abandon


def test_processes_opening_a_new_store_at_once_all_connect(tmp_path):
    """The first Airflow tasks of a new home (ExampleGen, ImportSchemaGen) start together
    and each creates ML Metadata's schema: MLMD reports the race ("a subset of tables",
    "concurrent writes aborted") and asks for a retry. Six processes at once, 8 times
    (without the retry, about 1 in 3 of these rounds failed here). The racers are forked
    from a fresh process: forking this one, which may hold TensorFlow's threads, can hang."""
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "open_store_race.py"),
                           str(tmp_path), "8", "6"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.endswith("rounds with a failure: 0\n"), done.stdout


def test_a_recorded_process_is_judged_by_host_pid_namespace_and_start_time():
    """A PID alone does not name a process: one reused after a kill, or the same number in
    another PID namespace (a container sharing the home), is not the recorded one."""
    from pipelines.metadata import _died, _start_ticks, _this_host

    me, started = os.getpid(), _start_ticks(os.getpid())
    assert started > 0 and "pid-ns" in _this_host()
    assert not _died(_this_host(), me, started)
    assert _died(_this_host(), me, started + 1)  # the PID now belongs to a later process
    assert not _died(_this_host() + "0", me, started + 1)  # another namespace: not judged
    assert not _died("another-host", 2 ** 22 + 1, 0)


def test_a_run_whose_console_goes_away_still_finishes_and_says_how(tmp_path):
    """`pipewright run ... | head -1`: the reader leaves after the first line; the run goes
    on to the end, is recorded, and its exit code is the run's."""
    runner = subprocess.Popen(PIPEWRIGHT + ["run", PIPELINE_FILE, "--home", str(tmp_path)],
                              cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    runner.stderr.readline()
    runner.stderr.close()
    assert runner.wait(timeout=120) == 0
    [run] = Metadata(Home.resolve(tmp_path).metadata_uri).runs("numbers")
    assert run["state"] == "succeeded" and run["steps"] == {"complete": 3}


# -- lineage and CLI ------------------------------------------------------------------------------

def test_lineage_names_producer_inputs_and_consumers(tmp_path):
    result = run_pipeline(core_pipelines.create_pipeline(), home=tmp_path)
    scaled = result.steps["Scale"].outputs["scaled"]
    graph = Metadata(Home.resolve(tmp_path).metadata_uri).lineage(scaled)
    [producer] = graph["producers"]
    assert producer["execution"].component_id == "Scale"
    assert producer["inputs"]["numbers"].id == result.steps["MakeNumbers"].outputs["numbers"].id
    assert [c["execution"].component_id for c in graph["consumers"]] == ["Total"]

    out = subprocess.run(PIPEWRIGHT + ["lineage", scaled.uri, "--home", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "produced by Scale" in out and "from numbers: Numbers" in out
    assert "consumed by Total" in out


def test_cli_runs_a_pipeline_lists_runs_and_reports_bad_names(tmp_path):
    run = subprocess.run(PIPEWRIGHT + ["run", PIPELINE_FILE, "--home", str(tmp_path),
                                       "--param", "count=5"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "MakeNumbers            executed" in run.stderr and "succeeded" in run.stderr
    runs = subprocess.run(PIPEWRIGHT + ["runs", "--home", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout
    assert "numbers" in runs and "succeeded" in runs

    bad_param = subprocess.run(PIPEWRIGHT + ["run", PIPELINE_FILE, "--home", str(tmp_path),
                                             "--param", "colour=red"],
                               cwd=REPO, capture_output=True, text=True)
    assert bad_param.returncode == 2 and "no parameter(s) ['colour']" in bad_param.stderr
    bad_pipeline = subprocess.run(PIPEWRIGHT + ["run", "no-such-pipeline"], cwd=REPO,
                                  capture_output=True, text=True)
    assert bad_pipeline.returncode == 2
    assert "unknown pipeline 'no-such-pipeline'; known pipelines: [" in bad_pipeline.stderr


def test_cli_commands_that_run_no_heavy_step_import_no_tensorflow(tmp_path):
    first = run_pipeline(core_pipelines.create_pipeline(), home=tmp_path)
    diff = ["diff", first.run_id, first.run_id, "--home", str(tmp_path)]
    probe = (
        "import sys, contextlib, io\n"
        "from pipelines import cli, registry\n"
        "for name in registry.names(): registry.load(name)\n"
        f"for argv in (['runs', '--home', {str(tmp_path)!r}], ['lineage', '1', '--home', {str(tmp_path)!r}], {diff!r},"
        f" ['run', {PIPELINE_FILE!r}, '--home', {str(tmp_path)!r}]):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        assert cli.main(argv) == 0, argv\n"
        "heavy = [m for m in ('tensorflow', 'apache_beam', 'tensorflow_data_validation',"
        " 'tensorflow_transform', 'tensorflow_model_analysis') if m in sys.modules]\n"
        "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_runtime_parameter_bounds_and_choices_are_enforced(tmp_path):
    steps = Param("steps", int, 10, minimum=1, maximum=100)
    mode = Param("mode", str, "fast", choices=("fast", "slow"))
    pipeline = Pipeline("bounded", [MakeNumbers(count=steps)], parameters=[steps, mode])
    assert pipeline.resolve_params({"steps": "5"}) == {"steps": 5, "mode": "fast"}
    with pytest.raises(ValueError, match="'steps': 0 is below its minimum 1"):
        pipeline.resolve_params({"steps": 0})
    with pytest.raises(ValueError, match="'steps': 101 is above its maximum 100"):
        pipeline.resolve_params({"steps": 101})
    with pytest.raises(ValueError, match=r"'mode': 'medium' is not one of \['fast', 'slow'\]"):
        pipeline.resolve_params({"mode": "medium"})
    with pytest.raises(ValueError, match="'steps': 9223372036854775808 is outside the 64-bit"):
        pipeline.resolve_params({"steps": str(2**63)})
    bar = Param("bar", float, 0.5, minimum=0)
    scaled = Pipeline("scaled", [MakeNumbers()], parameters=[bar])
    for text in ("nan", "NaN", "inf", "-inf"):
        with pytest.raises(ValueError, match=f"'bar': '{text}' is not a finite number"):
            scaled.resolve_params({"bar": text})
    assert scaled.resolve_params({"bar": "1e-3"}) == {"bar": 0.001}


def test_with_defaults_changes_what_an_untriggered_run_uses_and_checks_each_value():
    steps = Param("steps", int, 10, minimum=1, maximum=100)
    mode = Param("mode", str, "fast", choices=("fast", "slow"))
    pipeline = Pipeline("bounded", [MakeNumbers(count=steps)], parameters=[steps, mode])
    nightly = pipeline.with_defaults(steps="20", mode="slow")
    assert nightly.resolve_params({}) == {"steps": 20, "mode": "slow"}
    assert nightly.resolve_params({"steps": 3}) == {"steps": 3, "mode": "slow"}
    assert pipeline.resolve_params({}) == {"steps": 10, "mode": "fast"}, "the original stays"
    with pytest.raises(KeyError, match=r"no parameter\(s\) \['colour'\]"):
        pipeline.with_defaults(colour="red")
    with pytest.raises(ValueError, match="'steps': 0 is below its minimum 1"):
        pipeline.with_defaults(steps=0)
    with pytest.raises(ValueError, match=r"'mode': 'medium' is not one of"):
        pipeline.with_defaults(mode="medium")


def test_metadata_store_is_sqlite_by_default_and_mysql_by_uri(tmp_path, monkeypatch):
    from pipelines.metadata import connection_config

    monkeypatch.delenv("PIPEWRIGHT_METADATA", raising=False)
    home = Home.resolve(tmp_path)
    sqlite = connection_config(home.metadata_uri)
    assert sqlite.sqlite.filename_uri == str(tmp_path / "metadata.sqlite")

    monkeypatch.setenv("PIPEWRIGHT_METADATA", "mysql://ml%40team:s3cret@db.internal:3307/mlmd")
    mysql = connection_config(Home.resolve(tmp_path).metadata_uri)
    assert (mysql.mysql.host, mysql.mysql.port, mysql.mysql.database) == ("db.internal", 3307, "mlmd")
    assert (mysql.mysql.user, mysql.mysql.password) == ("ml@team", "s3cret")


def test_diff_refuses_runs_of_two_pipelines(tmp_path, capsys):
    def _quiet(line):
        pass

    from pipelines.cli import main

    numbers = run_pipeline(core_pipelines.create_pipeline(), home=tmp_path, echo=_quiet)
    other = run_pipeline(Pipeline("other_numbers", [MakeNumbers(count=3)]), home=tmp_path,
                         echo=_quiet)
    assert main(["diff", numbers.run_id, other.run_id, "--home", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "only runs of one pipeline compare" in err and "'other_numbers'" in err
    again = run_pipeline(core_pipelines.create_pipeline(), home=tmp_path, params={"count": 5},
                         echo=_quiet)
    assert main(["diff", numbers.run_id, again.run_id, "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "count: " in out and "-> 5" in out


TF_PIPELINE = '''
from components.artifacts import Artifact
from components.base import Component, Output, Step
from pipelines.pipeline import Pipeline


class Version(Artifact):
    PROPERTIES = {}


class TensorFlowVersion(Component):
    imports_tensorflow = True
    version: Output[Version]

    def execute(self, step: Step) -> None:
        import tensorflow as tf
        step.note(f"TensorFlow {tf.__version__}")


def create_pipeline():
    return Pipeline("tf_version", [TensorFlowVersion()])
'''


def test_tensorflow_start_up_noise_goes_to_the_step_log_not_the_console(tmp_path):
    path = tmp_path / "tf_pipeline.py"
    path.write_text(TF_PIPELINE)
    # As Airflow tasks run (pipelines/services.py): TF's C++ ERROR lines are not muted.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(PIPEWRIGHT + ["run", str(path), "--home", str(tmp_path / "home")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "TensorFlowVersion      executed (TensorFlow 2." in done.stderr
    for noise in ("Unable to register", "cuda_", "E external/local_xla"):
        assert noise not in done.stderr and noise not in done.stdout
    [log] = (tmp_path / "home" / "logs").rglob("TensorFlowVersion.log")
    text = log.read_text()
    assert "TensorFlow's start-up output (native stderr)" in text
    assert "Unable to register cuDNN factory" in text  # the noise was there, and went here


def test_a_ctrl_c_during_tensorflow_s_import_is_acknowledged_on_the_console(tmp_path):
    """The import points descriptor 2 at the step's log for its duration; the runner's
    notice that it received the signal still reaches the console (new-user trial)."""
    path = tmp_path / "tf_pipeline.py"
    path.write_text(TF_PIPELINE)
    home = tmp_path / "home"
    runner = subprocess.Popen(PIPEWRIGHT + ["run", str(path), "--home", str(home)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any("TensorFlow's start-up output" in log.read_text()
                      for log in home.rglob("TensorFlowVersion.log")):
            assert runner.poll() is None and time.monotonic() < deadline, "no import seen"
            time.sleep(0.05)
        runner.send_signal(signal.SIGINT)
        _, stderr = runner.communicate(timeout=180)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode != 0
    assert "interrupted by SIGINT: no new step starts" in stderr, stderr
    assert "TensorFlowVersion      FAILED" in stderr, stderr


def test_reading_commands_piped_into_head_end_quietly(tmp_path):
    run_pipeline(core_pipelines.create_pipeline(), home=tmp_path,
                 params={"count": 20000}, echo=lambda line: None)
    command = " ".join(PIPEWRIGHT) + f" show 1 --home {tmp_path} | head -c 20"
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
