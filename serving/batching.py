"""Server-side dynamic batching: TF Serving's BatchingSession over a SharedBatchScheduler.

Every BatchingParameters field is either honoured as TF Serving honours it or refused when the
server starts (BatchOptions), naming the field:

- One queue per signature. A queue holds batches; the last one is open. A task joins the open
  batch; one that does not fit closes it and opens a new batch. A closed batch, or an open one
  that is full (max_execution_batch_size rows) or whose first task has waited
  batch_timeout_micros, is run by the next free batch thread (num_batch_threads of them).
- A task of more than max_batch_size rows is refused: INVALID_ARGUMENT "Task size N is larger
  than maximum input batch size M" (Queue::Schedule), with or without large batch splitting.
- Without splitting, a task that would open a batch beyond max_enqueued_batches (0 counts as 1)
  is refused with UNAVAILABLE; with enable_large_batch_splitting, a task is refused when it
  exceeds the queue's remaining capacity, and otherwise split into pieces that top up the open
  batch and then fill batches of max_execution_batch_size rows (InputSplitMetadata); the
  request is answered when every piece has run.
- A batch is padded with copies of its last task's first row up to the first
  allowed_batch_sizes entry not below its size (which must end at max_batch_size). Inputs whose
  inner dimensions differ within a batch fail the batch with FAILED_PRECONDITION, unless
  pad_variable_length_inputs, which pads every task's tensors to the batch's largest inner
  dimensions with the tensor's own first value.
- A Run fetching other tensors than a signature's (an output_filter naming a subset) is queued
  apart, as BatchingSession's default scheduler creator does, under the same limits.

Callers on threads get a concurrent.futures.Future; callers on an event loop get an asyncio
future, and a finished batch settles all of one loop's futures in a single loop callback, so a
batch of n costs the loop one wake-up rather than n.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future

import numpy as np

from serving import errors
from serving.errors import ServingError
from serving.ints import INT32_MAX

log = logging.getLogger(__name__)

# SharedBatchScheduler<>::QueueOptions defaults.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10
DEFAULT_THREAD_POOL_NAME = "batch_threads"
MAX_PADDED_RANK = 6  # batching_util.cc pads ranks 1 to 6, like PadOp


def _max_parallelism() -> int:
    """port::MaxParallelism(): the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _invalid_parameter(field: str, message: str) -> ServingError:
    return ServingError(errors.INVALID_ARGUMENT, f"BatchingParameters.{field}: {message}")


class BatchOptions:
    """BatchingParameters as GetQueueOptions / CreateBatchScheduler / WrapSessionForBatching
    read them, checked as SharedBatchScheduler::Create and AddQueue check them. Values TF
    Serving would silently wrap (negative sizes into size_t, int64 into int) are refused too."""

    def __init__(self, params=None, cpu_count: int | None = None):
        def has(name):
            return params is not None and params.HasField(name)

        def get(name, default):
            return getattr(params, name).value if has(name) else default

        def at_most_int32(name, value):
            if value > INT32_MAX:
                raise _invalid_parameter(name, f"must be at most {INT32_MAX}; was {value}")
            return value

        self.max_batch_size = at_most_int32(
            "max_batch_size", get("max_batch_size", DEFAULT_MAX_BATCH_SIZE))
        if self.max_batch_size == 0:
            raise _invalid_parameter("max_batch_size", "input_batch_size_limit must be positive; was 0")
        if self.max_batch_size < 0:
            raise _invalid_parameter("max_batch_size", f"must be positive; was {self.max_batch_size}")

        micros = get("batch_timeout_micros", 0)
        if micros < 0:
            raise _invalid_parameter("batch_timeout_micros",
                                     f"batch_timeout_micros must be non-negative; was {micros}")
        self.batch_timeout_micros = micros
        self.batch_timeout_s = micros / 1e6

        self.enable_large_batch_splitting = bool(get("enable_large_batch_splitting", False))

        enqueued = get("max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES)
        if enqueued < 0:
            raise _invalid_parameter("max_enqueued_batches", f"must be positive; was {enqueued}")
        if enqueued == 0:
            if self.enable_large_batch_splitting:
                raise _invalid_parameter("max_enqueued_batches",
                                         "max_enqueued_batches must be positive; was 0")
            enqueued = 1  # AddQueue's rewrite for models that relied on 0 meaning 1
        self.max_enqueued_batches = enqueued

        threads = get("num_batch_threads", None)
        if threads is None:
            threads = cpu_count or _max_parallelism()
        if threads < 1:
            raise _invalid_parameter("num_batch_threads",
                                     f"num_batch_threads must be positive; was {threads}")
        self.num_batch_threads = at_most_int32("num_batch_threads", threads)
        self.thread_pool_name = get("thread_pool_name", DEFAULT_THREAD_POOL_NAME) or ""

        if self.enable_large_batch_splitting:
            # GetQueueOptions: max_execution_batch_size, else max_batch_size's value (0 if unset).
            execution = get("max_execution_batch_size",
                            params.max_batch_size.value if params is not None else 0)
            if execution <= 0:
                unset = "" if has("max_execution_batch_size") else (
                    " (neither max_execution_batch_size nor max_batch_size is set)")
                raise _invalid_parameter("max_execution_batch_size",
                                         "must be positive when enable_large_batch_splitting is "
                                         f"true; was {execution}{unset}")
            if self.max_batch_size < execution:
                raise _invalid_parameter(
                    "max_execution_batch_size",
                    "When enable_large_batch_splitting is true, input_batch_size_limit must be "
                    "greater than or equal to max_execution_batch_size."
                    f"1{self.max_batch_size}{execution}")
            self.max_execution_batch_size = execution
        else:
            if has("max_execution_batch_size"):
                log.warning("BatchingParameters.max_execution_batch_size is ignored without "
                            "enable_large_batch_splitting")
            self.max_execution_batch_size = self.max_batch_size

        sizes = list(params.allowed_batch_sizes) if params is not None else []
        for size in sizes:
            if not -INT32_MAX - 1 <= size <= INT32_MAX:
                raise _invalid_parameter("allowed_batch_sizes",
                                         f"entries must fit in int32; got {size}")
        if sizes and sizes[-1] != self.max_batch_size:
            raise _invalid_parameter("allowed_batch_sizes",
                                     "Last entry in allowed_batch_sizes must match max_batch_size; "
                                     f"last entry was {sizes[-1]}; expected {self.max_batch_size}")
        self.allowed_batch_sizes = sizes
        self.pad_variable_length_inputs = bool(params.pad_variable_length_inputs) if params else False

    def padded_size(self, rows: int) -> int:
        """RoundToLowestAllowedBatchSize."""
        for size in self.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows


class _Split:
    """The pieces of one split task; settles the caller's future when the last piece is done."""

    __slots__ = ("future", "loop", "results", "error", "pending", "lock")

    def __init__(self, future, loop, count: int):
        self.future = future
        self.loop = loop
        self.results: list = [None] * count
        self.error: BaseException | None = None
        self.pending = count
        self.lock = threading.Lock()

    def piece_done(self, index: int, result, error):
        """(future, loop, result, error) once every piece is done, else None."""
        with self.lock:
            if error is not None and self.error is None:
                self.error = error  # ThreadSafeStatus keeps the first error
            else:
                self.results[index] = result
            self.pending -= 1
            if self.pending:
                return None
        if self.error is not None:
            return self.future, self.loop, None, self.error
        try:
            merged = {k: np.concatenate([r[k] for r in self.results]) for k in self.results[0]}
        except Exception as e:  # pragma: no cover - outputs were checked per batch
            return self.future, self.loop, None, ServingError(
                errors.INTERNAL, f"Tensor concat operation failed: {e}")
        return self.future, self.loop, merged, None


class _Task:
    __slots__ = ("inputs", "rows", "future", "loop", "split", "index")

    def __init__(self, inputs, rows, future=None, loop=None, split=None, index=0):
        self.inputs = inputs
        self.rows = rows
        self.future = future
        self.loop = loop  # None: a thread waits on a concurrent Future
        self.split = split  # a piece of a split task: its _Split and position
        self.index = index


class _Batch:
    __slots__ = ("tasks", "size", "start")

    def __init__(self):
        self.tasks: list[_Task] = []
        self.size = 0
        self.start = 0.0


class _Queue:
    """internal::Queue: a deque of batches whose last one is open (there is always one)."""

    def __init__(self, key, runner):
        self.key = key
        self.runner = runner
        self.batches: deque[_Batch] = deque([_Batch()])
        self.ready = False  # in the scheduler's round robin


class BatchScheduler:
    def __init__(self, options: BatchOptions, on_batch=None):
        self.options = options
        self._on_batch = on_batch  # (signature key, rows) per batch run, for metrics
        self._queues: dict[tuple, _Queue] = {}
        self._ready: deque[_Queue] = deque()  # queues with work, round robin
        self._cond = threading.Condition()
        self._deferred_wakeups: dict[asyncio.AbstractEventLoop, int] = {}  # per loop, its thread only
        self._stopped = False
        prefix = options.thread_pool_name or "batch"
        self._threads = [threading.Thread(target=self._worker, name=f"{prefix}_{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        try:
            for thread in self._threads:
                thread.start()
        except RuntimeError as e:
            self.stop()
            raise ServingError(errors.RESOURCE_EXHAUSTED,
                               f"BatchingParameters.num_batch_threads: cannot start "
                               f"{options.num_batch_threads} batch threads: {e}") from None

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # ------------------------------------------------------------ scheduling

    def submit(self, runner, inputs: dict[str, np.ndarray], signature=None) -> Future:
        """BatchingSession::Run for a thread: schedule, and wait on the returned Future.

        `signature` tells apart Runs of one runner that BatchingSession queues separately (a
        different set of fetched tensors); None is the signature's own queue."""
        rows = _batch_rows(inputs)
        future: Future = Future()
        wake = self._schedule(runner, signature, inputs, rows, future, None)
        if wake:
            with self._cond:
                self._cond.notify(wake)
        return future

    def submit_on_loop(self, runner, inputs: dict[str, np.ndarray], signature=None) -> asyncio.Future:
        """Like submit, for a coroutine: call from the running loop, await the result.

        The batch threads are woken once at the end of the loop's current turn rather than per
        task, so the requests the loop takes in during one turn can share a batch instead of a
        batch thread grabbing the first of them alone.
        """
        rows = _batch_rows(inputs)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        wake = self._schedule(runner, signature, inputs, rows, future, loop)
        if wake:
            owed = self._deferred_wakeups.get(loop, 0)
            self._deferred_wakeups[loop] = owed + wake
            if not owed:
                loop.call_soon(self._wake_deferred, loop)
        return future

    def _wake_deferred(self, loop: asyncio.AbstractEventLoop) -> None:
        owed = self._deferred_wakeups.pop(loop, 0)
        with self._cond:
            self._cond.notify(owed)

    def _schedule(self, runner, signature, inputs, rows: int, future, loop) -> int:
        """Queue::Schedule. Raises the task's refusal; returns how many batch threads to wake
        (one per batch that became runnable, one to watch a newly started batch's timeout)."""
        options = self.options
        if rows > options.max_batch_size:
            raise ServingError(errors.INVALID_ARGUMENT, f"Task size {rows} is larger than maximum "
                                                        f"input batch size {options.max_batch_size}")
        limit = options.max_execution_batch_size
        with self._cond:
            key = (id(runner), signature)
            queue = self._queues.get(key)
            if queue is None or queue.runner is not runner:
                queue = self._queues[key] = _Queue(key, runner)
            batches = queue.batches
            self._check_capacity(batches, rows)
            remaining = limit - batches[-1].size
            if rows <= remaining or not options.enable_large_batch_splitting:
                pieces = [_Task(inputs, rows, future, loop)]
            else:
                pieces = _split(inputs, rows, remaining, limit, future, loop)
            wake = 0
            now = time.monotonic()
            for piece in pieces:
                open_batch = batches[-1]
                if open_batch.size + piece.rows > limit:
                    batches.append(_Batch())  # closes the open batch: runnable now
                    open_batch = batches[-1]
                    wake += 1
                if not open_batch.tasks:
                    open_batch.start = now
                    watch = True  # a thread must watch its timeout
                else:
                    watch = False
                open_batch.tasks.append(piece)
                open_batch.size += piece.rows
                if watch or open_batch.size >= limit:
                    wake += 1
            if not queue.ready:
                queue.ready = True
                self._ready.append(queue)
        return wake

    def _check_capacity(self, batches: deque[_Batch], rows: int) -> None:
        """Queue::ValidateBatchTaskQueueCapacity."""
        options = self.options
        if options.enable_large_batch_splitting:
            limit = options.max_execution_batch_size
            open_size = batches[-1].size
            capacity = (options.max_enqueued_batches - len(batches)) * limit + (limit - open_size)
            if rows > capacity:
                raise ServingError(
                    errors.UNAVAILABLE,
                    "The batch scheduling queue to which this task was submitted is full; task "
                    f"size is {rows} but scheduling capacity is only {capacity} "
                    f"(num_enqueued_batches={len(batches)}, max_enqueued_batches="
                    f"{options.max_enqueued_batches}, open_batch_size={open_size}, "
                    f"max_execution_batch_size={limit})")
        elif (batches[-1].size + rows > options.max_batch_size
              and len(batches) >= options.max_enqueued_batches):
            raise ServingError(
                errors.UNAVAILABLE,
                "The batch scheduling queue to which this task was submitted is full; currently "
                f"{len(batches)} batches enqueued and max_enqueued_batches is "
                f"{options.max_enqueued_batches}")

    # ------------------------------------------------------------ batch threads

    def _take_batch(self):
        """Called with the lock held: a runnable batch, or a time to wait until."""
        now = time.monotonic()
        earliest = None
        limit = self.options.max_execution_batch_size
        for _ in range(len(self._ready)):
            queue = self._ready[0]
            self._ready.rotate(-1)
            batches = queue.batches
            if len(batches) == 1:
                open_batch = batches[0]
                if not open_batch.tasks:
                    continue
                due = open_batch.start + self.options.batch_timeout_s
                if open_batch.size < limit and due > now:
                    earliest = due if earliest is None else min(earliest, due)
                    continue
                batches.append(_Batch())  # close the open batch
            batch = batches.popleft()
            if len(batches) == 1 and not batches[0].tasks:
                # Idle: forget it, so an unloaded version's runner is not kept alive by it.
                queue.ready = False
                self._ready.remove(queue)
                if self._queues.get(queue.key) is queue:
                    del self._queues[queue.key]
            return queue.runner, batch, None
        return None, None, earliest

    def _worker(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    runner, batch, wake = self._take_batch()
                    if batch is not None:
                        break
                    timeout = None
                    if wake is not None:
                        timeout = min(max(0.0, wake - time.monotonic()), threading.TIMEOUT_MAX)
                    self._cond.wait(timeout)
            self._run(runner, batch)

    def _run(self, runner, batch: _Batch) -> None:
        if self._on_batch is not None:
            self._on_batch(runner.key, batch.size)
        try:
            outcomes = [(task, result, None)
                        for task, result in zip(batch.tasks, self._results(runner, batch))]
        except BaseException as e:
            outcomes = [(task, None, e) for task in batch.tasks]
        _settle(outcomes)

    def _results(self, runner, batch: _Batch) -> list[dict[str, np.ndarray]]:
        """BatchingSession::ProcessBatch: merge (and pad), run, check and split the outputs."""
        tasks = batch.tasks
        padded = self.options.padded_size(batch.size)
        if len(tasks) == 1 and padded == batch.size and not self.options.pad_variable_length_inputs:
            outputs = runner.run(tasks[0].inputs)
        else:
            outputs = runner.run(self._merge(runner, tasks, padded - batch.size))
        _check_outputs(runner, outputs, padded)
        if len(tasks) == 1:
            if padded == batch.size:
                return [outputs]
            return [{alias: value[:batch.size] for alias, value in outputs.items()}]
        results = []
        offset = 0
        for task in tasks:
            results.append({alias: value[offset:offset + task.rows] for alias, value in outputs.items()})
            offset += task.rows
        return results

    def _merge(self, runner, tasks: list[_Task], padding: int) -> dict[str, np.ndarray]:
        """MergeInputTensors."""
        aliases = sorted(tasks[0].inputs)
        per_alias = {alias: [task.inputs[alias] for task in tasks] for alias in aliases}
        if self.options.pad_variable_length_inputs:
            for alias, arrays in per_alias.items():
                per_alias[alias] = _pad_to_largest(arrays)
        else:
            for index in range(1, len(tasks)):
                for alias in aliases:
                    first, this = per_alias[alias][0], per_alias[alias][index]
                    if first.ndim != this.ndim or first.shape[1:] != this.shape[1:]:
                        name = runner.inputs[alias].name if alias in runner.inputs else alias
                        raise ServingError(
                            errors.FAILED_PRECONDITION,
                            f"Tensors with name '{name}' from different tasks have different "
                            "shapes and padding is turned off. Set pad_variable_length_inputs to "
                            "true, or ensure that all tensors with the same name have equal "
                            "dimensions starting with the first dim.")
        merged = {}
        for alias, arrays in per_alias.items():
            if padding > 0:
                # The first row of the last task's tensor, repeated.
                arrays = arrays + [np.repeat(arrays[-1][:1], padding, axis=0)]
            merged[alias] = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        return merged


def _split(inputs, rows: int, remaining: int, limit: int, future, loop) -> list[_Task]:
    """SplitInputTask with InputSplitMetadata's sizes: the first piece tops up the open batch
    (or is a full batch when it has no room), then full batches, then the rest."""
    sizes = []
    first = min(rows, remaining) if remaining > 0 else min(rows, limit)
    sizes.append(first)
    left = rows - first
    while left > 0:
        sizes.append(min(left, limit))
        left -= sizes[-1]
    split = _Split(future, loop, len(sizes))
    pieces = []
    offset = 0
    for index, size in enumerate(sizes):
        piece_inputs = {alias: array[offset:offset + size] for alias, array in inputs.items()}
        pieces.append(_Task(piece_inputs, size, split=split, index=index))
        offset += size
    return pieces


def _pad_to_largest(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """CalculateMaxDimSizes + AddPadding: each tensor padded at the end of every inner dimension
    to the batch's largest size, with its own first element."""
    rank = arrays[0].ndim
    largest = [max(a.shape[d] for a in arrays) if d else 0 for d in range(rank)]
    out = []
    for array in arrays:
        if array.ndim != rank:
            raise ServingError(errors.FAILED_PRECONDITION,
                               "Tensors with the same name from different tasks have different "
                               "ranks and cannot be padded to one shape.")
        if not 1 <= rank <= MAX_PADDED_RANK:
            raise ServingError(errors.INVALID_ARGUMENT,
                               "Only tensors with rank from 1 to 6 can be padded.")
        widths = [(0, 0)] + [(0, largest[d] - array.shape[d]) for d in range(1, rank)]
        if not any(after for _, after in widths):
            out.append(array)
            continue
        if array.size < 1:
            raise ServingError(errors.INVALID_ARGUMENT,
                               "Got empty tensor in batch of non-empty tensors.")
        out.append(np.pad(array, widths, mode="constant", constant_values=array.flat[0]))
    return out


def _check_outputs(runner, outputs: dict[str, np.ndarray], rows: int) -> None:
    """SplitOutputTensors' checks, in the order of the output tensor names."""
    names = {alias: runner.outputs[alias].name if alias in runner.outputs else alias
             for alias in outputs}
    for alias in sorted(outputs, key=names.get):
        value = outputs[alias]
        if value.ndim == 0:
            raise ServingError(errors.FAILED_PRECONDITION, "Batched output tensor has 0 dimensions")
        if value.shape[0] != rows:
            raise ServingError(errors.FAILED_PRECONDITION,
                               "Batched output tensor's 0th dimension does not equal the sum of "
                               "the 0th dimension sizes of the input tensors")


def _settle(outcomes: list[tuple[_Task, dict | None, BaseException | None]]) -> None:
    """Hand each task its result or error; one callback per event loop. A future whose caller
    gave up (cancelled) is skipped, so it cannot take its batch-mates' results down with it."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for task, result, error in outcomes:
        if task.split is not None:
            done = task.split.piece_done(task.index, result, error)
            if done is None:
                continue
            future, loop, result, error = done
        else:
            future, loop = task.future, task.loop
        if loop is not None:
            by_loop.setdefault(loop, []).append((future, result, error))
        else:
            _set(future, result, error)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_on_loop, items)
        except RuntimeError:  # loop closed: the server is shutting down, nobody is waiting
            pass


def _settle_on_loop(items) -> None:
    for future, result, error in items:
        _set(future, result, error)


def _set(future, result, error) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _batch_rows(inputs: dict[str, np.ndarray]) -> int:
    """ComputeTensorBatchSize."""
    if not inputs:
        raise ServingError(errors.INVALID_ARGUMENT, "Batching Run() must have at least one input tensor")
    rows = None
    for array in inputs.values():
        if array.ndim == 0:
            raise ServingError(errors.INVALID_ARGUMENT,
                               "Batching Run() input tensors must have at least one dimension")
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            raise ServingError(errors.INVALID_ARGUMENT,
                               "Batching Run() input tensors must have equal 0th-dimension size")
    return rows
