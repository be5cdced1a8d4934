"""Trainer: runs the user module's `run_fn`, which trains and exports a SavedModel."""
from __future__ import annotations

import json
import os
from typing import Any

from components.artifacts import (Examples, HyperParameters, Model, ModelRun, Schema,
                                  TransformGraph)
from components.base import (Component, ExternalPath, Input, OptionalInput, Output, Parameter,
                             Step)
# run_fn exports through it, so the Trainer's cache key covers it (imports no TensorFlow).
from components import signatures  # noqa: F401
from components.user_module import FnArgs, UserModuleError, function


class Trainer(Component):
    """Trains a model with the user module's `run_fn` on the (transformed) examples, with
    the Tuner's best hyperparameters when given, and exports it as a SavedModel under
    `Format-Serving/`; TensorBoard logs go to the model run."""

    imports_tensorflow = True

    examples: Input[Examples]
    transform_graph: OptionalInput[TransformGraph]
    schema: OptionalInput[Schema]
    hyperparameters: OptionalInput[HyperParameters]
    base_model: OptionalInput[Model]
    model: Output[Model]
    model_run: Output[ModelRun]
    module_file: Parameter[ExternalPath]
    train_steps: Parameter[int] = 300
    eval_steps: Parameter[int] = 5
    train_split: Parameter[str] = "train"
    eval_split: Parameter[str] = "eval"
    custom_config: Parameter[dict[str, Any]] = {}

    def execute(self, step: Step) -> None:
        run_fn = function(step.module_file, "run_fn")
        fn_args = fn_args_for(step, serving_model_dir=step.model.serving_dir,
                              model_run_dir=step.model_run.uri)
        step.log.info("training %d steps with hyperparameters %s", step.train_steps,
                      fn_args.hyperparameters)
        try:
            run_fn(fn_args)
        except Exception as exc:
            raise UserModuleError(f"run_fn in {step.module_file} raised "
                                  f"{type(exc).__name__}: {exc}") from exc
        if not os.path.isfile(os.path.join(step.model.serving_dir, "saved_model.pb")):
            raise UserModuleError(
                f"run_fn in {step.module_file} exported no SavedModel: "
                f"{step.model.serving_dir}/saved_model.pb does not exist (export the model to "
                f"fn_args.serving_model_dir)")
        step.model.set(span=step.examples.span)
        scalars = last_scalars(step.model_run.uri)
        with open(step.model_run.path(SCALARS_FILE), "w") as fh:
            json.dump({tag: {"step": at, "value": value}
                       for tag, (at, value) in scalars.items()}, fh, indent=1)
        if scalars:
            step.note(", ".join(f"{tag} {value:.4g} (step {at})"
                                for tag, (at, value) in scalars.items()))
        step.note(f"TensorBoard: tensorboard --logdir {step.model_run.uri}")


SCALARS_FILE = "last_scalars.json"  # {tag: {"step", "value"}}: what `pipewright runs` shows


def last_scalars(log_dir: str) -> dict[str, tuple[int, float]]:
    """"<run>/<tag>" (or "<tag>" at the top) -> (step, value) of the last scalar each
    TensorBoard event file under `log_dir` holds (what run_fn wrote with tf.summary)."""
    import tensorflow as tf

    found: dict[str, tuple[int, float]] = {}
    paths = sorted(os.path.join(directory, name) for directory, _, names in os.walk(log_dir)
                   for name in names if name.startswith("events.out.tfevents."))
    for path in paths:
        run = os.path.relpath(os.path.dirname(path), log_dir)
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    number = (value.simple_value if value.HasField("simple_value") else
                              float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                              else None)
                    if number is None:
                        continue
                    tag = value.tag if run == "." else f"{run}/{value.tag}"
                    if tag not in found or event.step >= found[tag][0]:
                        found[tag] = (event.step, number)
        except (tf.errors.DataLossError, ValueError, TypeError):
            continue  # a truncated event file, or a non-scalar summary
    return dict(sorted(found.items()))


def fn_args_for(step: Step, *, serving_model_dir: str, model_run_dir: str,
                working_dir: str = "") -> FnArgs:
    """The FnArgs of a Trainer or Tuner step (they share inputs and parameters)."""
    examples: Examples = step.examples
    for split in (step.train_split, step.eval_split):
        if split not in examples.splits:
            raise ValueError(f"examples {examples.uri} have no split {split!r}; "
                             f"they have {examples.splits}")
    hyperparameters = None
    hp_artifact = getattr(step, "hyperparameters", None)
    if hp_artifact is not None:
        with open(hp_artifact.file) as fh:
            hyperparameters = json.load(fh)
    base_model = getattr(step, "base_model", None)
    return FnArgs(
        train_files=[examples.file_pattern(step.train_split)],
        eval_files=[examples.file_pattern(step.eval_split)],
        transform_output=step.transform_graph.uri if step.transform_graph else None,
        schema_file=step.schema.file if step.schema else None,
        serving_model_dir=serving_model_dir,
        model_run_dir=model_run_dir,
        train_steps=step.train_steps,
        eval_steps=step.eval_steps,
        hyperparameters=hyperparameters,
        base_model=base_model.serving_dir if base_model is not None else None,
        custom_config=dict(step.custom_config),
        working_dir=working_dir,
    )
