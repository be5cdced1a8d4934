"""Beam runner arguments change where a step's work runs, not what it computes — the reason
they are not part of the cache key (pipelines/launcher.py cache_key, components/beam_options.py).

StatisticsGen, Transform, Evaluator and BulkInferrer run on the session's penguin data and
model (tests/conftest.py `trained_penguin`, copied into homes of this test's own) through the
real local runner and launcher, once in-process (no beam_args: FnApiRunner, in_memory, 1
worker) and once with the pipeline-level beam_args MULTI_PROCESS (2 SDK worker processes).
Both runs' artifacts are compared; the multi-process run must have started Beam worker
processes (`apache_beam.runners.worker.sdk_worker_main`, seen as this process's children),
and no step may have tried the Prism runner."""
from __future__ import annotations

import glob
import os
import threading
import time
from collections import Counter

import pytest

from components.bulk_inferrer import BulkInferrer
from components.evaluator import Evaluator
from components.schema_gen import ImportSchemaGen
from components.statistics_gen import StatisticsGen
from components.transform import Transform
from pipelines.penguin.pipeline import MODULE_FILE, SCHEMA_FILE
from pipelines.pipeline import Pipeline
from tests.test_bulk_inferrer import CopiedExamples, CopiedModel

MULTI_PROCESS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
BEAM_STEPS = ("StatisticsGen", "Transform", "Evaluator", "BulkInferrer")
WORKER_MODULE = "apache_beam.runners.worker.sdk_worker_main"


def _pipeline(trained, beam_args: list[str]) -> Pipeline:
    source = trained.run.steps["ExampleGen"].outputs["examples"].uri
    examples = CopiedExamples(source=source, splits=["train", "eval"])
    model = CopiedModel(source=trained.model_dir)
    schema = ImportSchemaGen(schema_file=SCHEMA_FILE)
    stats = StatisticsGen(examples=examples.outputs.examples, schema=schema.outputs.schema)
    transform = Transform(examples=examples.outputs.examples, schema=schema.outputs.schema,
                          module_file=MODULE_FILE)
    evaluator = Evaluator(examples=examples.outputs.examples, model=model.outputs.model,
                          schema=schema.outputs.schema, label_key="species",
                          preprocessing_function_names=["transform_label"],
                          slice_features=[["island"], ["sex"]], lower_bound=0.6)
    bulk = BulkInferrer(examples=examples.outputs.examples, model=model.outputs.model,
                        model_name=trained.model_name, data_splits=["eval"],
                        model_version=trained.version, max_batch_size=16)
    return Pipeline("beam_modes", [examples, model, schema, stats, transform, evaluator, bulk],
                    beam_args=beam_args)


class _BeamWorkers:
    """Samples this process's descendants every 0.1 s; keeps the PIDs of Beam SDK workers."""

    def __init__(self):
        import psutil

        self._me = psutil.Process()
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        import psutil

        while not self._stop.is_set():
            for child in self._me.children(recursive=True):
                try:
                    if WORKER_MODULE in " ".join(child.cmdline()):
                        self.pids.add(child.pid)
                except psutil.Error:
                    pass  # exited between listing and reading
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _run(trained, home, beam_args):
    from pipelines.local_runner import run_pipeline

    with _BeamWorkers() as workers:
        run = run_pipeline(_pipeline(trained, beam_args), home=str(home), echo=lambda line: None)
    assert run.ok, run.summary()
    assert all(run.steps[s].status == "executed" for s in BEAM_STEPS), run.summary()
    return run, workers.pids


@pytest.fixture(scope="module")
def runs(trained_penguin, tmp_path_factory):
    """{"in_process": (run, worker pids), "multi_process": (run, worker pids)}."""
    return {mode: _run(trained_penguin, tmp_path_factory.mktemp(f"beam-{mode}"), args)
            for mode, args in (("in_process", []), ("multi_process", MULTI_PROCESS))}


def _output(runs, mode, step, key):
    return runs[mode][0].steps[step].outputs[key]


def test_the_multi_process_run_used_worker_processes_and_says_so(runs):
    in_process, in_process_workers = runs["in_process"]
    multi_process, workers = runs["multi_process"]
    assert not in_process_workers
    # Each Beam step starts its own 2 workers: a step that ignored the beam_args adds none.
    assert len(workers) >= 2 * len(BEAM_STEPS), workers
    for step in BEAM_STEPS:
        assert "Beam runner: FnApiRunner, in_memory, 1 worker" in in_process.steps[step].reason
        assert "Beam runner: FnApiRunner, multi_processing, 2 workers" in \
            multi_process.steps[step].reason, multi_process.steps[step].reason


def test_no_step_tried_the_prism_runner(runs):
    for mode in runs:
        for step in BEAM_STEPS:
            path = runs[mode][0].steps[step].log_path
            with open(path, encoding="utf-8") as fh:
                log = fh.read()
            assert "Beam runner: FnApiRunner" in log, path
            assert "prism" not in log.lower(), f"{path} mentions Prism"


def _numbers_close(a, b, path="", rel=1e-9, abs_=1e-12):
    """Recursive equality of JSON-like values, floats within `rel` relative or `abs_`
    absolute: a float sum's last digits may depend on how the rows were split between
    workers."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            _numbers_close(a[key], b[key], f"{path}.{key}", rel, abs_)
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{path}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            _numbers_close(x, y, f"{path}[{i}]", rel, abs_)
    elif isinstance(a, float) or isinstance(b, float):
        assert b == pytest.approx(a, rel=rel, abs=abs_), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_statistics_are_the_same(runs):
    from google.protobuf import json_format

    from components.tfmd_files import read_statistics

    for split in ("train", "eval"):
        found = []
        for mode in runs:
            stats = read_statistics(_output(runs, mode, "StatisticsGen", "statistics"), split)
            as_dict = json_format.MessageToDict(stats)
            for dataset in as_dict["datasets"]:
                dataset["features"].sort(key=lambda f: str(f.get("path") or f.get("name")))
            found.append(as_dict)
        assert found[0]["datasets"][0]["numExamples"]
        _numbers_close(*found, path=f"statistics[{split}]")


def _records(pattern: str) -> list[bytes]:
    import tensorflow as tf

    files = sorted(glob.glob(pattern))
    assert files, pattern
    return [r for f in files
            for r in tf.data.TFRecordDataset(f, compression_type="GZIP").as_numpy_iterator()]


def _example_rows(records: list[bytes]) -> list[dict[str, list]]:
    """Parsed tf.Examples, sorted by their values (floats rounded for the order only)."""
    import tensorflow as tf

    rows = []
    for record in records:
        example = tf.train.Example.FromString(record)
        rows.append({key: list(getattr(feature, feature.WhichOneof("kind")).value)
                     for key, feature in example.features.feature.items()})
    return sorted(rows, key=lambda row: [(k, [round(v, 4) if isinstance(v, float) else v
                                              for v in row[k]]) for k in sorted(row)])


def test_transform_gives_the_same_examples_and_the_same_transform_fn(runs, trained_penguin):
    """The same transformed examples, as a multiset (shards may differ), and the same
    outputs of the two transform graphs on the raw eval examples. Floats agree within 1e-5,
    not bit for bit: scale_to_z_score's mean and variance are sums whose order depends on
    how the rows were split between workers, so every z-score moves by float32 ulps
    (measured: all 344 records differ in bytes, by at most 9.5e-7)."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft

    for split in ("train", "eval"):
        rows = [_example_rows(_records(os.path.join(
            _output(runs, mode, "Transform", "transformed_examples").split_uri(split), "*")))
            for mode in runs]
        assert rows[0], split
        _numbers_close(rows[0], rows[1], path=f"transformed {split}", rel=1e-5, abs_=1e-5)

    graphs = [_output(runs, mode, "Transform", "transform_graph").uri for mode in runs]
    outputs = []
    raw = tf.constant(_records(trained_penguin.eval_examples))
    for graph in graphs:
        transform_output = tft.TFTransformOutput(graph)
        features = tf.io.parse_example(raw, transform_output.raw_feature_spec())
        transformed = transform_output.transform_raw_features(features)
        outputs.append({k: np.asarray(v) for k, v in transformed.items()})
    assert sorted(outputs[0]) == sorted(outputs[1]) and len(outputs[0]) >= 5
    for key in outputs[0]:
        if outputs[0][key].dtype.kind == "f":
            np.testing.assert_allclose(outputs[1][key], outputs[0][key], rtol=1e-5, atol=1e-5,
                                       err_msg=key)
        else:
            np.testing.assert_array_equal(outputs[1][key], outputs[0][key], err_msg=key)
    for asset in ("species", "island", "sex"):
        texts = [open(os.path.join(g, "transform_fn", "assets", asset), "rb").read()
                 for g in graphs]
        assert texts[0] == texts[1] and texts[0], asset


def _metrics(evaluation_uri: str) -> dict[tuple[str, str], float]:
    import tensorflow_model_analysis as tfma

    found = {}
    for per_slice in tfma.load_metrics(evaluation_uri):
        slice_key = str(per_slice.slice_key)
        for entry in per_slice.metric_keys_and_values:
            if entry.value.HasField("double_value"):
                found[(slice_key, str(entry.key))] = entry.value.double_value.value
    return found


def test_evaluator_metrics_and_blessing_are_the_same(runs):
    metrics = [_metrics(_output(runs, mode, "Evaluator", "evaluation").uri) for mode in runs]
    assert len(metrics[0]) >= 10 and sorted(metrics[0]) == sorted(metrics[1])
    for key, value in metrics[0].items():
        assert metrics[1][key] == pytest.approx(value, abs=1e-6), key
    blessings = [_output(runs, mode, "Evaluator", "blessing") for mode in runs]
    assert blessings[0].blessed == blessings[1].blessed
    assert blessings[0].reason == blessings[1].reason


def _predictions(result, model_name) -> dict[bytes, list[float]]:
    import tensorflow as tf

    from tests.test_bulk_inferrer import _logs

    _, entries = _logs(result, model_name)
    found = {}
    for entry in entries:
        batch = tf.make_ndarray(entry.predict_log.request.inputs["examples"]).reshape(-1)
        scores = tf.make_ndarray(entry.predict_log.response.outputs["scores"])
        for example, row in zip(batch, scores):
            found[bytes(example)] = row.tolist()
    return found


def test_bulk_inferrer_predictions_are_the_same_per_example(runs, trained_penguin):
    predictions = [_predictions(_output(runs, mode, "BulkInferrer", "inference_result"),
                                trained_penguin.model_name) for mode in runs]
    assert len(predictions[0]) == len(set(_records(trained_penguin.eval_examples)))
    assert sorted(predictions[0]) == sorted(predictions[1])
    for example, scores in predictions[0].items():
        assert predictions[1][example] == pytest.approx(scores, abs=1e-6)
