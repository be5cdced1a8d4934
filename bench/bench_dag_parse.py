"""How long Airflow takes to parse the DAG file, per pipeline: the DAG processor parses
`dags/` in a fresh process again and again, so each parse pays for importing the
pipelines. Prints each figure with its target and "met" or "MISSED" (targets: under 1 s per
pipeline, and no TensorFlow, Beam, TFDV or MLMD imported while parsing).

    .venv/bin/python bench/bench_dag_parse.py [ROUNDS]
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pipelines.airflow_dag_check import DEFAULT_FOLDER, report_from_output  # noqa: E402


def parse_once(env: dict[str, str]) -> dict:
    command = [sys.executable, "-m", "pipelines.airflow_dag_check", str(DEFAULT_FOLDER)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=str(REPO_ROOT), env=env,
                          timeout=300)
    if done.returncode:
        raise SystemExit(f"parsing {DEFAULT_FOLDER} failed:\n{done.stderr[-3000:]}")
    return report_from_output(done.stdout)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory(prefix="bench-dag-parse-") as airflow_home:
        env = dict(os.environ, AIRFLOW_HOME=airflow_home, AIRFLOW__CORE__LOAD_EXAMPLES="False")
        reports = [parse_once(env) for _ in range(rounds)]
    first = reports[0]
    if first["import_errors"]:
        raise SystemExit(f"import errors: {first['import_errors']}")
    dag_count = len(first["dags"])
    task_count = sum(len(d["tasks"]) for d in first["dags"].values())
    parse = [r["parse_s"] for r in reports]
    airflow_import = [r["airflow_import_s"] for r in reports]
    print(f"DAG parse benchmark: {DEFAULT_FOLDER}, {rounds} fresh processes")
    print(f"  DAGs: {dag_count} ({', '.join(first['dags'])}), tasks: {task_count}")
    print(f"  parse of the DAG folder   median {statistics.median(parse) * 1000:7.1f} ms"
          f"   min {min(parse) * 1000:7.1f} ms   max {max(parse) * 1000:7.1f} ms")
    per_pipeline = statistics.median(parse) / max(dag_count, 1)
    print(f"  per pipeline              median {per_pipeline * 1000:7.1f} ms   (target < 1000 ms: "
          f"{'met' if per_pipeline < 1.0 else 'MISSED'})")
    for name, stat in first["files"].items():
        per_file = [r["files"][name]["seconds"] for r in reports]
        print(f"  file {name:<20} median {statistics.median(per_file) * 1000:7.1f} ms")
    print(f"  (importing Airflow itself, paid once per parsing process: median "
          f"{statistics.median(airflow_import):.2f} s)")
    heavy = sorted({m for r in reports for m in r["heavy_modules_loaded"]})
    print(f"  heavy ML modules imported by parsing: {', '.join(heavy) if heavy else 'none'}   "
          f"(target none: {'MISSED' if heavy else 'met'})")


if __name__ == "__main__":
    main()
