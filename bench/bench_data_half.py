"""The data half at scale: ExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator ->
Transform on millions of generated rows, in-process Beam and multi-process Beam.

The pipeline is what a new user writes (the penguin pipeline's shape, an inferred schema,
bench/scale_preprocessing.py as the Transform module), run by the normal local runner
(pipelines.local_runner.run_pipeline) in a fresh Python process per scale and mode:

  in_process     the pipeline's default Beam runner (FnApiRunner, one worker, in memory);
                 the REFERENCE the multi-process run is compared with
  multi_process  beam_args ["--direct_running_mode=multi_processing",
                 "--direct_num_workers=2"]
  sketch_stats   in-process, StatisticsGen with stats_options
                 {"experimental_use_sketch_based_topk_uniques": True} (TFDV's sketches for
                 string features' top values and unique counts instead of exact counts)

The input is bench/make_scale_data.py's table (19 columns; 3.37 million rows = 100x, 337k =
10x), in one span by default or, with --layout daily, in daily spans read as one artifact
(rolling_num_spans).

Per step it prints seconds, rows/s, peak RSS of the whole process tree (the run process and
every Beam worker it spawned: psutil, sampled every 0.1 s) and CPU use (cpu-seconds of the
tree / wall seconds: 2.0 = both cores busy all the time). ExampleGen's own growth is measured
as bench/bench_example_gen_memory.py does it: after the imports and a warm-up ExampleGen run
on 1,000 rows, growth = the step's peak tree RSS - the RSS just before the run. A plain-
library reference for StatisticsGen, measured in the in-process child after the run (at the
smallest scale unless --reference-rows says otherwise):
tfdv.generate_statistics_from_tfrecord on the same examples (every split), same runner.

Targets (issue 11, 2-core machines, at the largest scale given, normally 3.37M rows):
  data half (sum of the five steps) <= 250 s
  both cores busy: tree cpu-seconds / wall over the data half >= 1.6 (80 % of 2 cores)
  Transform peak tree RSS <= 1.5 GiB, and growing < 20 % from the smallest scale to the
    largest (it must stream)
  ExampleGen's own growth <= 50 MB
Each figure is printed with its target and "met" or "MISSED"; raw results (JSON) and the
printed table are written to bench/out/data_half-<time>.{json,txt}.

    python bench/bench_data_half.py [--rows 337000 3370000] [--modes in_process multi_process]
                                    [--layout single|daily] [--reference-rows N ...]
    python bench/bench_data_half.py --rows 34000 --modes in_process   # a quick check, ~2 min
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path[:0] = [str(REPO), str(BENCH)]
OUT = BENCH / "out"
MODULE_FILE = BENCH / "scale_preprocessing.py"
STEPS = ("ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform")
MODES = {"in_process": [],
         "multi_process": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
         "sketch_stats": []}
MODE_STATS_OPTIONS = {"sketch_stats": {"experimental_use_sketch_based_topk_uniques": True}}
REFERENCE_MODE = "in_process"
GIB, MIB, MB = 1 << 30, 1 << 20, 1_000_000
DATA_HALF_TARGET_S = 250.0
BUSY_TARGET = 1.6  # cores
TRANSFORM_PEAK_TARGET = 1.5 * GIB
TRANSFORM_GROWTH_TARGET = 0.20
EXAMPLE_GEN_GROWTH_TARGET = 50 * MB
WARMUP_ROWS = 1_000
SAMPLE_S = 0.1


# -- the measured run (child process) --------------------------------------------------------
class TreeSampler:
    """Samples RSS and cumulative CPU seconds of this process and all its descendants."""

    def __init__(self):
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self._known: dict[int, object] = {}
        self.samples: list[tuple[float, int, float]] = []  # (monotonic, rss, cpu seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def sample(self) -> tuple[float, int, float]:
        psutil = self._psutil
        times = self._me.cpu_times()
        # Reaped children's CPU moves into children_user/system: counted once either way.
        cpu = times.user + times.system + times.children_user + times.children_system
        rss = self._me.memory_info().rss
        try:
            children = self._me.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            try:
                child = self._known.setdefault(child.pid, child)
                rss += child.memory_info().rss
                t = child.cpu_times()
                cpu += t.user + t.system
            except psutil.Error:
                pass
        sample = (time.monotonic(), rss, cpu)
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, start: float, end: float) -> dict:
        inside = [s for s in self.samples if start <= s[0] <= end]
        before = max((s for s in self.samples if s[0] <= start), key=lambda s: s[0])
        after = min((s for s in self.samples if s[0] >= end), key=lambda s: s[0])
        return {"seconds": end - start,
                "peak_rss": max(s[1] for s in inside + [before, after]),
                "rss_before": before[1],
                "cpu_seconds": after[2] - before[2]}


def data_half_pipeline(source: dict, module_file: str, beam_args: list[str],
                       stats_options: dict | None = None):
    """ExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator -> Transform, as a new user
    writes it; `source`: make_scale_data's {"input_base", "input_pattern"[,
    "rolling_num_spans"]}."""
    from components.base import ExternalPath
    from components.example_gen import ExampleGen
    from components.example_validator import ExampleValidator
    from components.schema_gen import SchemaGen
    from components.statistics_gen import StatisticsGen
    from components.transform import Transform
    from pipelines.pipeline import Pipeline

    example_gen = ExampleGen(input_base=source["input_base"],
                             input_pattern=source["input_pattern"],
                             rolling_num_spans=source.get("rolling_num_spans"))
    statistics_gen = StatisticsGen(examples=example_gen.outputs.examples,
                                   stats_options=stats_options or {})
    schema_gen = SchemaGen(statistics=statistics_gen.outputs.statistics)
    example_validator = ExampleValidator(statistics=statistics_gen.outputs.statistics,
                                         schema=schema_gen.outputs.schema)
    transform = Transform(examples=example_gen.outputs.examples,
                          schema=schema_gen.outputs.schema,
                          module_file=ExternalPath(module_file)).after(example_validator)
    return Pipeline("data_half", [example_gen, statistics_gen, schema_gen, example_validator,
                                  transform], beam_args=beam_args)


def child(spec: dict) -> dict:
    """Runs the data half once as spec says; returns its figures."""
    import gc

    import tensorflow  # noqa: F401 - the bulk of the imports, before any baseline

    from components.example_gen import ExampleGen
    from pipelines.local_runner import run_pipeline
    from pipelines.pipeline import Pipeline

    home = spec["home"]
    sampler = TreeSampler()
    sampler.start()
    warm = run_pipeline(Pipeline("warmup", [ExampleGen(input_base=spec["warmup_dir"])]),
                        home=home, enable_cache=False, echo=lambda line: None)
    if not warm.ok:
        raise SystemExit(f"warm-up failed: {warm.failure}")
    gc.collect()

    pipeline = data_half_pipeline(spec["input"], spec["module_file"], spec["beam_args"],
                                  spec.get("stats_options"))

    marks: list[tuple[float, str]] = []

    def echo(line: str) -> None:
        sampler.sample()
        marks.append((time.monotonic(), line))
        print(line, file=sys.stderr, flush=True)

    started = sampler.sample()[0]
    result = run_pipeline(pipeline, home=home, enable_cache=False, echo=echo)
    sampler.sample()
    if not result.ok:
        raise SystemExit(f"run failed: {result.failure}")
    steps, previous = {}, started
    for step in STEPS:
        # Steps form a chain: each starts when the one before it is reported done.
        end = next(t for t, line in marks if f"] {step} " in line)
        steps[step] = sampler.window(previous, end)
        steps[step]["runner_seconds"] = result.steps[step].duration_s
        previous = end
    examples = result.steps["ExampleGen"].outputs["examples"]
    figures = {"steps": steps, "run_seconds": result.duration_s,
               "examples_uri": examples.uri}

    if spec["reference"]:
        import logging

        import tensorflow_data_validation as tfdv

        from components.beam_options import pipeline_options

        pattern = os.path.join(examples.uri, "Split-*", "*.gz")
        out = os.path.join(home, "reference_stats.tfrecord")
        start = sampler.sample()[0]
        tfdv.generate_statistics_from_tfrecord(
            pattern, output_path=out,
            pipeline_options=pipeline_options(spec["beam_args"], logging.getLogger("ref")))
        figures["reference_statistics"] = sampler.window(start, sampler.sample()[0])
    sampler.stop()
    return figures


# -- the parent: data, children, report -------------------------------------------------------
def run_child(spec: dict, workdir: Path) -> dict:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}
    spec_path = workdir / f"spec-{spec['rows']}-{spec['mode']}.json"
    spec_path.write_text(json.dumps(spec))
    log_path = OUT / f"data_half-{spec['stamp']}-{spec['rows']}-{spec['mode']}.log"
    load_before = os.getloadavg()
    with open(log_path, "w") as log:
        process = subprocess.run([sys.executable, __file__, "--child", str(spec_path)],
                                 stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    if process.returncode != 0:
        raise SystemExit(f"{spec['mode']} at {spec['rows']} rows failed ({process.returncode});"
                         f" log: {log_path}\n" + log_path.read_text()[-3000:])
    figures = json.loads(process.stdout.strip().splitlines()[-1])
    return {**figures, "load_before": load_before, "load_after": os.getloadavg(),
            "log": str(log_path)}


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(results: list[dict], rows: list[int], modes: list[str]) -> list[str]:
    lines = []
    say = lines.append
    say(f"machine: {os.cpu_count()} cores, {_ram_gib():.1f} GiB RAM; load averages "
        f"(1 min) before/after each run shown per run; RSS = whole process tree")
    header = (f"{'rows':>9} {'mode':>13} {'step':>16} {'s':>7} {'rows/s':>9} "
              f"{'peak GiB':>8} {'cpu/wall':>8} {'x ref':>6}")
    say(header)
    by = {(r["rows"], r["mode"]): r for r in results}
    for r in results:
        ref = by.get((r["rows"], REFERENCE_MODE))
        for step in STEPS:
            s = r["steps"][step]
            ratio = (f"{s['seconds'] / ref['steps'][step]['seconds']:.2f}"
                     if ref is not None and r["mode"] != REFERENCE_MODE else "")
            say(f"{r['rows']:>9} {r['mode']:>13} {step:>16} {s['seconds']:>7.1f} "
                f"{r['rows'] / s['seconds']:>9,.0f} {s['peak_rss'] / GIB:>8.2f} "
                f"{s['cpu_seconds'] / s['seconds']:>8.2f} {ratio:>6}")
        half = _data_half(r)
        ratio = (f"{half['seconds'] / _data_half(ref)['seconds']:.2f}"
                 if ref is not None and r["mode"] != REFERENCE_MODE else "")
        say(f"{r['rows']:>9} {r['mode']:>13} {'data half':>16} {half['seconds']:>7.1f} "
            f"{r['rows'] / half['seconds']:>9,.0f} {half['peak_rss'] / GIB:>8.2f} "
            f"{half['cpu_seconds'] / half['seconds']:>8.2f} {ratio:>6}   load "
            f"{r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f}")
        if "reference_statistics" in r:
            ref_stats = r["reference_statistics"]
            say(f"{r['rows']:>9} {'reference':>13} {'tfdv stats':>16} "
                f"{ref_stats['seconds']:>7.1f} {r['rows'] / ref_stats['seconds']:>9,.0f} "
                f"{ref_stats['peak_rss'] / GIB:>8.2f} "
                f"{ref_stats['cpu_seconds'] / ref_stats['seconds']:>8.2f}   StatisticsGen / "
                f"tfdv.generate_statistics_from_tfrecord = "
                f"{r['steps']['StatisticsGen']['seconds'] / ref_stats['seconds']:.2f}")

    say("")
    say("targets (issue 11):")
    large, small = max(rows), min(rows)
    for mode in modes:
        if (large, mode) not in by:
            say(f"  {mode:>13} at {large:,} rows: not measured")
            continue
        r = by[(large, mode)]
        half = _data_half(r)
        say(f"  {mode:>13} at {large:,} rows: data half {half['seconds']:.0f} s "
            f"(target <= {DATA_HALF_TARGET_S:.0f} s): "
            f"{verdict(half['seconds'] <= DATA_HALF_TARGET_S)}")
        busy = half["cpu_seconds"] / half["seconds"]
        say(f"  {mode:>13} at {large:,} rows: cores busy {busy:.2f} "
            f"(target >= {BUSY_TARGET}): {verdict(busy >= BUSY_TARGET)}")
        measured = [n for n in sorted(rows) if (n, mode) in by]
        for n in measured:
            step = by[(n, mode)]["steps"]["Transform"]
            t = step["peak_rss"]
            # In-process, the run process keeps what earlier steps allocated (StatisticsGen's
            # arenas): the growth over the RSS at Transform's start is Transform's own share.
            say(f"  {mode:>13} at {n:,} rows: Transform peak {t / GIB:.2f} GiB "
                f"(target <= 1.5 GiB): {verdict(t <= TRANSFORM_PEAK_TARGET)}; "
                f"RSS at its start {step['rss_before'] / GIB:.2f} GiB, own growth "
                f"{(t - step['rss_before']) / GIB:.2f} GiB (information)")
        if large != small and (small, mode) in by:
            a = by[(small, mode)]["steps"]["Transform"]["peak_rss"]
            b = by[(large, mode)]["steps"]["Transform"]["peak_rss"]
            growth = b / a - 1
            say(f"  {mode:>13}: Transform peak {small:,} -> {large:,} rows: "
                f"{a / GIB:.2f} -> {b / GIB:.2f} GiB, {growth:+.0%} (target < "
                f"{TRANSFORM_GROWTH_TARGET:.0%}): {verdict(growth < TRANSFORM_GROWTH_TARGET)}")
        for n in measured:
            s = by[(n, mode)]["steps"]["ExampleGen"]
            growth = s["peak_rss"] - s["rss_before"]
            say(f"  {mode:>13} at {n:,} rows: ExampleGen own growth {growth / MB:.1f} MB "
                f"(target <= 50 MB): {verdict(growth <= EXAMPLE_GEN_GROWTH_TARGET)}")
    return lines


def _data_half(r: dict) -> dict:
    steps = [r["steps"][s] for s in STEPS]
    return {"seconds": sum(s["seconds"] for s in steps),
            "cpu_seconds": sum(s["cpu_seconds"] for s in steps),
            "peak_rss": max(s["peak_rss"] for s in steps)}


def _ram_gib() -> float:
    with open("/proc/meminfo") as fh:
        return int(fh.readline().split()[1]) * 1024 / GIB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[337_000, 3_370_000])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--layout", choices=("single", "daily"), default="single",
                        help="one span, or daily spans read as one artifact")
    parser.add_argument("--reference-rows", type=int, nargs="*", default=None,
                        help="scales to run the tfdv.generate_statistics_from_tfrecord "
                             "reference at (default: the smallest; none: no reference)")
    parser.add_argument("--keep-homes", action="store_true")
    parser.add_argument("--report", type=Path, nargs="+", help="print the report of saved "
                        "bench/out/data_half-<time>.json files together (runs stopped "
                        "half-way, scales run separately)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(Path(args.child).read_text()))))
        return 0

    if args.report:
        saved = [r for path in args.report for r in json.loads(path.read_text())]
        print("\n".join(report(saved, sorted({r["rows"] for r in saved}),
                               list(dict.fromkeys(r["mode"] for r in saved)))))
        return 0

    from make_scale_data import generate

    OUT.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    workdir = Path(tempfile.mkdtemp(prefix="bench_data_half_", dir=OUT))
    warmup = generate(workdir / "warmup", WARMUP_ROWS, days=1)
    reference_rows = [min(args.rows)] if args.reference_rows is None else args.reference_rows
    results = []
    for n in sorted(args.rows):
        data = generate(OUT / f"scale-data-{n}", n)
        for mode in args.modes:
            spec = {"rows": n, "mode": mode, "stamp": stamp, "beam_args": MODES[mode],
                    "stats_options": MODE_STATS_OPTIONS.get(mode, {}),
                    "input": data[args.layout], "warmup_dir": warmup["single"]["input_base"],
                    "home": tempfile.mkdtemp(prefix=f"home-{n}-{mode}-", dir=workdir),
                    "module_file": str(MODULE_FILE),
                    "reference": n in reference_rows and mode == REFERENCE_MODE}
            print(f"running {mode} on {n:,} rows ({data['bytes'] / MB:.0f} MB, "
                  f"{args.layout}) ...", file=sys.stderr, flush=True)
            figures = run_child(spec, workdir)
            results.append({"rows": n, "mode": mode, "layout": args.layout,
                            "input_bytes": data["bytes"], **figures})
            # Written after every run: a long benchmark stopped half-way keeps what it measured.
            (OUT / f"data_half-{stamp}.json").write_text(json.dumps(results, indent=1))
            if not args.keep_homes:
                import shutil
                shutil.rmtree(spec["home"], ignore_errors=True)
    lines = report(results, args.rows, args.modes)
    print("\n".join(lines))
    (OUT / f"data_half-{stamp}.json").write_text(json.dumps(results, indent=1))
    (OUT / f"data_half-{stamp}.txt").write_text("\n".join(lines) + "\n")
    print(f"raw results: {OUT / f'data_half-{stamp}.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
