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
        return {"baseline_model": latest_blessed_model_before(
            step.metadata, step.pipeline_name, step.model)}


def latest_blessed_model_before(metadata, pipeline_name: str, candidate: Model) -> Model | None:
    blessed_ids = {blessing.model_id for blessing in metadata.artifacts_of_type(ModelBlessing)
                   if blessing.blessed and blessing.model_id is not None}
    # Same pipeline and same producing output ("Trainer.model"), newest first.
    earlier = sorted((m for m in metadata.artifacts_in_pipeline(pipeline_name, Model)
                      if m.id in blessed_ids and m.id < candidate.id and m.name == candidate.name),
                     key=lambda m: m.id, reverse=True)
    return next((m for m in earlier if os.path.isdir(m.uri)), None)
