"""LatestBlessedModel: the Evaluator's baseline, picked from the metadata store."""
from __future__ import annotations

import os

from components.artifacts import Model, ModelBlessing
from components.base import Input, Output, Resolver, Step


class LatestBlessedModel(Resolver):
    """Resolves the newest blessed model trained before the candidate model by the same
    pipeline step. Comparing artifact ids (not "the newest overall") keeps the answer
    stable: a re-run with nothing changed resolves the same baseline, so the Evaluator
    stays cached. Resolves nothing on the first run."""

    model: Input[Model]
    baseline_model: Output[Model]

    def resolve(self, step: Step) -> dict[str, Model | None]:
        return {"baseline_model": latest_blessed_model_before(step.metadata, step.model)}


def latest_blessed_model_before(metadata, candidate: Model) -> Model | None:
    blessed_ids = {blessing.model_id for blessing in metadata.artifacts_of_type(ModelBlessing)
                   if blessing.blessed and blessing.model_id is not None}
    earlier = sorted((i for i in blessed_ids if i < candidate.id), reverse=True)
    # Same producer: artifact directories are <home>/artifacts/<pipeline>/<step>/<output>/<id>.
    producer_dir = os.path.dirname(candidate.uri.rstrip("/"))
    for model in metadata.artifacts_by_id(earlier):
        if os.path.dirname(model.uri.rstrip("/")) == producer_dir and os.path.isdir(model.uri):
            return model
    return None
