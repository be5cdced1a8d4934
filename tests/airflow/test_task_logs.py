"""What reaches an Airflow task log: the step's own records, not its libraries' chatter
(which still reaches the step's log file)."""
from __future__ import annotations

import logging

from pipelines.airflow_task import library_noise_kept_out_of


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_library_warnings_stay_out_of_the_task_log_but_reach_the_step_log():
    root = logging.getLogger()
    task_log, step_log = Collect(), Collect()
    level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(task_log)
    try:
        with library_noise_kept_out_of([task_log]):
            root.addHandler(step_log)  # as the launcher adds the step's file handler
            logging.getLogger("tensorflow_model_analysis.utils").warning(
                "Using Any for unsupported type: typing.Sequence[~T]")
            logging.getLogger("apache_beam.runners.portability").info("Running stage 3")
            logging.getLogger("pipewright.step.Evaluator").info("blessed: auc 0.85")
            logging.getLogger("apache_beam.runners.worker").error("worker crashed")
        logging.getLogger("apache_beam.runners.portability").info("after the step")
    finally:
        root.setLevel(level)
        root.removeHandler(task_log)
        root.removeHandler(step_log)
    assert task_log.messages == ["blessed: auc 0.85", "worker crashed", "after the step"]
    assert step_log.messages[:4] == ["Using Any for unsupported type: typing.Sequence[~T]",
                                     "Running stage 3", "blessed: auc 0.85", "worker crashed"]
