"""The Beam pipeline options every Beam step (StatisticsGen, Transform, Evaluator) runs with.

Beam 2.72's default `DirectRunner` first tries the Prism runner, which downloads a Go binary
at run time (apache_beam/runners/direct/direct_runner.py) — a production step never fetches
executables, and an offline worker wastes time failing to. So the runner is always named:
the pipeline's `beam_args` may give one (`--runner=FlinkRunner`, ...); otherwise the
in-process `FnApiRunner` (what the DirectRunner falls back to) with one worker, in memory.
"""
from __future__ import annotations

import logging

DEFAULT_RUNNER = "FnApiRunner"
DEFAULT_RUNNER_ARGS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]


def beam_args_with_runner(beam_args: list[str]) -> list[str]:
    """`beam_args`, preceded by the default runner and its settings unless they name a
    runner (`--runner=X` or `--runner X`)."""
    if any(arg == "--runner" or arg.startswith("--runner=") for arg in beam_args):
        return list(beam_args)
    return [f"--runner={DEFAULT_RUNNER}", *DEFAULT_RUNNER_ARGS, *beam_args]


def pipeline_options(beam_args: list[str], log: logging.Logger):
    """apache_beam PipelineOptions for a step, logging the runner it names."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(beam_args_with_runner(beam_args))
    log.info("Beam runner: %s", options.view_as(StandardOptions).runner)
    return options
