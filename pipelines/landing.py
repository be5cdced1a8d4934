"""`pipewright land PIPELINE`: say that new data landed, so the pipeline's training DAG runs
now instead of at night.

The training DAG is scheduled on "nightly OR an event of `<pipeline>_new_data`"
(pipelines/airflow_adapter.py new_data_asset). That asset is watched by Airflow 3's triggerer
with a FileDeleteTrigger on `<home>/landing/<pipeline>.ready`: this command writes the file
(atomically, with what landed in it, for a person reading it), the triggerer deletes it and
emits the asset event, and the scheduler starts a run. A data-landing job can call
`signal_new_data()` the same way. Landing twice before the triggerer looks gives one run.
Airflow's own REST API (POST /api/v2/assets/events) does the same for callers holding a token.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pipelines.home import Home

LANDING_POLL_SECONDS = 10.0  # how often the triggerer looks for the file


def ready_file(landing_dir: str, pipeline_name: str) -> str:
    """`<landing_dir>/<pipeline>.ready`; ValueError for a name that is no file name."""
    if not pipeline_name or "/" in pipeline_name or pipeline_name.startswith("."):
        raise ValueError(f"pipeline name {pipeline_name!r} is not a valid file name")
    return os.path.join(landing_dir, f"{pipeline_name}.ready")


HISTORY_FILE = "landed.jsonl"  # one JSON line per landing: pipeline, landed_at, note


def signal_new_data(pipeline_name: str, home: str | None = None, note: str = "") -> str:
    """Writes the ready file for `pipeline_name`; returns its path. Raises LookupError for a
    pipeline that is not registered (no DAG watches for it)."""
    from pipelines import registry

    names = registry.names()
    if pipeline_name not in names:
        raise LookupError(f"no pipeline {pipeline_name!r}; registered: {', '.join(names)}")
    landing = Home.resolve(home).landing_dir
    os.makedirs(landing, exist_ok=True)
    path = ready_file(landing, pipeline_name)
    tmp = f"{path}.tmp-{os.getpid()}"
    record = {"pipeline": pipeline_name, "landed_at": time.time(), "note": note}
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(record, fh)
    # The triggerer deletes the ready file within seconds; the landing history keeps the note.
    with open(os.path.join(landing, HISTORY_FILE), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipewright land", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="the pipeline whose training DAG should run")
    parser.add_argument("--note", default="",
                        help=f"what landed (kept in <home>/landing/{HISTORY_FILE})")
    parser.add_argument("--home", help="pipeline home; default $PIPEWRIGHT_HOME or .pipewright/")
    args = parser.parse_args(argv)
    try:
        path = signal_new_data(args.pipeline, args.home, args.note)
    except (LookupError, ValueError, OSError) as exc:
        print(f"pipewright land: {exc}", file=sys.stderr)
        return 1
    print(f"new data for {args.pipeline}: {path} (the triggerer turns it into an asset event "
          f"within {LANDING_POLL_SECONDS:.0f} s; the training DAG then runs)")
    return 0
