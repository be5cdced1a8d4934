"""Delayed-label evidence for a rollout's `min_live_accuracy` guard: the ground truth that has
arrived so far (a label file or a directory of them, components/traffic_labels.py formats),
joined by request id to the model server's closed request-log files, gives each version's
live accuracy — the candidate's own answers, whether it answered clients (canary, blue-green)
or only the shadow (its answers are logged under the client's request id).

Labels arrive late, so the guard judges what has arrived: every label file present (not only
a window's), against every closed log file of the model. A candidate version is new, so its
counts are the rollout's own."""
from __future__ import annotations

import logging
import math


class DelayedLabels:
    """`labels`: a label file or directory; `log_dir`: the model server's --request_log_dir.
    Raises FileNotFoundError / ValueError (traffic_labels) from `counts` for a labels path
    that does not exist or a file it cannot read, naming the file and row."""

    def __init__(self, labels: str, log_dir: str, log: logging.Logger | None = None):
        self.labels, self.log_dir = labels, log_dir
        self.log = log or logging.getLogger(__name__)

    def counts(self, model_name: str) -> dict[int, tuple[int, int]]:
        """{version: (labeled, correct)} of the labels joined so far."""
        from components.traffic_labels import join_labels, label_files, read_labels

        from components.traffic_logs import closed_log_files

        files = label_files(self.labels, -math.inf, math.inf)
        quality = join_labels(read_labels(files), self.log_dir, model_name, self.log)
        if quality.unjoined:
            # Said, not silent: a wrong log_dir leaves the guard unjudged while the rollout
            # goes on (labels of requests not logged yet join at a later window).
            where = ("no closed request-log file of the model there yet" if not
                     closed_log_files(self.log_dir, model_name) else "no logged answer for them")
            self.log.warning("min_live_accuracy: %d of %d delayed labels in %s did not join "
                             "the request logs of model %s in %s (%s; e.g. %s)",
                             quality.unjoined, quality.labels, self.labels, model_name,
                             self.log_dir, where, ", ".join(quality.unjoined_examples))
        return {int(version): (quality.labeled[version], quality.correct[version])
                for version in quality.labeled if str(version).isdigit()}

    def __str__(self) -> str:
        return f"delayed labels {self.labels} joined to the request logs in {self.log_dir}"
