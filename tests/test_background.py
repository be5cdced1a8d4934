"""components.background: work ahead in one thread, in order, errors in their place, and
no thread left behind."""
from __future__ import annotations

import threading
import time

import pytest

from components.background import BackgroundCalls, prefetched


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_prefetched_keeps_the_order_and_works_ahead_while_the_caller_is_busy():
    produced = []

    def items():
        for i in range(6):
            produced.append(i)
            yield i

    seen = []
    for item in prefetched(items(), depth=2, name="t-ahead"):
        if item == 0:
            time.sleep(0.3)  # the caller works on item 0; the thread fills its two slots
            assert produced == [0, 1, 2, 3], produced  # 1 and 2 queued, 3 waiting: no more
        seen.append(item)
    assert seen == list(range(6))
    assert _threads("t-ahead") == []


def test_prefetched_raises_the_error_after_the_items_before_it():
    def items():
        yield "a"
        yield "b"
        raise IOError("damaged file data-00001.gz")

    seen = []
    with pytest.raises(IOError, match="data-00001.gz"):
        for item in prefetched(items(), name="t-error"):
            seen.append(item)
    assert seen == ["a", "b"]
    assert _threads("t-error") == []


def test_closing_prefetched_early_stops_the_thread_and_closes_the_source():
    closed = threading.Event()

    def items():
        try:
            for i in range(1000):
                yield i
        finally:
            closed.set()

    source = items()  # held here too, so only an explicit close runs its finally
    batches = prefetched(source, name="t-close")
    assert next(batches) == 0
    batches.close()  # the consumer stopped (a failure downstream, an interrupted step)
    assert closed.is_set()
    assert _threads("t-close") == []


def test_background_calls_run_in_order_and_close_waits_for_them():
    done = []
    calls = BackgroundCalls(lambda item: (time.sleep(0.01), done.append(item)), name="t-calls")
    for i in range(20):
        calls.submit(i)
    calls.close()
    assert done == list(range(20))
    assert _threads("t-calls") == []


def test_a_failed_background_call_is_raised_to_the_caller_and_later_items_are_not_called():
    done = []

    def write(item):
        if item == 3:
            raise OSError("disk full")
        done.append(item)

    calls = BackgroundCalls(write, name="t-fail")
    with pytest.raises(OSError, match="disk full"):
        for i in range(50):
            calls.submit(i)
        calls.close()
    assert done == [0, 1, 2]
    calls.abandon()
    assert _threads("t-fail") == []


def test_abandoned_background_calls_end_without_the_waiting_items():
    release = threading.Event()
    done = []
    calls = BackgroundCalls(lambda item: (release.wait(5), done.append(item)), depth=2,
                            name="t-abandon")
    for i in range(3):  # one running, two waiting
        calls.submit(i)
    threading.Timer(0.2, release.set).start()
    abandoning = threading.Thread(target=calls.abandon)
    abandoning.start()
    abandoning.join(timeout=5)
    assert not abandoning.is_alive(), "abandon() waits for the waiting items"
    assert done == [0]
    assert _threads("t-abandon") == []


@pytest.mark.parametrize("depth", [0, -1])
def test_a_depth_below_one_is_refused_not_read_ahead_without_bound(depth):
    """queue.Queue(maxsize=0) has no bound: prefetched would have read its whole source
    into memory ahead of the caller."""
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    with pytest.raises(ValueError, match=f"depth must be at least 1 item, got {depth}"):
        batches = prefetched(items(), depth=depth, name="t-depth")
        next(batches)
        time.sleep(0.2)
        batches.close()
    assert produced == []
    with pytest.raises(ValueError, match=f"depth must be at least 1 item, got {depth}"):
        BackgroundCalls(lambda item: None, depth=depth, name="t-depth-calls")
    assert _threads("t-depth") == [] and _threads("t-depth-calls") == []
