"""What one Airflow task does: run its component for the current Airflow run through the
launcher, exactly as the local runner would, and report the outcome in Airflow's terms.
The step's log records go to its own log file and, through the root logger that Airflow
captures, to the task log as well.

Imported only inside a running task (it loads ML Metadata); DAG parsing never needs it.
"""
from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSkipException,
)

from components.artifacts import Artifact
from components.base import Component
from pipelines.airflow_adapter import pipewright_run_id
from pipelines.home import Home
from pipelines.launcher import RunInfo, StepFailed, StepResult, launch
from pipelines.metadata import Metadata
from pipelines.pipeline import Pipeline


def run_component(pipeline: Pipeline, component: Component, context: Any,
                  log: logging.Logger) -> dict[str, Any]:
    """Runs `component` for the Airflow run in `context`; returns a summary (the task's XCom).
    A skipped step raises AirflowSkipException, a halted one AirflowFailException (no retry),
    a failed one AirflowException (retried with backoff)."""
    airflow_run_id = context["dag_run"].run_id
    values = run_parameters(pipeline, context)
    home = Home.resolve()
    metadata = Metadata(home.metadata_uri)
    run_id = pipewright_run_id(airflow_run_id)
    run_context = metadata.run_context(pipeline.name, run_id, parameters=values,
                                       orchestrator="airflow", airflow_run_id=airflow_run_id)
    for dead in metadata.abandon_dead_executions(pipeline.name):
        log.warning("recorded execution %d (%s) as failed: its process died", dead.id,
                    dead.component_id)
    inputs = upstream_inputs(metadata, run_context, component)
    log.info("%s: pipewright run %s of %s, home %s, inputs %s", component.id, run_id,
             pipeline.name, home.root,
             {key: (a.id if a is not None else None) for key, a in inputs.items()})
    run = RunInfo(pipeline.name, run_id, values, list(pipeline.beam_args), run_context)
    try:
        result = launch(component, run=run, inputs=inputs, metadata=metadata, home=home)
    except StepFailed as failure:
        raise AirflowException(str(failure)) from None
    if result.status == "cached":
        log.info("%s: cached, reusing the outputs of an earlier execution (its log: %s)",
                 component.id, result.log_path)
    summary = step_summary(result)
    log.info("%s: %s", component.id, summary)
    if result.outcome == "skipped":
        raise AirflowSkipException(f"{component.id} skipped: {result.reason}")
    if result.outcome == "halted":
        raise AirflowFailException(f"{component.id} halted the run: {result.reason}")
    return summary


def run_parameters(pipeline: Pipeline, context: Any) -> dict[str, Any]:
    """The run's pipeline parameter values from the run's conf, which Airflow has already
    validated against the DAG's params (the trigger form sends every param; the REST API
    and `dag.test` only the given ones: the others take the pipeline's defaults, which are
    the DAG params' defaults). A conf key the pipeline does not declare is an error."""
    conf = dict(context["dag_run"].conf or {})
    declared = [p.name for p in pipeline.parameters]
    unknown = sorted(set(conf) - set(declared))
    if unknown:
        raise AirflowFailException(f"pipeline {pipeline.name!r} has no parameter(s) {unknown}; "
                                   f"its parameters are {declared}")
    try:
        return pipeline.resolve_params(conf)
    except (KeyError, TypeError, ValueError) as exc:
        raise AirflowFailException(str(exc)) from None


def upstream_inputs(metadata: Metadata, run_context: Any,
                    component: Component) -> dict[str, Artifact | None]:
    """The component's input artifacts: the outputs its producers recorded in this run."""
    inputs: dict[str, Artifact | None] = {}
    for key, channel in component.inputs.items():
        if channel is None:
            inputs[key] = None
            continue
        producer = channel.producer.id
        record = metadata.latest_in_run(run_context, producer)
        if record is None or record.state not in ("complete", "cached"):
            state = "no execution" if record is None else f"execution {record.id} {record.state}"
            raise AirflowFailException(
                f"{component.id}.{key} reads {producer}.outputs.{channel.key}, but {producer} "
                f"has {state} in this run; run the whole DAG (or clear {producer} too)")
        inputs[key] = metadata.outputs_of_execution(record.id).get(channel.key)
    return inputs


def step_summary(result: StepResult) -> dict[str, Any]:
    return {
        "status": result.status, "outcome": result.outcome, "reason": result.reason,
        "execution_id": result.execution_id, "duration_s": round(result.duration_s, 2),
        "outputs": {key: {"id": a.id, "type": type(a).__name__, "uri": a.uri}
                    for key, a in result.outputs.items()},
        "log": result.log_path,
    }


def record_run_state(pipeline_name: str, state: str, context: Any) -> None:
    """DAG-run callback: marks the run context succeeded or failed, like the local runner."""
    try:
        airflow_run_id = context["dag_run"].run_id
        metadata = Metadata(Home.resolve().metadata_uri)
        run_context = metadata.run_context(pipeline_name, pipewright_run_id(airflow_run_id),
                                           orchestrator="airflow", airflow_run_id=airflow_run_id)
        metadata.finish_run(run_context, state)
    except Exception:  # noqa: BLE001 - a bookkeeping callback must not fail the run
        logging.getLogger(__name__).exception("could not record run state %s", state)
