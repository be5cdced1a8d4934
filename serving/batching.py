"""Server-side dynamic batching (TF Serving's BatchingSession over a SharedBatchScheduler).

Requests for the same signature whose inputs agree in dtype and in every dimension but the
first share a queue. A queue holds open batches of at most max_batch_size rows; a batch is run
when it is full, or when a batch thread is free and the oldest task has waited
batch_timeout_micros (0: as soon as a thread is free, which batches whatever arrived while the
previous batch ran). A task that does not fit the open batch starts a new one; with
max_enqueued_batches batches already waiting the task is refused with UNAVAILABLE. Batches are
padded up to the next allowed_batch_sizes entry by repeating the last row.

Callers on threads get a concurrent.futures.Future; callers on an event loop get an asyncio
future, and a finished batch settles all of one loop's futures in a single loop callback, so a
batch of n costs the loop one wake-up rather than n.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import Future

import numpy as np

from serving import errors
from serving.errors import ServingError

DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10


class BatchOptions:
    def __init__(self, params=None, cpu_count: int | None = None):
        def get(name, default):
            return getattr(params, name).value if params is not None and params.HasField(name) else default

        import os
        self.max_batch_size = int(get("max_batch_size", DEFAULT_MAX_BATCH_SIZE))
        self.batch_timeout_s = int(get("batch_timeout_micros", 0)) / 1e6
        self.max_enqueued_batches = int(get("max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES))
        self.num_batch_threads = int(get("num_batch_threads", cpu_count or os.cpu_count() or 1))
        self.allowed_batch_sizes = list(params.allowed_batch_sizes) if params is not None else []
        self.enable_large_batch_splitting = bool(get("enable_large_batch_splitting", False))
        self.max_execution_batch_size = int(get("max_execution_batch_size", self.max_batch_size))
        if self.allowed_batch_sizes and self.allowed_batch_sizes[-1] != self.max_batch_size:
            raise ServingError(errors.INVALID_ARGUMENT,
                               "Last entry in allowed_batch_sizes must match max_batch_size; last "
                               f"entry was {self.allowed_batch_sizes[-1]}; expected {self.max_batch_size}")


class _Task:
    __slots__ = ("inputs", "rows", "future", "loop", "enqueued")

    def __init__(self, inputs, rows, loop: asyncio.AbstractEventLoop | None = None):
        self.inputs = inputs
        self.rows = rows
        self.loop = loop  # None: a thread waits on a concurrent Future
        self.future = Future() if loop is None else loop.create_future()
        self.enqueued = time.monotonic()


class _Queue:
    def __init__(self, runner):
        self.runner = runner
        self.batches: deque[list[_Task]] = deque()
        self.open_rows = 0


class BatchScheduler:
    def __init__(self, options: BatchOptions, on_batch=None):
        self.options = options
        self._on_batch = on_batch  # (signature key, rows) per batch run, for metrics
        self._queues: dict[tuple, _Queue] = {}
        self._ready: deque[_Queue] = deque()  # queues with work, round robin
        self._cond = threading.Condition()
        self._deferred_wakeups: dict[asyncio.AbstractEventLoop, int] = {}  # per loop, its thread only
        self._stopped = False
        self._threads = [threading.Thread(target=self._worker, name=f"batch-{i}", daemon=True)
                         for i in range(max(1, options.num_batch_threads))]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def submit(self, runner, inputs: dict[str, np.ndarray]) -> Future:
        rows = self._check_rows(inputs)
        if rows > self.options.max_execution_batch_size:
            return self._submit_split(runner, inputs, rows)
        task = _Task(inputs, rows)
        if self._enqueue(runner, task):
            with self._cond:
                self._cond.notify()
        return task.future

    def submit_on_loop(self, runner, inputs: dict[str, np.ndarray]) -> asyncio.Future:
        """Like submit, for a coroutine: call from the running loop, await the result.

        The batch threads are woken once at the end of the loop's current turn rather than per
        task, so the requests the loop takes in during one turn can share a batch instead of a
        batch thread grabbing the first of them alone.
        """
        rows = self._check_rows(inputs)
        if rows > self.options.max_execution_batch_size:
            return asyncio.wrap_future(self._submit_split(runner, inputs, rows))
        loop = asyncio.get_running_loop()
        task = _Task(inputs, rows, loop)
        if self._enqueue(runner, task):
            owed = self._deferred_wakeups.get(loop, 0)
            self._deferred_wakeups[loop] = owed + 1
            if not owed:
                loop.call_soon(self._wake_deferred, loop)
        return task.future

    def _wake_deferred(self, loop: asyncio.AbstractEventLoop) -> None:
        owed = self._deferred_wakeups.pop(loop, 0)
        with self._cond:
            self._cond.notify(owed)

    def _check_rows(self, inputs: dict[str, np.ndarray]) -> int:
        rows = _batch_rows(inputs)
        limit = self.options.max_batch_size
        if rows > limit and not self.options.enable_large_batch_splitting:
            raise ServingError(errors.INVALID_ARGUMENT,
                               f"Task size {rows} is larger than maximum input batch size {limit}")
        return rows

    def _enqueue(self, runner, task: _Task) -> bool:
        """Queue the task; True if a batch thread should be woken for it."""
        rows = task.rows
        inputs = task.inputs
        key = (id(runner),) + tuple((alias, a.dtype.str, a.shape[1:]) for alias, a in sorted(inputs.items()))
        with self._cond:
            queue = self._queues.get(key)
            if queue is None or queue.runner is not runner:
                queue = self._queues[key] = _Queue(runner)
            batches = queue.batches
            limit = self.options.max_execution_batch_size
            opened = not batches or queue.open_rows + rows > limit
            if opened:
                if len(batches) >= self.options.max_enqueued_batches:
                    raise ServingError(errors.UNAVAILABLE,
                                       "The batch scheduling queue to which this task was submitted is full")
                batches.append([])
                queue.open_rows = 0
                if queue not in self._ready:
                    self._ready.append(queue)
            batches[-1].append(task)
            queue.open_rows += rows
        # A thread was already woken for an open batch that just grew; wake another only for a
        # new batch or a batch that became full (and so runnable before its timeout).
        return opened or queue.open_rows >= limit

    def _submit_split(self, runner, inputs, rows) -> Future:
        size = self.options.max_execution_batch_size
        parts = [self.submit(runner, {k: v[i:i + size] for k, v in inputs.items()})
                 for i in range(0, rows, size)]
        combined: Future = Future()

        def finish(_):
            if not all(p.done() for p in parts) or combined.done():
                return
            try:
                results = [p.result() for p in parts]
                combined.set_result({k: np.concatenate([r[k] for r in results]) for k in results[0]})
            except BaseException as e:
                combined.set_exception(e)

        for part in parts:
            part.add_done_callback(finish)
        return combined

    def _take_batch(self):
        """Called with the lock held: a runnable batch, or a time to wait until."""
        now = time.monotonic()
        earliest = None
        for _ in range(len(self._ready)):
            queue = self._ready[0]
            self._ready.rotate(-1)
            if not queue.batches:
                continue
            batch = queue.batches[0]
            full = len(queue.batches) > 1 or queue.open_rows >= self.options.max_execution_batch_size
            due = batch[0].enqueued + self.options.batch_timeout_s
            if full or due <= now:
                queue.batches.popleft()
                if not queue.batches:
                    queue.open_rows = 0
                    self._ready.remove(queue)
                return queue.runner, batch, None
            earliest = due if earliest is None else min(earliest, due)
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
                    self._cond.wait(None if wake is None else max(0.0, wake - time.monotonic()))
            self._run(runner, batch)

    def _run(self, runner, batch: list[_Task]) -> None:
        if self._on_batch is not None:
            self._on_batch(runner.key, sum(t.rows for t in batch))
        try:
            outcomes = [(task, result, None) for task, result in zip(batch, self._results(runner, batch))]
        except BaseException as e:
            outcomes = [(task, None, e) for task in batch]
        _settle(outcomes)

    def _results(self, runner, batch: list[_Task]) -> list[dict[str, np.ndarray]]:
        if len(batch) == 1 and not self.options.allowed_batch_sizes:
            return [runner.run(batch[0].inputs)]
        aliases = list(batch[0].inputs)
        merged = {a: np.concatenate([t.inputs[a] for t in batch]) for a in aliases}
        total = sum(t.rows for t in batch)
        padded = self._padded_size(total)
        if padded > total:
            merged = {a: np.concatenate([v, np.repeat(v[-1:], padded - total, axis=0)])
                      for a, v in merged.items()}
        outputs = runner.run(merged)
        for value in outputs.values():
            if value.ndim == 0 or value.shape[0] != padded:
                raise ServingError(errors.FAILED_PRECONDITION,
                                   "Batched output tensor's 0th dimension does not equal the sum "
                                   "of the 0th dimension sizes of the input tensors")
        results = []
        offset = 0
        for task in batch:
            results.append({a: v[offset:offset + task.rows] for a, v in outputs.items()})
            offset += task.rows
        return results

    def _padded_size(self, rows: int) -> int:
        for size in self.options.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows


def _settle(outcomes: list[tuple[_Task, dict | None, BaseException | None]]) -> None:
    """Hand each task its result or error; one callback per event loop. A future whose caller
    gave up (cancelled) is skipped, so it cannot take its batch-mates' results down with it."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for task, result, error in outcomes:
        if task.loop is not None:
            by_loop.setdefault(task.loop, []).append((task.future, result, error))
        else:
            _set(task.future, result, error)
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
    rows = None
    for array in inputs.values():
        if array.ndim == 0:
            raise ServingError(errors.INVALID_ARGUMENT,
                               "Batching session Run() input tensors must have at least one dimension")
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            raise ServingError(errors.INVALID_ARGUMENT,
                               "Batching session Run() input tensors must have equal 0th-dimension size")
    return rows or 0
