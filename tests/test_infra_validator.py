"""InfraValidator with real model servers: the penguin pipeline's model is served in a
sandbox and answers canaries over gRPC and REST before the Pusher pushes it; a corrupt model
and a server that misses its deadline are not blessed, leave no server running, and keep the
Pusher from pushing. The blessing names the server that validated; a missing server is an
error unless a fallback is asked for, and then the substitute shows wherever the verdict is
read. A server stopped from outside (SIGTERM, as `make down` sends) is no verdict: the step
fails, publishes nothing, and the next run validates again."""
from __future__ import annotations

import filecmp
import os
import re
import shutil
import signal
import socket
import time

import psutil
import pytest

from components.artifacts import InfraBlessing, Model
from components.base import Component, ComponentDefinitionError, Output, Step
from components.canary_requests import WARMUP_FILE
from components.example_gen import ExampleGen
from components.infra_validator import InfraValidator
from components.interruption import StepInterrupted
from components.pusher import Pusher
from components import serving_sandbox
from components.serving_sandbox import (ModelNotAvailable, SandboxServer, ServerStartFailed,
                                        choose_server, docker_engine_available)
from pipelines.home import Home
from pipelines.metadata import Metadata
from pipelines.pipeline import Pipeline
from tests.process_signals import sigterm_first_seen

NO_DOCKER = pytest.mark.skipif(docker_engine_available(), reason="a docker engine answers here")


class CorruptModel(Component):
    """A trainer gone wrong: its export's saved_model.pb is not a SavedModel."""

    model: Output[Model]

    def execute(self, step: Step) -> None:
        os.makedirs(step.model.serving_dir)
        with open(os.path.join(step.model.serving_dir, "saved_model.pb"), "wb") as fh:
            fh.write(b"not a SavedModel\n" * 8)


class DivergedModel(Component):
    """A model whose training diverged: it loads and answers, but every score is NaN."""

    model: Output[Model]

    def execute(self, step: Step) -> None:
        import tensorflow as tf

        class Diverged(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
            def serve(self, examples):
                return {"scores": tf.fill([tf.shape(examples)[0], 3], float("nan"))}

        module = Diverged()
        tf.saved_model.save(module, step.model.serving_dir,
                            signatures={"serving_default": module.serve})


def server_pid(blessing) -> int:
    with open(blessing.path("report.txt")) as fh:
        return int(re.search(r"pid (\d+)", fh.read()).group(1))


def assert_server_gone(pid: int) -> None:
    """The sandbox server is reaped; a process now holding the PID is not one of ours."""
    if psutil.pid_exists(pid):
        try:
            command = " ".join(psutil.Process(pid).cmdline())
        except psutil.NoSuchProcess:
            return
        assert "infra-validation-" not in command, f"server {pid} still runs: {command}"


def serving_tree(directory: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, dirs, files in os.walk(directory) for name in dirs + files)


@pytest.fixture(scope="module")
def penguin_copy(trained_penguin, tmp_path_factory):
    """A home of our own holding a copy of the trained penguin's records, so the penguin
    steps upstream of the InfraValidator are cached here (their artifacts are only read).
    Its serving directory starts empty, as it was when that model was evaluated: a copy
    of the pushed version would be untraceable here (the records say it was pushed to the
    original home), which LatestPushedModel refuses."""
    home = tmp_path_factory.mktemp("infra-home") / "home"
    shutil.copytree(trained_penguin.home, home,
                    ignore=lambda directory, names: (["serving"] if os.path.samefile(
                        directory, trained_penguin.home) else []))
    return str(home)


def penguin_with_infra_validator(**infra_args) -> Pipeline:
    """The penguin pipeline with the InfraValidator configured by `infra_args`."""
    from pipelines import registry

    penguin = registry.load("penguin")
    trainer, example_gen = penguin.component("Trainer"), penguin.component("ExampleGen")
    infra = InfraValidator(model=trainer.outputs.model, examples=example_gen.outputs.examples,
                           model_name="penguin", **infra_args)
    pusher = Pusher(model=trainer.outputs.model, infra_blessing=infra.outputs.blessing,
                    model_blessing=penguin.component("Evaluator").outputs.blessing,
                    model_name="penguin")
    kept = [c for c in penguin.components if c.id not in ("InfraValidator", "Pusher", "Rollout")]
    return Pipeline("penguin", kept + [infra, pusher], parameters=penguin.parameters)


def penguin_model_with(infra: InfraValidator | None = None, **infra_args) -> Pipeline:
    """The penguin steps up to the Trainer (cached in `penguin_copy`) and an InfraValidator
    on its model, nothing downstream: no Evaluator, no Pusher."""
    from pipelines import registry

    penguin = registry.load("penguin")
    trainer = penguin.component("Trainer")
    needed, todo = set(), [trainer]
    while todo:
        component = todo.pop()
        if component.id not in needed:
            needed.add(component.id)
            todo.extend(component.upstream)
    infra = infra or InfraValidator(model=trainer.outputs.model,
                                    examples=penguin.component("ExampleGen").outputs.examples,
                                    model_name="penguin", **infra_args)
    return Pipeline("penguin", [c for c in penguin.components if c.id in needed] + [infra],
                    parameters=penguin.parameters)


def run_quietly(pipeline: Pipeline, home: str, echo=lambda line: None):
    from pipelines.local_runner import run_pipeline

    return run_pipeline(pipeline, home=home, echo=echo)


def metadata_of(home: str) -> Metadata:
    return Metadata(Home.resolve(home).metadata_uri)


def execution(metadata: Metadata, execution_id: int):
    return metadata._record(metadata._execution(execution_id))


def sandbox_servers() -> list[psutil.Process]:
    """This process's sandbox model servers (the launcher runs steps in threads here)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any("infra-validation-" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


def test_penguin_model_answers_canaries_over_grpc_and_rest_before_it_is_pushed(
        trained_penguin):
    run = trained_penguin.run
    blessing = run.steps["InfraValidator"].outputs["blessing"]
    assert blessing.blessed == 1, blessing.reason
    assert blessing.model_id == run.steps["Trainer"].outputs["model"].id
    with open(blessing.path("report.txt")) as fh:
        report = fh.read()
    assert "signature 'serving_default': input 'examples' (DT_STRING [batch])" in report
    classes = len(trained_penguin.labels)
    # The blessing, the report and the step's summary name the server that validated.
    local = "tensorflow_model_server" if shutil.which("tensorflow_model_server") else "pipewright"
    assert (blessing.server, blessing.requested_server) == (local, "auto")
    assert f"validated by: {local} (requested auto: " in report
    assert "what it proves: " in report
    assert f"validated by {local}" in run.steps["InfraValidator"].reason
    assert f"gRPC Predict: scores [10, {classes}], finite" in report
    assert f"REST :predict: scores [10, {classes}], finite, equal to gRPC's" in report
    assert_server_gone(server_pid(blessing))

    # The warmup record the sandbox server replayed travels with the pushed version.
    assert run.steps["Pusher"].outputs["pushed_model"].pushed == 1
    pushed_warmup = os.path.join(trained_penguin.model_dir, WARMUP_FILE)
    assert filecmp.cmp(pushed_warmup, blessing.path(WARMUP_FILE), shallow=False)
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    (record,) = [r.numpy() for r in tf.data.TFRecordDataset(pushed_warmup)]
    request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(request.inputs["examples"]).shape == (10,)


def test_corrupt_model_is_not_blessed_and_its_server_is_stopped(penguin_copy):
    example_gen = ExampleGen(input_base=_penguin_data(), input_pattern="penguins.csv")
    corrupt = CorruptModel()
    infra = InfraValidator(model=corrupt.outputs.model, examples=example_gen.outputs.examples,
                           model_name="penguin")
    run = run_quietly(Pipeline("corrupt-model", [example_gen, corrupt, infra]), penguin_copy)

    assert run.ok, run.summary()
    assert run.steps["ExampleGen"].status == "cached"
    blessing = run.steps["InfraValidator"].outputs["blessing"]
    assert blessing.blessed == 0
    assert "failed to load" in blessing.reason
    with open(blessing.path("report.txt")) as fh:
        assert fh.readline().startswith("NOT BLESSED: the model failed to load")
    assert os.path.getsize(blessing.path("server.log")) > 0
    assert_server_gone(server_pid(blessing))


def test_model_answering_nan_is_not_blessed(penguin_copy):
    example_gen = ExampleGen(input_base=_penguin_data(), input_pattern="penguins.csv")
    diverged = DivergedModel()
    infra = InfraValidator(model=diverged.outputs.model, examples=example_gen.outputs.examples,
                           num_examples=4)
    run = run_quietly(Pipeline("diverged-model", [example_gen, diverged, infra]), penguin_copy)

    assert run.ok, run.summary()
    blessing = run.steps["InfraValidator"].outputs["blessing"]
    assert blessing.blessed == 0
    assert blessing.reason == "gRPC Predict output 'scores' holds 12 non-finite value(s)"
    assert_server_gone(server_pid(blessing))


def test_missed_load_deadline_is_not_blessed_and_the_pusher_pushes_nothing(penguin_copy):
    serving = os.path.join(penguin_copy, "serving", "penguin")
    before = serving_tree(serving)
    run = run_quietly(penguin_with_infra_validator(load_deadline_s=0.5), penguin_copy)

    assert run.ok, run.summary()
    assert run.steps["Trainer"].status == "cached"
    assert run.steps["Evaluator"].outputs["blessing"].blessed == 1
    blessing = run.steps["InfraValidator"].outputs["blessing"]
    assert blessing.blessed == 0
    assert "not AVAILABLE within 0.5 s" in blessing.reason
    assert_server_gone(server_pid(blessing))
    pusher = run.steps["Pusher"]
    assert pusher.outcome == "skipped"
    assert "failed infra validation" in pusher.reason
    assert pusher.outputs["pushed_model"].pushed == 0
    assert serving_tree(serving) == before


def test_parameters_are_checked_where_the_pipeline_is_defined():
    penguin = penguin_with_infra_validator()
    model = penguin.component("Trainer").outputs.model
    examples = penguin.component("ExampleGen").outputs.examples
    with pytest.raises(ValueError, match="serving_binary must be one of"):
        InfraValidator(model=model, examples=examples, serving_binary="kubernetes")
    with pytest.raises(ValueError, match="fallback_serving_binary must be '' "):
        InfraValidator(model=model, examples=examples, fallback_serving_binary="kubernetes")
    with pytest.raises(ValueError, match="fallback_serving_binary 'docker' is the serving_binary"):
        InfraValidator(model=model, examples=examples, serving_binary="docker",
                       fallback_serving_binary="docker")
    with pytest.raises(ValueError, match="num_examples must be at least 1"):
        InfraValidator(model=model, examples=examples, num_examples=0)
    with pytest.raises(ComponentDefinitionError, match="required input 'examples'"):
        InfraValidator(model=model)


@NO_DOCKER
def test_docker_without_an_engine_fails_the_step_naming_the_fix(penguin_copy):
    blessings = len(metadata_of(penguin_copy).artifacts_of_type(InfraBlessing))
    run = run_quietly(penguin_model_with(serving_binary="docker"), penguin_copy)

    assert not run.ok
    assert run.steps["InfraValidator"].status == "failed"
    assert "ValueError: serving_binary='docker' cannot run: `docker info`" in run.failure
    assert "start a docker engine" in run.failure
    assert "fallback_serving_binary='auto'" in run.failure
    assert len(metadata_of(penguin_copy).artifacts_of_type(InfraBlessing)) == blessings
    if not shutil.which("tensorflow_model_server"):  # a fallback that cannot run fails too
        with pytest.raises(ValueError, match="tensorflow_model_server is not on PATH; nor can "
                                             "fallback_serving_binary='docker': `docker info`"):
            choose_server("tensorflow_model_server", "docker")


@NO_DOCKER
def test_docker_fallback_is_recorded_wherever_the_verdict_is_read(penguin_copy, capsys):
    from pipelines.inspect_cli import print_artifact

    lines = []
    run = run_quietly(penguin_model_with(serving_binary="docker",
                                         fallback_serving_binary="pipewright"),
                      penguin_copy, echo=lines.append)

    assert run.ok, run.summary()
    step = run.steps["InfraValidator"]
    assert step.status == "executed"
    blessing = step.outputs["blessing"]
    assert blessing.blessed == 1, blessing.reason
    stored = metadata_of(penguin_copy).artifact(blessing.id)
    assert (stored.server, stored.requested_server) == ("pipewright", "docker")
    assert stored.reason.startswith("pipewright (fallback for docker) served it")
    # The run's console lines (the step line and the summary table) show the substitute.
    assert any("InfraValidator" in line and "validated by pipewright, FALLBACK: docker missing"
               in line for line in lines[:-1])
    assert "validated by pipewright, FALLBACK: docker missing" in lines[-1]
    with open(blessing.path("report.txt")) as fh:
        report = fh.read()
    assert "validated by: pipewright, FALLBACK for the requested docker: `docker info`" in report
    assert "CANNOT catch ops or kernels missing from TF Serving's C++ binary" in report
    with open(step.log_path) as fh:
        assert re.search(r"WARNING .*serving_binary='docker' cannot run \(`docker info`.*\); "
                         r"validating with the fallback pipewright", fh.read())

    capsys.readouterr()
    assert print_artifact(penguin_copy, str(blessing.id)) == 0
    shown = capsys.readouterr().out
    assert "server: pipewright — FALLBACK: serving_binary='docker' was requested" in shown
    assert "requested_server=docker" in shown and "server=pipewright" in shown


def test_server_stopped_from_outside_is_no_verdict_and_the_next_run_validates_again(
        penguin_copy):
    """`make down` mid-validation: SIGTERM reaches the sandbox server while it loads."""
    metadata = metadata_of(penguin_copy)
    blessings = len(metadata.artifacts_of_type(InfraBlessing))
    # SIGTERM the sandbox server as soon as it runs, as `make down` does.
    with sigterm_first_seen(sandbox_servers) as killed:
        run = run_quietly(penguin_model_with(num_examples=7), penguin_copy)

    assert "pid" in killed, "no sandbox server was seen"
    step = run.steps["InfraValidator"]
    assert not run.ok and step.status == "failed"
    assert (f"StepInterrupted: the sandbox model server (pipewright, pid {killed['pid']}) was "
            f"killed by SIGTERM from outside the step") in run.failure
    record = execution(metadata, step.execution_id)
    assert record.state == "failed" and "killed by SIGTERM" in record.error
    assert metadata.outputs_of_execution(step.execution_id) == {}
    assert len(metadata.artifacts_of_type(InfraBlessing)) == blessings
    assert_server_gone(killed["pid"])

    rerun = run_quietly(penguin_model_with(num_examples=7), penguin_copy)
    assert rerun.ok, rerun.summary()
    assert rerun.steps["InfraValidator"].status == "executed"
    blessing = rerun.steps["InfraValidator"].outputs["blessing"]
    assert blessing.blessed == 1, blessing.reason
    assert len(metadata.artifacts_of_type(InfraBlessing)) == blessings + 1


def test_a_slow_server_start_up_is_no_verdict_and_does_not_count_against_the_load_deadline(
        penguin_copy, monkeypatch):
    """On a loaded machine pipewright serve's TensorFlow import has taken 110 s: the load
    deadline counts from the server's "Loading servable version" line (TFX's
    max_loading_time_seconds judges the load), and a server that never gets that far fails
    the step with nothing published, as a stop from outside does."""
    metadata = metadata_of(penguin_copy)
    blessings = len(metadata.artifacts_of_type(InfraBlessing))
    monkeypatch.setattr(serving_sandbox, "STARTUP_DEADLINE_S", 1.0)  # TF imports take longer
    run = run_quietly(penguin_model_with(num_examples=3), penguin_copy)

    step = run.steps["InfraValidator"]
    assert not run.ok and step.status == "failed"
    assert re.search(r"ServerStartTimeout: the sandbox model server \(pipewright, pid \d+\) did "
                     r"not begin loading the model within 1 s of its start", run.failure)
    assert "no verdict is published" in run.failure
    assert execution(metadata, step.execution_id).state == "failed"
    assert metadata.outputs_of_execution(step.execution_id) == {}
    assert len(metadata.artifacts_of_type(InfraBlessing)) == blessings
    assert not sandbox_servers()

    monkeypatch.undo()
    start_up_s, load_deadline_s = 15, 12  # the start-up alone outlasts the load deadline
    command = SandboxServer.command
    monkeypatch.setattr(SandboxServer, "command", lambda server: [
        "sh", "-c", f'sleep {start_up_s} && exec "$@"', "sh", *command(server)])
    run = run_quietly(penguin_model_with(num_examples=3, load_deadline_s=load_deadline_s),
                      penguin_copy)
    assert run.ok, run.summary()
    blessing = run.steps["InfraValidator"].outputs["blessing"]
    assert blessing.blessed == 1, blessing.reason
    available_after = float(re.search(r"AVAILABLE after ([\d.]+) s",
                                      open(blessing.path("report.txt")).read()).group(1))
    assert available_after > load_deadline_s


def test_pipewright_serve_stopped_by_sigterm_while_serving_is_no_verdict(trained_penguin,
                                                                          tmp_path):
    """pipewright serve answers SIGTERM with a clean exit: code 0 before the step stopped it
    is a stop from outside, not something the model did."""
    base = tmp_path / "infra-validation-sigterm" / "penguin"
    shutil.copytree(trained_penguin.model_dir, base / "1")
    server = SandboxServer("pipewright", model_name="penguin", base_path=str(base),
                           log_path=str(tmp_path / "server.log"))
    with server:
        server.wait_until_available(120)
        assert server.settle() is None  # up and answering: a failure would be the model's
        os.kill(server.pid, signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        with pytest.raises(StepInterrupted, match=r"exited cleanly \(code 0\) before the step"):
            server.settle()
        with pytest.raises(StepInterrupted, match="exited cleanly"):
            server.wait_until_available(5)


def test_a_server_that_exits_by_itself_stays_a_verdict(tmp_path, monkeypatch):
    """An exit the server made by itself (code 3 here: a crash of its own) is an answer
    (ModelNotAvailable, so blessed=0), not an interruption."""
    monkeypatch.setattr(SandboxServer, "command",
                        lambda server: ["sh", "-c", "echo 'it broke'; exit 3"])
    server = SandboxServer("pipewright", model_name="penguin", base_path=str(tmp_path),
                           log_path=str(tmp_path / "server.log"))
    with server:
        with pytest.raises(ModelNotAvailable, match="exited with code 3 before .*\n.*it broke"):
            server.wait_until_available(120)
        assert server.settle() == 3


@pytest.mark.parametrize("taken", ["grpc_port", "rest_port"])
def test_a_server_that_cannot_bind_its_port_is_no_verdict(trained_penguin, tmp_path, taken):
    """Ports are picked free, but another process can take one before a slow server binds
    it: that says nothing about the model. (pipewright serve binds gRPC after the load, so
    with the REST port taken it is AVAILABLE first, then exits.)"""
    base = tmp_path / "infra-validation-taken" / "penguin"
    shutil.copytree(trained_penguin.model_dir, base / "1")
    server = SandboxServer("pipewright", model_name="penguin", base_path=str(base),
                           log_path=str(tmp_path / "server.log"))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", getattr(server, taken)))
        holder.listen()
        with server:
            with pytest.raises(ServerStartFailed, match=r"could not bind its port .* no verdict"):
                server.wait_until_available(120)
                server.process.wait(timeout=60)  # AVAILABLE over gRPC, then REST fails
                server.settle()


def test_the_sandbox_server_dies_with_the_process_that_started_it(tmp_path):
    """A runner killed with SIGKILL cannot stop its sandbox server: the server gets SIGTERM
    from the kernel (PR_SET_PDEATHSIG) instead of serving on, orphaned, forever. (No model:
    a server on an empty base path runs on, waiting for a version.)"""
    import subprocess
    import sys

    base = tmp_path / "infra-validation-orphan" / "penguin"
    base.mkdir(parents=True)
    script = (f"from components.serving_sandbox import SandboxServer\n"
              f"import time\n"
              f"server = SandboxServer('pipewright', model_name='penguin', base_path={str(base)!r},"
              f" log_path={str(tmp_path / 'server.log')!r})\n"
              f"server.start()\nprint(server.pid, flush=True)\ntime.sleep(600)\n")
    runner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        server = psutil.Process(int(runner.stdout.readline()))
        deadline = time.monotonic() + 30  # setpriv has set the signal once it exec'd the server
        while server.name() == "setpriv" and time.monotonic() < deadline:
            time.sleep(0.05)
        runner.kill()
        runner.wait(timeout=30)
        psutil.wait_procs([server], timeout=60)
        assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
    finally:
        runner.kill()


def _penguin_data() -> str:
    from pipelines.penguin.pipeline import PACKAGED_DATA

    return PACKAGED_DATA
