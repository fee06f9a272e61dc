"""Batcher: count and window flushes with an injected clock, order and thread safety."""

from __future__ import annotations

import threading

import pytest

from schemas import Sample
from site_node.batcher import Batcher


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def s(value: float, name: str = "v") -> Sample:
    return Sample(ts=1, name=name, value=value)


class Sink:
    def __init__(self) -> None:
        self.batches: list[tuple[str, list[float]]] = []

    def __call__(self, device: str, samples: list[Sample]) -> None:
        self.batches.append((device, [x.value for x in samples]))


def test_flushes_when_count_reached() -> None:
    sink = Sink()
    b = Batcher(sink, max_samples=3, max_wait_s=60, clock=Clock())
    for i in range(7):
        b.add("d", s(i))
    assert sink.batches == [("d", [0, 1, 2]), ("d", [3, 4, 5])]
    assert b.pending() == 1
    assert b.flush_all() == 1
    assert sink.batches[-1] == ("d", [6])
    assert b.pending() == 0
    assert b.flush_all() == 0


def test_window_opens_with_first_sample_and_flushes_on_poll() -> None:
    clock, sink = Clock(), Sink()
    b = Batcher(sink, max_samples=100, max_wait_s=1.0, clock=clock)
    assert b.next_due_in() is None
    b.add("d", s(1))
    clock.t += 0.5
    b.add("d", s(2))
    assert b.next_due_in() == pytest.approx(0.5)
    clock.t += 0.25
    assert b.poll() == 0
    clock.t += 0.25
    assert b.poll() == 1
    assert sink.batches == [("d", [1, 2])]
    # The next window starts with the next sample, not at the last flush.
    clock.t += 5
    b.add("d", s(3))
    assert b.poll() == 0
    clock.t += 1.0
    assert b.poll() == 1
    assert sink.batches[-1] == ("d", [3])


def test_devices_batch_independently() -> None:
    clock, sink = Clock(), Sink()
    b = Batcher(sink, max_samples=2, max_wait_s=1.0, clock=clock)
    b.add("a", s(1))
    clock.t += 0.5
    b.add("b", s(10))
    b.add("a", s(2))
    assert sink.batches == [("a", [1, 2])]
    clock.t += 0.5
    b.add("a", s(3))
    assert b.poll() == 0
    clock.t += 0.5
    assert b.poll() == 1
    assert sink.batches[-1] == ("b", [10])
    assert b.pending() == 1


def test_failing_flush_is_counted_and_batching_continues(caplog) -> None:
    calls: list[list[float]] = []

    def flush(device: str, samples: list[Sample]) -> None:
        calls.append([x.value for x in samples])
        if len(calls) == 1:
            raise RuntimeError("outbox full")

    b = Batcher(flush, max_samples=1, clock=Clock())
    b.add("d", s(1))
    b.add("d", s(2))
    assert calls == [[1], [2]]
    assert (b.flush_errors, b.batches) == (1, 1)
    assert "flush of 1 samples from d failed" in caplog.text


def test_flush_runs_outside_the_lock() -> None:
    b: Batcher

    def flush(device: str, samples: list[Sample]) -> None:
        # Both need the buffer lock: a flush under it would deadlock here.
        b.pending()
        if device == "a":
            b.add("b", s(99))

    b = Batcher(flush, max_samples=1, clock=Clock())
    worker = threading.Thread(target=b.add, args=("a", s(1)), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "flush was called with the lock held"
    assert b.batches == 2


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="max_samples"):
        Batcher(Sink(), max_samples=0)
    with pytest.raises(ValueError, match="max_samples"):
        Batcher(Sink(), max_samples=10_001)
    with pytest.raises(ValueError, match="max_wait_s"):
        Batcher(Sink(), max_wait_s=-1)


def test_concurrent_adders_and_poller_lose_nothing_and_keep_order() -> None:
    sink_lock = threading.Lock()
    batches: list[tuple[str, list[Sample]]] = []

    def flush(device: str, samples: list[Sample]) -> None:
        with sink_lock:
            batches.append((device, samples))

    b = Batcher(flush, max_samples=7, max_wait_s=0.0)
    threads_n, per_thread, devices = 6, 3000, ("a", "b", "c")
    done = threading.Event()

    def adder(t: int) -> None:
        for i in range(per_thread):
            b.add(devices[i % 3], Sample(ts=1, name=f"t{t}", value=i))

    def poller() -> None:
        while not done.is_set():
            b.poll()

    workers = [threading.Thread(target=adder, args=(t,)) for t in range(threads_n)]
    polling = threading.Thread(target=poller)
    polling.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    polling.join()
    b.flush_all()

    assert b.pending() == 0
    assert all(1 <= len(samples) <= 7 for _, samples in batches)
    assert sum(len(samples) for _, samples in batches) == threads_n * per_thread
    # Per device and producer thread, samples arrive in the order they were added.
    for device_index, device in enumerate(devices):
        for t in range(threads_n):
            values = [
                x.value
                for d, samples in batches
                if d == device
                for x in samples
                if x.name == f"t{t}"
            ]
            assert values == list(range(device_index, per_thread, 3))
