"""`pipewright monitor PIPELINE`: skew and drift of the served model's traffic, one window of
the request log per call (components/traffic_monitor.py).

    pipewright monitor penguin                       # since the previous window, until now
    pipewright monitor penguin --start 2026-11-30T12:00:00Z --end 2026-11-30T13:00:00Z
    pipewright monitor penguin --threshold body_mass_g=0.2 --psi-threshold island=0.1
    pipewright monitor penguin --labels labels/ --min-live-accuracy 0.8

Runs the pipeline `<PIPELINE>-monitor` (ServedModelLineage -> TrafficMonitor ->
RetrainingAlert, which only reports here: the monitoring DAG emits alerts) in the home,
prints the report and exits 0 whatever the verdict (the verdict is the report's and
`latest_verdict`'s to say); 1 when the monitor could not run (nothing served, a broken
lineage, a bad window), the reason printed.
"""
from __future__ import annotations

import argparse
import os
import sys


def _pairs(values: list[str], flag: str) -> dict[str, float]:
    found = {}
    for pair in values:
        name, sep, value = pair.partition("=")
        try:
            found[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise SystemExit(f"pipewright monitor: {flag} takes FEATURE=NUMBER, got {pair!r}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipewright monitor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="the pipeline whose pushed model is served")
    parser.add_argument("--home", help="pipeline home; default $PIPEWRIGHT_HOME or .pipewright/")
    parser.add_argument("--model-name", help="served model name (default: the pipeline's name)")
    parser.add_argument("--log-dir", default="", help="request log directory (default "
                                                      "<home>/request_logs)")
    parser.add_argument("--start", default="", help="window start, ISO 8601 UTC or UNIX "
                                                    "seconds (default: the previous window's end)")
    parser.add_argument("--end", default="", help="window end (default: now)")
    parser.add_argument("--push-destination", default="",
                        help="the Pusher's push_destination, if not the home's serving dir")
    parser.add_argument("--threshold", action="append", default=[], metavar="FEATURE=VALUE",
                        help="L-infinity (categorical) / Jensen-Shannon (numeric) threshold")
    parser.add_argument("--psi-threshold", action="append", default=[], metavar="FEATURE=VALUE")
    parser.add_argument("--labels", default="",
                        help="delayed labels: a CSV/TFRecord file of request_id,label (read "
                             "whole) or a directory (the files that arrived in the window)")
    parser.add_argument("--min-live-accuracy", type=float, default=0.7,
                        help="live accuracy below this alerts (default 0.7)")
    parser.add_argument("--min-labels", type=int, default=10,
                        help="joined labels a version needs before its accuracy is judged")
    args = parser.parse_args(argv)

    from components.traffic_monitor import REPORT_FILE, monitor_pipeline
    from pipelines.local_runner import run_pipeline

    pipeline = monitor_pipeline(args.pipeline, args.model_name or args.pipeline,
                                log_dir=args.log_dir, window_start=args.start,
                                window_end=args.end,
                                thresholds=_pairs(args.threshold, "--threshold"),
                                psi_thresholds=_pairs(args.psi_threshold, "--psi-threshold"),
                                push_destination=args.push_destination,
                                labels=args.labels, min_live_accuracy=args.min_live_accuracy,
                                min_labels=args.min_labels)
    result = run_pipeline(pipeline, home=args.home, enable_cache=False)
    if not result.ok:
        print(f"pipewright monitor: {result.failure}", file=sys.stderr)
        return 1
    if "TrafficMonitor" not in result.steps:  # ServedModelLineage skipped: nothing served
        print(f"pipewright monitor: {result.steps['ServedModelLineage'].reason}",
              file=sys.stderr)
        return 1
    report = result.steps["TrafficMonitor"].outputs["report"]
    with open(os.path.join(report.uri, REPORT_FILE), encoding="utf-8") as fh:
        print(fh.read(), end="")
    alert = result.steps["RetrainingAlert"].outputs.get("alert")
    if alert is not None:
        print(f"RETRAINING: {alert.reason}")
    return 0
