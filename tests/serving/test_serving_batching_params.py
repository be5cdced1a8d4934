"""Every BatchingParameters field: enforced as TF Serving's SharedBatchScheduler / BatchingSession
enforce it, or refused at start-up naming the field.

The scheduler tests drive BatchScheduler with a recording runner (no TensorFlow, deterministic);
the server tests check the same limits end to end over REST and gRPC on the demo model.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import requests
from google.protobuf import text_format

from serving import demo_model as dm
from serving import protos
from serving.batching import BatchOptions, BatchScheduler
from serving.errors import ServingError
from serving_harness import ServerProcess


def params(text: str):
    return text_format.Parse(text, protos.BatchingParameters())


def options(text: str) -> BatchOptions:
    return BatchOptions(params(text))


# ------------------------------------------------------------------ start-up checks


@pytest.mark.parametrize("text, message", [
    ("max_batch_size { value: 0 }",
     "BatchingParameters.max_batch_size: input_batch_size_limit must be positive; was 0"),
    ("max_batch_size { value: -1 }", "BatchingParameters.max_batch_size: must be positive; was -1"),
    ("max_batch_size { value: 2147483648 }",
     "BatchingParameters.max_batch_size: must be at most 2147483647; was 2147483648"),
    ("batch_timeout_micros { value: -1 }",
     "BatchingParameters.batch_timeout_micros: batch_timeout_micros must be non-negative; was -1"),
    ("max_enqueued_batches { value: -2 }",
     "BatchingParameters.max_enqueued_batches: must be positive; was -2"),
    ("max_enqueued_batches { value: 0 } max_batch_size { value: 8 } "
     "enable_large_batch_splitting { value: true }",
     "BatchingParameters.max_enqueued_batches: max_enqueued_batches must be positive; was 0"),
    ("num_batch_threads { value: 0 }",
     "BatchingParameters.num_batch_threads: num_batch_threads must be positive; was 0"),
    ("num_batch_threads { value: 4294967297 }",
     "BatchingParameters.num_batch_threads: must be at most 2147483647; was 4294967297"),
    ("max_batch_size { value: 16 } allowed_batch_sizes: 4 allowed_batch_sizes: 8",
     "BatchingParameters.allowed_batch_sizes: Last entry in allowed_batch_sizes must match "
     "max_batch_size; last entry was 8; expected 16"),
    ("allowed_batch_sizes: 8",  # max_batch_size unset: the queue's default, 1000
     "BatchingParameters.allowed_batch_sizes: Last entry in allowed_batch_sizes must match "
     "max_batch_size; last entry was 8; expected 1000"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4294967304 allowed_batch_sizes: 8",
     "BatchingParameters.allowed_batch_sizes: entries must fit in int32; got 4294967304"),
    ("max_batch_size { value: 32 } enable_large_batch_splitting { value: true } "
     "max_execution_batch_size { value: 64 }",
     # AddQueue's message, with the three values StrCat'ed onto it.
     "BatchingParameters.max_execution_batch_size: When enable_large_batch_splitting is true, "
     "input_batch_size_limit must be greater than or equal to max_execution_batch_size.13264"),
    ("enable_large_batch_splitting { value: true }",
     "BatchingParameters.max_execution_batch_size: must be positive when "
     "enable_large_batch_splitting is true; was 0 (neither max_execution_batch_size nor "
     "max_batch_size is set)"),
    ("max_batch_size { value: 8 } enable_large_batch_splitting { value: true } "
     "max_execution_batch_size { value: -4 }",
     "BatchingParameters.max_execution_batch_size: must be positive when "
     "enable_large_batch_splitting is true; was -4"),
])
def test_bad_parameters_are_refused_naming_the_field(text, message):
    with pytest.raises(ServingError) as info:
        options(text)
    assert info.value.code_name == "INVALID_ARGUMENT"
    assert info.value.message == message


def test_defaults_and_tf_serving_rewrites():
    o = options("")
    assert (o.max_batch_size, o.batch_timeout_s, o.max_enqueued_batches) == (1000, 0, 10)
    assert o.num_batch_threads >= 1 and not o.enable_large_batch_splitting
    # max_enqueued_batches 0 without splitting is rewritten to 1 (AddQueue).
    assert options("max_enqueued_batches { value: 0 }").max_enqueued_batches == 1
    # max_execution_batch_size only counts with large batch splitting.
    o = options("max_batch_size { value: 8 } max_execution_batch_size { value: 2 }")
    assert o.max_execution_batch_size == 8
    # With splitting and no max_execution_batch_size, max_batch_size is the execution size.
    o = options("max_batch_size { value: 8 } enable_large_batch_splitting { value: true }")
    assert (o.max_batch_size, o.max_execution_batch_size) == (8, 8)


def test_cli_refuses_bad_batching_parameters_at_start_up(tmp_path, capsys):
    from serving.cli import main

    config = tmp_path / "batching.config"
    config.write_text("max_batch_size { value: 32 }\nenable_large_batch_splitting { value: true }\n"
                      "max_execution_batch_size { value: 33 }\n")
    argv = ["--model_base_path=/nonexistent", "--enable_batching",
            f"--batching_parameters_file={config}"]
    assert main(argv) == 1
    assert ("INVALID_ARGUMENT: BatchingParameters.max_execution_batch_size: When "
            "enable_large_batch_splitting is true") in capsys.readouterr().err
    config.write_text("max_batch_size { value: 99999999999999999999 }\n")
    assert main(argv) == 1
    assert f"INVALID_ARGUMENT: Invalid protobuf file: '{config}'" in capsys.readouterr().err


# ------------------------------------------------------------------ the scheduler


@dataclass(frozen=True)
class Spec:
    name: str


class Recorder:
    """A runner that records the batches it is given: y = 2x, optionally blocking."""

    key = "recorder"

    def __init__(self, output=None, gate: threading.Event | None = None):
        self.inputs = {"x": Spec("x:0")}
        self.outputs = {"y": Spec("y:0")}
        self.batches: list[np.ndarray] = []
        self.entered = threading.Semaphore(0)
        self.gate = gate
        self.output = output

    def run(self, inputs):
        self.batches.append(inputs["x"].copy())
        self.entered.release()
        if self.gate is not None:
            assert self.gate.wait(30)
        if self.output is not None:
            return {"y": self.output(inputs["x"])}
        return {"y": inputs["x"] * 2}


@pytest.fixture
def scheduler_for():
    made = []

    def make(text: str) -> BatchScheduler:
        made.append(BatchScheduler(options(text)))
        return made[-1]

    yield make
    for scheduler in made:
        scheduler.stop()


def rows(n: int, start: int = 0, width: int = 2) -> np.ndarray:
    return np.arange(start, start + n * width, dtype=np.float32).reshape(n, width)


def error_of(future) -> ServingError:
    with pytest.raises(ServingError) as info:
        future.result(timeout=30)
    return info.value


def test_task_larger_than_max_batch_size_is_refused_even_with_splitting(scheduler_for):
    runner = Recorder()
    for text in ("max_batch_size { value: 32 } enable_large_batch_splitting { value: true }",
                 "max_batch_size { value: 32 } enable_large_batch_splitting { value: true } "
                 "max_execution_batch_size { value: 8 }",
                 "max_batch_size { value: 32 }"):
        scheduler = scheduler_for(text)
        with pytest.raises(ServingError) as info:
            scheduler.submit(runner, {"x": rows(33)})
        assert (info.value.code_name, info.value.message) == (
            "INVALID_ARGUMENT", "Task size 33 is larger than maximum input batch size 32")
        np.testing.assert_array_equal(scheduler.submit(runner, {"x": rows(32)}).result(30)["y"],
                                      rows(32) * 2)


def test_large_batch_splitting_fills_execution_batches(scheduler_for):
    scheduler = scheduler_for("max_batch_size { value: 32 } enable_large_batch_splitting { value: true } "
                              "max_execution_batch_size { value: 8 } num_batch_threads { value: 1 }")
    runner = Recorder()
    result = scheduler.submit(runner, {"x": rows(20)}).result(30)
    np.testing.assert_array_equal(result["y"], rows(20) * 2)  # pieces put back in order
    assert [len(b) for b in runner.batches] == [8, 8, 4]


def test_split_task_tops_up_the_open_batch_first(scheduler_for):
    # InputSplitMetadata: a 6-row task meeting an open batch of 5 (of 8) goes in as 3 + 3.
    scheduler = scheduler_for("max_batch_size { value: 32 } enable_large_batch_splitting { value: true } "
                              "max_execution_batch_size { value: 8 } num_batch_threads { value: 1 } "
                              "batch_timeout_micros { value: 300000 }")
    runner = Recorder()
    first = scheduler.submit(runner, {"x": rows(5)})
    second = scheduler.submit(runner, {"x": rows(6, start=100)})
    np.testing.assert_array_equal(first.result(30)["y"], rows(5) * 2)
    np.testing.assert_array_equal(second.result(30)["y"], rows(6, start=100) * 2)
    assert [len(b) for b in runner.batches] == [8, 3]


def test_split_capacity_refusal(scheduler_for):
    gate = threading.Event()
    runner = Recorder(gate=gate)
    scheduler = scheduler_for("max_batch_size { value: 32 } enable_large_batch_splitting { value: true } "
                              "max_execution_batch_size { value: 8 } max_enqueued_batches { value: 2 } "
                              "num_batch_threads { value: 1 } batch_timeout_micros { value: 60000000 }")
    try:
        running = scheduler.submit(runner, {"x": rows(8)})  # full: taken by the only thread
        assert runner.entered.acquire(timeout=30)
        queued = scheduler.submit(runner, {"x": rows(16)})  # capacity (2-1)*8 + 8 = 16: fits
        with pytest.raises(ServingError) as info:
            scheduler.submit(runner, {"x": rows(1)})
        assert (info.value.code_name, info.value.message) == (
            "UNAVAILABLE", "The batch scheduling queue to which this task was submitted is full; "
            "task size is 1 but scheduling capacity is only 0 (num_enqueued_batches=2, "
            "max_enqueued_batches=2, open_batch_size=8, max_execution_batch_size=8)")
    finally:
        gate.set()
    running.result(30)
    np.testing.assert_array_equal(queued.result(30)["y"], rows(16) * 2)


def test_max_enqueued_batches_without_splitting(scheduler_for):
    gate = threading.Event()
    runner = Recorder(gate=gate)
    scheduler = scheduler_for("max_batch_size { value: 4 } max_enqueued_batches { value: 1 } "
                              "num_batch_threads { value: 1 } batch_timeout_micros { value: 60000000 }")
    try:
        running = scheduler.submit(runner, {"x": rows(4)})
        assert runner.entered.acquire(timeout=30)
        waiting = scheduler.submit(runner, {"x": rows(3)})  # the open batch
        also = scheduler.submit(runner, {"x": rows(1)})     # still fits the open batch
        with pytest.raises(ServingError) as info:
            scheduler.submit(runner, {"x": rows(1)})        # would need a second batch
        assert (info.value.code_name, info.value.message) == (
            "UNAVAILABLE", "The batch scheduling queue to which this task was submitted is full; "
            "currently 1 batches enqueued and max_enqueued_batches is 1")
    finally:
        gate.set()
    for future in (running, waiting, also):
        future.result(30)
    assert [len(b) for b in runner.batches] == [4, 4]


def test_max_execution_batch_size_is_ignored_without_splitting(scheduler_for):
    scheduler = scheduler_for("max_batch_size { value: 8 } max_execution_batch_size { value: 2 } "
                              "num_batch_threads { value: 1 }")
    runner = Recorder()
    scheduler.submit(runner, {"x": rows(5)}).result(30)
    assert [len(b) for b in runner.batches] == [5]


def test_allowed_batch_sizes_pad_with_the_last_tasks_first_row(scheduler_for):
    scheduler = scheduler_for("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 8 "
                              "num_batch_threads { value: 1 } batch_timeout_micros { value: 300000 }")
    runner = Recorder()
    a = scheduler.submit(runner, {"x": rows(1, start=10)})
    b = scheduler.submit(runner, {"x": rows(2, start=20)})
    np.testing.assert_array_equal(a.result(30)["y"], rows(1, start=10) * 2)
    np.testing.assert_array_equal(b.result(30)["y"], rows(2, start=20) * 2)
    (batch,) = runner.batches
    assert batch.shape == (4, 2)
    np.testing.assert_array_equal(batch[3], rows(2, start=20)[0])
    scheduler.submit(runner, {"x": rows(5)}).result(30)
    assert runner.batches[-1].shape == (8, 2)


def test_different_inner_shapes_fail_their_batch_without_padding(scheduler_for):
    scheduler = scheduler_for("max_batch_size { value: 8 } num_batch_threads { value: 1 } "
                              "batch_timeout_micros { value: 300000 }")
    runner = Recorder()
    a = scheduler.submit(runner, {"x": rows(1, width=2)})
    b = scheduler.submit(runner, {"x": rows(1, width=3)})
    message = ("Tensors with name 'x:0' from different tasks have different shapes and padding "
               "is turned off. Set pad_variable_length_inputs to true, or ensure that all "
               "tensors with the same name have equal dimensions starting with the first dim.")
    for future in (a, b):
        error = error_of(future)
        assert (error.code_name, error.message) == ("FAILED_PRECONDITION", message)
    assert runner.batches == []


def test_pad_variable_length_inputs_pads_with_each_tensors_first_value(scheduler_for):
    scheduler = scheduler_for("max_batch_size { value: 8 } num_batch_threads { value: 1 } "
                              "batch_timeout_micros { value: 300000 } pad_variable_length_inputs: true")
    runner = Recorder(output=lambda x: x.sum(axis=1))
    short = np.array([[7.0, 8.0]], dtype=np.float32)
    long = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    a = scheduler.submit(runner, {"x": short})
    b = scheduler.submit(runner, {"x": long})
    assert a.result(30)["y"].tolist() == [7.0 + 8.0 + 7.0]  # padded with its own x[0, 0]
    assert b.result(30)["y"].tolist() == [6.0]
    np.testing.assert_array_equal(runner.batches[0], [[7.0, 8.0, 7.0], [1.0, 2.0, 3.0]])
    rank7 = np.zeros((1,) * 7, dtype=np.float32)
    error = error_of(scheduler.submit(runner, {"x": rank7}))
    assert (error.code_name, error.message) == (
        "INVALID_ARGUMENT", "Only tensors with rank from 1 to 6 can be padded.")


def test_batch_timeout_micros(scheduler_for):
    scheduler = scheduler_for("max_batch_size { value: 2 } num_batch_threads { value: 1 } "
                              "batch_timeout_micros { value: 400000 }")
    runner = Recorder()
    start = time.monotonic()
    scheduler.submit(runner, {"x": rows(1)}).result(30)
    assert time.monotonic() - start >= 0.39  # waited for company
    scheduler = scheduler_for("max_batch_size { value: 2 } num_batch_threads { value: 1 } "
                              "batch_timeout_micros { value: 30000000 }")
    start = time.monotonic()
    a = scheduler.submit(runner, {"x": rows(1)})
    b = scheduler.submit(runner, {"x": rows(1)})
    a.result(30), b.result(30)
    assert time.monotonic() - start < 10  # a full batch does not wait out the 30 s timeout


def test_huge_batch_timeout_does_not_break_the_batch_threads(scheduler_for):
    scheduler = scheduler_for("max_batch_size { value: 2 } num_batch_threads { value: 1 } "
                              "batch_timeout_micros { value: 9223372036854775807 }")
    runner = Recorder()
    a = scheduler.submit(runner, {"x": rows(1)})
    time.sleep(0.2)  # the thread now waits on the (clamped) timeout
    b = scheduler.submit(runner, {"x": rows(1)})
    a.result(30), b.result(30)


def test_num_batch_threads_run_batches_concurrently(scheduler_for):
    barrier = threading.Barrier(2, timeout=20)
    runner = Recorder(output=lambda x: (barrier.wait(), x)[1])
    scheduler = scheduler_for("max_batch_size { value: 1 } num_batch_threads { value: 2 }")
    a = scheduler.submit(runner, {"x": rows(1)})
    b = scheduler.submit(runner, {"x": rows(1)})
    a.result(30), b.result(30)  # the barrier needs both batches running at once


def test_batched_output_checks(scheduler_for):
    scheduler = scheduler_for("max_batch_size { value: 4 } num_batch_threads { value: 1 }")
    error = error_of(scheduler.submit(Recorder(output=lambda x: np.float32(1)), {"x": rows(2)}))
    assert (error.code_name, error.message) == (
        "FAILED_PRECONDITION", "Batched output tensor has 0 dimensions")
    error = error_of(scheduler.submit(Recorder(output=lambda x: x[:1]), {"x": rows(2)}))
    assert (error.code_name, error.message) == (
        "FAILED_PRECONDITION", "Batched output tensor's 0th dimension does not equal the sum of "
        "the 0th dimension sizes of the input tensors")


def test_batching_run_input_checks(scheduler_for):
    scheduler = scheduler_for("max_batch_size { value: 4 }")
    runner = Recorder()
    for inputs, message in (
            ({"x": np.float32(1)}, "Batching Run() input tensors must have at least one dimension"),
            ({"x": rows(1), "z": rows(2)},
             "Batching Run() input tensors must have equal 0th-dimension size")):
        with pytest.raises(ServingError) as info:
            scheduler.submit(runner, inputs)
        assert (info.value.code_name, info.value.message) == ("INVALID_ARGUMENT", message)


# ------------------------------------------------------------------ over REST and gRPC


@pytest.fixture(scope="module")
def server(demo_model, log_dir, tmp_path_factory):
    config = tmp_path_factory.mktemp("batching_params") / "batching.config"
    config.write_text("max_batch_size { value: 32 }\nenable_large_batch_splitting { value: true }\n"
                      "max_execution_batch_size { value: 8 }\nbatch_timeout_micros { value: 1000 }\n"
                      "max_enqueued_batches { value: 100 }\nnum_batch_threads { value: 1 }\n")
    proc = ServerProcess(["--model_name=demo", f"--model_base_path={demo_model.base_path}",
                          "--enable_batching=true", f"--batching_parameters_file={config}"],
                         log_dir, "batching_params").start()
    yield proc
    proc.stop()


def instances(n: int) -> list[dict]:
    return [{"x": [float(i), 1.0, -1.0], "count": i, "tag": f"t{i}"} for i in range(n)]


def grpc_predict_request(n: int, output_filter=()):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "demo"
    rows_ = instances(n)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([r["x"] for r in rows_], tf.float32))
    request.inputs["count"].CopyFrom(tf.make_tensor_proto([r["count"] for r in rows_], tf.int64))
    request.inputs["tag"].CopyFrom(tf.make_tensor_proto([r["tag"].encode() for r in rows_]))
    request.output_filter.extend(output_filter)
    return request


TOO_BIG = "Task size 33 is larger than maximum input batch size 32"


def test_rest_task_beyond_max_batch_size_with_splitting(server):
    url = f"{server.rest}/v1/models/demo"
    r = requests.post(f"{url}:predict", data=json.dumps({"instances": instances(33)}), timeout=30)
    assert (r.status_code, r.json()) == (400, {"error": TOO_BIG})
    examples = [{"x": [1.0, 2.0, 3.0], "count": 1}] * 33
    r = requests.post(f"{url}:classify", timeout=30,
                      data=json.dumps({"signature_name": "classify", "examples": examples}))
    assert (r.status_code, r.json()) == (400, {"error": TOO_BIG})
    # 32 rows are split into execution batches of 8 and answered whole, in order.
    r = requests.post(f"{url}:predict", data=json.dumps({"instances": instances(32)}), timeout=30)
    assert r.status_code == 200
    predictions = r.json()["predictions"]
    rows_ = instances(32)
    expected = dm.expected_outputs([i["x"] for i in rows_], [i["count"] for i in rows_],
                                   [i["tag"] for i in rows_])
    assert [p["doubled"] for p in predictions] == [i["count"] * 2 for i in rows_]
    np.testing.assert_allclose([p["total"] for p in predictions], expected["total"], rtol=1e-6)


def test_grpc_task_beyond_max_batch_size_with_splitting(server):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for output_filter in ((), ("doubled",)):  # a filtered Run has its own queue, same limits
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(grpc_predict_request(33, output_filter), timeout=30)
            assert (info.value.code(), info.value.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT, TOO_BIG)
        response = stub.Predict(grpc_predict_request(20, ("doubled",)), timeout=30)
        assert list(response.outputs) == ["doubled"]
        assert list(response.outputs["doubled"].int64_val) == [i * 2 for i in range(20)]
