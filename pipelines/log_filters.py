"""Which log records are the user's business on a console or in an Airflow task log."""
from __future__ import annotations

import logging

# Loggers whose records concern the user; everything else below ERROR (TFMA's "Using Any
# for unsupported type", Beam's runner chatter, absl, google-api-core's FutureWarnings via
# py.warnings) stays in the step's own log file, or is dropped where there is none.
OWN_LOGGERS = ("pipewright", "pipelines", "components", "serving", "airflow", "task")


def is_library_noise(record: logging.LogRecord) -> bool:
    """A record below ERROR from a library's logger (not one of OWN_LOGGERS)."""
    return record.levelno < logging.ERROR and not any(
        record.name == own or record.name.startswith(own + ".") for own in OWN_LOGGERS)
