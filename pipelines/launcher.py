"""Runs one component of one run: the code path shared by the local runner and Airflow.

resolve inputs from ML Metadata -> cache lookup -> record RUNNING -> execute into staging
-> rename into place -> record COMPLETE with the outputs, all or nothing. A failure, or an
interruption (a termination signal or timeout while the step ran, a supervised child
process killed from outside), records FAILED and publishes — so caches — nothing.
Inputs are read from the metadata store here, for every runner, as TFX's portable launcher
resolves them: the runners only decide when a step runs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from components.artifacts import Artifact
from components.base import Component, Resolver, Step
from components.interruption import StepInterrupted, running_step
from pipelines import interrupts
from pipelines.home import Home
from pipelines.metadata import Metadata
from pipelines.quiet_import import import_tensorflow_quietly

CACHE_FORMAT = "1"  # bump to invalidate every cache entry after a launcher change


@dataclass
class StepResult:
    component_id: str
    status: str  # executed | cached | resolved | failed
    outcome: str = "ok"  # ok | skipped | halted
    reason: str = ""
    outputs: dict[str, Artifact] = field(default_factory=dict)
    duration_s: float = 0.0
    log_path: str = ""
    execution_id: int | None = None

    @property
    def succeeded(self) -> bool:
        return self.status != "failed"


@dataclass
class RunInfo:
    pipeline_name: str
    run_id: str
    params: dict[str, Any]
    beam_args: list[str]
    context: Any  # the MLMD run context


class StepFailed(RuntimeError):
    def __init__(self, result: StepResult, cause: str):
        super().__init__(f"step {result.component_id} failed: {cause} (log: {result.log_path})")
        self.result = result
        self.cause = cause


class InputsUnavailable(RuntimeError):
    """An upstream step has no usable outputs in this run."""


def cache_key(component: Component, params: dict[str, Any],
              inputs: dict[str, Artifact | None]) -> str:
    """The key under which a step's outputs are reused. Its ingredients, all of them:

    - `format`: CACHE_FORMAT, bumped when the launcher's publishing changes;
    - `component`: the component class's module and qualified name, and `id`: its id in
      the pipeline;
    - `code`: Component.code_fingerprint() — the source files of the class and its bases
      with every project module they import, transitively (components.source_fingerprint);
    - `params`: every parameter value after runtime parameters are resolved (JSON);
    - `inputs`: the ML Metadata id of each input artifact (None when unconnected or
      resolved to nothing) — ids, so an upstream re-execution changes the key;
    - `external`: Component.external_fingerprint(params) — the content of every
      ExternalPath parameter; a user module with the modules it imports from its own
      directory; components reading other files add those.

    Not in the key: library versions (pinned by uv.lock), Beam arguments (they choose
    where the work runs, not what it computes: tests/test_beam_multiprocess.py), the run
    id, the home. A hit also needs the earlier execution COMPLETE with its output directories
    still on disk (Metadata.find_cached)."""
    payload = {
        "format": CACHE_FORMAT,
        "component": f"{type(component).__module__}.{type(component).__qualname__}",
        "id": component.id,
        "code": component.code_fingerprint(),
        "params": params,
        "inputs": {key: (a.id if a is not None else None) for key, a in sorted(inputs.items())},
        "external": component.external_fingerprint(params),
    }
    text = json.dumps(payload, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _file_states(paths: list[str]) -> dict[str, tuple[int, int] | None]:
    """(mtime in ns, size) of each path, None when it does not exist."""
    states = {}
    for path in paths:
        try:
            info = os.stat(path)
            states[path] = (info.st_mtime_ns, info.st_size)
        except OSError:
            states[path] = None
    return states


class _ThreadLogFile(logging.FileHandler):
    """Sends the records of one step's thread (its own and its libraries') to its log."""

    def __init__(self, path: str, thread_id: int):
        super().__init__(path)
        self.thread_id = thread_id
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread_id


def _step_logger(component_id: str, log_path: str) -> tuple[logging.Logger, logging.Handler]:
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    handler = _ThreadLogFile(log_path, threading.get_ident())
    logging.getLogger().addHandler(handler)
    logger = logging.getLogger(f"pipewright.step.{component_id}")
    logger.setLevel(logging.INFO)
    return logger, handler


def resolve_inputs(component: Component, run: RunInfo,
                   metadata: Metadata) -> dict[str, Artifact | None]:
    """Each input's artifact: the output its producer recorded (executed, cached or
    resolved) in this run, newest execution first. An unconnected optional input, or a
    Resolver that found nothing, gives None. Raises InputsUnavailable naming the producer
    when it has no finished execution in the run or lacks the output."""
    inputs: dict[str, Artifact | None] = {}
    for key, channel in component.inputs.items():
        if channel is None:
            inputs[key] = None
            continue
        producer = channel.producer
        record = metadata.latest_in_run(run.context, producer.id)
        if record is None or record.state not in ("complete", "cached"):
            state = "no execution" if record is None else f"execution {record.id} {record.state}"
            raise InputsUnavailable(
                f"{component.id}.{key} reads {producer.id}.outputs.{channel.key}, but "
                f"{producer.id} has {state} in run {run.run_id}")
        artifact = metadata.outputs_of_execution(record.id).get(channel.key)
        if artifact is None and not (isinstance(producer, Resolver)
                                     and component.INPUTS[key].optional):
            raise InputsUnavailable(
                f"{component.id}.{key} reads {producer.id}.outputs.{channel.key}, but "
                f"execution {record.id} of {producer.id} recorded no such output")
        inputs[key] = artifact
    return inputs


def launch(component: Component, *, run: RunInfo, metadata: Metadata, home: Home,
           enable_cache: bool = True) -> StepResult:
    """Runs `component` for `run`: resolves its inputs from the metadata store, reuses a
    cached execution or executes it. Returns the StepResult; raises StepFailed (the
    failure recorded as a FAILED execution) when it cannot run, fails or is interrupted."""
    started = time.monotonic()
    interrupts.watch()
    log_path = home.log_path(run.pipeline_name, run.run_id, component.id)
    result = StepResult(component.id, "failed", log_path=log_path)
    try:
        params = component.resolve_parameters(run.params)
        inputs = resolve_inputs(component, run, metadata)
    except (TypeError, ValueError, InputsUnavailable) as exc:
        _record_failure(component, run, metadata, {}, {}, str(exc), result, started)
        raise StepFailed(result, str(exc)) from exc

    if isinstance(component, Resolver):
        return _resolve(component, run, inputs, params, metadata, home, result, started)

    try:
        key = cache_key(component, params, inputs)
    except Exception as exc:  # e.g. an external file vanished while fingerprinting
        raise StepFailed(result, f"cannot compute the cache key: {type(exc).__name__}: {exc}") from exc
    common = dict(type_name=type(component).__name__, component_id=component.id,
                  pipeline_name=run.pipeline_name, run=run.context, inputs=inputs)
    if enable_cache and component.enable_cache:
        hit = metadata.find_cached(key)
        if hit is not None:
            source, outputs = hit
            result.execution_id = metadata.record_cached(**common, cache_key=key,
                                                         outputs=outputs, source=source)
            result.status, result.outputs = "cached", outputs
            result.outcome, result.reason = source.outcome or "ok", source.outcome_reason
            result.log_path = source.log_path or log_path
            result.duration_s = time.monotonic() - started
            return result

    execution_id = metadata.begin_execution(**common, cache_key=key, parameters=params,
                                            log_path=log_path)
    result.execution_id = execution_id
    staging = home.staging_dir(execution_id)
    outputs = {name: spec.type(uri=os.path.join(staging, name), name=f"{component.id}.{name}")
               for name, spec in component.OUTPUTS.items()}
    for artifact in outputs.values():
        os.makedirs(artifact.uri, exist_ok=True)
    tmp_dir = os.path.join(staging, "_tmp")
    os.makedirs(tmp_dir, exist_ok=True)
    logger, handler = _step_logger(component.id, log_path)
    step = Step(component=component, values={**inputs, **outputs, **params},
                pipeline_name=run.pipeline_name, run_id=run.run_id, home=home.root,
                serving_dir=home.serving_dir, started_at=started,
                tmp_dir=tmp_dir, log=logger, beam_args=list(run.beam_args), metadata=metadata)
    try:
        logger.info("executing %s (execution %d)", component.id, execution_id)
        watched = _file_states(component.source_files(params))
        with running_step(started):
            if component.imports_tensorflow:
                import_tensorflow_quietly(log_path)
            component.execute(step)
        signal_name = interrupts.since(started)
        if signal_name:
            raise StepInterrupted(f"{signal_name} arrived while the step ran; its outputs "
                                  f"are discarded")
        if cache_key(component, params, inputs) != key:
            changed = [path for path, state in watched.items()
                       if _file_states([path])[path] != state]
            what = (", ".join(changed[:5]) + (f" and {len(changed) - 5} more"
                                              if len(changed) > 5 else "")
                    if changed else "a file it reads (its input data or an external file)")
            raise StepInterrupted(f"{what} changed on disk while the step ran, so its outputs "
                                  f"would be cached under a key that does not describe them; "
                                  f"they are discarded — run it again")
        reason = "; ".join(filter(None, [step.outcome_reason, *step.notes]))
        shutil.rmtree(tmp_dir, ignore_errors=True)
        staged = {key: artifact.uri for key, artifact in outputs.items()}
        published = _move_into_place(outputs, home, run.pipeline_name, component.id, execution_id)
        reason = _with_published_paths(reason, staged, published)
        metadata.publish_execution(execution_id, pipeline_name=run.pipeline_name,
                                   run=run.context, outputs=published, outcome=step.outcome,
                                   outcome_reason=reason,
                                   duration_s=time.monotonic() - started)
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt must be recorded too
        cause = f"{type(exc).__name__}: {exc}"
        logger.error("failed: %s\n%s", cause, traceback.format_exc())
        result.duration_s = time.monotonic() - started
        metadata.fail_execution(execution_id, cause + "\n" + traceback.format_exc(),
                                result.duration_s)
        _discard(outputs, staging)
        raise StepFailed(result, cause) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        logging.getLogger().removeHandler(handler)
        handler.close()
    result.status, result.outputs = "executed", published
    result.outcome, result.reason = step.outcome, reason
    result.duration_s = time.monotonic() - started
    return result


def _record_failure(component: Component, run: RunInfo, metadata: Metadata,
                    inputs: dict[str, Artifact | None], params: dict[str, Any], cause: str,
                    result: StepResult, started: float) -> None:
    """A FAILED execution for a step that failed before executing (bad parameters,
    missing inputs, a Resolver's error), so every failure is in the metadata store."""
    result.duration_s = time.monotonic() - started
    result.execution_id = metadata.begin_execution(
        type_name=type(component).__name__, component_id=component.id,
        pipeline_name=run.pipeline_name, run=run.context, inputs=inputs, cache_key="",
        parameters=params, log_path="")
    metadata.fail_execution(result.execution_id, cause, result.duration_s)


def _resolve(component: Resolver, run: RunInfo, inputs, params, metadata, home,
             result: StepResult, started: float) -> StepResult:
    logger = logging.getLogger(f"pipewright.step.{component.id}")
    step = Step(component=component, values={**inputs, **params}, pipeline_name=run.pipeline_name,
                run_id=run.run_id, home=home.root, serving_dir=home.serving_dir, tmp_dir="",
                log=logger,
                beam_args=list(run.beam_args), metadata=metadata)
    try:
        found = component.resolve(step)
    except Exception as exc:
        cause = f"{type(exc).__name__}: {exc}"
        _record_failure(component, run, metadata, inputs, params, cause, result, started)
        raise StepFailed(result, cause) from exc
    outputs = {key: artifact for key, artifact in found.items() if artifact is not None}
    execution_id = metadata.begin_execution(
        type_name=type(component).__name__, component_id=component.id,
        pipeline_name=run.pipeline_name, run=run.context, inputs=inputs, cache_key="",
        parameters=params, log_path="")
    # A resolver may skip (step.skip): nothing to resolve, so nothing downstream runs.
    result.outcome = step.outcome if step.outcome == "skipped" else "ok"
    metadata.publish_execution(execution_id, pipeline_name=run.pipeline_name, run=run.context,
                               outputs=outputs, outcome=result.outcome,
                               outcome_reason=step.outcome_reason if result.outcome == "skipped"
                               else "resolved " + ", ".join(
                                   f"{k}={a.id}" for k, a in outputs.items()),
                               duration_s=time.monotonic() - started)
    result.status, result.outputs, result.execution_id = "resolved", outputs, execution_id
    result.reason = step.outcome_reason if result.outcome == "skipped" else "; ".join(step.notes) or (
        ", ".join(f"{k}: artifact {a.id}" for k, a in outputs.items()) or "nothing found")
    result.duration_s = time.monotonic() - started
    return result


def _move_into_place(outputs: dict[str, Artifact], home: Home, pipeline: str,
                     component_id: str, execution_id: int) -> dict[str, Artifact]:
    """Renames each staged output to its final directory. A final directory that exists
    already belongs to someone else (execution ids restart in another metadata store on
    the same home): that is an error naming it, and it is left alone."""
    for key in outputs:
        final = home.artifact_dir(pipeline, component_id, key, execution_id)
        if os.path.exists(final):
            raise FileExistsError(
                f"{final} exists already: another metadata store (PIPEWRIGHT_METADATA, or a "
                f"deleted metadata.sqlite) has used this home {home.root}; use one store per "
                f"home")
    for key, artifact in outputs.items():
        final = home.artifact_dir(pipeline, component_id, key, execution_id)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.rename(artifact.uri, final)  # atomic on one file system
        artifact.uri = final
    return outputs


def _with_published_paths(text: str, staged: dict[str, str],
                          published: dict[str, Artifact]) -> str:
    """`text` (a step's notes) with each output's staging path replaced by where it was
    published: a note such as the Trainer's `tensorboard --logdir <model_run>` must point at
    a directory that exists after the step (staging is removed)."""
    for key, uri in sorted(staged.items(), key=lambda item: -len(item[1])):
        text = text.replace(uri, published[key].uri)
    return text


def _discard(outputs: dict[str, Artifact], staging: str) -> None:
    """Removes the outputs this execution moved into place (their URIs left staging);
    what is still in staging goes with it."""
    for artifact in outputs.values():
        if not artifact.uri.startswith(staging + os.sep):
            shutil.rmtree(artifact.uri, ignore_errors=True)
