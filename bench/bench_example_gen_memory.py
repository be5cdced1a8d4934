"""ExampleGen's own memory growth on inputs of hundreds of MB, next to a control that grows.

ExampleGen streams its input (one row, one tf.Example at a time), so the memory it needs
beyond its imports must not grow with the input. The process's total peak RSS cannot show
that: ~600 MiB of it are imports (TensorFlow) whatever ExampleGen does. So each run
measures ExampleGen's own growth, in a fresh Python process per scale and variant:

1. import TensorFlow and the launcher, then run ExampleGen once on 344 rows (warm-up:
   lazy imports, the MLMD store, TF's writer kernels, first-use allocations);
2. baseline = RSS now; reset the peak (VmHWM, via /proc/self/clear_refs);
3. run ExampleGen through the real launcher and MLMD on the generated input;
4. growth = peak RSS during that run (VmHWM) - baseline.

Target: growth <= 16 MiB at every scale, a flat bound. What a streaming ExampleGen needs is
one row and one example, a gzip writer per split and an MLMD transaction: a constant (under
1 MiB measured, the same at both scales). 16 MiB leaves room for allocator noise, yet keeping
as little as 12 bytes per row misses it at the large scale (1.4 million rows), and keeping
the input in any form (bytes, rows, examples) misses it many times over: the large input is
250 MB. Not a ratio of the two scales' growths (e.g. <= 1.2): it divides by a small, noisy
number (a flat ExampleGen grew 0.3 MiB at 10x and 0.7 MiB at 100x: "ratio" 2.2), so the
ratio is printed for information only, with the memory per extra row.

Control: the same ExampleGen, except that the CSV reader loads every row of a file into a
list before the first example is made and written (csv_reading.typed_rows drained), at the
same scales. It must miss the target ("missed", expected): that proves the benchmark can
fail. If it meets it at the large scale, the input is too small for the benchmark to tell,
and it exits 2.

Input: penguin rows drawn from the real ones (measurements jittered by a quarter of the
species' standard deviation, missing values kept, as bench/make_penguin_data.py does) with
a free-text `notes` column of ~150 characters (quoted: it holds commas), so that hundreds of
MB take a row count ExampleGen gets through in minutes. Generated with numpy into a
temporary directory: 250 MB in under 10 s.

The two variants of a scale run side by side, one process per core (RSS is per process).
About 4 CPU-minutes in all, 60 us per row for ExampleGen.

Exits 0 when ExampleGen meets the target and the control misses it, 1 when ExampleGen
misses it, 2 when the control meets it.

    python bench/bench_example_gen_memory.py [--scales 400 4000] [--bound-mib 16]
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
BOUND_MIB = 16
MIB = 1 << 20
VARIANTS = ("ExampleGen", "control")


# -- input ----------------------------------------------------------------------------------
_NOTE_WORDS = ("seen near the colony edge, calm", "banded", "feeding chick", "moulting",
               "observed at dusk, wind from the west", "pair bonding", "nest of pebbles",
               "returned from sea", "slight limp, otherwise healthy", "resighted",
               "photographed", "weighed twice, mean kept", "tag reading uncertain",
               "among a group of twelve", "heavy swell, landing delayed")


def _note_pool(rng, size: int = 4096) -> list[str]:
    """Distinct quoted notes of ~100-180 characters, commas included."""
    pool = []
    for i in range(size):
        words = rng.choice(len(_NOTE_WORDS), size=int(rng.integers(5, 9)), replace=False)
        note = "; ".join(_NOTE_WORDS[w] for w in words)
        pool.append(f'"obs {i:04d}: {note[:170]}"')
    return pool


def _real_penguins() -> tuple[list[str], list[dict[str, str]]]:
    """The real rows, found without importing palmerpenguins (it imports pandas: seconds)."""
    import csv
    import importlib.util

    spec = importlib.util.find_spec("palmerpenguins")
    path = Path(spec.submodule_search_locations[0]) / "data" / "penguins.csv"
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def write_rows(path: Path, rows: int, seed: int = 20240601, chunk: int = 200_000) -> None:
    """`rows` penguin rows plus notes. Numbers are drawn with numpy and formatted through
    lookup tables (a measurement with one decimal takes a few hundred distinct values), rows
    are joined in C."""
    import numpy as np

    from make_penguin_data import INTEGER_MEASUREMENTS, JITTER, MEASUREMENTS, _spreads

    header, real = _real_penguins()
    spreads = _spreads(real)
    rng = np.random.default_rng(seed)
    notes = np.array(_note_pool(rng), dtype=object)
    first, last = header.index(MEASUREMENTS[0]), header.index(MEASUREMENTS[-1])
    assert header[first:last + 1] == list(MEASUREMENTS), header
    before = np.array([",".join(r[name] for name in header[:first]) for r in real], dtype=object)
    after = np.array([",".join(r[name] for name in header[last + 1:]) for r in real],
                     dtype=object)
    base = {name: np.array([np.nan if r[name] == "NA" else float(r[name]) for r in real])
            for name in MEASUREMENTS}
    spread = {name: np.array([spreads[r["species"], name] for r in real]) * JITTER
              for name in MEASUREMENTS}
    # value -> text: integer measurements by units, the others by tenths; index 0 is NA.
    unit = {name: 1 if name in INTEGER_MEASUREMENTS else 10 for name in MEASUREMENTS}
    low = {name: int(np.floor((np.nanmin(base[name]) - 6 * spread[name].max()) * unit[name]))
           for name in MEASUREMENTS}
    high = {name: int(np.ceil((np.nanmax(base[name]) + 6 * spread[name].max()) * unit[name]))
            for name in MEASUREMENTS}
    text = {name: np.array(["NA"] + [str(k) if unit[name] == 1 else f"{k / 10:.1f}"
                                     for k in range(low[name], high[name] + 1)], dtype=object)
            for name in MEASUREMENTS}
    with open(path, "w", newline="") as fh:
        fh.write(",".join(header) + ",notes\n")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            template = rng.integers(0, len(real), n)
            columns = [before[template]]
            for name in MEASUREMENTS:
                values = base[name][template] + rng.normal(0.0, 1.0, n) * spread[name][template]
                steps = np.rint(np.nan_to_num(values, nan=low[name] / unit[name] - 1) * unit[name])
                index = np.clip(steps.astype(np.int64) - low[name] + 1, 0, len(text[name]) - 1)
                columns.append(text[name][index])
            columns += [after[template], notes[rng.integers(0, len(notes), n)]]
            fh.write("\n".join(map(",".join, zip(*(c.tolist() for c in columns)))) + "\n")


# -- one measured run (child process) -------------------------------------------------------
def _vm(field: str) -> int:
    """VmRSS / VmHWM of this process, in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status (this benchmark needs Linux)")


def child(variant: str, input_dir: str, warmup_dir: str, home: str) -> None:
    """Runs ExampleGen (or the control) once; prints its figures as JSON on the last line."""
    import gc

    import tensorflow  # noqa: F401 - the bulk of the imports, before any baseline

    import components.csv_reading as csv_reading
    from components.example_gen import ExampleGen
    from pipelines.local_runner import run_pipeline
    from pipelines.pipeline import Pipeline

    if variant == "control":
        streaming = csv_reading.typed_rows

        def every_row_first(path, layout):
            return iter(list(streaming(path, layout)))

        # The CSV reader (example_sources) looks typed_rows up on the module per file.
        csv_reading.typed_rows = every_row_first

    def run(name: str, input_base: str):
        result = run_pipeline(Pipeline(name, [ExampleGen(input_base=input_base)]), home=home,
                              enable_cache=False, echo=lambda line: None)
        if not result.ok:
            raise SystemExit(result.failure)
        return result.steps["ExampleGen"].outputs["examples"]

    after_imports = _vm("VmRSS")
    run("warmup", warmup_dir)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS
    baseline = _vm("VmHWM")
    started, cpu = time.monotonic(), time.process_time()
    examples = run("bench_memory", input_dir)
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    peak = _vm("VmHWM")
    output_bytes = sum(f.stat().st_size for f in Path(examples.uri).rglob("*.gz"))
    print(json.dumps({"after_imports": after_imports, "baseline": baseline, "peak": peak,
                      "growth": peak - baseline, "seconds": seconds, "cpu_seconds": cpu,
                      "output_bytes": output_bytes}))


def measure(input_dir: Path, warmup_dir: Path, workdir: Path) -> dict[str, dict]:
    """ExampleGen and the control on one input, side by side: a process each, one per core
    (peak RSS is per process, so neither's figures include the other's)."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    children = {}
    for variant in VARIANTS:
        home = Path(tempfile.mkdtemp(prefix=f"home-{variant}-", dir=workdir))
        # Output to files, not pipes: a child never blocks on a full pipe while we wait.
        stdout, stderr = open(home / "stdout", "w+"), open(home / "stderr", "w+")
        process = subprocess.Popen([sys.executable, __file__, "--child", variant,
                                    str(input_dir), str(warmup_dir), str(home)],
                                   stdout=stdout, stderr=stderr, text=True, env=env)
        children[variant] = process, stdout, stderr
    figures = {}
    try:
        for variant, (process, stdout, stderr) in children.items():
            process.wait()
            stdout.seek(0)
            stderr.seek(0)
            if process.returncode != 0:
                raise SystemExit(f"{variant} on {input_dir} failed:\n{stderr.read()[-3000:]}")
            figures[variant] = json.loads(stdout.read().strip().splitlines()[-1])
    finally:
        for process, stdout, stderr in children.values():
            if process.poll() is None:  # the other one, when one failed
                process.kill()
                process.wait()
            stdout.close()
            stderr.close()
    return figures


# -- report ---------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs=2, default=[400, 4000],
                        metavar=("SMALL", "LARGE"), help="multiples of the 344 penguin rows")
    parser.add_argument("--bound-mib", type=float, default=BOUND_MIB,
                        help="target: ExampleGen's own growth at every scale, in MiB")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    bound = args.bound_mib * MIB
    penguins = len(_real_penguins()[1])
    total = time.monotonic()
    generating = 0.0
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_example_gen_") as tmp:
        workdir = Path(tmp)
        warmup_dir = workdir / "warmup"
        warmup_dir.mkdir()
        write_rows(warmup_dir / "penguins.csv", penguins)
        for scale in args.scales:
            input_dir = workdir / f"input-{scale}x"
            input_dir.mkdir()
            started = time.monotonic()
            write_rows(input_dir / "penguins.csv", scale * penguins)
            generating += time.monotonic() - started
            input_bytes = (input_dir / "penguins.csv").stat().st_size
            for variant, figures in measure(input_dir, warmup_dir, workdir).items():
                results.append({"variant": variant, "scale": scale, "rows": scale * penguins,
                                "input_bytes": input_bytes, **figures})
            (input_dir / "penguins.csv").unlink()

    print("RSS in MiB; baseline = after imports and a warm-up run; growth = peak - baseline")
    print(f"{'run':>10} {'scale':>6} {'rows':>9} {'input MiB':>10} {'wall s':>7} {'cpu s':>6} "
          f"{'after imports':>14} {'baseline':>9} {'peak':>7} {'growth':>7}  target")
    for r in results:
        met = r["growth"] <= bound
        verdict = "met" if met else "missed"
        if r["variant"] == "control":
            verdict += (" (expected: it loads every row first)" if not met
                        else " (the control should miss: input too small to tell)")
        print(f"{r['variant']:>10} {r['scale']:>5}x {r['rows']:>9} "
              f"{r['input_bytes'] / MIB:>10.1f} {r['seconds']:>7.1f} {r['cpu_seconds']:>6.1f} "
              f"{r['after_imports'] / MIB:>14.1f} {r['baseline'] / MIB:>9.1f} "
              f"{r['peak'] / MIB:>7.1f} {r['growth'] / MIB:>7.1f}  growth <= "
              f"{args.bound_mib:g} MiB: {verdict}")
    for variant in VARIANTS:
        small, large = (r for r in results if r["variant"] == variant)
        # Below 0.1 MiB a growth is a few pages: a ratio to it means nothing.
        ratio = (f"{large['growth'] / small['growth']:.2f}" if small["growth"] >= MIB / 10
                 else "n/a")
        per_row = round((large["growth"] - small["growth"]) / (large["rows"] - small["rows"]))
        print(f"{variant}: growth {large['scale']}x / {small['scale']}x = {ratio} "
              f"(information, not a target), {per_row:,} bytes per extra row")
    print(f"total {time.monotonic() - total:.0f} s, of which generating the input "
          f"{generating:.1f} s; load average now {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")

    largest = max(args.scales)
    real_met = all(r["growth"] <= bound for r in results if r["variant"] == "ExampleGen")
    control_met = all(r["growth"] <= bound for r in results
                      if r["variant"] == "control" and r["scale"] == largest)
    if control_met:
        print(f"the control met the target at {largest}x: at this scale the benchmark "
              f"cannot fail; use larger --scales")
        return 2
    return 0 if real_met else 1


if __name__ == "__main__":
    sys.exit(main())
