"""InfraValidator: does the candidate model load and answer in a model server — and which
server was it? The blessing records it (`server`, `requested_server`), because the kinds do
not prove the same thing (see `WHAT_IT_PROVES`)."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time

from components.artifacts import Examples, InfraBlessing, Model
from components.base import Component, Input, Output, Param, Parameter, Step
from components import canary_requests as canary
from components.canary_requests import WARMUP_FILE, CanaryFailed
from components.serving_sandbox import (SERVER_KINDS, ModelNotAvailable, SandboxServer,
                                        choose_server)

SANDBOX_VERSION = 1

# What a blessing by each server shows, beyond "the canaries passed" (written into report.txt).
WHAT_IT_PROVES = {
    "tensorflow_model_server": (
        "TF Serving's C++ binary on PATH loaded and served the model: this also catches ops "
        "and kernels missing from that TF Serving build (custom ops, ops newer than its "
        "TensorFlow) and SavedModel features its TensorFlow version cannot read"),
    "docker": (
        "TF Serving's C++ binary in the docker image loaded and served the model: this also "
        "catches ops and kernels missing from that image's build (custom ops, ops newer than "
        "its TensorFlow) and SavedModel features its TensorFlow version cannot read"),
    "pipewright": (
        "pipewright serve, our Python server, loaded the model with this environment's "
        "TensorFlow (the one that exported it) and served it over TF Serving's protocol: it "
        "CANNOT catch ops or kernels missing from TF Serving's C++ binary, nor a TensorFlow "
        "version TF Serving cannot read; a model it blesses may still fail to load in "
        "tensorflow/serving"),
}


class InfraValidator(Component):
    """Serves a copy of the candidate model from a throwaway base path with a model server,
    waits up to `load_deadline_s` for the version to be AVAILABLE, then sends `num_examples`
    examples of the `example_split` split to `signature_name` (which must take serialized
    tf.Example) over gRPC Predict and REST :predict. The answers must hold every output with
    one row per example, finite numbers, and agree across the two protocols. Every server
    catches a missing or unreadable SavedModel, a signature that does not take serialized
    tf.Example, answers of the wrong shape or not finite, gRPC and REST disagreeing, a load
    slower than the deadline and (with `write_warmup`) a warmup record the server rejects.

    `serving_binary` picks the server:
    - "tensorflow_model_server": TF Serving's C++ binary on PATH;
    - "docker": `docker_image` (TF Serving) under a docker engine;
    - "pipewright": our own `pipewright serve`. It loads the model with this environment's
      Python TensorFlow, so it cannot catch ops missing from TF Serving's C++ binary or a
      TensorFlow version TF Serving cannot read;
    - "auto" (default): tensorflow_model_server when it is on PATH, else pipewright.
    A requested server that cannot run here (no docker engine, no binary on PATH) fails the
    step, naming the fix, unless `fallback_serving_binary` names the server to use instead
    (e.g. "auto"); the substitute is then recorded in the blessing (`requested_server` vs
    `server`), its report.txt, the step's log at WARNING and the step's summary note.

    The blessing says blessed=1, or blessed=0 with the reason (load failure, timeout, bad
    answer, the server exiting by itself); the step succeeds either way and the Pusher
    refuses an unblessed model. A server stopped from outside the step (SIGTERM, SIGKILL,
    e.g. `make down`) is no verdict: the step fails with StepInterrupted, publishes nothing
    and is not cached, so the next run validates again. So is a server that does not even
    begin loading within its start-up deadline (STARTUP_DEADLINE_S, 600 s; pipewright
    serve's TensorFlow import is slow on a loaded machine): ServerStartTimeout; and one that
    cannot bind a port it was given (another process took it): ServerStartFailed. The server
    also dies with the process that started it (PR_SET_PDEATHSIG), so a SIGKILLed runner
    leaves no server behind. The load
    deadline counts from the server's "Loading servable version" line, as TFX's
    `max_loading_time_seconds` judges the load and not the start-up. The server is stopped by PID
    whatever happens; its log is kept in the blessing as server.log.

    With `write_warmup`, the canary request also becomes a warmup record: the server must
    load a second sandbox version holding `assets.extra/tf_serving_warmup_requests` (which it
    replays before reporting AVAILABLE), and the validated file is kept in the blessing under
    the same relative path. Input artifacts are immutable, so the model is not rewritten: the
    Pusher adds the blessing's `assets.extra/` to the version it pushes."""

    imports_tensorflow = True

    model: Input[Model]
    examples: Input[Examples]
    blessing: Output[InfraBlessing]
    model_name: Parameter[str] = "model"  # the name the sandbox serves, and warmup requests use
    example_split: Parameter[str] = "eval"
    num_examples: Parameter[int] = 10
    signature_name: Parameter[str] = "serving_default"
    # From when the server begins loading the version (not its own start-up): see
    # SandboxServer.wait_until_available.
    load_deadline_s: Parameter[float] = 120.0
    serving_binary: Parameter[str] = "auto"
    # "" (default): a missing serving_binary fails the step; else the kind to use instead.
    fallback_serving_binary: Parameter[str] = ""
    docker_image: Parameter[str] = "tensorflow/serving:2.16.1"
    write_warmup: Parameter[bool] = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _check_parameters({k: v for k, v in self.parameters.items() if not isinstance(v, Param)},
                          self.id)

    def execute(self, step: Step) -> None:
        _check_parameters({name: getattr(step, name) for name in self.PARAMETERS}, self.id)
        if step.example_split not in step.examples.splits:
            raise ValueError(f"examples {step.examples.uri} have no split {step.example_split!r}; "
                             f"they have {step.examples.splits}")
        examples = canary.read_serialized_examples(
            step.examples.file_pattern(step.example_split), step.num_examples)
        choice = choose_server(step.serving_binary, step.fallback_serving_binary)
        kind = choice.kind
        step.blessing.set(model_id=step.model.id, server=kind, requested_server=choice.requested)
        if choice.fallback:
            step.log.warning("serving_binary=%r cannot run (%s); validating with the fallback "
                             "%s instead (fallback_serving_binary=%r)", choice.requested,
                             choice.why, kind, step.fallback_serving_binary)
            step.note(f"validated by {kind}, FALLBACK: {choice.requested} missing")
        else:
            step.note(f"validated by {kind}")

        report = [f"model {step.model.id} ({step.model.serving_dir})",
                  f"validated by: {choice.describe()}",
                  f"what it proves: {WHAT_IT_PROVES[kind]}"]
        if kind == "docker":
            report.append(f"image: {step.docker_image}")
        sandbox = tempfile.mkdtemp(prefix="infra-validation-", dir=step.tmp_dir or None)
        try:
            reason = validate_in_sandbox(step, kind, examples, sandbox, report)
        finally:
            shutil.rmtree(sandbox, ignore_errors=True)

        if reason:
            step.blessing.set(blessed=0, reason=reason)
            step.log.warning("not blessed: %s", reason)
            report.insert(0, f"NOT BLESSED: {reason}")
        else:
            by = f"{kind} (fallback for {choice.requested})" if choice.fallback else kind
            summary = (f"{by} served it and answered {len(examples)} canary examples over "
                       f"gRPC and REST")
            step.blessing.set(blessed=1, reason=summary)
            step.log.info("blessed: %s", summary)
            report.insert(0, f"BLESSED: {summary}")
        with open(step.blessing.path("report.txt"), "w") as fh:
            fh.write("\n".join(report) + "\n")


def validate_in_sandbox(step: Step, kind: str, examples: list[bytes], sandbox: str,
                        report: list[str]) -> str:
    """Runs the server on a copy of the model and the canaries against it. Returns why the
    model is not blessed, or "" when it is; appends what it saw to `report`."""
    if not any(os.path.isfile(os.path.join(step.model.serving_dir, name))
               for name in ("saved_model.pb", "saved_model.pbtxt")):
        return f"{step.model.serving_dir} holds no SavedModel (saved_model.pb)"
    base_path = os.path.join(sandbox, step.model_name)
    model_copy = os.path.join(base_path, str(SANDBOX_VERSION))
    shutil.copytree(step.model.serving_dir, model_copy)
    server_log = step.blessing.path("server.log")
    server = SandboxServer(kind, model_name=step.model_name, base_path=base_path,
                           log_path=server_log, docker_image=step.docker_image)
    started = time.monotonic()
    with server:
        step.log.info("started %s (pid %d) on gRPC %s, REST %s", kind, server.pid,
                      server.grpc_target, server.rest_url)
        report.append(f"server: {kind}, pid {server.pid}")
        try:
            server.wait_until_available(step.load_deadline_s)
            report.append(f"AVAILABLE after {time.monotonic() - started:.1f} s")
            signature = canary.example_signature(server.grpc_target, step.model_name,
                                                 step.signature_name)
            report.append(signature.describe())
            request = canary.predict_request(step.model_name, signature, examples)
            grpc_answer = canary.grpc_predict(server.grpc_target, request)
            canary.check_answers("gRPC Predict", grpc_answer, signature, len(examples))
            report.append(f"gRPC Predict: {_shapes(grpc_answer)}, finite")
            rest_answer = canary.rest_predict(server.rest_url, step.model_name, signature,
                                              examples)
            canary.check_answers("REST :predict", rest_answer, signature, len(examples))
            canary.check_agreement(grpc_answer, rest_answer, signature)
            report.append(f"REST :predict: {_shapes(rest_answer)}, finite, equal to gRPC's")
            if step.write_warmup:
                _validate_warmup(step, server, model_copy, request, report)
        except (ModelNotAvailable, CanaryFailed) as failure:
            # A server going away fails requests too: stopped from outside, it is no verdict
            # (settle raises StepInterrupted); exiting by itself, it is part of the verdict.
            exit_code = server.settle()
            reason = str(failure)
            if exit_code is not None and f"exited with code {exit_code}" not in reason:
                reason += (f" (the server exited by itself with code {_exit_text(exit_code)}; "
                           f"its log ends:\n{server.log_tail()})")
            return reason
        except Exception:
            server.check_not_stopped_from_outside()  # the real cause, if that is what it was
            raise
    return ""


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return str(code)


def _validate_warmup(step: Step, server, model_copy: str, request, report: list[str]) -> None:
    """Serves the model again with the canary as its warmup record, then keeps the file."""
    warmed_version = SANDBOX_VERSION + 1
    staging = os.path.join(os.path.dirname(model_copy), f".staging-{warmed_version}")
    shutil.copytree(model_copy, staging)
    canary.write_warmup_file(staging, request)
    # Servers ignore non-numeric directories, so the version appears complete.
    os.rename(staging, os.path.join(os.path.dirname(model_copy), str(warmed_version)))
    server.wait_until_available(step.load_deadline_s, version=warmed_version)
    kept = step.blessing.path(WARMUP_FILE)
    os.makedirs(os.path.dirname(kept), exist_ok=True)
    shutil.copyfile(os.path.join(os.path.dirname(model_copy), str(warmed_version), WARMUP_FILE),
                    kept)
    report.append(f"warmup: the server replayed {WARMUP_FILE} and served the version; "
                  f"kept in the blessing")


def _shapes(outputs: dict) -> str:
    return ", ".join(f"{alias} {list(values.shape)}" for alias, values in sorted(outputs.items()))


def _check_parameters(values: dict, component_id: str) -> None:
    if "num_examples" in values and values["num_examples"] < 1:
        raise ValueError(f"{component_id}: num_examples must be at least 1, "
                         f"got {values['num_examples']}")
    if "load_deadline_s" in values and values["load_deadline_s"] <= 0:
        raise ValueError(f"{component_id}: load_deadline_s must be positive, "
                         f"got {values['load_deadline_s']}")
    if "serving_binary" in values and values["serving_binary"] not in SERVER_KINDS:
        raise ValueError(f"{component_id}: serving_binary must be one of {SERVER_KINDS}, "
                         f"got {values['serving_binary']!r}")
    fallback = values.get("fallback_serving_binary")
    if fallback is not None and fallback not in ("", *SERVER_KINDS):
        raise ValueError(f"{component_id}: fallback_serving_binary must be '' (no fallback) or "
                         f"one of {SERVER_KINDS}, got {fallback!r}")
    if fallback and fallback == values.get("serving_binary"):
        raise ValueError(f"{component_id}: fallback_serving_binary {fallback!r} is the "
                         f"serving_binary itself; name another server, or '' for none")
    name = values.get("model_name")
    if name is not None and (not name or "/" in name or ":" in name or name.startswith(".")):
        raise ValueError(f"{component_id}: model_name {name!r} is not a valid model name")
