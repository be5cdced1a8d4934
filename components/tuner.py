"""Tuner: KerasTuner search driven by the user module's `tuner_fn`.

With `parallel_trials` > 1 the search is KerasTuner's distributed mode: a chief process
runs the oracle (a gRPC server on localhost) and that many worker processes each take
trials from it until the oracle's budget is spent. Each process runs `tuner_fn` itself:
    python -m components.tuner (chief|worker) SPEC.json
A chief or worker killed from outside the step (SIGTERM, SIGKILL, e.g. `make down`) fails
the step with StepInterrupted: the trials finished so far are not the search asked for, so
no "best" hyperparameters are published or cached.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from components.artifacts import Examples, HyperParameters, Schema, TransformGraph
from components.base import (Component, ExternalPath, Input, OptionalInput, Output, Parameter,
                             Step)
from components.interruption import check_child_exit
from components.user_module import FnArgs, UserModuleError, function

CHIEF_TIMEOUT_S = 3600
_import_lock = threading.Lock()


class Tuner(Component):
    """Searches hyperparameters with the tuner returned by the user module's `tuner_fn`
    and writes the best ones for the Trainer. When `enabled` is false (a pipeline
    parameter can switch tuning on), it writes no values, so the Trainer uses the
    module's defaults, and imports nothing heavy."""

    imports_tensorflow = True

    examples: Input[Examples]
    transform_graph: OptionalInput[TransformGraph]
    schema: OptionalInput[Schema]
    best_hyperparameters: Output[HyperParameters]
    module_file: Parameter[ExternalPath]
    enabled: Parameter[bool] = True
    train_steps: Parameter[int] = 100  # per trial
    eval_steps: Parameter[int] = 5
    train_split: Parameter[str] = "train"
    eval_split: Parameter[str] = "eval"
    parallel_trials: Parameter[int] = 1  # worker processes; 1 searches in this process
    custom_config: Parameter[dict[str, Any]] = {}

    def execute(self, step: Step) -> None:
        if not step.enabled:
            _write(step.best_hyperparameters, {}, None)
            step.log.info("tuning disabled: the Trainer uses the module's defaults")
            return
        if step.parallel_trials < 1:
            raise ValueError(f"{self.id}: parallel_trials must be at least 1, "
                             f"got {step.parallel_trials}")
        from components.trainer import fn_args_for

        function(step.module_file, "tuner_fn")  # fail here, clearly, if it is missing
        fn_args = fn_args_for(step, serving_model_dir="", model_run_dir="",
                              working_dir=os.path.join(step.tmp_dir, "trials"))
        if step.parallel_trials == 1:
            values, score = search(step.module_file, fn_args)
        else:
            values, score = _distributed_search(step, fn_args)
        step.log.info("best hyperparameters %s (score %s)", values, score)
        _write(step.best_hyperparameters, values, score)


def search(module_file: str, fn_args: FnArgs) -> tuple[dict[str, Any], float | None]:
    """Runs the search in this process (or as the chief of a distributed search) and
    returns the best trial's values and score."""
    tuner = _run_search(module_file, fn_args)
    best = tuner.oracle.get_best_trials(1)
    if not best:
        raise RuntimeError(f"the tuner of {module_file} finished no trial")
    return dict(best[0].hyperparameters.values), best[0].score


def import_keras_tuner():
    """KerasTuner bound to Keras 2 (tf_keras), the Keras of TFT, TFMA and the user module.

    KerasTuner picks its Keras when first imported: `keras`, which is Keras 3 in this
    environment. Importing it while `keras` names tf_keras binds it to Keras 2; the user
    module's own `import keras_tuner` then finds this binding."""
    import tf_keras

    with _import_lock:
        if "keras_tuner" not in sys.modules:
            saved = sys.modules.get("keras")
            sys.modules["keras"] = tf_keras
            try:
                import keras_tuner  # noqa: F401
            finally:
                if saved is not None:
                    sys.modules["keras"] = saved
                else:
                    del sys.modules["keras"]
    from keras_tuner.src.backend import keras as tuner_keras

    if tuner_keras.Model is not tf_keras.Model:
        raise RuntimeError("keras_tuner was imported before the Tuner ran and is bound to "
                           "Keras 3; the models are tf_keras (Keras 2) models")
    return sys.modules["keras_tuner"]


def _run_search(module_file: str, fn_args: FnArgs):
    import_keras_tuner()
    tuner_fn = function(module_file, "tuner_fn")
    try:
        result = tuner_fn(fn_args)
    except Exception as exc:
        raise UserModuleError(f"tuner_fn in {module_file} raised "
                              f"{type(exc).__name__}: {exc}") from exc
    tuner, fit_kwargs = getattr(result, "tuner", None), getattr(result, "fit_kwargs", None)
    if tuner is None or not isinstance(fit_kwargs, dict):
        raise UserModuleError(f"tuner_fn in {module_file} must return a TunerFnResult "
                              f"(tuner, fit_kwargs), got {type(result).__name__}")
    tuner.search(**fit_kwargs)
    return tuner


def _distributed_search(step: Step, fn_args: FnArgs) -> tuple[dict[str, Any], float | None]:
    spec = os.path.join(step.tmp_dir, "tuner_spec.json")
    result_file = os.path.join(step.tmp_dir, "tuner_result.json")
    with open(spec, "w") as fh:
        json.dump({"module_file": step.module_file, "fn_args": dataclasses.asdict(fn_args),
                   "result_file": result_file}, fh)
    port = _free_port()
    processes = []
    roles = ["chief"] + [f"tuner{i}" for i in range(step.parallel_trials)]
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for role in roles:
        env = dict(os.environ, KERASTUNER_TUNER_ID=role, KERASTUNER_ORACLE_IP="127.0.0.1",
                   KERASTUNER_ORACLE_PORT=str(port),
                   PYTHONPATH=os.pathsep.join(filter(None, [repo_root,
                                                            os.environ.get("PYTHONPATH")])))
        log_path = os.path.join(step.tmp_dir, f"tuner-{role}.log")
        with open(log_path, "w") as log:
            processes.append((role, log_path, subprocess.Popen(
                [sys.executable, "-m", "components.tuner",
                 "chief" if role == "chief" else "worker", spec],
                env=env, stdout=log, stderr=subprocess.STDOUT)))
    step.log.info("tuning with %d worker processes, oracle on port %d; pids %s",
                  step.parallel_trials, port,
                  ", ".join(f"{role} {process.pid}" for role, _, process in processes))
    failures = []
    try:
        failures = _wait_for_search(processes, CHIEF_TIMEOUT_S)
    finally:
        for _, _, process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for role, log_path, _ in processes:
            with open(log_path) as fh:
                step.log.info("--- tuner %s ---\n%s", role, fh.read()[-4000:])
    if failures:
        role, log_path = failures[0]
        with open(log_path) as fh:
            tail = fh.read()[-1500:]
        raise RuntimeError(f"tuner process {role} failed (log {log_path}):\n{tail}")
    with open(result_file) as fh:
        result = json.load(fh)
    return result["values"], result["score"]


def _wait_for_search(processes: list[tuple[str, str, subprocess.Popen]],
                     timeout_s: float) -> list[tuple[str, str]]:
    """Waits for every tuner process together. A process killed from outside (SIGTERM,
    SIGKILL, ...) raises StepInterrupted at once: the trials that ran are not a search, so
    no "best" is written. Returns the (role, log) of the first that failed by itself, else
    []; the caller stops the others."""
    deadline = time.monotonic() + timeout_s
    running = list(processes)
    while running:
        for entry in list(running):
            role, log_path, process = entry
            code = process.poll()
            if code is None:
                continue
            running.remove(entry)
            check_child_exit(code, f"tuner {role} process (pid {process.pid})")
            if code != 0:
                return [(role, log_path)]
        if time.monotonic() > deadline:
            raise RuntimeError(f"tuning did not finish within {timeout_s:g} s; still running: "
                               + ", ".join(role for role, _, _ in running))
        time.sleep(0.2)
    return []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write(artifact: HyperParameters, values: dict[str, Any], score: float | None) -> None:
    with open(artifact.file, "w") as fh:
        json.dump(values, fh, indent=2, sort_keys=True)
    if score is not None:
        artifact.set(best_score=float(score))


def _main(argv: list[str]) -> int:
    role, spec_path = argv
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    with open(spec_path) as fh:
        spec = json.load(fh)
    fn_args = FnArgs(**spec["fn_args"])
    if role == "worker":  # takes trials from the chief until its budget is spent
        _run_search(spec["module_file"], fn_args)
        return 0
    values, score = search(spec["module_file"], fn_args)
    with open(spec["result_file"], "w") as fh:
        json.dump({"values": values, "score": score}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
