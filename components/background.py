"""Work handed to one background thread, so that C++ which releases the GIL runs beside the
Python after it: reading and decoding examples (tf.data's gzip TFRecord reader, tfx_bsl's
`ExamplesToRecordBatchDecoder`) while tf.Transform or TFDV work on the previous batch, and
encoding and writing them (`RecordBatchToExamplesEncoder`, `TFRecordWriter` with GZIP) while
the next batch is transformed. The in-process Beam runner otherwise runs a step's whole
chain on one core (README, "The data half at scale").

Both keep the order of the items and pass an exception to the caller at the place it
happened; neither lets the thread outlive its caller's use of it.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")
_END = object()
_POLL_S = 0.1


def _check_depth(depth: int) -> None:
    if depth < 1:
        raise ValueError(f"depth must be at least 1 item, got {depth}")


def prefetched(items: Iterator[T], depth: int = 2, name: str = "prefetch") -> Iterator[T]:
    """Yields what `items` yields, in order, computed up to `depth` items ahead in a daemon
    thread. An exception raised by `items` is raised here, after the items before it.
    Closing this generator early (the caller stopped, failed or was interrupted) stops the
    thread before its next item and closes `items` there; the close returns when the
    thread has ended (at most one item's time). Raises ValueError for a `depth` below 1
    (queue.Queue takes 0 for no bound: the whole source read ahead into memory)."""
    _check_depth(depth)
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # handed to the caller, raised in its thread
            put((_END, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


class BackgroundCalls:
    """Calls `function(item)` for each item given to `submit`, in order, in one daemon
    thread, with at most `depth` items waiting. The first exception a call raises is raised
    by the next `submit` or by `close`; the items after it are not passed to `function`.
    `close()` waits for every call and ends the thread; `abandon()` ends it without waiting
    for the waiting items (after a failure elsewhere). Raises ValueError for a `depth`
    below 1."""

    def __init__(self, function: Callable[[Any], None], depth: int = 2,
                 name: str = "background-calls"):
        _check_depth(depth)
        self._function = function
        self._items: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abandoned = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._items.get()
            if item is _END or self._abandoned.is_set():
                return
            if self._error is not None:
                continue  # drain: the caller learns of the failure at its next submit/close
            try:
                self._function(item)
            except BaseException as exc:
                self._error = exc

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, item: Any) -> None:
        self._raise_if_failed()
        while True:
            try:
                self._items.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                self._raise_if_failed()
                if not self._thread.is_alive():
                    raise RuntimeError("the background thread has ended")

    def close(self) -> None:
        self._items.put(_END)
        self._thread.join()
        self._raise_if_failed()

    def abandon(self) -> None:
        self._abandoned.set()
        try:
            self._items.put_nowait(_END)
        except queue.Full:
            pass
        self._thread.join()
