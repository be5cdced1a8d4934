"""Run as a script (a fresh process, so forking it is safe): for each of ROUNDS rounds,
RACERS forked processes open one new ML Metadata store (SQLite) at the same instant.
Prints one line per racer that failed, then "rounds with a failure: N".

    python tests/open_store_race.py DIRECTORY ROUNDS RACERS
"""
from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path


def _open_store_at(uri: str, at: float, answers) -> None:
    from pipelines.metadata import Metadata

    while time.time() < at:
        time.sleep(0.001)
    try:
        Metadata(uri)
        answers.put("ok")
    except Exception as exc:  # noqa: BLE001 - the answer is what is reported
        answers.put(f"{type(exc).__name__}: {exc}")


def main(directory: str, rounds: int, racers: int) -> int:
    import pipelines.metadata  # noqa: F401 - imported once, before forking

    context = multiprocessing.get_context("fork")
    failed_rounds = 0
    for round_ in range(rounds):
        answers = context.Queue()
        at = time.time() + 0.3
        processes = [context.Process(target=_open_store_at,
                                     args=(str(Path(directory) / f"{round_}.sqlite"), at, answers))
                     for _ in range(racers)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=120)
        failures = [a for a in (answers.get(timeout=5) for _ in processes) if a != "ok"]
        for failure in failures:
            print(f"round {round_}: {failure}")
        failed_rounds += bool(failures)
    print(f"rounds with a failure: {failed_rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
