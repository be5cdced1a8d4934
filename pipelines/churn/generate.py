"""Generates the churn pipeline's data: one CSV a day of a subscription service's customers,
and whether each cancelled within 30 days (`churned`, 1 or 0).

    python -m pipelines.churn.generate DIR [--days 3] [--rows 2400] [--start 2026-11-01]

writes DIR/<YYYY-MM-DD>/subscriptions.csv, one folder a day, the layout the pipeline's
`{YYYY}-{MM}-{DD}/subscriptions.csv` pattern reads as daily spans. The same day (date and
seed) always gives the same rows.

Columns, as a real export has them:
  customer_id      string, unique per row (not a model input)
  plan             basic / standard / premium / family; every row has one
  channel          web / app / store / partner; partner rows are ~6 % and their churn is
                   unrelated to anything else (a slice a model cannot learn)
  country          ~150 codes, a few frequent and a long tail
  device_model     ~300 names
  tenure_months    integer, 0-120; every row has one
  monthly_charge   float in currency units; every row has one
  support_calls    integer, empty in ~10 % of rows
  last_login_days  float, days since last login, "NA" or empty in ~15 % of rows
  churned          the label: 1 cancelled within 30 days, 0 stayed
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import math
import random
from pathlib import Path

FILE_NAME = "subscriptions.csv"
PATTERN = "{YYYY}-{MM}-{DD}/" + FILE_NAME
HEADER = ["customer_id", "plan", "channel", "country", "device_model", "tenure_months",
          "monthly_charge", "support_calls", "last_login_days", "churned"]
PLANS = {"basic": (0.35, 9.99), "standard": (0.35, 15.49), "premium": (0.2, 22.99),
         "family": (0.1, 27.99)}
CHANNELS = {"web": 0.44, "app": 0.35, "store": 0.15, "partner": 0.06}
COUNTRIES = [f"C{i:03d}" for i in range(150)]
DEVICES = [f"{brand}-{n}" for brand in ("phone", "tablet", "tv", "console", "laptop", "stick")
           for n in range(50)]
PLAN_EFFECT = {"basic": 0.9, "standard": 0.0, "premium": -0.5, "family": -0.8}


def rows_for_day(date: dt.date, rows: int = 2400, seed: int = 0) -> list[dict[str, str]]:
    """`rows` customers of one day, each a dict of HEADER -> CSV text ("" = missing)."""
    rng = random.Random(f"{seed}-{date.isoformat()}")
    out = []
    for i in range(rows):
        plan = _pick(rng, {name: share for name, (share, _) in PLANS.items()})
        channel = _pick(rng, CHANNELS)
        country = COUNTRIES[min(int(rng.paretovariate(1.2)) - 1, len(COUNTRIES) - 1)]
        device = DEVICES[int(rng.triangular(0, len(DEVICES) - 1, 0))]
        tenure = min(int(rng.expovariate(1 / 18)), 120)
        charge = round(PLANS[plan][1] * rng.uniform(0.85, 1.25), 2)
        calls = min(int(rng.expovariate(1 / 1.5)), 15)
        login = round(rng.expovariate(1 / 6), 1)
        logit = 2.0 * (-1.2 + PLAN_EFFECT[plan] - 0.05 * tenure + 0.45 * calls + 0.12 * login
                       + (0.4 if country in COUNTRIES[:3] else 0.0))
        if channel == "partner":
            churned = rng.random() < 0.4
        else:
            churned = rng.random() < 1 / (1 + math.exp(-logit))
        out.append({
            "customer_id": f"{date:%Y%m%d}-{i:05d}", "plan": plan, "channel": channel,
            "country": country, "device_model": device, "tenure_months": str(tenure),
            "monthly_charge": f"{charge:.2f}",
            "support_calls": "" if rng.random() < 0.10 else str(calls),
            "last_login_days": (rng.choice(["", "NA"]) if rng.random() < 0.15
                                else f"{login:.1f}"),
            "churned": str(int(churned)),
        })
    return out


def write_day(root: str | Path, date: dt.date, rows: list[dict[str, str]],
              header: list[str] | None = None) -> Path:
    """Writes `rows` as root/<date>/subscriptions.csv (columns `header`, default HEADER);
    returns the file's path."""
    header = header or HEADER
    path = Path(root) / date.isoformat() / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([row.get(column, "") for column in header] for row in rows)
    return path


def _pick(rng: random.Random, shares: dict[str, float]) -> str:
    return rng.choices(list(shares), weights=list(shares.values()))[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2400, help="rows per day")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2026, 11, 1),
                        help="the first day, YYYY-MM-DD")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.days < 1 or args.rows < 1:
        parser.error("--days and --rows must be at least 1")
    for offset in range(args.days):
        date = args.start + dt.timedelta(days=offset)
        print(write_day(args.directory, date, rows_for_day(date, args.rows, args.seed)))


if __name__ == "__main__":
    main()
