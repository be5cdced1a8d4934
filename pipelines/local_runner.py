"""Runs a whole pipeline in this process: dependency order, independent steps in parallel
up to a bound, one log line per step, a summary table at the end."""
from __future__ import annotations

import concurrent.futures as futures
import datetime as dt
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from components.base import Component
from components.interruption import StepInterrupted
from pipelines import interrupts
from pipelines.home import Home
from pipelines.launcher import RunInfo, StepFailed, StepResult, launch
from pipelines.metadata import Metadata
from pipelines.pipeline import Pipeline


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
        rows = [("step", "status", "outcome", "seconds", "note")]
        for cid, r in self.steps.items():
            outcome = "-" if r.status == "failed" else r.outcome
            rows.append((cid, r.status, outcome, f"{r.duration_s:.1f}", r.reason[:70]))
        for cid, why in self.not_run.items():
            rows.append((cid, "not run", "-", "-", why[:70]))
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
                 run_id: str | None = None,
                 echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr,
                                                                  flush=True)) -> RunResult:
    """Runs every step of `pipeline` in dependency order through the launcher, at most
    `max_parallel` at once. `enable_cache=False` executes every step; `rerun` names steps
    whose cached executions are not reused this time (their downstream steps then see new
    inputs and execute too). Raises ValueError naming an unknown step in `rerun`. A
    termination signal stops scheduling; the steps running then fail (nothing they did is
    published) and the run is recorded failed."""
    started = time.monotonic()
    home = home if isinstance(home, Home) else Home.resolve(home)
    values = pipeline.resolve_params(params)
    unknown = sorted(set(rerun) - {c.id for c in pipeline.order})
    if unknown:
        raise ValueError(f"--rerun names no step of {pipeline.name}: {unknown}; its steps are "
                         f"{[c.id for c in pipeline.order]}")
    interrupts.watch()
    metadata = Metadata(home.metadata_uri)
    for dead in metadata.abandon_dead_executions(pipeline.name):
        echo(f"recorded execution {dead.id} ({dead.component_id}) as failed: its process died")
    run_id = run_id or new_run_id()
    context = metadata.run_context(pipeline.name, run_id, parameters=values)
    run = RunInfo(pipeline.name, run_id, values, pipeline.beam_args, context)
    result = RunResult(pipeline.name, run_id)
    echo(f"run {run_id} of {pipeline.name}: {len(pipeline.order)} steps, home {home.root}")

    pending: list[Component] = list(pipeline.order)
    running: dict[futures.Future, Component] = {}
    halted = ""
    with futures.ThreadPoolExecutor(max_workers=max(1, max_parallel),
                                    thread_name_prefix="step") as pool:
        while pending or running:
            for component in list(pending):
                if halted:
                    break
                blocker = _blocker(component, result)
                if blocker:
                    result.not_run[component.id] = blocker
                    pending.remove(component)
                elif all(u.id in result.steps for u in component.upstream) and \
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
                if step.outcome == "halted" and not halted:
                    halted = f"{component.id}: {step.reason}"
                    result.failure = result.failure or f"halted by {halted}"
    # Report in pipeline order, whatever order the steps finished in.
    result.steps = {c.id: result.steps[c.id] for c in pipeline.order if c.id in result.steps}
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


def _step_line(step: StepResult) -> str:
    status = step.status.upper() if step.status == "failed" else step.status
    note = (f" ({step.outcome}: {step.reason})" if step.outcome != "ok" else
            f" ({step.reason})" if step.reason else "")
    if step.status == "failed":
        note = f" — see {step.log_path}"
    return f"[{step.duration_s:6.1f}s] {step.component_id:<22} {status}{note}"
