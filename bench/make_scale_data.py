"""A generated table of the shape the data-half benchmark needs: 19 columns, millions of rows.

The shape of the real table issue 11 was measured on (3.37 million rows, 19 columns, 295 MB
of CSV): strings with a few hundred distinct values, integers, floats, missing values in
several columns, a timestamp-like column and a binary label that depends on the features
(so a model could learn it); about 96 bytes a row, so 3.37 million rows are 325 MB.
Rows are orders of an imaginary shop over `--days` days:

    order_time      "2024-03-01 13:45:12", ascending within a day
    store           string, 300 distinct ("S123")
    city            string, 240 distinct
    region          string, 12 distinct
    channel         string, 4 distinct
    payment_type    string, 7 distinct, 3 % missing (empty field)
    device          string, 6 distinct, 8 % missing ("NA")
    quantity        int 1..20
    items_in_cart   int 1..40
    customer_age    int 18..90, 5 % missing ("NA")
    tenure_days     int 0..3650
    is_member       int 0/1
    rating          int 1..5, 40 % missing (empty field)
    unit_price      float, 2 decimals
    discount        float, 2 decimals, 30 % missing ("NaN")
    session_seconds int 0..3600
    latitude        float, 3 decimals
    longitude       float, 3 decimals
    returned        int 0/1: the label

Written twice, with the same rows (deterministic by `--seed`):
- one span:    <out>/single/data.csv                       (ExampleGen input_pattern "*.csv")
- daily spans: <out>/daily/<YYYY>-<MM>-<DD>/data.csv       (input_pattern
  "{YYYY}-{MM}-{DD}/*.csv", rolling_num_spans=<days> reads them all; see components/spans.py)
Numbers are drawn with numpy per chunk and turned into text through lookup tables; 3.37
million rows take about a minute.

    python bench/make_scale_data.py [--rows 3370000] [--days 30] [--seed 11] [--out DIR]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

DEFAULT_ROWS = 3_370_000
DEFAULT_DAYS = 30
DEFAULT_SEED = 11
FIRST_DAY = dt.date(2024, 3, 1)
SINGLE_PATTERN = "*.csv"
DAILY_PATTERN = "{YYYY}-{MM}-{DD}/*.csv"
COLUMNS = ("order_time", "store", "city", "region", "channel", "payment_type", "device",
           "quantity", "items_in_cart", "customer_age", "tenure_days", "is_member", "rating",
           "unit_price", "discount", "session_seconds", "latitude", "longitude", "returned")
STRING_COLUMNS = ("store", "city", "region", "channel", "payment_type", "device")
LABEL = "returned"


def _table(values) -> "object":
    import numpy as np
    return np.array(list(values), dtype=object)


class _Vocabularies:
    """Text lookup tables: a column's value k is written as table[k]."""

    def __init__(self):
        syllables = ("al", "be", "cor", "da", "el", "fen", "gar", "hol", "in", "ka", "lo",
                     "mar", "nor", "os", "pe", "ri", "sa", "ton", "ul", "ve")
        self.store = _table(f"S{i:03d}" for i in range(300))
        self.city = _table(f"{syllables[i % 20].title()}{syllables[(i // 20) % 20]}"
                           for i in range(240))
        self.region = _table(f"R{i:02d}" for i in range(12))
        self.channel = _table(("web", "app", "shop", "phone"))
        self.payment_type = _table(("", "card", "cash", "voucher", "paypal", "transfer",
                                    "invoice", "crypto"))  # index 0: missing
        self.device = _table(("NA", "ios", "android", "windows", "mac", "linux", "other"))
        self.integers = _table(str(k) for k in range(3651))
        self.age = _table(["NA"] + [str(k) for k in range(1, 91)])  # index 0: missing
        self.rating = _table(["", "1", "2", "3", "4", "5"])  # index 0: missing
        self.cents = _table(f"{k / 100:.2f}" for k in range(100_000))  # 0.00 .. 999.99
        self.discount = _table(["NaN"] + [f"{k / 100:.2f}" for k in range(51)])  # 0: missing
        self.thousandths = _table(f"{k / 1000:.3f}" for k in range(40_000, 56_000))  # 40..56
        self.clock = _table(f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
                            for s in range(86_400))


def _chunk(rng, vocab: _Vocabularies, day: dt.date, n: int) -> str:
    """`n` rows of one day as CSV text (no header), ascending by time."""
    import numpy as np

    seconds = np.sort(rng.integers(0, 86_400, n))
    store = rng.integers(0, len(vocab.store), n)
    city = store % len(vocab.city)  # a store is in one city, a city in one region
    region = city % len(vocab.region)
    channel = rng.choice(4, n, p=[0.45, 0.35, 0.15, 0.05])
    payment = np.where(rng.random(n) < 0.03, 0, rng.integers(1, len(vocab.payment_type), n))
    device = np.where(rng.random(n) < 0.08, 0, rng.integers(1, len(vocab.device), n))
    quantity = np.minimum(rng.geometric(0.35, n), 20)
    items = np.clip(quantity + rng.poisson(2.0, n), 1, 40)
    age = np.clip(rng.normal(41, 13, n).round().astype(np.int64), 18, 90)
    age = np.where(rng.random(n) < 0.05, 0, age)
    tenure = np.minimum(rng.exponential(500, n).astype(np.int64), 3650)
    member = (rng.random(n) < 0.3 + 0.4 * (tenure > 365)).astype(np.int64)
    rating = np.where(rng.random(n) < 0.4, 0, rng.integers(1, 6, n))
    price = np.clip(rng.lognormal(3.0, 1.0, n) * 100, 1, 99_999).astype(np.int64)  # cents
    discount = np.where(rng.random(n) < 0.3, 0, rng.integers(1, 52, n))
    session = np.minimum(rng.exponential(300, n), 3600).astype(np.int64)
    lat = np.clip(8_000 + (city * 997 % 6_000) + rng.integers(-200, 200, n), 0, 15_999)
    lon = np.clip(8_000 + (city * 389 % 6_000) + rng.integers(-200, 200, n), 0, 15_999)
    # The label: returns are likelier for expensive, discounted, web, low-rated orders.
    logit = (-2.2 + 0.5 * np.log(price / 2000.0) + 0.02 * (discount - 1).clip(0)
             + 0.6 * (channel == 0) - 0.4 * member
             + np.where(rating > 0, (3 - rating) * 0.4, 0.0))
    returned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)

    date = day.isoformat() + " "
    columns = [
        [date + t for t in vocab.clock[seconds].tolist()],
        vocab.store[store], vocab.city[city], vocab.region[region], vocab.channel[channel],
        vocab.payment_type[payment], vocab.device[device], vocab.integers[quantity],
        vocab.integers[items], vocab.age[age], vocab.integers[tenure], vocab.integers[member],
        vocab.rating[rating], vocab.cents[price], vocab.discount[discount],
        vocab.integers[session], vocab.thousandths[lat], vocab.thousandths[lon],
        vocab.integers[returned],
    ]
    columns = [c if isinstance(c, list) else c.tolist() for c in columns]
    return "\n".join(map(",".join, zip(*columns))) + "\n"


def generate(out: Path, rows: int, days: int = DEFAULT_DAYS, seed: int = DEFAULT_SEED,
             chunk: int = 200_000) -> dict:
    """Writes <out>/single/data.csv and <out>/daily/<date>/data.csv with the same `rows`
    rows spread evenly over `days` days; returns (and writes to <out>/manifest.json) what
    was written. Reuses an existing output of the same rows, days and seed."""
    import numpy as np

    if rows < days:
        raise ValueError(f"--rows {rows} is fewer than --days {days}: a day would be empty")
    manifest_path = out / "manifest.json"
    wanted = {"rows": rows, "days": days, "seed": seed, "columns": list(COLUMNS)}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if {k: manifest.get(k) for k in wanted} == wanted:
            return manifest
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    vocab = _Vocabularies()
    header = ",".join(COLUMNS) + "\n"
    (out / "single").mkdir(parents=True, exist_ok=True)
    with open(out / "single" / "data.csv", "w", newline="") as single:
        single.write(header)
        for d in range(days):
            day = FIRST_DAY + dt.timedelta(days=d)
            day_rows = rows // days + (1 if d < rows % days else 0)
            day_dir = out / "daily" / day.isoformat()
            day_dir.mkdir(parents=True, exist_ok=True)
            with open(day_dir / "data.csv", "w", newline="") as daily:
                daily.write(header)
                for start in range(0, day_rows, chunk):
                    text = _chunk(rng, vocab, day, min(chunk, day_rows - start))
                    single.write(text)
                    daily.write(text)
    manifest = {**wanted, "bytes": (out / "single" / "data.csv").stat().st_size,
                "single": {"input_base": str(out / "single"), "input_pattern": SINGLE_PATTERN},
                "daily": {"input_base": str(out / "daily"), "input_pattern": DAILY_PATTERN,
                          "rolling_num_spans": days},
                "seconds": round(time.monotonic() - started, 1)}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: bench/out/scale-data-<rows>")
    args = parser.parse_args()
    out = args.out or Path(__file__).resolve().parent / "out" / f"scale-data-{args.rows}"
    manifest = generate(out, args.rows, args.days, args.seed)
    print(f"{manifest['rows']:,} rows, {len(COLUMNS)} columns, "
          f"{manifest['bytes'] / 1e6:.0f} MB per copy, {args.days} daily spans, in "
          f"{manifest['seconds']} s: {out}", file=sys.stderr)
    print(os.fspath(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
