"""Profiles one step of the data-half benchmark's pipeline on its upstream outputs.

Runs the data half (bench/bench_data_half.py's pipeline) up to the step's inputs once in
HOME (skipped when HOME already holds them), then the step alone (`only=[step]`, its inputs
the newest upstream outputs) in this process under cProfile (the runner's step thread),
sampling the process tree's RSS every 0.1 s. For Transform, earlier analyzer caches in HOME
are removed first, so the analysis runs cold as in the benchmark. Prints the step's seconds, peak RSS, the RSS curve (one value per tenth
of the run) and the functions with the most cumulative time; writes the profile to
bench/out/profile-<step>-<rows>.prof (read it with `python -m pstats`).

    python bench/profile_data_step.py Transform --rows 337000 [--home DIR] [--beam-arg ...]
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import threading
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from bench_data_half import (GIB, MODULE_FILE, OUT, STEPS, TreeSampler,  # noqa: E402
                             data_half_pipeline)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--rows", type=int, default=337_000)
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--beam-arg", action="append", default=[])
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import tensorflow  # noqa: F401

    from make_scale_data import generate
    from pipelines.local_runner import run_pipeline

    data = generate(OUT / f"scale-data-{args.rows}", args.rows)["single"]
    home = args.home or OUT / f"profile-home-{args.rows}"
    pipeline = data_half_pipeline(data, str(MODULE_FILE), args.beam_arg)
    upstream = STEPS[:STEPS.index(args.step)]
    if upstream:
        prepared = run_pipeline(pipeline, home=str(home), until=[upstream[-1]],
                                echo=lambda line: None)
        if not prepared.ok:
            raise SystemExit(prepared.failure)

    if args.step == "Transform":  # a cold analysis, as in the benchmark's fresh home
        for cache in Path(home).glob("artifacts/*/Transform/transform_graph/*/analyzer_cache"):
            shutil.rmtree(cache)
    sampler = TreeSampler()
    sampler.start()
    profile = cProfile.Profile()

    def profile_step_thread(*_):  # the runner executes a step in a thread of its pool
        sys.setprofile(None)
        profile.enable()

    threading.setprofile(profile_step_thread)
    started = sampler.sample()[0]
    result = run_pipeline(pipeline, home=str(home), only=[args.step], enable_cache=False,
                          echo=lambda line: print(line, file=sys.stderr))
    threading.setprofile(None)
    ended = sampler.sample()[0]
    sampler.stop()
    path = OUT / f"profile-{args.step}-{args.rows}.prof"
    profile.dump_stats(path)
    if not result.ok:
        raise SystemExit(result.failure)
    window = sampler.window(started, ended)
    inside = [s for s in sampler.samples if started <= s[0] <= ended]
    curve = [inside[int(i * (len(inside) - 1) / 9)][1] / GIB for i in range(10)]
    print(f"{args.step} on {args.rows:,} rows: {window['seconds']:.1f} s, peak RSS "
          f"{window['peak_rss'] / GIB:.2f} GiB (before {window['rss_before'] / GIB:.2f}), "
          f"cpu/wall {window['cpu_seconds'] / window['seconds']:.2f}, load "
          f"{os.getloadavg()[0]:.1f}")
    print("RSS GiB by tenth of the run: " + " ".join(f"{v:.2f}" for v in curve))
    pstats.Stats(str(path)).sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
