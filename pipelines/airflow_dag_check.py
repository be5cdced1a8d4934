"""Parses a DAG folder the way Airflow's DAG processor does and reports, as JSON, what a
DAG file must get right: import errors, each DAG's tasks and their upstream tasks, params,
schedule, the parse time per file, and which heavy ML libraries the parse imported.

    python -m pipelines.airflow_dag_check [DAG_FOLDER]    (default: the repo's dags/)

prints the report as one line starting with REPORT_PREFIX.

Run it in a fresh process: `sys.modules` then shows what parsing alone imported.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HEAVY_MODULES = ("tensorflow", "apache_beam", "tensorflow_data_validation",
                 "tensorflow_transform", "tensorflow_model_analysis", "tfx_bsl", "keras",
                 "ml_metadata")
DEFAULT_FOLDER = Path(__file__).resolve().parents[1] / "dags"


def check(folder: str | Path) -> dict:
    started = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag

    airflow_import_s = time.perf_counter() - started
    started = time.perf_counter()
    bag = DagBag(dag_folder=str(folder))
    parse_s = time.perf_counter() - started
    dags = {}
    for dag_id, dag in sorted(bag.dags.items()):
        dags[dag_id] = {
            "tasks": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
            "params": {name: {"default": param.value, "schema": param.schema}
                       for name, param in dag.params.items()},
            "schedule": str(getattr(dag.timetable, "summary", dag.timetable)),
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "retries": {t.task_id: t.retries for t in dag.tasks},
            "execution_timeout_s": {t.task_id: t.execution_timeout.total_seconds()
                                    for t in dag.tasks if t.execution_timeout},
        }
    return {
        "folder": str(folder),
        "import_errors": dict(bag.import_errors),
        "dags": dags,
        "files": {stat.file: {"seconds": stat.duration.total_seconds(), "dags": stat.dag_num,
                              "tasks": stat.task_num} for stat in bag.dagbag_stats},
        "airflow_import_s": airflow_import_s,
        "parse_s": parse_s,
        "heavy_modules_loaded": sorted(m for m in HEAVY_MODULES if m in sys.modules),
    }


REPORT_PREFIX = "PIPEWRIGHT_DAG_CHECK="  # Airflow logs to stdout too: the report is this line


def report_from_output(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith(REPORT_PREFIX):
            return json.loads(line[len(REPORT_PREFIX):])
    raise ValueError(f"no {REPORT_PREFIX} line in the output:\n{stdout[-2000:]}")


if __name__ == "__main__":
    report = check(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_FOLDER)
    print(REPORT_PREFIX + json.dumps(report, default=str), flush=True)
