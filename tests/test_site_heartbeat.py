"""HeartbeatSender with an injected clock: schedule, jitter, failures, stop."""

from __future__ import annotations

import threading

import pytest

from site_node.heartbeat import HeartbeatSender


class FakeTime:
    """A clock that only moves when the sender waits; stops after ``until`` seconds."""

    def __init__(self, until: float) -> None:
        self.now = 0.0
        self.until = until
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return self.now >= self.until


def test_beats_every_interval_without_drift() -> None:
    t = FakeTime(until=100.5)
    beats: list[float] = []
    hb = HeartbeatSender(10.0, lambda: beats.append(t.now), jitter=0.0, clock=t.clock, wait=t.wait)
    hb.run()
    assert beats == [float(i) for i in range(0, 101, 10)]
    assert hb.sent == 11


def test_jitter_stays_within_bounds() -> None:
    values = iter([0.0, 1.0, 0.5] * 10)
    hb = HeartbeatSender(10.0, lambda: None, jitter=0.2, rng=lambda: next(values))
    assert [round(hb.next_delay(), 6) for _ in range(3)] == [8.0, 12.0, 10.0]


def test_a_failing_send_does_not_stop_the_beat() -> None:
    t = FakeTime(until=30.5)
    calls = []

    def send() -> None:
        calls.append(t.now)
        raise RuntimeError("broker gone")

    HeartbeatSender(10.0, send, jitter=0.0, clock=t.clock, wait=t.wait).run()
    assert calls == [0.0, 10.0, 20.0, 30.0]


def test_start_stop_with_real_time_returns_promptly() -> None:
    sent = threading.Event()
    hb = HeartbeatSender(3600.0, sent.set)
    hb.start()
    assert sent.wait(2)
    hb.stop()  # waits on an Event, not sleep: returns at once
    assert hb._thread is not None and not hb._thread.is_alive()


def test_rejects_nonpositive_interval() -> None:
    with pytest.raises(ValueError):
        HeartbeatSender(0, lambda: None)
