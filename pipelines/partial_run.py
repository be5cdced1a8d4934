"""Partial runs: which steps a run executes (`--until`, `--only`), and the upstream
executions an `--only` run brings in from the pipeline's history.

Follows TFX's partial run (tfx/orchestration/portable/partial_run_utils.py): `--until STEP`
is `to_nodes` (STEP and its upstream closure run, with the cache as usual); `--only STEP`
runs just that step, and the producers of its inputs are *reused* from the newest run of
the pipeline that has them (TFX's LATEST_PIPELINE_RUN snapshot strategy). TFX's snapshot
re-associates the old executions with the new run context; here each reused producer gets
a CACHED execution in the new run whose inputs and outputs are the old execution's, as a
cache hit records — so the launcher resolves the `--only` steps' inputs from this run's
context exactly as in a full run, and lineage shows where they came from.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from components.artifacts import Artifact
from components.base import Component
from pipelines.launcher import RunInfo, StepResult
from pipelines.metadata import ExecutionRecord, Metadata
from pipelines.pipeline import Pipeline

OUTSIDE = "outside --until/--only"
SUCCEEDED = ("complete", "cached")


class UpstreamUnavailable(LookupError):
    """An `--only` step's producer has no usable execution in the pipeline's history."""


@dataclass
class Reuse:
    """One producer an `--only` run takes from history: the execution and its outputs."""

    component: Component
    source: ExecutionRecord
    outputs: dict[str, Artifact]


def select_steps(pipeline: Pipeline, *, until: list[str] | tuple[str, ...] = (),
                 only: list[str] | tuple[str, ...] = ()) -> list[Component]:
    """The steps a run executes, in pipeline order: every step when `until` and `only` are
    empty; the `until` steps with their upstream closure; or exactly the `only` steps.
    Raises ValueError naming an unknown step (and listing the pipeline's steps), or when
    both are given."""
    if until and only:
        raise ValueError(f"--until {list(until)} and --only {list(only)} cannot be combined: "
                         f"--until runs a step with everything upstream, --only just the step")
    steps = [c.id for c in pipeline.order]
    for flag, names in (("--until", until), ("--only", only)):
        unknown = sorted(set(names) - set(steps))
        if unknown:
            raise ValueError(f"{flag} names no step of {pipeline.name}: {unknown}; its steps "
                             f"are {steps}")
    if until:
        return pipeline.upstream_closure(list(until))
    if only:
        return [c for c in pipeline.order if c.id in set(only)]
    return list(pipeline.order)


def upstream_to_reuse(selected: list[Component]) -> list[Component]:
    """The direct upstream steps of the selected ones that are not selected themselves:
    the producers of their inputs, and the steps they run `.after` (so an ExampleValidator
    that halted on the newest data halts an `--only Transform` run too), first needed
    first."""
    chosen = {id(c) for c in selected}
    upstream: dict[int, Component] = {}
    for component in selected:
        for other in component.upstream:
            if id(other) not in chosen:
                upstream.setdefault(id(other), other)
    return list(upstream.values())


def newest_successful(metadata: Metadata, pipeline_name: str,
                      component_id: str) -> ExecutionRecord | None:
    """The newest (highest id) COMPLETE or CACHED execution of `component_id` in any
    recorded run of the pipeline, local or Airflow; None when it never succeeded."""
    newest = None
    for run in metadata.runs(pipeline_name):
        context = metadata.run_context(pipeline_name, run["run_id"])
        for record in metadata.executions_in_run(context):
            if record.component_id == component_id and record.state in SUCCEEDED and (
                    newest is None or record.id > newest.id):
                newest = record
    return newest


def plan_reuse(pipeline: Pipeline, selected: list[Component], metadata: Metadata,
               only: list[str] | tuple[str, ...]) -> list[Reuse]:
    """Finds, for every upstream step the selected steps need but do not run
    (upstream_to_reuse), its newest successful execution with its outputs. Raises
    UpstreamUnavailable naming the upstream step, the steps that depend on it and the
    `--until` run that would make it, when it never succeeded in this pipeline or its
    outputs are gone from disk."""
    plan = []
    for producer in upstream_to_reuse(selected):
        readers = [c.id for c in selected if producer in c.upstream]
        fix = (f"run pipeline {pipeline.name} with --until {producer.id} first (or add "
               f"--only {producer.id})")
        source = newest_successful(metadata, pipeline.name, producer.id)
        if source is None:
            raise UpstreamUnavailable(
                f"--only {' '.join(only)}: {', '.join(readers)} depend(s) on "
                f"{producer.id}, which has no successful execution in the history of "
                f"pipeline {pipeline.name}; {fix}")
        outputs = metadata.outputs_of_execution(source.id)
        missing = [a.uri for a in outputs.values() if not os.path.exists(a.uri)]
        if missing:
            raise UpstreamUnavailable(
                f"--only {' '.join(only)}: the newest successful execution of {producer.id} "
                f"(execution {source.id}, run {source.run_id}) has outputs missing on disk: "
                f"{missing}; {fix}")
        plan.append(Reuse(producer, source, outputs))
    return plan


def record_reuse(reuse: Reuse, run: RunInfo, metadata: Metadata) -> StepResult:
    """Records `reuse` as a CACHED execution in `run` (the old execution's inputs,
    outputs, cache key, outcome and log) and returns its StepResult, status "reused"."""
    started = time.monotonic()
    source = reuse.source
    execution_id = metadata.record_cached(
        type_name=type(reuse.component).__name__, component_id=reuse.component.id,
        pipeline_name=run.pipeline_name, run=run.context,
        inputs=metadata.inputs_of_execution(source.id), cache_key=source.cache_key,
        outputs=reuse.outputs, source=source)
    reason = f"execution {source.id} of run {source.run_id}"
    if source.outcome_reason:
        reason += f": {source.outcome_reason}"
    return StepResult(reuse.component.id, "reused", outcome=source.outcome or "ok",
                      reason=reason, outputs=reuse.outputs,
                      duration_s=time.monotonic() - started, log_path=source.log_path,
                      execution_id=execution_id)
