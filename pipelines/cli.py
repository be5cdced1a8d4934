"""The `pipewright` command. Commands that run no heavy step import no TensorFlow."""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFT and TFMA need Keras 2
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF C++ noise; step errors still surface


def _parse_params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"pipewright: --param takes NAME=VALUE, got {pair!r}")
        params[name] = value
    return params


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines import registry
    from pipelines.local_runner import run_pipeline

    pipeline = registry.load(args.pipeline)
    result = run_pipeline(pipeline, home=args.home, params=_parse_params(args.param),
                          enable_cache=not args.no_cache, rerun=args.rerun,
                          max_parallel=args.max_parallel, until=args.until, only=args.only)
    return 0 if result.ok else 1


def cmd_runs(args: argparse.Namespace) -> int:
    from pipelines import inspect_cli
    return inspect_cli.print_runs(args.home, args.pipeline)


def cmd_lineage(args: argparse.Namespace) -> int:
    from pipelines import inspect_cli
    return inspect_cli.print_lineage(args.home, args.artifact)


def cmd_show(args: argparse.Namespace) -> int:
    from pipelines import inspect_cli
    return inspect_cli.print_artifact(args.home, args.artifact)


def cmd_diff(args: argparse.Namespace) -> int:
    from pipelines import inspect_cli, run_diff
    for line in run_diff.diff_runs(inspect_cli.open_metadata(args.home), args.run_a, args.run_b):
        print(line)
    return 0


def cmd_pipelines(args: argparse.Namespace) -> int:
    from pipelines import registry
    for name in registry.names():
        pipeline = registry.load(name)
        params = ", ".join(f"{p.name}={p.default!r}" for p in pipeline.parameters)
        print(f"{name}: {len(pipeline.components)} steps; parameters: {params}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipewright", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    home_help = "pipeline home (artifacts, metadata, serving dir); default $PIPEWRIGHT_HOME or .pipewright/"

    run = sub.add_parser("run", help="run a pipeline locally")
    run.add_argument("pipeline", help="pipeline name (see `pipewright pipelines`) or pipeline.py path")
    run.add_argument("--home", help=home_help)
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("--no-cache", action="store_true", help="execute every step")
    run.add_argument("--rerun", action="append", default=[], metavar="STEP",
                     help="execute STEP again instead of reusing its cached result (its "
                          "downstream steps follow); repeatable")
    run.add_argument("--until", action="append", default=[], metavar="STEP",
                     help="run STEP and every step it depends on, nothing downstream (the "
                          "cache applies); repeatable")
    run.add_argument("--only", action="append", default=[], metavar="STEP",
                     help="run just STEP, reading the outputs of the newest successful "
                          "execution of each producer it reads from; repeatable")
    run.add_argument("--max-parallel", type=int, default=2, help="steps run at once (default 2)")
    run.set_defaults(func=cmd_run)

    runs = sub.add_parser("runs", help="list recorded runs")
    runs.add_argument("pipeline", nargs="?")
    runs.add_argument("--home", help=home_help)
    runs.set_defaults(func=cmd_runs)

    lineage = sub.add_parser("lineage", help="what produced an artifact and what consumed it")
    lineage.add_argument("artifact", help="artifact id (7 or #7), URI, or a path inside an artifact directory")
    lineage.add_argument("--home", help=home_help)
    lineage.set_defaults(func=cmd_lineage)

    show = sub.add_parser("show", help="summarize an artifact (statistics, schema, anomalies, ...)")
    show.add_argument("artifact", help="artifact id (7 or #7), URI, or a path inside an artifact directory")
    show.add_argument("--home", help=home_help)
    show.set_defaults(func=cmd_show)

    diff = sub.add_parser("diff", help="compare two runs of a pipeline: parameters, steps, "
                                       "schema, statistics, metrics per slice, push")
    diff.add_argument("run_a")
    diff.add_argument("run_b")
    diff.add_argument("--home", help=home_help)
    diff.set_defaults(func=cmd_diff)

    pipelines = sub.add_parser("pipelines", help="list the registered pipelines")
    pipelines.set_defaults(func=cmd_pipelines)

    sub.add_parser("serve", help="TF Serving compatible model server (see `pipewright serve -h`)",
                   add_help=False)
    sub.add_parser("rollback", help="re-push the previous blessed model (see `pipewright rollback -h`)",
                   add_help=False)
    sub.add_parser("land", help="new data landed: run the pipeline's training DAG now "
                                "(see `pipewright land -h`)", add_help=False)
    sub.add_parser("rollout", help="status, promote or abort a canary/shadow/blue-green "
                                   "rollout (see `pipewright rollout -h`)", add_help=False)
    sub.add_parser("schema", help="show the current schema or accept a run's data "
                                  "(see `pipewright schema -h`)", add_help=False)
    sub.add_parser("monitor", help="skew and drift of the served model's traffic, one window "
                                   "of the request log (see `pipewright monitor -h`)",
                   add_help=False)
    return parser


def _console_logging() -> None:
    """Warnings on the console; each step's full log goes to its own file."""
    import logging

    from pipelines.log_filters import is_library_noise
    logging.captureWarnings(True)  # library warnings become records, so they follow the thread
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    # What a step's libraries say belongs in that step's log file, not on the console.
    handler.addFilter(lambda record: not record.threadName.startswith("step")
                      and not is_library_noise(record))
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv)
    except BrokenPipeError:  # `pipewright show 7 | head`: the reader left; not an error
        sys.stdout = None  # nothing more to flush to the closed pipe at exit
        return 0


def _dispatch(argv: list[str]) -> int:
    # These commands own their flags (TF Serving's for `serve`).
    if argv and argv[0] == "serve":
        from serving.cli import main as serve_main
        return serve_main(argv[1:])
    if argv and argv[0] == "rollback":
        from pipelines.rollback import main as rollback_main
        return rollback_main(argv[1:])
    if argv and argv[0] == "land":
        from pipelines.landing import main as land_main
        return land_main(argv[1:])
    if argv and argv[0] == "rollout":
        from pipelines.rollout_cli import main as rollout_main
        return rollout_main(argv[1:])
    if argv and argv[0] == "schema":
        from pipelines.schema_cli import main as schema_main
        _console_logging()
        return schema_main(argv[1:])
    if argv and argv[0] == "monitor":
        from pipelines.monitor_cli import main as monitor_main
        _console_logging()
        return monitor_main(argv[1:])
    args = build_parser().parse_args(argv)
    _console_logging()
    try:
        return args.func(args)
    except (LookupError, TypeError, ValueError, OSError) as exc:
        # str(KeyError) quotes its message; the message itself is what a person reads.
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"pipewright: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
