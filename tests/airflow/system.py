"""Helpers of the system tests: start the services as `make up` does (on free ports, in a
temporary home), write dated spans of penguin data, trigger and follow DAG runs over the
REST API v2."""
from __future__ import annotations

import csv
import importlib.resources
import json
import socket
import time
import urllib.parse
from pathlib import Path

from pipelines.services import Services

SPAN_PATTERN = "{YYYY}-{MM}-{DD}/*.csv"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_span(incoming: Path, day: str, keep) -> Path:
    """A dated input folder holding the penguin rows `keep(index)` selects."""
    source = importlib.resources.files("palmerpenguins") / "data" / "penguins.csv"
    with source.open() as fh:
        header, *rows = list(csv.reader(fh))
    folder = incoming / day
    folder.mkdir(parents=True)
    with open(folder / "penguins.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(row for i, row in enumerate(rows) if keep(i))
    return folder


def trigger(services: Services, dag_id: str, conf: dict) -> str:
    """Triggers a run over the REST API v2; returns its run id."""
    run = services.trigger(dag_id, conf)
    assert run["conf"] == conf and run["triggered_by"] == "rest_api", run
    return run["dag_run_id"]


def wait_for_run(services: Services, dag_id: str, run_id: str,
                 timeout_s: float) -> tuple[dict, dict[str, str], str]:
    """The finished run, its task states, and the logs of its tasks that did not succeed
    (failed, skipped: a skipped step's log says why), if any."""
    path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}"
    deadline = time.monotonic() + timeout_s
    while True:
        run = services.api("GET", path)
        if run["state"] in ("success", "failed") or time.monotonic() > deadline:
            break
        time.sleep(3)
    instances = services.api("GET", path + "/taskInstances")["task_instances"]
    states = {ti["task_id"]: ti["state"] for ti in instances}
    other_logs = ""
    for ti in instances:
        if ti["state"] == "success":
            continue
        if not ti.get("try_number"):  # never ran (e.g. skipped by its trigger rule): no log
            other_logs += f"--- {ti['task_id']}: {ti['state']}, never ran\n"
            continue
        log = services.api("GET", f"{path}/taskInstances/{ti['task_id']}/logs/"
                                  f"{ti['try_number']}")
        other_logs += f"--- {ti['task_id']}: {ti['state']}\n{json.dumps(log)[-3000:]}\n"
    return run, states, other_logs
