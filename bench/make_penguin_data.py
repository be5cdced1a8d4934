"""Penguin-like CSV data at any scale, drawn from the real Palmer penguins data.

Each generated row starts from a real row (so species, island, sex and year keep their
joint distribution, and a missing value stays missing in the same proportion) and jitters
the four measurements by a fraction of that species' standard deviation. A fixed seed
makes the output identical on every run.

    python bench/make_penguin_data.py OUT.csv --scale 100
"""
from __future__ import annotations

import argparse
import csv
import importlib.resources
import random
import statistics
from pathlib import Path

MEASUREMENTS = ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g")
INTEGER_MEASUREMENTS = ("flipper_length_mm", "body_mass_g")
JITTER = 0.25  # of the species' standard deviation


def real_penguins() -> tuple[list[str], list[dict[str, str]]]:
    path = importlib.resources.files("palmerpenguins") / "data" / "penguins.csv"
    with open(str(path), newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _spreads(rows: list[dict[str, str]]) -> dict[tuple[str, str], float]:
    spreads = {}
    for species in {row["species"] for row in rows}:
        for name in MEASUREMENTS:
            values = [float(r[name]) for r in rows if r["species"] == species and r[name] != "NA"]
            spreads[species, name] = statistics.stdev(values)
    return spreads


def write_penguin_csv(path: str | Path, scale: int, seed: int = 20240601) -> int:
    """Writes `scale` times the real number of rows to `path`; returns the row count."""
    header, rows = real_penguins()
    spreads = _spreads(rows)
    rng = random.Random(seed)
    count = scale * len(rows)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for _ in range(count):
            template = rng.choice(rows)
            row = dict(template)
            for name in MEASUREMENTS:
                if row[name] == "NA":
                    continue
                value = float(row[name]) + rng.gauss(0, JITTER * spreads[row["species"], name])
                row[name] = str(round(value)) if name in INTEGER_MEASUREMENTS else f"{value:.1f}"
            writer.writerow([row[name] for name in header])
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="CSV file to write")
    parser.add_argument("--scale", type=int, default=10, help="multiple of the 344 real rows")
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()
    rows = write_penguin_csv(args.output, args.scale, args.seed)
    print(f"wrote {rows} rows to {args.output}")


if __name__ == "__main__":
    main()
