"""Pusher: copies a blessed model into the serving directory as a new version."""
from __future__ import annotations

import fcntl
import os
import shutil
import time
from contextlib import contextmanager

from components.artifacts import InfraBlessing, Model, ModelBlessing, PushedModel, Schema
from components.base import Component, Input, OptionalInput, Output, Param, Parameter, Step
from components.rollout_policy import (CANARY, DEFAULT_GUARDS, DEFAULT_STEPS, IMMEDIATE,
                                       LOADING, SHADOW, RolloutConfigError, RolloutPolicy,
                                       check_guards, check_steps, check_strategy, read_policy,
                                       served_version, write_policy)

ASSETS_EXTRA = "assets.extra"  # TF Serving's warmup requests live here
# The schema the model was trained with, for the model server's data-quality counters
# (serving/data_quality.py). TF Serving reads only assets.extra/tf_serving_warmup_requests
# (saved_model_warmup_util.cc), so it ignores this file.
SCHEMA_FILE = os.path.join(ASSETS_EXTRA, "schema.pbtxt")
DEFAULT_SHADOW_AGREEMENT = 0.9
DEFAULT_SHADOW_PERCENT = {SHADOW: 100.0, CANARY: 20.0}


class Pusher(Component):
    """Pushes the model to `<serving dir>/<model_name>/<version>/` if the Evaluator blessed
    it (and the InfraValidator, when connected, too); otherwise skips and leaves the
    serving directory as it was. The version is one more than any version the directory
    or the metadata store has seen, and appears at once, complete (copy, then rename).
    Warmup requests the InfraValidator validated (its blessing's `assets.extra/`) are
    added to the pushed version. A model `pipewright rollback` took out of this directory
    is not pushed again (the next night would otherwise undo the rollback), nor is the
    model the newest version already serves. The `schema` the model was trained with, when
    connected, goes with it as `assets.extra/schema.pbtxt` (the model server checks live
    requests against it).

    `rollout` says how the new version meets traffic (components/rollout_policy.py,
    docs/rollout.md): "immediate" (every request at once, TF Serving's behaviour), "canary"
    (`rollout_steps` percent of unpinned requests, one step per `bake_seconds`, and 20 % of
    the rest mirrored to it for the agreement guard), "shadow" (`shadow_percent` of requests
    also sent to it, answers compared) or "blue_green" (all at
    once, the old version kept loaded for an instant revert). Anything but "immediate" writes
    `rollout.json` in the `loading` state; the Rollout step drives it. A first push has no
    stable model to compare with and is served at once (the note says so).
    Raises RolloutConfigError, naming the parameter, for an unknown strategy, steps that do
    not increase within (0, 100], or an unknown guard."""

    model: Input[Model]
    model_blessing: Input[ModelBlessing]
    infra_blessing: OptionalInput[InfraBlessing]
    schema: OptionalInput[Schema]
    pushed_model: Output[PushedModel]
    model_name: Parameter[str]
    push_destination: Parameter[str] = ""  # default: the home's serving directory
    rollout: Parameter[str] = IMMEDIATE
    rollout_steps: Parameter[list[float]] = list(DEFAULT_STEPS)  # canary shares, percent
    bake_seconds: Parameter[float] = 600.0  # per rollout step
    rollout_guards: Parameter[dict[str, float]] = dict(DEFAULT_GUARDS)
    # Requests routed to stable that also run on the candidate (answers compared): None is
    # 100 under shadow, 20 under canary (its agreement guard), 0 under blue_green.
    shadow_percent: Parameter[float | None] = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Runtime Params are checked with their default and every choice they allow.
        self.check_rollout({k: (v.default if isinstance(v, Param) else v)
                            for k, v in self.parameters.items()})
        for name, value in self.parameters.items():
            if isinstance(value, Param) and value.choices:
                for choice in value.choices:
                    self.check_rollout({name: choice})

    @staticmethod
    def check_rollout(values: dict) -> None:
        """RolloutConfigError naming the parameter; values not given are not checked."""
        if "rollout" in values:
            check_strategy(values["rollout"])
        if "rollout_steps" in values:
            check_steps(values["rollout_steps"], "rollout_steps")
        if "rollout_guards" in values:
            check_guards(values["rollout_guards"], "rollout_guards")
        if values.get("bake_seconds", 1) <= 0:
            raise RolloutConfigError(f"bake_seconds = {values['bake_seconds']}: must be > 0")
        if not 0 <= (values.get("shadow_percent") or 0) <= 100:
            raise RolloutConfigError(f"shadow_percent = {values['shadow_percent']}: must be "
                                     f"in [0, 100]")

    def execute(self, step: Step) -> None:
        self.check_rollout(step.values)
        destination = serving_base(step.serving_dir, step.push_destination, step.model_name)
        step.pushed_model.set(pushed=0, model_id=step.model.id, model_name=step.model_name,
                              pushed_destination=destination)
        refusal = (_refusal(step.model, step.model_blessing, step.infra_blessing)
                   or _rolled_back(step.metadata, destination, step.model)
                   or _already_served(step.metadata, destination, step.model))
        if refusal:
            _write_report(step.pushed_model, f"not pushed: {refusal}\n")
            step.skip(refusal)
            return
        version = push(step.model.serving_dir, destination, step.metadata,
                       extra_assets=_validated_extra_assets(step.infra_blessing),
                       schema_file=step.schema.file if step.schema is not None else None,
                       before_rename=step.check_not_interrupted)
        _write_report(step.pushed_model, f"pushed model {step.model.id} as version {version} "
                                         f"to {destination}\n")
        step.pushed_model.set(pushed=1, pushed_version=version)
        step.note(f"pushed model {step.model.id} as version {version}"
                  + _start_rollout(step, destination, version))


def _start_rollout(step: Step, destination: str, version: int) -> str:
    """Writes rollout.json for the new version; returns the note's rollout part."""
    policy = read_policy(destination)
    stable = policy.stable_version if policy is not None else None
    if stable is None:
        earlier = [v for v in versions_on_disk(destination) if v < version]
        stable = earlier[-1] if earlier else None
    strategy = step.rollout
    if strategy == IMMEDIATE or stable is None:
        if policy is None and strategy == IMMEDIATE:
            return ""  # no policy file: the server serves the newest version, as TF Serving
        write_policy(destination, RolloutPolicy(strategy=IMMEDIATE, stable_version=version,
                                                generation=policy.generation if policy else 0,
                                                reason="pushed with rollout=immediate"
                                                if strategy == IMMEDIATE else
                                                f"first push: no stable version to "
                                                f"{strategy} against; served at once"))
        return "" if strategy == IMMEDIATE else (f"; {strategy} rollout not applicable: "
                                                 f"first version, served at once")
    if policy is not None and policy.in_progress:
        step.log.warning("version %s supersedes version %s, whose %s rollout was in progress",
                         version, policy.candidate_version, policy.strategy)
    shadow = step.shadow_percent
    if shadow is None:
        shadow = DEFAULT_SHADOW_PERCENT.get(strategy, 0.0)
    write_policy(destination, RolloutPolicy(
        strategy=strategy, stable_version=stable, candidate_version=version,
        shadow_percent=shadow, steps_percent=list(step.rollout_steps),
        bake_seconds=step.bake_seconds, guards=_guards(shadow, step.rollout_guards),
        state=LOADING,
        generation=policy.generation if policy else 0,
        reason=f"{strategy} rollout of version {version} against version {stable}: loading",
        window={"loading_since": time.time()}))
    return f"; {strategy} rollout against version {stable} begins once it is loaded"


def _guards(shadow_percent: float, guards: dict[str, float]) -> dict[str, float]:
    """The guards as given; mirrored requests also check agreement (0.9 unless given): a
    model trained on shuffled labels predicts the classes' prior — its class shares look
    like stable's, its answers do not."""
    guards = dict(guards)
    if shadow_percent > 0:
        guards.setdefault("min_shadow_agreement", DEFAULT_SHADOW_AGREEMENT)
    return guards


def serving_base(serving_dir: str, push_destination: str, model_name: str) -> str:
    """`<push_destination or serving_dir>/<model name>`: the directory a model server
    polls for versions. Raises ValueError for a model name that is no directory name."""
    if not model_name or "/" in model_name or model_name.startswith("."):
        raise ValueError(f"model_name {model_name!r} is not a valid directory name")
    root = push_destination or serving_dir
    if not root:
        raise ValueError("no serving directory: give push_destination")
    return os.path.join(os.path.realpath(root), model_name)


def _refusal(model: Model, blessing: ModelBlessing, infra: InfraBlessing | None) -> str:
    if blessing.model_id is not None and blessing.model_id != model.id:
        return f"the blessing {blessing.id} is for model {blessing.model_id}, not {model.id}"
    if not blessing.blessed:
        return f"model {model.id} is not blessed by the Evaluator: {blessing.reason or '?'}"
    if infra is not None and not infra.blessed:
        return f"model {model.id} failed infra validation: {infra.reason or '?'}"
    return ""


def _rolled_back(metadata, destination: str, model: Model) -> str:
    """Why a model `pipewright rollback` took out of `destination` is not pushed there
    again by a later run (it would undo the rollback the next night), or ""."""
    if metadata is None:
        return ""
    undone = [p.pushed_version for p in pushes_to(metadata, destination)
              if p.model_id == model.id and p.rolled_back]
    if not undone:
        return ""
    return (f"model {model.id} was rolled back from version {undone[-1]} of {destination}; "
            f"a rolled-back model is not pushed again (train a new one)")


def _already_served(metadata, destination: str, model: Model) -> str:
    """Why a model the newest version in `destination` already serves is not pushed again
    as another version (a re-evaluation of the same model, after a change to the
    Evaluator's code or settings), or ""."""
    if metadata is None:
        return ""
    served = served_version(destination, versions_on_disk(destination))
    if served is None:
        return ""
    newest = [p for p in pushes_to(metadata, destination)
              if p.pushed_version == served and not p.rolled_back]
    if newest and newest[-1].model_id == model.id:
        return f"model {model.id} is already served as version {served}"
    return ""


def push(saved_model_dir: str, destination: str, metadata=None,
         extra_assets: str | None = None, before_rename=None,
         schema_file: str | None = None) -> int:
    """Copies a SavedModel to `destination/<new version>` atomically; returns the version.
    `extra_assets` (e.g. validated warmup requests) is added as the version's assets.extra/;
    `schema_file` (a schema.pbtxt) is copied to SCHEMA_FILE in the version (FileNotFoundError
    when it does not exist).
    `before_rename` is called just before the version appears (the Pusher's interruption
    check: a push interrupted by a signal must not reach the model server)."""
    if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
        raise FileNotFoundError(f"{saved_model_dir} holds no SavedModel (saved_model.pb)")
    os.makedirs(destination, exist_ok=True)
    with _locked(destination):
        version = next_version(destination, metadata)
        staging = os.path.join(destination, f".tmp-{version}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(saved_model_dir, staging)
        if extra_assets:
            shutil.copytree(extra_assets, os.path.join(staging, ASSETS_EXTRA),
                            dirs_exist_ok=True)
        if schema_file:
            os.makedirs(os.path.join(staging, ASSETS_EXTRA), exist_ok=True)
            shutil.copyfile(schema_file, os.path.join(staging, SCHEMA_FILE))
        try:
            if before_rename is not None:
                before_rename()
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        os.rename(staging, os.path.join(destination, str(version)))
    return version


def _validated_extra_assets(infra: InfraBlessing | None) -> str | None:
    """The InfraValidator's assets.extra/ (warmup requests it replayed), if it wrote one."""
    if infra is None or not os.path.isdir(infra.path(ASSETS_EXTRA)):
        return None
    return infra.path(ASSETS_EXTRA)


INT64_MAX = 2**63 - 1


def parse_version(name: str) -> int | None:
    """A version directory's number as TF Serving's file-system source reads it
    (tensorflow/core/platform/numbers.cc safe_strto64: surrounding spaces and a sign
    allowed, decimal digits, within int64), or None when it is not a version."""
    text = name.strip(" \t\n\v\f\r")
    digits = text[1:] if text[:1] in "+-" else text
    if not digits or not (digits.isascii() and digits.isdigit()):
        return None
    value = int(text)
    return value if -2**63 <= value <= INT64_MAX else None


def versions_on_disk(destination: str) -> list[int]:
    """The version directories a model server sees, ascending (parse_version)."""
    if not os.path.isdir(destination):
        return []
    versions = (parse_version(name) for name in os.listdir(destination)
                if os.path.isdir(os.path.join(destination, name)))
    return sorted(v for v in versions if v is not None)


def next_version(destination: str, metadata=None) -> int:
    """One more than every version on disk or ever recorded as pushed there, so versions
    only grow, even after a rollback or a version directory removed by hand."""
    seen = versions_on_disk(destination)
    if metadata is not None:
        seen += [p.pushed_version for p in pushes_to(metadata, destination)]
    return max(seen, default=0) + 1


def pushes_to(metadata, destination: str) -> list[PushedModel]:
    """The successful pushes recorded for a destination, oldest version first."""
    destination = os.path.realpath(destination)  # the same home reached through a link
    pushes = [p for p in metadata.artifacts_of_type(PushedModel)
              if p.pushed and p.pushed_version and p.pushed_destination
              and os.path.realpath(p.pushed_destination) == destination]
    return sorted(pushes, key=lambda p: p.pushed_version)


@contextmanager
def _locked(destination: str):
    """Serializes pushers (and rollbacks) choosing versions in one destination. The lock
    file's name is not a number, so model servers ignore it."""
    with open(os.path.join(destination, ".push.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_report(pushed: PushedModel, text: str) -> None:
    with open(pushed.path("report.txt"), "w") as fh:
        fh.write(text)
