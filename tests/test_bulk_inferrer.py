"""BulkInferrer on the session's penguin model (`trained_penguin`): its eval examples and
pushed SavedModel are copied into a pipeline of this test's own home (the trained home is
shared and must not change) and the BulkInferrer runs through the real launcher, ML
Metadata and Beam (FnApiRunner). Its PredictionLogs are checked against the SavedModel
called directly, and read back by the TrafficMonitor's reader (components/traffic_logs.py)."""
from __future__ import annotations

import glob
import logging
import os
import shutil
import time
from collections import Counter

import pytest

from components.artifacts import Examples, Model, ModelBlessing
from components.base import Component, Output, Parameter, Step
from components.bulk_inferrer import BulkInferrer
from pipelines.pipeline import Pipeline

UNBLESSED_REASON = "accuracy 0.31 is below the threshold 0.6"


class CopiedExamples(Component):
    """The Examples artifact at `source` (Split-<name>/ directories), copied."""

    examples: Output[Examples]
    source: Parameter[str]
    splits: Parameter[list[str]]

    def execute(self, step: Step) -> None:
        for split in step.splits:
            shutil.copytree(os.path.join(step.source, f"Split-{split}"),
                            step.examples.split_uri(split))
        step.examples.set(split_names=list(step.splits), span=0)


class CopiedModel(Component):
    """The SavedModel directory `source`, copied to Format-Serving/."""

    model: Output[Model]
    source: Parameter[str]

    def execute(self, step: Step) -> None:
        shutil.copytree(step.source, step.model.serving_dir)


class Blessing(Component):
    """A ModelBlessing with the given verdict, as the Evaluator records one."""

    blessing: Output[ModelBlessing]
    blessed: Parameter[bool]
    reason: Parameter[str] = ""

    def execute(self, step: Step) -> None:
        step.blessing.set(blessed=int(step.blessed), reason=step.reason)


def _run(trained, home, *, blessed=None, **bulk_args):
    from pipelines.local_runner import run_pipeline

    source = trained.run.steps["ExampleGen"].outputs["examples"].uri
    examples = CopiedExamples(source=source, splits=["train", "eval"])
    model = CopiedModel(source=trained.model_dir)
    components = [examples, model]
    wiring = {}
    if blessed is not None:
        blessing = Blessing(blessed=blessed, reason="" if blessed else UNBLESSED_REASON)
        components.append(blessing)
        wiring["model_blessing"] = blessing.outputs.blessing
    bulk = BulkInferrer(examples=examples.outputs.examples, model=model.outputs.model,
                        model_name=trained.model_name, **wiring, **bulk_args)
    return run_pipeline(Pipeline("bulk", [*components, bulk]), home=str(home),
                        echo=lambda line: None)


@pytest.fixture(scope="module")
def inferred(trained_penguin, tmp_path_factory):
    home = tmp_path_factory.mktemp("bulk-home")
    run = _run(trained_penguin, home, blessed=True, data_splits=["eval"],
               model_version=trained_penguin.version, max_batch_size=16)
    assert run.ok, run.summary()
    return home, run, run.steps["BulkInferrer"].outputs["inference_result"]


def _logs(result, model_name):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from components.traffic_logs import closed_log_files

    files = closed_log_files(result.log_dir("eval"), model_name)
    entries = [prediction_log_pb2.PredictionLog.FromString(record)
               for path in files
               for record in tf.data.TFRecordDataset(path, compression_type="GZIP")
               .as_numpy_iterator()]
    return files, entries


def _eval_records(trained):
    import tensorflow as tf

    return [record for path in sorted(glob.glob(trained.eval_examples))
            for record in tf.data.TFRecordDataset(path, compression_type="GZIP")
            .as_numpy_iterator()]


def test_one_prediction_per_eval_example_equal_to_the_saved_model(trained_penguin, inferred):
    import numpy as np
    import tensorflow as tf

    from serving.request_log import request_log_fields

    _, run, result = inferred
    files, entries = _logs(result, trained_penguin.model_name)
    assert files and entries
    expected = _eval_records(trained_penguin)
    logged = [bytes(e) for entry in entries
              for e in tf.make_ndarray(entry.predict_log.request.inputs["examples"]).reshape(-1)]
    assert len(logged) == len(expected)  # one prediction per eval example
    assert Counter(logged) == Counter(expected)
    assert result.prediction_count == len(expected)
    assert result.split_names == ["eval"]
    assert all(len(tf.make_ndarray(e.predict_log.request.inputs["examples"])) <= 16
               for e in entries)
    assert len(entries) >= len(expected) // 16  # batched

    serving_default = tf.saved_model.load(trained_penguin.model_dir).signatures["serving_default"]
    request_ids = set()
    for entry in entries:
        batch = tf.make_ndarray(entry.predict_log.request.inputs["examples"])
        direct = serving_default(examples=tf.constant(batch))["scores"].numpy()
        logged_scores = tf.make_ndarray(entry.predict_log.response.outputs["scores"])
        assert logged_scores.shape == (len(batch), len(trained_penguin.labels))
        np.testing.assert_allclose(logged_scores, direct, rtol=0, atol=1e-6)
        spec = entry.log_metadata.model_spec
        assert spec.name == trained_penguin.model_name
        assert spec.version.value == trained_penguin.version
        assert spec.signature_name == "serving_default"
        assert entry.predict_log.request.model_spec.name == trained_penguin.model_name
        assert entry.log_metadata.saved_model_tags == ["serve"]
        fields = request_log_fields(entry)
        assert fields.transport == "bulk_inferrer" and not fields.error_code
        request_ids.add(fields.request_id)
    assert len(request_ids) == len(entries) and "" not in request_ids
    assert f"{len(expected)} predictions of split eval" in run.steps["BulkInferrer"].reason


def test_the_traffic_monitors_reader_reads_batch_predictions_like_live_ones(trained_penguin,
                                                                            inferred):
    from components.tfmd_files import read_schema
    from components.traffic_logs import read_window
    from serving.log_files import _FINAL_NAME, model_dir_name

    _, _, result = inferred
    files, _ = _logs(result, trained_penguin.model_name)
    version_dir = os.path.dirname(files[0])
    assert sorted(os.listdir(version_dir)) == sorted(os.path.basename(p) for p in files)
    for path in files:  # the server's own name pattern and directory naming
        assert _FINAL_NAME.fullmatch(os.path.basename(path)), path
        assert os.path.basename(os.path.dirname(os.path.dirname(path))) == \
            model_dir_name(trained_penguin.model_name)
    schema_artifact = trained_penguin.run.steps["ImportSchemaGen"].outputs["schema"]
    window = read_window(result.log_dir("eval"), trained_penguin.model_name, 0,
                         time.time() + 3600, read_schema(schema_artifact.file),
                         logging.getLogger("test"))
    expected = _eval_records(trained_penguin)
    assert len(window.examples) == len(expected)
    assert window.failed == 0 and window.unreadable == 0 and not window.truncated_files
    assert window.versions == Counter({str(trained_penguin.version): window.requests})
    assert window.signatures == Counter({"serving_default": window.requests})
    assert sorted(window.files) == sorted(files)


def test_request_log_layout_helper_agrees_with_the_server():
    from components import prediction_log_files as ours
    from serving import log_files
    from serving.protos import RequestLogFields

    for name in ["penguin", "a/b", ".hidden", "", "ü space"]:
        assert ours.model_dir_name(name) == log_files.model_dir_name(name)
    fields = RequestLogFields.FromString(ours.request_log_fields("abc", "bulk_inferrer"))
    assert (fields.request_id, fields.transport) == ("abc", "bulk_inferrer")
    stem = ours.file_stem("predictions", 1_790_000_000.25)
    assert log_files._FINAL_NAME.fullmatch(stem + "-000000" + ours.SUFFIX)


def test_an_unblessed_model_is_skipped_with_the_reason(trained_penguin, tmp_path):
    run = _run(trained_penguin, tmp_path, blessed=False)
    assert run.ok, run.summary()
    step = run.steps["BulkInferrer"]
    assert step.outcome == "skipped"
    assert UNBLESSED_REASON in step.reason
    result = step.outputs["inference_result"]
    assert result.prediction_count == 0
    assert not glob.glob(os.path.join(result.uri, "**", "*.tfrecord.gz"), recursive=True)


def test_a_missing_split_is_an_error_naming_it(trained_penguin, tmp_path):
    run = _run(trained_penguin, tmp_path, data_splits=["eval", "holdout"])
    assert not run.ok
    assert "'holdout'" in run.failure and "BulkInferrer" in run.summary()
    assert "['train', 'eval']" in run.failure


def test_every_split_by_default_with_counts_per_split(trained_penguin, tmp_path):
    import tensorflow as tf

    run = _run(trained_penguin, tmp_path)
    assert run.ok, run.summary()
    result = run.steps["BulkInferrer"].outputs["inference_result"]
    assert result.split_names == ["train", "eval"]
    source = trained_penguin.run.steps["ExampleGen"].outputs["examples"]
    total = 0
    for split in ("train", "eval"):
        expected = sum(1 for path in glob.glob(source.file_pattern(split))
                       for _ in tf.data.TFRecordDataset(path, compression_type="GZIP"))
        assert f"{expected} predictions of split {split}" in run.steps["BulkInferrer"].reason
        total += expected
    assert result.prediction_count == total
    assert result.model_version == run.steps["CopiedModel"].outputs["model"].id


def test_a_signature_without_serialized_examples_is_an_error_naming_it(trained_penguin,
                                                                        tmp_path):
    run = _run(trained_penguin, tmp_path, signature_name="serving_raw")
    assert not run.ok
    assert "'serving_raw'" in run.failure and "one DT_STRING input" in run.failure
    run = _run(trained_penguin, tmp_path, signature_name="no_such_signature")
    assert not run.ok
    assert "no signature 'no_such_signature'" in run.failure
