"""Progress lines come at the set rate, whatever the number of ticks."""
from __future__ import annotations

import logging

from components.progress import Progress


def test_progress_logs_once_per_period_with_count_and_rate(caplog):
    now = [0.0]
    progress = Progress(logging.getLogger("pipewright.step.ExampleGen"), "rows", every_s=30,
                        clock=lambda: now[0])
    with caplog.at_level(logging.INFO):
        for _ in range(10):  # 10 periods of 10 s, 2048 rows each
            now[0] += 10.0
            progress.tick(2048)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["6,144 rows read (205 rows/s)", "12,288 rows read (205 rows/s)",
                     "18,432 rows read (205 rows/s)"]
