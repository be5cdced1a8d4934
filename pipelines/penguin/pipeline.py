"""The penguin pipeline: classify Palmer penguins by species, from the raw CSV (string
columns, missing values) to a blessed model in the serving directory."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from components.base import ExternalPath, Param
from components.evaluator import Evaluator
from components.example_gen import ExampleGen
from components.example_validator import ExampleValidator
from components.infra_validator import InfraValidator
from components.pusher import Pusher
from components.resolver import LatestPushedModel
from components.rollout import Rollout
from components.rollout_policy import DEFAULT_GUARDS
from components.schema_gen import ImportSchemaGen
from components.statistics_gen import StatisticsGen
from components.trainer import Trainer
from components.transform import Transform
from components.tuner import Tuner
from pipelines.pipeline import Pipeline

HERE = Path(__file__).resolve().parent
MODULE_FILE = ExternalPath(HERE / "penguin_module.py")
SCHEMA_FILE = ExternalPath(HERE.parents[1] / "schemas" / "penguin" / "schema.pbtxt")
# Located without importing palmerpenguins, which would import pandas (2 s).
PACKAGED_DATA = str(Path(importlib.util.find_spec("palmerpenguins").origin).parent / "data")


def labels_dir(pipeline_name: str) -> str:
    """`$PIPEWRIGHT_LABELS/<pipeline>` when PIPEWRIGHT_LABELS is set, else "" (no labels)."""
    root = os.environ.get("PIPEWRIGHT_LABELS", "")
    return os.path.join(root, pipeline_name) if root else ""


def create_pipeline() -> Pipeline:
    data_root = Param("data_root", str, PACKAGED_DATA, "directory of the input CSV files")
    input_pattern = Param("input_pattern", str, "penguins.csv",
                          "files under data_root; may hold {SPAN} or {YYYY}{MM}{DD}")
    train_steps = Param("train_steps", int, 300, "training steps", minimum=1)
    # Not capped at 1: an unreachable threshold is how to train without pushing.
    accuracy_threshold = Param("accuracy_threshold", float, 0.6,
                               "lowest eval accuracy a model may have to be pushed", minimum=0)
    tune = Param("tune", bool, False, "search hyperparameters with KerasTuner before training")
    rollout = Param("rollout", str, "canary", "how a new version meets traffic",
                    choices=("immediate", "canary", "shadow", "blue_green"))
    bake_seconds = Param("bake_seconds", float, 600.0, "bake window per rollout step (s)",
                         minimum=1)
    # The directory the monitoring DAG reads too ($PIPEWRIGHT_LABELS/<pipeline>), so nightly
    # and asset-triggered runs judge delayed labels without anyone passing them.
    labels = Param("labels", str, labels_dir("penguin"),
                   "delayed labels (a CSV/TFRecord file or a directory) judged by the "
                   "rollout's min_live_accuracy guard; default $PIPEWRIGHT_LABELS/penguin")

    example_gen = ExampleGen(input_base=data_root, input_pattern=input_pattern)
    schema_gen = ImportSchemaGen(schema_file=SCHEMA_FILE)
    statistics_gen = StatisticsGen(examples=example_gen.outputs.examples,
                                   schema=schema_gen.outputs.schema)
    example_validator = ExampleValidator(statistics=statistics_gen.outputs.statistics,
                                         schema=schema_gen.outputs.schema)
    transform = Transform(examples=example_gen.outputs.examples, schema=schema_gen.outputs.schema,
                          module_file=MODULE_FILE).after(example_validator)
    tuner = Tuner(examples=transform.outputs.transformed_examples,
                  transform_graph=transform.outputs.transform_graph, module_file=MODULE_FILE,
                  enabled=tune)
    trainer = Trainer(examples=transform.outputs.transformed_examples,
                      transform_graph=transform.outputs.transform_graph,
                      schema=schema_gen.outputs.schema,
                      hyperparameters=tuner.outputs.best_hyperparameters,
                      module_file=MODULE_FILE, train_steps=train_steps)
    baseline = LatestPushedModel(model=trainer.outputs.model, model_name="penguin")
    evaluator = Evaluator(examples=example_gen.outputs.examples, model=trainer.outputs.model,
                          baseline_model=baseline.outputs.baseline_model,
                          baseline_pushed_model=baseline.outputs.baseline_pushed_model,
                          schema=schema_gen.outputs.schema, label_key="species",
                          preprocessing_function_names=["transform_label"],
                          slice_features=[["island"], ["sex"]],
                          lower_bound=accuracy_threshold)
    infra_validator = InfraValidator(model=trainer.outputs.model,
                                     examples=example_gen.outputs.examples,
                                     model_name="penguin", write_warmup=True)
    pusher = Pusher(model=trainer.outputs.model, model_blessing=evaluator.outputs.blessing,
                    infra_blessing=infra_validator.outputs.blessing, model_name="penguin",
                    schema=schema_gen.outputs.schema,  # the Trainer's: served beside the model
                    rollout=rollout, bake_seconds=bake_seconds,
                    rollout_guards={**DEFAULT_GUARDS, "min_live_accuracy": 0.7})
    # Bakes the candidate on live traffic (5, 25, 50, 100 %), then promotes or rolls back.
    rollout_step = Rollout(pushed_model=pusher.outputs.pushed_model, model_name="penguin",
                           labels=labels)
    return Pipeline(
        "penguin",
        [example_gen, schema_gen, statistics_gen, example_validator, transform, tuner, trainer,
         baseline, evaluator, infra_validator, pusher, rollout_step],
        parameters=[data_root, input_pattern, train_steps, accuracy_threshold, tune, rollout,
                    bake_seconds, labels],
        description=__doc__,
    )
