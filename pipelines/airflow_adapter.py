"""Turns a pipeline into an Airflow 3 DAG: one task per component, the pipeline's graph as
the task dependencies, its runtime parameters as validated DAG params.

Every task runs its component through `pipelines.launcher.launch`, the code path of the
local runner, so caching, atomic publication, metadata and step logs behave the same.
The tasks of one Airflow run share one run context in the metadata store; it records the
Airflow run id, and a task finds its inputs among the outputs its upstream tasks recorded
there.

Building a DAG imports no TensorFlow, Beam or ML Metadata: the scheduler and the DAG
processor parse DAG files often. The heavy libraries load inside the task that needs them.
"""
from __future__ import annotations

import datetime as dt
import functools
import os
import re
import types
import typing
from typing import Any

from airflow.sdk import (DAG, Asset, AssetOrTimeSchedule, BaseOperator, BaseOperatorLink,
                         CronTriggerTimetable)
from airflow.sdk import Param as AirflowParam

from components.base import QUEUE_NAME, Component, ExternalPath, Param
from pipelines.pipeline import Pipeline

DEFAULT_RETRIES = 2
DEFAULT_RETRY_DELAY = dt.timedelta(minutes=1)
DEFAULT_MAX_RETRY_DELAY = dt.timedelta(minutes=15)
DEFAULT_EXECUTION_TIMEOUT = dt.timedelta(hours=2)
TAGS = ["pipewright"]
# The DAG param naming steps whose cached executions this run does not reuse (the
# counterpart of `pipewright run --rerun STEP`).
RERUN_STEPS = "rerun_steps"
DEFAULT_MONITOR_SCHEDULE = "0 * * * *"  # hourly, UTC
DEFAULT_COOLDOWN_HOURS = 6.0
MONITOR_DAG_SUFFIX = "_monitor"


# -- parameters ---------------------------------------------------------------------------
def json_schema(value_type: Any) -> dict[str, Any]:
    """The JSON-schema of a parameter type, as Airflow's trigger form and API validate it."""
    origin = typing.get_origin(value_type)
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(value_type) if t is not type(None)]
        nullable = len(options) < len(typing.get_args(value_type))
        if len(options) != 1:
            return {}  # a union of several types: let the component's own check decide
        schema = json_schema(options[0])
        if nullable and "type" in schema:
            schema["type"] = [schema["type"], "null"]
        return schema
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(value_type) or (Any,)
        return {"type": "array", "items": json_schema(item_type)}
    if origin is dict or value_type is dict:
        return {"type": "object"}
    if value_type is bool:
        return {"type": "boolean"}
    if value_type is int:
        return {"type": "integer"}
    if value_type is float:
        return {"type": "number"}
    if value_type is ExternalPath or (isinstance(value_type, type) and issubclass(value_type, str)):
        return {"type": "string"}
    return {}


def airflow_param(param: Param) -> AirflowParam:
    schema = json_schema(param.type)
    if param.default is None and isinstance(schema.get("type"), str):
        schema["type"] = [schema["type"], "null"]
    # Bounds and choices, when the pipeline's Param declares them.
    if param.minimum is not None:
        schema["minimum"] = param.minimum
    if param.maximum is not None:
        schema["maximum"] = param.maximum
    if param.choices is not None:
        schema["enum"] = list(param.choices)
    default = list(param.default) if isinstance(param.default, tuple) else param.default
    return AirflowParam(default, description=param.description or None,
                        title=param.name, **schema)


def dag_params(pipeline: Pipeline) -> dict[str, AirflowParam]:
    """The pipeline's runtime parameters, plus `rerun_steps`: the steps (by id, chosen in
    the trigger form) that execute again instead of reusing a cached execution."""
    if RERUN_STEPS in {p.name for p in pipeline.parameters}:
        raise ValueError(f"pipeline {pipeline.name!r}: the parameter name {RERUN_STEPS!r} is "
                         f"reserved for choosing steps to re-run")
    params = {p.name: airflow_param(p) for p in pipeline.parameters}
    params[RERUN_STEPS] = AirflowParam(
        [], type="array", items={"type": "string", "enum": [c.id for c in pipeline.order]},
        uniqueItems=True, title=RERUN_STEPS,
        description="steps to execute again instead of reusing their cached result "
                    "(their downstream steps then execute too)")
    return params


# -- the DAG ------------------------------------------------------------------------------
def nightly_schedule(cron: str | None) -> CronTriggerTimetable | None:
    """Runs at the cron times (UTC) from now on: enabling a DAG starts no run for a past
    night, and a scheduler that was down over several nights starts only the latest."""
    if not cron:
        return None
    return CronTriggerTimetable(cron, timezone="UTC", run_immediately=dt.timedelta(0))


def retraining_asset(pipeline_name: str) -> Asset:
    """The asset a pipeline's monitoring DAG emits an alert to and its training DAG is
    scheduled on: name `<pipeline>_retraining_alert`, URI
    `pipewright://<pipeline>/retraining-alert`."""
    return Asset(name=f"{pipeline_name}_retraining_alert",
                 uri=f"pipewright://{pipeline_name}/retraining-alert")


def new_data_asset(pipeline_name: str, landing_dir: str) -> Asset:
    """The asset whose events say new data landed for a pipeline: name
    `<pipeline>_new_data`, URI `pipewright://<pipeline>/new-data`. Its watcher (Airflow 3's
    AssetWatcher, run by the triggerer) is a FileDeleteTrigger on
    `<landing_dir>/<pipeline>.ready`: when that file appears (`pipewright land PIPELINE`,
    pipelines/landing.py) the triggerer deletes it and emits an event, so the training DAG
    runs without waiting for the night."""
    from airflow.providers.standard.triggers.file import FileDeleteTrigger
    from airflow.sdk import AssetWatcher

    from pipelines.landing import LANDING_POLL_SECONDS, ready_file

    trigger = FileDeleteTrigger(filepath=ready_file(landing_dir, pipeline_name),
                                poke_interval=LANDING_POLL_SECONDS)
    return Asset(name=f"{pipeline_name}_new_data", uri=f"pipewright://{pipeline_name}/new-data",
                 watchers=[AssetWatcher(name=f"{pipeline_name}_landing", trigger=trigger)])


def training_schedule(cron: str | None, retrain_on: Asset | list[Asset] | None):
    """The nightly cron timetable (nightly_schedule), OR an event of any asset in
    `retrain_on` when given: Airflow 3's AssetOrTimeSchedule. Only the asset(s) when there
    is no cron; None when neither."""
    timetable = nightly_schedule(cron)
    if isinstance(retrain_on, list):
        retrain_on = functools.reduce(lambda a, b: a | b, retrain_on) if retrain_on else None
    if retrain_on is None:
        return timetable
    if timetable is None:
        return retrain_on
    return AssetOrTimeSchedule(timetable=timetable, assets=retrain_on)


def build_dag(pipeline: Pipeline, *, dag_id: str | None = None,
              schedule: Any = ...,
              retries: int = DEFAULT_RETRIES,
              retry_delay: dt.timedelta = DEFAULT_RETRY_DELAY,
              execution_timeout: dt.timedelta = DEFAULT_EXECUTION_TIMEOUT,
              timeouts: dict[str, dt.timedelta] | None = None,
              queues: dict[str, str] | None = None,
              retrain_on: Asset | list[Asset] | None = None,
              outlets: dict[str, list[Asset]] | None = None) -> DAG:
    """The pipeline as a DAG. `schedule` (cron, or None for triggered runs only) defaults to
    the pipeline's; `retrain_on` adds assets whose events also start a run
    (training_schedule); `timeouts` overrides `execution_timeout` per component id; `queues`
    (component id -> Celery queue) overrides the queue a component names with
    `.with_queue()`. A task with neither runs on Airflow's default queue
    (`[operators] default_queue`). `outlets` (component id -> assets): the task emits an
    event of each when its step succeeds, with the step's asset_event.json as the event's
    extra (a skipped step emits none). Raises KeyError naming unknown component ids."""
    cron = pipeline.schedule if schedule is ... else schedule
    timeouts = dict(timeouts or {})
    queues = dict(queues or {})
    outlets = dict(outlets or {})
    ids = {c.id for c in pipeline.components}
    for what, mapping in (("time out", timeouts), ("queue", queues), ("emit from", outlets)):
        unknown = sorted(set(mapping) - ids)
        if unknown:
            raise KeyError(f"pipeline {pipeline.name!r} has no component(s) {unknown} to {what}")
    for component_id, queue in queues.items():
        if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
            raise ValueError(f"queue {queue!r} for {component_id} must be 1-200 letters, "
                             f"digits, '.', '_' or '-'")
    dag = DAG(
        dag_id=dag_id or pipeline.name,
        description=(pipeline.description or f"Pipewright pipeline {pipeline.name}")[:200],
        doc_md=_dag_doc(pipeline),
        schedule=training_schedule(cron, retrain_on),
        catchup=False,
        max_active_runs=1,  # runs of one pipeline push to one serving directory
        params=dag_params(pipeline),
        tags=TAGS,
        default_args={
            "owner": "pipewright",
            "retries": retries,
            "retry_delay": retry_delay,
            "retry_exponential_backoff": True,
            "max_retry_delay": DEFAULT_MAX_RETRY_DELAY,
        },
        on_success_callback=functools.partial(_record_run_state, pipeline.name, "succeeded"),
        on_failure_callback=functools.partial(_record_run_state, pipeline.name, "failed"),
    )
    tasks: dict[str, ComponentOperator] = {}
    for component in pipeline.order:
        queue = queues.get(component.id, component.queue)
        task = ComponentOperator(
            pipeline=pipeline, component=component, dag=dag,
            execution_timeout=timeouts.get(component.id, execution_timeout),
            outlets=list(outlets.get(component.id, [])),
            **({"queue": queue} if queue else {}))
        for upstream in component.upstream:
            tasks[upstream.id] >> task
        tasks[component.id] = task
    return dag


def _dag_doc(pipeline: Pipeline) -> str:
    lines = [f"### {pipeline.name}", "", pipeline.description or "", "",
             "Steps: " + " → ".join(c.id for c in pipeline.order)]
    if pipeline.parameters:
        lines += ["", "| parameter | type | default | description |", "|---|---|---|---|"]
        lines += [f"| `{p.name}` | {getattr(p.type, '__name__', p.type)} | `{p.default!r}` | "
                  f"{p.description} |" for p in pipeline.parameters]
    return "\n".join(lines)


# -- the task -----------------------------------------------------------------------------
class PipewrightReportLink(BaseOperatorLink):
    """The task's extra link (a button on the task in the grid) to its step in the run's
    page of the Pipewright view (pipelines/airflow_plugin.py), where each output's report
    is. Computed by the worker when the task ends, as Airflow 3 does for every link."""

    name = "Pipewright report"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        from airflow.configuration import conf

        from pipelines.airflow_plugin import URL_PREFIX

        base = conf.get("api", "base_url", fallback="").rstrip("/")
        return (f"{base}{URL_PREFIX}/runs/{ti_key.dag_id}/{pipewright_run_id(ti_key.run_id)}"
                f"#{ti_key.task_id}")


class ComponentOperator(BaseOperator):
    """Runs one component of the pipeline for the current Airflow run."""

    ui_color = "#e8f0fe"
    operator_extra_links = (PipewrightReportLink(),)

    def __init__(self, *, pipeline: Pipeline, component: Component, **kwargs: Any):
        super().__init__(task_id=component.id, doc_md=_component_doc(component), **kwargs)
        self.pipeline = pipeline
        self.component = component

    def execute(self, context: Any) -> dict[str, Any]:
        from pipelines import airflow_task  # the launcher and ML Metadata load here only

        airflow_task.task_home()  # first: a worker that does not see the home writes nothing
        wait_s = airflow_task.pending_seconds(self.pipeline, self.component, context, self.log)
        if wait_s is not None:
            # A long external wait (a rollout's bake window) holds no worker slot: the
            # triggerer wakes the task, which looks again (Component.pending).
            from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

            self.defer(trigger=TimeDeltaTrigger(dt.timedelta(seconds=max(1.0, wait_s))),
                       method_name="execute_after_wait")
        summary = airflow_task.run_component(self.pipeline, self.component, context, self.log)
        if self.outlets:
            airflow_task.set_outlet_events(self.outlets, summary, context, self.log)
        return summary

    def execute_after_wait(self, context: Any, event: Any = None) -> dict[str, Any]:
        return self.execute(context)


def _component_doc(component: Component) -> str:
    doc = (type(component).__doc__ or "").strip()
    return f"**{type(component).__name__}** — {doc}" if doc else type(component).__name__


def pipewright_run_id(airflow_run_id: str) -> str:
    """A path-safe run id derived from the Airflow run id (which the metadata also keeps)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", airflow_run_id).strip("_")


def _record_run_state(pipeline_name: str, state: str, context: Any) -> None:
    from pipelines import airflow_task

    airflow_task.record_run_state(pipeline_name, state, context)


# -- monitoring ----------------------------------------------------------------------------
def served_by(pipeline: Pipeline) -> tuple[str, str] | None:
    """(model name, push destination) of the pipeline's Pusher; None without a Pusher."""
    for component in pipeline.order:
        if type(component).__name__ == "Pusher":
            return (component.parameters["model_name"],
                    component.parameters.get("push_destination") or "")
    return None


def build_monitor_dag(pipeline: Pipeline, *, schedule: str | None = DEFAULT_MONITOR_SCHEDULE,
                      cooldown_hours: float = DEFAULT_COOLDOWN_HOURS, labels: str = "",
                      min_live_accuracy: float = 0.7, min_labels: int = 10,
                      log_dir: str = "", retries: int = DEFAULT_RETRIES) -> DAG:
    """`<pipeline>_monitor`: the pipeline `<pipeline>-monitor` (components/traffic_monitor.py
    monitor_pipeline) on its own cron `schedule` (hourly by default; None: triggered runs
    only), each run judging the closed request-log files since the previous window. Its
    RetrainingAlert task has retraining_asset(pipeline) as outlet: it emits an event when
    skew, drift or live accuracy crosses a threshold and no alert was emitted within
    `cooldown_hours`; else it ends skipped and nothing is emitted. Raises LookupError for a
    pipeline without a Pusher (nothing is served to monitor)."""
    from components.traffic_monitor import monitor_pipeline

    served = served_by(pipeline)
    if served is None:
        raise LookupError(f"pipeline {pipeline.name!r} has no Pusher: nothing is served "
                          f"to monitor")
    model_name, push_destination = served
    asset = retraining_asset(pipeline.name)
    monitor = monitor_pipeline(pipeline.name, model_name, log_dir=log_dir,
                               push_destination=push_destination, labels=labels,
                               min_live_accuracy=min_live_accuracy, min_labels=min_labels,
                               asset_uri=asset.uri, cooldown_hours=cooldown_hours)
    return build_dag(monitor, dag_id=f"{pipeline.name}{MONITOR_DAG_SUFFIX}", schedule=schedule,
                     retries=retries, outlets={"RetrainingAlert": [asset]})


# -- all registered pipelines ---------------------------------------------------------------
def _cron(text: str) -> str | None:
    text = text.strip()
    return None if text.lower() in ("none", "off", "") else text


def registered_dags(environ: typing.Mapping[str, str] = os.environ) -> dict[str, DAG]:
    """A DAG for every registered pipeline and, for each one with a Pusher, its monitoring
    DAG `<pipeline>_monitor` (build_monitor_dag); every training DAG also runs when new data
    lands (new_data_asset, `<home>/landing/`) and, with a Pusher, on the monitor's retraining
    alert (training_schedule). $PIPEWRIGHT_SCHEDULE (a cron, or "none")
    overrides every pipeline's schedule; $PIPEWRIGHT_AIRFLOW_RETRIES the retry count;
    $PIPEWRIGHT_MONITOR_SCHEDULE the monitors' (default hourly, "none" for triggered runs
    only); $PIPEWRIGHT_ALERT_COOLDOWN_HOURS the cooldown (default 6); $PIPEWRIGHT_LABELS
    a delayed-label directory (`<dir>/<pipeline>/`) and $PIPEWRIGHT_MIN_LIVE_ACCURACY its
    threshold (default 0.7)."""
    from pipelines import registry

    options: dict[str, Any] = {}
    if environ.get("PIPEWRIGHT_SCHEDULE"):
        options["schedule"] = _cron(environ["PIPEWRIGHT_SCHEDULE"])
    if environ.get("PIPEWRIGHT_AIRFLOW_RETRIES"):
        options["retries"] = int(environ["PIPEWRIGHT_AIRFLOW_RETRIES"])
    monitor_options: dict[str, Any] = {"retries": options.get("retries", DEFAULT_RETRIES)}
    if environ.get("PIPEWRIGHT_MONITOR_SCHEDULE"):
        monitor_options["schedule"] = _cron(environ["PIPEWRIGHT_MONITOR_SCHEDULE"])
    if environ.get("PIPEWRIGHT_ALERT_COOLDOWN_HOURS"):
        monitor_options["cooldown_hours"] = float(environ["PIPEWRIGHT_ALERT_COOLDOWN_HOURS"])
    if environ.get("PIPEWRIGHT_MIN_LIVE_ACCURACY"):
        monitor_options["min_live_accuracy"] = float(environ["PIPEWRIGHT_MIN_LIVE_ACCURACY"])
    from pipelines.home import Home

    # locate, not resolve: parsing the DAG file on a worker must not create a home there.
    landing = Home.locate(environ.get("PIPEWRIGHT_HOME")).landing_dir
    dags = {}
    for name in registry.names():
        pipeline = registry.load(name)
        served = served_by(pipeline)
        retrain_on = [new_data_asset(name, landing)] + ([retraining_asset(name)] if served else [])
        dags[name] = build_dag(pipeline, retrain_on=retrain_on, **options)
        if served:
            labels = (os.path.join(environ["PIPEWRIGHT_LABELS"], name)
                      if environ.get("PIPEWRIGHT_LABELS") else "")
            monitor = build_monitor_dag(registry.load(name), labels=labels, **monitor_options)
            dags[monitor.dag_id] = monitor
    return dags

