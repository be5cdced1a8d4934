"""ExampleGen alone on the data-half benchmark's CSV: seconds, rows/s and memory growth.

Runs ExampleGen through the real launcher and MLMD (bench/make_scale_data.py's table of
`--rows` rows, its single-span file or its daily spans), once in this process after a
warm-up run on 3000 rows (imports, TF's writer kernels, MLMD), with the CSV reader the
step chooses (vectorized for these files) or, with `--reader strict`, the strict Python
reader for every file. Prints wall and CPU seconds, rows per second, the peak RSS and the
growth over the warm-up's (VmHWM reset after the warm-up, as bench_example_gen_memory does),
and the step's notes and examples per split.

    python bench/time_example_gen.py --rows 337000 [--layout single|daily]
                                     [--reader auto|strict] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
MIB = 1 << 20


def _vm(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (this benchmark needs Linux)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=337_000)
    parser.add_argument("--layout", choices=("single", "daily"), default="single")
    parser.add_argument("--reader", choices=("auto", "strict"), default="auto")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the pipeline home here (to compare outputs)")
    args = parser.parse_args()
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import gc

    import tensorflow  # noqa: F401 - before any baseline

    import components.example_sources as example_sources
    from components.example_gen import ExampleGen
    from make_scale_data import generate
    from pipelines.local_runner import run_pipeline
    from pipelines.pipeline import Pipeline

    out = Path(__file__).resolve().parent / "out"
    data = generate(out / f"scale-data-{args.rows}", args.rows)[args.layout]
    warmup = generate(out / "scale-data-3000", 3000)["single"]
    example_sources.VECTORIZED_CSV = args.reader == "auto"
    home = str(args.keep) if args.keep else tempfile.mkdtemp(prefix="time_example_gen_")

    def run(name: str, source: dict):
        result = run_pipeline(Pipeline(name, [ExampleGen(**source)]), home=home,
                              enable_cache=False, echo=lambda line: None)
        if not result.ok:
            raise SystemExit(result.failure)
        return result.steps["ExampleGen"]

    try:
        run("warmup", warmup)
        gc.collect()
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # VmHWM := current RSS
        baseline = _vm("VmHWM")
        started, cpu = time.monotonic(), time.process_time()
        step = run("timed", data)
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu
        peak = _vm("VmHWM")
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    figures = {"rows": args.rows, "layout": args.layout, "reader": args.reader,
               "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
               "rows_per_s": round(args.rows / seconds), "peak_mib": round(peak / MIB, 1),
               "growth_mib": round((peak - baseline) / MIB, 1), "reason": step.reason}
    print(f"ExampleGen, {args.rows:,} rows ({args.layout}, reader {args.reader}): "
          f"{seconds:.1f} s wall, {cpu:.1f} s CPU, {args.rows / seconds:,.0f} rows/s, peak RSS "
          f"{peak / MIB:.0f} MiB, growth {(peak - baseline) / MIB:.1f} MiB; {step.reason}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
