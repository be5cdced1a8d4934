"""The Beam pipeline every Beam step (StatisticsGen, Transform, Evaluator, BulkInferrer)
runs on.

Beam 2.72's `DirectRunner` is a `SwitchingDirectRunner` that first tries the Prism runner,
which downloads a Go binary at run time, and falls back on failure
(apache_beam/runners/direct/direct_runner.py). A production step never fetches
executables, and an offline worker wastes time failing to. So when the pipeline's
`beam_args` name no runner, the step runs on the engine the DirectRunner itself uses for
batch pipelines, the `FnApiRunner`, named explicitly and built the way the DirectRunner
builds it (with the pipeline options in its provision info, so worker processes see
them). Its settings are the DirectRunner's options (`DirectOptions`):

  --direct_running_mode   in_memory (default here) | multi_threading | multi_processing
  --direct_num_workers    workers (default here 1; 0 = one per CPU)

given in the pipeline's `beam_args`, e.g. `["--direct_running_mode=multi_processing",
"--direct_num_workers=2"]` runs each bundle stage on 2 worker processes
(`python -m apache_beam.runners.worker.sdk_worker_main`, fn_runner.py). A `beam_args`
naming a runner (`--runner=FlinkRunner`, ...) is used as given. The runner a step ran on is
a note of the step (console line, run summary, the execution's outcome reason).

Beam arguments are not part of the cache key (pipelines/launcher.py cache_key): they choose
where the work runs, not what it computes (tests/test_beam_multiprocess.py shows the
artifacts equal in-process and multi-process).
"""
from __future__ import annotations

import logging

DEFAULT_RUNNER = "FnApiRunner"
DEFAULTS = {"runner": DEFAULT_RUNNER, "direct_running_mode": "in_memory",
            "direct_num_workers": "1"}


def _named(beam_args: list[str]) -> set[str]:
    """The option names `beam_args` give (`--name=value` or `--name value`)."""
    return {arg[2:].split("=", 1)[0] for arg in beam_args if arg.startswith("--")}


def beam_args_with_runner(beam_args: list[str]) -> list[str]:
    """`beam_args` preceded by the defaults (DEFAULTS) of the options they do not give. A
    `beam_args` naming a runner gets no defaults: the DirectOptions mean nothing to it."""
    given = _named(beam_args)
    if "runner" in given:
        return list(beam_args)
    return [f"--{name}={value}" for name, value in DEFAULTS.items() if name not in given] \
        + list(beam_args)


def describe(options) -> str:
    """The runner of `options` in one phrase, e.g. "FnApiRunner, multi_processing, 2
    workers"."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__
    if name not in (DEFAULT_RUNNER, "DirectRunner", "SwitchingDirectRunner"):
        return f"{name} (named by the pipeline's beam_args)"
    direct = options.view_as(DirectOptions)
    workers = direct.direct_num_workers
    count = "one per CPU" if workers == 0 else f"{workers} worker{'s' if workers != 1 else ''}"
    return f"{name}, {direct.direct_running_mode}, {count}"


def pipeline_options(beam_args: list[str], log: logging.Logger | None = None):
    """apache_beam PipelineOptions for a step: beam_args_with_runner(beam_args)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(beam_args_with_runner(beam_args))
    if log is not None:
        log.info("Beam runner: %s", describe(options))
    return options


def beam_pipeline(step):
    """A `beam.Pipeline` for `step` (components.base.Step) on the runner its beam_args name,
    else the FnApiRunner as above; notes the runner on the step. An unknown runner name
    raises Beam's ValueError here."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    options = pipeline_options(step.beam_args)
    runner = None
    if options.view_as(StandardOptions).runner == DEFAULT_RUNNER:
        runner = _fn_api_runner(options)
        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode == "in_memory" and direct.direct_num_workers != 1:
            step.log.warning("--direct_num_workers=%d has no effect in_memory (one worker, "
                             "this process): add --direct_running_mode=multi_processing or "
                             "multi_threading", direct.direct_num_workers)
    elif options.view_as(StandardOptions).runner in ("DirectRunner", "SwitchingDirectRunner"):
        step.log.warning("beam_args name the DirectRunner: Beam %s tries the PrismRunner first, "
                         "which downloads a binary; leave --runner out for the FnApiRunner",
                         beam.__version__)
    step.note(f"Beam runner: {describe(options)}")
    return beam.Pipeline(runner=runner, options=options)


def _fn_api_runner(options):
    """The FnApiRunner as SwitchingDirectRunner.run_pipeline builds it: the encoded options
    in the provision info, which SubprocessSdkWorker hands to each worker process."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))
