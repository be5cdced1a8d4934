"""The churn pipeline: each night, a day of subscription data in, and a binary classifier
of who will cancel served if it is at least as good as the one being served.

The first night infers the schema; every later night validates its day against that
schema, so a new column, a changed type, a category never seen or a required column going
missing stops the run before Transform. Accept a change with
`pipewright schema accept RUN --pipeline churn`.
"""
from __future__ import annotations

from pathlib import Path

from components.base import ExternalPath, Param
from components.evaluator import Evaluator
from components.example_gen import ExampleGen
from components.example_validator import ExampleValidator
from components.infra_validator import InfraValidator
from components.pusher import Pusher
from components.resolver import LatestPushedModel
from components.schema_gen import SchemaGen
from components.schema_resolver import LatestSchema
from components.statistics_gen import StatisticsGen
from components.trainer import Trainer
from components.transform import Transform
from pipelines.churn.generate import PATTERN
from pipelines.pipeline import Pipeline

HERE = Path(__file__).resolve().parent
MODULE_FILE = ExternalPath(HERE / "churn_module.py")
SAMPLE_DATA = str(HERE / "data")  # three days made by `python -m pipelines.churn.generate`


def create_pipeline(slice_thresholds: dict[str, float] | None = None) -> Pipeline:
    """slice_thresholds: {"feature=value": lowest AUC} for slices that must gate the push
    as the overall AUC does (by default only the overall AUC gates; slices are reported)."""
    data_root = Param("data_root", str, SAMPLE_DATA,
                      "directory of daily folders YYYY-MM-DD/subscriptions.csv")
    days = Param("days", int, 1, "train on the newest N days", minimum=1)
    train_steps = Param("train_steps", int, 300, "training steps", minimum=1)
    min_auc = Param("min_auc", float, 0.7, "lowest overall eval AUC a model may have to be "
                    "pushed", minimum=0, maximum=1)
    max_auc_drop = Param("max_auc_drop", float, 0.02, "how far below the served model's AUC "
                         "on the same data a model may be and still be pushed", minimum=0)

    example_gen = ExampleGen(input_base=data_root, input_pattern=PATTERN,
                             rolling_num_spans=days)
    statistics_gen = StatisticsGen(examples=example_gen.outputs.examples)
    current_schema = LatestSchema(statistics=statistics_gen.outputs.statistics)
    schema_gen = SchemaGen(statistics=statistics_gen.outputs.statistics,
                           current_schema=current_schema.outputs.schema,
                           label_feature="churned", bool_features=["churned"],
                           required_features=["plan", "tenure_months", "monthly_charge"],
                           max_string_domain_size=20)  # country, device_model: long tails
    example_validator = ExampleValidator(statistics=statistics_gen.outputs.statistics,
                                         schema=schema_gen.outputs.schema)
    transform = Transform(examples=example_gen.outputs.examples, schema=schema_gen.outputs.schema,
                          module_file=MODULE_FILE).after(example_validator)
    trainer = Trainer(examples=transform.outputs.transformed_examples,
                      transform_graph=transform.outputs.transform_graph,
                      schema=schema_gen.outputs.schema, module_file=MODULE_FILE,
                      train_steps=train_steps, eval_steps=10)
    baseline = LatestPushedModel(model=trainer.outputs.model, model_name="churn")
    evaluator = Evaluator(examples=example_gen.outputs.examples, model=trainer.outputs.model,
                          baseline_model=baseline.outputs.baseline_model,
                          baseline_pushed_model=baseline.outputs.baseline_pushed_model,
                          schema=schema_gen.outputs.schema, label_key="churned",
                          slice_features=[["plan"], ["channel"]],
                          lower_bound=min_auc, change_threshold=max_auc_drop,
                          slice_thresholds=slice_thresholds or {})
    infra_validator = InfraValidator(model=trainer.outputs.model,
                                     examples=example_gen.outputs.examples, model_name="churn")
    pusher = Pusher(model=trainer.outputs.model, model_blessing=evaluator.outputs.blessing,
                    infra_blessing=infra_validator.outputs.blessing, model_name="churn",
                    schema=schema_gen.outputs.schema)  # the Trainer's: served beside the model
    return Pipeline(
        "churn",
        [example_gen, statistics_gen, current_schema, schema_gen, example_validator, transform,
         trainer, baseline, evaluator, infra_validator, pusher],
        parameters=[data_root, days, train_steps, min_auc, max_auc_drop],
        description=__doc__,
    )
