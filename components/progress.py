"""Progress lines for long steps, at a readable rate: one line every `every_s` seconds
("1,204,000 rows read (98,000 rows/s)"), whatever the speed, and none for a short step."""
from __future__ import annotations

import logging
import time


class Progress:
    """Count with tick(); logs the count and the rate at most every `every_s` seconds."""

    def __init__(self, log: logging.Logger, unit: str, every_s: float = 30.0,
                 clock=time.monotonic):
        self.log, self.unit, self.every_s, self.clock = log, unit, every_s, clock
        self.count = 0
        self.started = self.last = clock()

    def tick(self, n: int = 1) -> None:
        self.count += n
        if self.count & 1023:  # look at the clock once in 1024 ticks: ticks are per row
            return
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.count / max(now - self.started, 1e-9)
            self.log.info("%s %s read (%s %s/s)", f"{self.count:,}", self.unit,
                          f"{rate:,.0f}", self.unit)
