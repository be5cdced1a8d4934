"""The Pusher places the schema the model was trained with beside the version it pushes
(assets.extra/schema.pbtxt, read by serving/data_quality.py; TF Serving ignores it)."""

from __future__ import annotations

import os
from pathlib import Path

from components.artifacts import Model, ModelBlessing
from components.base import Component, ExternalPath, Input, Output, Step
from components.pusher import SCHEMA_FILE, Pusher
from components.schema_gen import ImportSchemaGen
from pipelines.local_runner import run_pipeline
from pipelines.pipeline import Pipeline

SCHEMA = 'feature { name: "tag" type: BYTES domain: "tag" }\n' \
         'string_domain { name: "tag" value: "a" value: "b" }\n'


class StandInTrainer(Component):
    """Writes a stand-in SavedModel file."""

    model: Output[Model]

    def execute(self, step: Step) -> None:
        os.makedirs(step.model.serving_dir)
        Path(step.model.serving_dir, "saved_model.pb").write_text("model")


class BlessAll(Component):
    model: Input[Model]
    blessing: Output[ModelBlessing]

    def execute(self, step: Step) -> None:
        step.blessing.set(blessed=1, model_id=step.model.id, reason="stand-in")


def test_the_pusher_copies_the_schema_beside_the_pushed_version(tmp_path):
    schema_file = tmp_path / "schema.pbtxt"
    schema_file.write_text(SCHEMA)
    trainer = StandInTrainer()
    evaluator = BlessAll(model=trainer.outputs.model)
    schema_gen = ImportSchemaGen(schema_file=ExternalPath(schema_file))
    pusher = Pusher(model=trainer.outputs.model, model_blessing=evaluator.outputs.blessing,
                    model_name="m", schema=schema_gen.outputs.schema)
    home = tmp_path / "home"
    result = run_pipeline(Pipeline("with_schema", [trainer, evaluator, schema_gen, pusher]),
                          home=home, echo=lambda line: None)
    assert result.ok, result.summary()
    version = home / "serving" / "m" / "1"
    assert (version / "saved_model.pb").read_text() == "model"
    published = Path(result.steps["ImportSchemaGen"].outputs["schema"].file).read_text()
    assert (version / SCHEMA_FILE).read_text() == published
    assert 'value: "a"' in published
    assert sorted(os.listdir(home / "serving" / "m")) == [".push.lock", "1"]  # no staging left


def test_without_a_schema_input_the_version_has_none(tmp_path):
    from components.pusher import push

    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"")
    destination = tmp_path / "serving" / "m"
    assert push(str(model), str(destination)) == 1
    assert not (destination / "1" / SCHEMA_FILE).exists()
