"""ExampleGen's peak memory at 10x and 100x the penguin data: it streams, so the peak
should not grow with the input (target: the 100x peak within 1.2x of the 10x peak).

Each scale runs in a fresh Python process (the real launcher and MLMD store, a temporary
home), which reports its own peak RSS (getrusage ru_maxrss) and its RSS after importing
TensorFlow, the baseline that dominates. Exits 1 if the target is missed.

    python bench/bench_example_gen_memory.py [--scales 10 100]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]
TARGET_RATIO = 1.2


def child(input_dir: str, home: str) -> None:
    """Runs ExampleGen once and prints its memory figures as JSON on the last line."""
    import resource

    import psutil
    import tensorflow  # noqa: F401 - imported first to measure the baseline it sets

    from components.example_gen import ExampleGen
    from pipelines.local_runner import run_pipeline
    from pipelines.pipeline import Pipeline

    baseline = psutil.Process().memory_info().rss
    started = time.monotonic()
    result = run_pipeline(Pipeline("bench_memory", [ExampleGen(input_base=input_dir)]),
                          home=home, enable_cache=False, echo=lambda line: None)
    if not result.ok:
        raise SystemExit(result.failure)
    examples = result.steps["ExampleGen"].outputs["examples"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    output_bytes = sum(f.stat().st_size for f in Path(examples.uri).rglob("*.gz"))
    print(json.dumps({"peak": peak, "baseline": baseline, "seconds": time.monotonic() - started,
                      "output_bytes": output_bytes}))


def measure(scale: int, workdir: Path) -> dict:
    from make_penguin_data import write_penguin_csv

    input_dir = workdir / f"input-{scale}x"
    input_dir.mkdir()
    csv_path = input_dir / "penguins.csv"
    rows = write_penguin_csv(csv_path, scale)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, __file__, "--child", str(input_dir),
                           str(workdir / f"home-{scale}x")],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"ExampleGen at {scale}x failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {"scale": scale, "rows": rows, "input_bytes": csv_path.stat().st_size, **figures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs=2, default=[10, 100], metavar=("SMALL", "LARGE"))
    parser.add_argument("--child", nargs=2, metavar=("INPUT_DIR", "HOME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    mib = 1 << 20
    with tempfile.TemporaryDirectory(prefix="bench_example_gen_") as tmp:
        results = [measure(scale, Path(tmp)) for scale in args.scales]
    print(f"{'scale':>6} {'rows':>9} {'input MiB':>10} {'output MiB':>11} {'seconds':>8} "
          f"{'baseline MiB':>13} {'peak RSS MiB':>13}")
    for r in results:
        print(f"{r['scale']:>5}x {r['rows']:>9} {r['input_bytes'] / mib:>10.1f} "
              f"{r['output_bytes'] / mib:>11.1f} {r['seconds']:>8.1f} "
              f"{r['baseline'] / mib:>13.1f} {r['peak'] / mib:>13.1f}")
    small, large = results
    ratio = large["peak"] / small["peak"]
    verdict = "within" if ratio <= TARGET_RATIO else "OVER"
    print(f"peak RSS ratio {large['scale']}x / {small['scale']}x = {ratio:.3f} "
          f"({verdict} the {TARGET_RATIO}x target; rows grew {large['rows'] / small['rows']:.0f}x)")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
