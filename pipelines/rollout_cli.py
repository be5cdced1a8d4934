"""`pipewright rollout status|promote|abort MODEL`: a person's hand on a rollout.

status   the policy in `<serving dir>/MODEL/rollout.json` and the controller's events
promote  the candidate becomes the stable version now (100 %), whatever the guards say
abort    the candidate gets 0 % now and is unloaded; its push is marked rolled back in the
         metadata store (never pushed again, never an Evaluator baseline)
Both rewrite rollout.json atomically; a model server picks it up at its next poll, and a
Rollout step still waiting sees the final state and records it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from components.pusher import pushes_to, serving_base
from components.rollout_controller import history, record_event, rollout_versions
from components.rollout_policy import (ABORTED, LOADING, PROMOTED, RolloutConfigError, read_policy,
                                       write_policy)
from pipelines.home import Home
from pipelines.metadata import Metadata


class RolloutCommandError(RuntimeError):
    pass


def _policy(destination: str):
    if not os.path.isdir(destination):
        raise RolloutCommandError(f"{destination} does not exist: nothing was pushed for this "
                                  f"model (check the model name and --home)")
    policy = read_policy(destination)
    if policy is None:
        raise RolloutCommandError(f"no rollout.json in {destination}: the model was pushed "
                                  f"with rollout=immediate (or never)")
    return policy


def status(destination: str) -> str:
    policy = _policy(destination)
    lines = [f"strategy {policy.strategy}, state {policy.state}",
             f"stable version {policy.stable_version}"]
    if policy.candidate_version is not None:
        share = (f"shadow {policy.shadow_percent:g} %" if policy.strategy == "shadow"
                 else f"{policy.candidate_percent:g} % of unpinned requests")
        lines.append(f"candidate version {policy.candidate_version}: {share}, step "
                     f"{policy.step_index + 1} of {len(policy.steps_percent)} "
                     f"({', '.join(f'{s:g}' for s in policy.steps_percent)} %), bake "
                     f"{policy.bake_seconds:g} s")
    if policy.hold_versions:
        lines.append(f"held loaded for an instant revert: {policy.hold_versions}")
    lines.append(f"reason: {policy.reason}")
    lines.append(f"guards: {json.dumps(policy.guards, sort_keys=True)}")
    events = history(destination)[-10:]
    if events:
        lines.append("recent events:")
        lines += [f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e['time']))} "
                  f"{e['event']}: {e['reason']}" for e in events]
    return "\n".join(lines)


def promote(destination: str) -> str:
    policy = _policy(destination)
    if not policy.in_progress:
        raise RolloutCommandError(f"no rollout in progress in {destination} (state "
                                  f"{policy.state}): nothing to promote")
    if policy.state == LOADING:
        raise RolloutCommandError(f"version {policy.candidate_version} has not been seen "
                                  f"AVAILABLE yet (state loading): promoting a version that may "
                                  f"not load would leave unpinned requests without it; wait for "
                                  f"the Rollout step to start baking, or abort")
    new, previous = rollout_versions(policy)
    policy.stable_version, policy.candidate_version = new, None
    policy.candidate_percent = policy.shadow_percent = 0.0
    policy.hold_versions = [previous]
    policy.state, policy.window = PROMOTED, {}
    policy.reason = f"promoted by hand (pipewright rollout promote); version {previous} held"
    write_policy(destination, policy)
    record_event(destination, policy, "promoted", policy.reason, candidate=new)
    return policy.reason


def abort(destination: str, metadata: Metadata) -> str:
    policy = _policy(destination)
    if not policy.in_progress:
        raise RolloutCommandError(f"no rollout in progress in {destination} (state "
                                  f"{policy.state}): nothing to abort")
    candidate, policy.stable_version = rollout_versions(policy)  # a blue-green switch reverts
    policy.candidate_version, policy.candidate_percent, policy.shadow_percent = None, 0.0, 0.0
    policy.hold_versions = []
    policy.state, policy.window = ABORTED, {"rolled_back_version": candidate}
    policy.reason = f"aborted by hand (pipewright rollout abort): version {candidate} rolled back"
    write_policy(destination, policy)
    record_event(destination, policy, "aborted", policy.reason, candidate=candidate)
    for push in pushes_to(metadata, destination):
        if push.pushed_version == candidate:
            push.set(rolled_back=1)
            metadata.update_artifact(push)
    return policy.reason


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipewright rollout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("status", "promote", "abort"))
    parser.add_argument("model", help="model name (the directory under the serving dir)")
    parser.add_argument("--home", help="pipeline home; default $PIPEWRIGHT_HOME or .pipewright/")
    parser.add_argument("--push-destination", default="",
                        help="serving directory, if the Pusher was given one")
    args = parser.parse_args(argv)
    try:
        home = Home.resolve(args.home)
        destination = serving_base(home.serving_dir, args.push_destination, args.model)
        if args.action == "status":
            print(status(destination))
        elif args.action == "promote":
            print(promote(destination))
        else:
            print(abort(destination, Metadata(home.metadata_uri)))
    except BrokenPipeError:
        raise  # `| head`: the reader left (pipelines/cli.py main ends quietly)
    except (RolloutCommandError, RolloutConfigError, ValueError, OSError) as exc:
        print(f"pipewright rollout: {exc}", file=sys.stderr)
        return 1
    return 0
