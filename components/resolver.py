"""LatestPushedModel: the Evaluator's baseline is the model being served."""
from __future__ import annotations

import os

from components.artifacts import Model, PushedModel
from components.base import Input, Output, Parameter, Resolver, Step
from components.pusher import pushes_to, serving_base, versions_on_disk
from components.rollout_policy import served_version


class BaselineError(RuntimeError):
    """The serving directory holds versions, but which model serves cannot be told."""


class LatestPushedModel(Resolver):
    """Resolves the model served from `<serving dir>/<model_name>/`: the newest version
    directory on disk that a Pusher (or `pipewright rollback`) put there, as recorded in
    the metadata store — so a rollback, or a version deleted by hand, changes the answer,
    and a model the Evaluator blessed but nobody pushed (rejected by the InfraValidator) is
    never a baseline. Passed over: versions whose push was rolled back, and the candidate's
    own pushes (on a re-run with nothing changed the candidate is already served; it is
    compared with what was served before it, so the Evaluator's cache key — and verdict —
    stay the same).

    Outputs `baseline_model` (the Model) and `baseline_pushed_model` (the push that serves
    it: version and directory, for the Evaluator's report); both are absent when nothing is
    served yet (a first push: value thresholds alone decide).

    Raises BaselineError, naming the directory, when the highest version on disk (the one
    a model server serves; with a rollout.json, its stable version — a candidate still
    under a canary is not a baseline) was not pushed as recorded in this metadata store, or when the
    served model's SavedModel is gone from its artifact directory. TFX's counterpart is the LatestBlessedModel resolver
    strategy; resolving from pushes follows what a model server serves
    (tensorflow_serving/sources/storage_path: the highest numbered version)."""

    model: Input[Model]
    baseline_model: Output[Model]
    baseline_pushed_model: Output[PushedModel]
    model_name: Parameter[str]
    push_destination: Parameter[str] = ""  # as given to the Pusher

    def resolve(self, step: Step) -> dict[str, Model | PushedModel | None]:
        destination = serving_base(step.serving_dir, step.push_destination, step.model_name)
        found = served_model(step.metadata, destination, step.model)
        if found is None:
            served = versions_on_disk(destination)
            step.note(f"no baseline: nothing is served from {destination} yet" if not served
                      else f"no baseline: the versions served from {destination} ({served}) "
                           f"hold the candidate itself or were rolled back")
            return {"baseline_model": None, "baseline_pushed_model": None}
        model, pushed = found
        step.note(f"baseline: model {model.id}, served as version {pushed.pushed_version}")
        return {"baseline_model": model, "baseline_pushed_model": pushed}


def served_model(metadata, destination: str,
                 candidate: Model) -> tuple[Model, PushedModel] | None:
    """(model, push) behind the newest eligible version in `destination` (see
    LatestPushedModel), or None when no version is on disk or every traced one is passed
    over. Raises BaselineError as LatestPushedModel says."""
    on_disk = versions_on_disk(destination)
    if not on_disk:
        return None
    served = served_version(destination, on_disk)
    # Versions above the served one are candidates under a rollout (or rolled back): not
    # served to everyone, so not a baseline.
    on_disk = [v for v in on_disk if v <= served] or on_disk
    pushes = {p.pushed_version: p for p in pushes_to(metadata, destination)}
    traced = [v for v in on_disk if v in pushes]
    if not traced:
        raise BaselineError(
            f"the serving directory {destination} holds version(s) {on_disk}, but none was "
            f"pushed by a Pusher or rollback recorded in {metadata.uri}; cannot tell which "
            f"model is served, so there is no baseline to compare with. Push through the "
            f"pipeline, or move the untracked versions out of {destination}")
    if on_disk[-1] not in pushes:
        raise BaselineError(
            f"a model server serves version {on_disk[-1]} of {destination} (the highest), but "
            f"no push recorded in {metadata.uri} explains it (versions pushed by the pipeline: "
            f"{traced}); the served model is unknown, so there is no baseline to compare "
            f"with. Move version {on_disk[-1]} out of {destination}, or push through the "
            f"pipeline")
    for version in reversed(traced):
        pushed = pushes[version]
        if pushed.rolled_back or pushed.model_id == candidate.id:
            continue
        [model] = metadata.artifacts_by_id([pushed.model_id]) or [None]
        if model is None or not os.path.isfile(os.path.join(model.serving_dir, "saved_model.pb")):
            where = model.serving_dir if model is not None else f"artifact {pushed.model_id}"
            raise BaselineError(
                f"version {version} in {destination} serves model {pushed.model_id}, whose "
                f"SavedModel is gone from {where}; the baseline cannot be evaluated. Restore "
                f"it, or roll back (`pipewright rollback`) to a model that is still there")
        return model, pushed
    return None
