"""`pipewright rollback MODEL`: serve the previous blessed model again.

The model served now is the newest version in `<serving dir>/MODEL/` (with a rollout.json,
its stable version; the rolled-back-to version then becomes the stable one, immediately). Rolling back pushes
the model served before it — the newest lower version, recorded as a push there, whose push
was not itself rolled back and which holds another model — as a new, higher version, so
model servers pick it up like any push and versions stay monotonic. The version it was served as before is copied when still there (warmup
requests included), else the model's SavedModel. The push is recorded in the metadata
store, and the replaced version's push is marked `rolled_back`: it is skipped by later
rollbacks and never becomes the Evaluator's baseline again, so a second rollback goes one
model further back. No TensorFlow is imported.
"""
from __future__ import annotations

import argparse
import os
import sys

from components.artifacts import Model, PushedModel
from components.pusher import push, pushes_to, serving_base, versions_on_disk
from components.rollout_policy import (IMMEDIATE, RolloutPolicy, read_policy, served_version,
                                       write_policy)
from pipelines.home import Home
from pipelines.metadata import Metadata


class RollbackError(RuntimeError):
    pass


def rollback(model_name: str, home: str | None = None, push_destination: str = "") -> PushedModel:
    """Pushes the model before the one now served; returns the recorded push."""
    home_dir = Home.resolve(home)
    destination = serving_base(home_dir.serving_dir, push_destination, model_name)
    metadata = Metadata(home_dir.metadata_uri)
    served = versions_on_disk(destination)
    if not served:
        raise RollbackError(f"nothing is served under {destination}: no version to roll back")
    served = [v for v in served if v <= served_version(destination, served)] or served
    pushes = pushes_to(metadata, destination)
    by_version = {p.pushed_version: p for p in pushes}
    current = by_version.get(served[-1])
    if current is None:
        raise RollbackError(f"version {served[-1]} in {destination} was not pushed by "
                            f"pipewright (no record in {metadata.uri}); cannot tell which "
                            f"model it is")
    earlier = sorted((p for p in pushes if p.pushed_version < current.pushed_version
                      and not p.rolled_back and p.model_id != current.model_id),
                     key=lambda p: p.pushed_version, reverse=True)
    for previous in earlier:
        # The exact version served before (with its warmup requests), else the model.
        source = os.path.join(destination, str(previous.pushed_version))
        [model] = metadata.artifacts_by_id([previous.model_id]) or [None]
        if not os.path.isfile(os.path.join(source, "saved_model.pb")) and model is not None:
            source = model.serving_dir
        if model is not None and os.path.isfile(os.path.join(source, "saved_model.pb")):
            version = push(source, destination, metadata)
            if read_policy(destination) is not None:  # the server routes by it: follow
                write_policy(destination, RolloutPolicy(
                    strategy=IMMEDIATE, stable_version=version,
                    generation=read_policy(destination).generation,
                    reason=f"pipewright rollback from version {served[-1]}"))
            current.set(rolled_back=1)  # never a baseline again unless pushed again
            metadata.update_artifact(current)
            return _record(metadata, model, destination, model_name, version, served[-1])
    raise RollbackError(f"version {served[-1]} serves model {current.model_id}; no earlier "
                        f"version in {destination} served another model whose push was not "
                        f"rolled back (and is still on disk): nothing to roll back to")


def _record(metadata: Metadata, model: Model, destination: str, model_name: str,
            version: int, replaced: int) -> PushedModel:
    """A one-step run of the pipeline named like the model, for lineage and history."""
    from pipelines.local_runner import new_run_id

    run_id = "rollback-" + new_run_id()
    run = metadata.run_context(model_name, run_id, parameters={"rollback_from": replaced},
                               orchestrator="rollback")
    pushed = PushedModel(uri=os.path.join(destination, str(version)),
                         name="rollback.pushed_model")
    pushed.set(pushed=1, pushed_version=version, pushed_destination=destination,
               model_id=model.id, model_name=model_name)
    execution_id = metadata.begin_execution(
        type_name="Rollback", component_id="rollback", pipeline_name=model_name, run=run,
        inputs={"model": model}, cache_key="", parameters={"replaced_version": replaced},
        log_path="")
    metadata.publish_execution(execution_id, pipeline_name=model_name, run=run,
                               outputs={"pushed_model": pushed}, outcome="ok",
                               outcome_reason=f"re-pushed model {model.id} as version {version}",
                               duration_s=0.0)
    metadata.finish_run(run, "succeeded")
    return pushed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pipewright rollback",
        description="Serve the previous blessed model again, as a new version.")
    parser.add_argument("model", help="model name (the directory under the serving dir)")
    parser.add_argument("--home", help="pipeline home; default $PIPEWRIGHT_HOME or .pipewright/")
    parser.add_argument("--push-destination", default="",
                        help="serving directory, if the Pusher was given one")
    args = parser.parse_args(argv)
    try:
        pushed = rollback(args.model, args.home, args.push_destination)
    except (RollbackError, ValueError, FileNotFoundError) as exc:
        print(f"pipewright rollback: {exc}", file=sys.stderr)
        return 1
    print(f"rolled back {args.model}: model {pushed.model_id} is now version "
          f"{pushed.pushed_version} in {pushed.pushed_destination}")
    return 0
