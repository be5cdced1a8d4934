"""Runs a whole pipeline in this process: dependency order, independent steps in parallel
up to a bound, one log line per step, a summary table at the end."""
from __future__ import annotations

import concurrent.futures as futures
import datetime as dt
import shutil
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from components.base import Component
from components.interruption import StepInterrupted
from pipelines import interrupts
from pipelines.freed_memory import release_freed_memory
from pipelines.home import Home
from pipelines.launcher import RunInfo, StepFailed, StepResult, launch
from pipelines.metadata import Metadata
from pipelines.partial_run import OUTSIDE, plan_reuse, record_reuse, select_steps
from pipelines.pipeline import Pipeline
from pipelines.quiet_import import to_console


@dataclass
class RunResult:
    pipeline_name: str
    run_id: str
    steps: dict[str, StepResult] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)  # component id -> why
    failure: str = ""
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failure

    def executed(self) -> list[str]:
        return [cid for cid, r in self.steps.items() if r.status == "executed"]

    def summary(self) -> str:
        """One row per step: status (executed, cached, resolved, reused, failed, not run),
        outcome, seconds and a note: the step's key facts, then the ML Metadata ids of
        its output artifacts (`outputs: scaled=#7`, what `pipewright show` takes; the
        artifact directory is named by execution id, not artifact id)."""
        rows = [("step", "status", "outcome", "seconds", "note")]
        for cid, r in self.steps.items():
            outcome = "-" if r.status == "failed" else r.outcome
            note = "; ".join(filter(None, [_shortened(r.reason, 100), _output_ids(r)]))
            rows.append((cid, r.status, outcome, f"{r.duration_s:.1f}", note))
        for cid, why in self.not_run.items():
            rows.append((cid, "not run", "-", "-", _shortened(why, 100)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        verdict = "succeeded" if self.ok else f"FAILED: {self.failure}"
        lines.append(f"run {self.run_id} of {self.pipeline_name} {verdict} "
                     f"in {self.duration_s:.1f}s")
        return "\n".join(lines)


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def run_pipeline(pipeline: Pipeline, *, home: str | Home | None = None,
                 params: dict[str, Any] | None = None, enable_cache: bool = True,
                 rerun: list[str] | tuple[str, ...] = (), max_parallel: int = 2,
                 run_id: str | None = None, until: list[str] | tuple[str, ...] = (),
                 only: list[str] | tuple[str, ...] = (),
                 echo: Callable[[str], None] = to_console) -> RunResult:
    """Runs every step of `pipeline` in dependency order through the launcher, at most
    `max_parallel` at once. `enable_cache=False` executes every step; `rerun` names steps
    whose cached executions are not reused this time (their downstream steps then see new
    inputs and execute too). Raises ValueError naming an unknown step in `rerun`.

    Partial runs (pipelines.partial_run, after TFX's): `until` runs those steps and their
    upstream closure; `only` runs just those steps, their inputs taken from the newest
    successful execution of each producer in the pipeline's history, recorded in this run
    as a CACHED execution (status "reused"); the cache applies to the steps that run as
    in a full run. Steps not run are listed as not run, "outside --until/--only". Raises
    ValueError for an unknown step, `until` with `only`, or a `rerun` step that does not
    run; partial_run.UpstreamUnavailable (a LookupError) naming the producer when an
    `only` step's producer never succeeded or its outputs are gone — before any run is
    recorded.

    A termination signal stops scheduling; the steps running then fail (nothing they did
    is published) and the run is recorded failed."""
    started = time.monotonic()
    home = home if isinstance(home, Home) else Home.resolve(home)
    values = pipeline.resolve_params(params)
    unknown = sorted(set(rerun) - {c.id for c in pipeline.order})
    if unknown:
        raise ValueError(f"--rerun names no step of {pipeline.name}: {unknown}; its steps are "
                         f"{[c.id for c in pipeline.order]}")
    selected = select_steps(pipeline, until=until, only=only)
    outside_rerun = sorted(set(rerun) - {c.id for c in selected})
    if outside_rerun:
        raise ValueError(f"--rerun {outside_rerun} is {OUTSIDE}: this run executes only "
                         f"{[c.id for c in selected]}")
    interrupts.watch(record_only=True)
    metadata = Metadata(home.metadata_uri)
    for dead in metadata.abandon_dead_executions(pipeline.name):
        # Its outputs are in staging, or already moved into place when it died publishing:
        # either way no record points at them.
        for directory in home.execution_dirs(pipeline.name, dead.component_id, dead.id):
            shutil.rmtree(directory, ignore_errors=True)
        echo(f"recorded execution {dead.id} ({dead.component_id}) as failed: its process died "
             f"(its staging directory and unpublished outputs are removed)")
    for dead_run in metadata.abandon_dead_runs(pipeline.name):
        echo(f"recorded run {dead_run} as failed: its process died")
    reuse = plan_reuse(pipeline, selected, metadata, only) if only else []
    run_id = run_id or new_run_id()
    context = metadata.run_context(pipeline.name, run_id, parameters=values)
    run = RunInfo(pipeline.name, run_id, values, pipeline.beam_args, context)
    result = RunResult(pipeline.name, run_id)
    scope = (f"{len(selected)} of {len(pipeline.order)} steps "
             f"({'--until ' + ' '.join(until) if until else '--only ' + ' '.join(only)})"
             if until or only else f"{len(pipeline.order)} steps")
    echo(f"run {run_id} of {pipeline.name}: {scope}, home {home.root}")
    halted = ""
    for item in reuse:
        step = record_reuse(item, run, metadata)
        result.steps[item.component.id] = step
        echo(_step_line(step))
        if step.outcome == "halted" and not halted:  # the run it came from halted there too
            halted = f"{step.component_id} (reused): {step.reason}"
            result.failure = f"halted by {halted}"

    chosen = {c.id for c in selected}
    pending: list[Component] = list(selected)
    running: dict[futures.Future, Component] = {}
    with futures.ThreadPoolExecutor(max_workers=max(1, max_parallel),
                                    thread_name_prefix="step") as pool:
        while pending or running:
            signal_name = interrupts.since(started)
            if signal_name and not halted:
                halted = f"interrupted by {signal_name}"
                result.failure = result.failure or halted
                echo(f"{halted}: no new step starts; the {len(running)} running step(s) "
                     f"publish nothing (send it again to stop at once)")
            for component in list(pending):
                if halted:
                    break
                blocker = _blocker(component, result)
                if blocker:
                    result.not_run[component.id] = blocker
                    pending.remove(component)
                elif all(u.id in result.steps or u.id not in chosen
                         for u in component.upstream) and \
                        len(running) < max(1, max_parallel):
                    future = pool.submit(launch, component, run=run, metadata=metadata,
                                         home=home,
                                         enable_cache=enable_cache and component.id not in rerun)
                    running[future] = component
                    pending.remove(component)
            if halted:
                for component in pending:
                    result.not_run[component.id] = f"run halted: {halted[:60]}"
                pending.clear()
            if not running:
                continue
            try:
                # A timeout, so a signal the kernel gave a step thread is handled soon.
                done, _ = futures.wait(running, timeout=interrupts.POLL_S,
                                       return_when=futures.FIRST_COMPLETED)
            except (StepInterrupted, KeyboardInterrupt) as exc:
                halted = halted or f"interrupted ({exc or type(exc).__name__})"
                result.failure = result.failure or halted
                echo(f"{halted}: waiting for {len(running)} running step(s) to stop; "
                     f"they publish nothing")
                continue
            for future in done:
                component = running.pop(future)
                try:
                    step = future.result()
                except StepFailed as failure:
                    step = failure.result
                    result.failure = result.failure or str(failure)
                result.steps[component.id] = step
                echo(_step_line(step))
                release_freed_memory()  # the next step's peak starts from what stays held
                if step.outcome == "halted" and not halted:
                    halted = f"{component.id}: {step.reason}"
                    result.failure = result.failure or f"halted by {halted}"
    # Report in pipeline order, whatever order the steps finished in.
    result.steps = {c.id: result.steps[c.id] for c in pipeline.order if c.id in result.steps}
    for component in pipeline.order:
        if component.id not in result.steps and component.id not in result.not_run:
            result.not_run[component.id] = OUTSIDE
    result.not_run = {c.id: result.not_run[c.id] for c in pipeline.order
                      if c.id in result.not_run}
    result.duration_s = time.monotonic() - started
    metadata.finish_run(context, "succeeded" if result.ok else "failed")
    echo(result.summary())
    return result


def _blocker(component: Component, result: RunResult) -> str:
    for upstream in component.upstream:
        if upstream.id in result.not_run:
            return f"{upstream.id} did not run"
        step = result.steps.get(upstream.id)
        if step is not None and step.status == "failed":
            return f"{upstream.id} failed"
        if step is not None and step.outcome == "skipped":
            return f"{upstream.id} was skipped"
    return ""


def _output_ids(step: StepResult) -> str:
    """`outputs: examples=#12, ...`: the ML Metadata artifact ids of a step's outputs."""
    if step.status == "failed" or not step.outputs:
        return ""
    return "outputs: " + ", ".join(f"{key}=#{artifact.id}"
                                   for key, artifact in step.outputs.items())


def _shortened(text: str, limit: int) -> str:
    """`text` cut at a word boundary to at most `limit` characters, marked with "…" (the
    step's console line above the table has it whole)."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 1].rsplit(" ", 1)[0] if " " in text[:limit - 1] else text[:limit - 1]
    return cut.rstrip(";,:") + "…"


def _step_line(step: StepResult) -> str:
    status = step.status.upper() if step.status == "failed" else step.status
    note = (f" ({step.outcome}: {step.reason})" if step.outcome != "ok" else
            f" ({step.reason})" if step.reason else "")
    if step.status == "failed":
        note = f" — see {step.log_path}"
    elif step.outputs:
        note += " " + _output_ids(step)
    return f"[{step.duration_s:6.1f}s] {step.component_id:<22} {status}{note}"
