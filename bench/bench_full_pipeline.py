"""Full penguin pipeline: cold run in a fresh home (Tuner off), then the no-change re-run,
each as `pipewright run` in a fresh process, timed by wall clock.

Prints both times, their ratio, the per-step times of the cold run and the peak memory
(resident set of the run process). Targets on a 2-core machine: cold under 60 s, no-change
re-run under 3 s.

    .venv/bin/python bench/bench_full_pipeline.py [--keep]
"""
from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPEWRIGHT = os.path.join(os.path.dirname(sys.executable), "pipewright")
COLD_TARGET_S, RERUN_TARGET_S = 60.0, 3.0
STEP_LINE = re.compile(r"^\[\s*([\d.]+)s\]\s+(\S+)\s+(\w+)")


def run(home: str) -> tuple[float, list[tuple[str, str, float]], str]:
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PIPEWRIGHT_SERVING_DIR", None)
    env.pop("PIPEWRIGHT_METADATA", None)
    started = time.monotonic()
    process = subprocess.run([PIPEWRIGHT, "run", "penguin", "--home", home], cwd=REPO, env=env,
                             capture_output=True, text=True)
    wall = time.monotonic() - started
    if process.returncode != 0:
        sys.exit(f"pipewright run failed ({process.returncode}):\n{process.stderr[-3000:]}")
    steps = [(m.group(2), m.group(3), float(m.group(1)))
             for m in map(STEP_LINE.match, process.stderr.splitlines()) if m]
    return wall, steps, process.stderr


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: list[str]) -> int:
    home = tempfile.mkdtemp(prefix="pipewright-bench-")
    try:
        cold_s, cold_steps, _ = run(home)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        rerun_s, rerun_steps, _ = run(home)
        executed_again = [name for name, status, _ in rerun_steps if status == "executed"]
    finally:
        if "--keep" in argv:
            print(f"home kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)

    print("full penguin pipeline (Tuner off), `pipewright run` wall time, fresh processes")
    print(f"  cold run, fresh home     {cold_s:7.1f} s   (target < {COLD_TARGET_S:.0f} s: "
          f"{verdict(cold_s < COLD_TARGET_S)})")
    print(f"  no-change re-run         {rerun_s:7.2f} s   (target < {RERUN_TARGET_S:.0f} s: "
          f"{verdict(rerun_s < RERUN_TARGET_S)})")
    print(f"  ratio re-run / cold      {rerun_s / cold_s:7.3f}   (the cold run is the reference)")
    print(f"  steps executed on re-run {len(executed_again)}   (target 0: "
          f"{verdict(not executed_again)}) {executed_again or ''}")
    print(f"  peak memory (max RSS)    {peak_mb:7.0f} MB")
    print("  cold run per step (s):  " + ", ".join(
        f"{name} {seconds:.1f}" for name, status, seconds in cold_steps))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
