"""What one Airflow task does: run its component for the current Airflow run through the
launcher, exactly as the local runner would, and report the outcome in Airflow's terms.
The step's log records go to its own log file and, through the root logger that Airflow
captures, to the task log as well.

Imported only inside a running task (it loads ML Metadata); DAG parsing never needs it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSkipException,
)

from components.base import Component
from pipelines.airflow_adapter import RERUN_STEPS, pipewright_run_id
from pipelines.home import HOME_ID_ENV, Home, HomeUnavailable
from pipelines.launcher import InputsUnavailable, RunInfo, StepFailed, StepResult, launch
from pipelines.log_filters import is_library_noise
from pipelines.metadata import Metadata
from pipelines.pipeline import Pipeline


def run_component(pipeline: Pipeline, component: Component, context: Any,
                  log: logging.Logger) -> dict[str, Any]:
    """Runs `component` for the Airflow run in `context`; returns a summary (the task's XCom).
    A skipped step raises AirflowSkipException, a halted one AirflowFailException (no retry),
    a failed one AirflowException (retried with backoff)."""
    airflow_run_id = context["dag_run"].run_id
    values = run_parameters(pipeline, context)
    rerun = component.id in (context["dag_run"].conf or {}).get(RERUN_STEPS, [])
    home = task_home()
    metadata = Metadata(home.metadata_uri)
    run_id = pipewright_run_id(airflow_run_id)
    triggers = triggering_alerts(context)
    run_context = metadata.run_context(pipeline.name, run_id, parameters=values,
                                       orchestrator="airflow", airflow_run_id=airflow_run_id,
                                       triggered_by=triggers)
    for dead in metadata.abandon_dead_executions(pipeline.name):
        log.warning("recorded execution %d (%s) as failed: its process died", dead.id,
                    dead.component_id)
    log.info("%s: pipewright run %s of %s, home %s%s", component.id, run_id, pipeline.name,
             home.root, " (re-run: the cache is not used)" if rerun else "")
    for trigger in triggers:
        log.info("%s: this run was started by asset event %s from %s/%s: TrafficReport #%s "
                 "(%s)", component.id, trigger["asset"], trigger["source_dag_id"],
                 trigger["source_run_id"], trigger["report_id"],
                 "; ".join(trigger["extra"].get("reasons") or []) or "no reason recorded")
    run = RunInfo(pipeline.name, run_id, values, list(pipeline.beam_args), run_context)
    try:
        with library_noise_kept_out_of(logging.getLogger().handlers):
            result = launch(component, run=run, metadata=metadata, home=home,
                            enable_cache=not rerun)
    except StepFailed as failure:
        if isinstance(failure.__cause__, InputsUnavailable):  # a retry cannot make them appear
            raise AirflowFailException(f"{failure}; run the whole DAG (or clear the upstream "
                                       f"task too)") from None
        raise AirflowException(str(failure)) from None
    log.info("%s: inputs %s", component.id,
             {k: a.id for k, a in metadata.inputs_of_execution(result.execution_id).items()})
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


def pending_seconds(pipeline: Pipeline, component: Component, context: Any,
                    log: logging.Logger) -> float | None:
    """Component.pending for this run's parameter values: seconds the task should defer
    before looking again, or None to run the step now."""
    values = component.resolve_parameters(run_parameters(pipeline, context))
    home = Home.resolve()
    wait_s = component.pending(values, home.serving_dir, home.root)
    if wait_s is not None:
        log.info("%s: waiting %.0f s (deferred: no worker slot is held)", component.id, wait_s)
    return wait_s


def task_home() -> Home:
    """The pipeline home ($PIPEWRIGHT_HOME) as this worker sees it, checked before anything
    is written there (Home.check_shared, against $PIPEWRIGHT_HOME_ID when `make up` set it):
    a worker without the shared mount must not start a fresh home and metadata store.
    Raises AirflowFailException (no retry: a retry on the same worker sees the same)."""
    try:
        return Home.check_shared(expected_id=os.environ.get(HOME_ID_ENV) or None)
    except HomeUnavailable as exc:
        raise AirflowFailException(str(exc)) from None


@contextlib.contextmanager
def library_noise_kept_out_of(handlers: list[logging.Handler]):
    """Filters library noise (is_library_noise) out of `handlers` — Airflow's task log
    handlers, attached to the root logger before the step runs — for the duration. The
    step's log file handler, which the launcher adds afterwards, still receives it all."""
    def keep(record: logging.LogRecord) -> bool:
        return not is_library_noise(record)

    handlers = list(handlers)
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


def run_parameters(pipeline: Pipeline, context: Any) -> dict[str, Any]:
    """The run's pipeline parameter values from the run's conf, which Airflow has already
    validated against the DAG's params (the trigger form sends every param; the REST API
    and `dag.test` only the given ones: the others take the pipeline's defaults, which are
    the DAG params' defaults). A conf key the pipeline does not declare is an error."""
    conf = dict(context["dag_run"].conf or {})
    rerun = conf.pop(RERUN_STEPS, [])
    steps = [c.id for c in pipeline.order]
    if not isinstance(rerun, list) or sorted(set(rerun) - set(steps)):
        raise AirflowFailException(f"{RERUN_STEPS} must list steps of {pipeline.name!r} "
                                   f"({steps}), got {rerun!r}")
    declared = [p.name for p in pipeline.parameters]
    unknown = sorted(set(conf) - set(declared))
    if unknown:
        raise AirflowFailException(f"pipeline {pipeline.name!r} has no parameter(s) {unknown}; "
                                   f"its parameters are {declared}")
    try:
        return pipeline.resolve_params(conf)
    except (KeyError, TypeError, ValueError) as exc:
        raise AirflowFailException(str(exc)) from None


def step_summary(result: StepResult) -> dict[str, Any]:
    return {
        "status": result.status, "outcome": result.outcome, "reason": result.reason,
        "execution_id": result.execution_id, "duration_s": round(result.duration_s, 2),
        "outputs": {key: {"id": a.id, "type": type(a).__name__, "uri": a.uri}
                    for key, a in result.outputs.items()},
        "log": result.log_path,
    }


def triggering_alerts(context: Any) -> list[dict[str, Any]]:
    """The asset events that started this run (Airflow's `triggering_asset_events`), each
    as {"asset" (URI), "report_id", "source_dag_id", "source_run_id", "source_task_id",
    "timestamp" (ISO), "extra"}; [] for a run started by the clock or a person."""
    found = []
    accessor = context.get("triggering_asset_events") or {}
    for asset in accessor:
        for event in accessor[asset]:
            extra = dict(event.extra or {})
            found.append({"asset": event.asset.uri, "report_id": extra.get("report_id"),
                          "source_dag_id": event.source_dag_id,
                          "source_run_id": event.source_run_id,
                          "source_task_id": event.source_task_id,
                          "timestamp": event.timestamp.isoformat(), "extra": extra})
    return sorted(found, key=lambda t: t["timestamp"])


def set_outlet_events(outlets: list, summary: dict[str, Any], context: Any,
                      log: logging.Logger) -> None:
    """Puts the step's asset_event.json (components/retraining_alert.py EVENT_FILE, in any of
    its outputs) as the extra of each outlet's event; Airflow emits the events when the
    task succeeds. A step that wrote none emits events with an empty extra."""
    from components.retraining_alert import EVENT_FILE

    extra: dict[str, Any] = {}
    for output in summary["outputs"].values():
        path = os.path.join(output["uri"], EVENT_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                extra = json.load(fh)
    for asset in outlets:
        context["outlet_events"][asset].extra = extra
        log.info("asset event for %s: %s", asset.uri, json.dumps(extra, sort_keys=True)[:2000])


def record_run_state(pipeline_name: str, state: str, context: Any) -> None:
    """DAG-run callback: marks the run context succeeded or failed, like the local runner."""
    try:
        airflow_run_id = context["dag_run"].run_id
        metadata = Metadata(task_home().metadata_uri)
        run_context = metadata.run_context(pipeline_name, pipewright_run_id(airflow_run_id),
                                           orchestrator="airflow", airflow_run_id=airflow_run_id)
        metadata.finish_run(run_context, state)
    except Exception:  # noqa: BLE001 - a bookkeeping callback must not fail the run
        logging.getLogger(__name__).exception("could not record run state %s", state)
