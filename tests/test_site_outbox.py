"""Outbox policy on a real SQLite file; the bus is replaced by a recording publisher."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas import JobResult, Sample, TelemetryBatch, encode
from site_node.outbox import Outbox, read_stats
from site_node.settings import OutboxSettings
from tests.helpers.wait import wait_for


class Recorder:
    """Implements the outbox's Publisher protocol and keeps what it was given."""

    def __init__(self, connected: bool = True) -> None:
        self.connected = connected
        self.room = True
        self.room_waits = 0  # wait_room calls made while there was no room
        self.sent: list[dict] = []
        self._lock = threading.Lock()

    def has_room(self) -> bool:
        return self.connected and self.room

    def wait_room(self, timeout: float) -> bool:
        if not self.has_room():
            self.room_waits += 1
        time.sleep(min(timeout, 0.01))
        return self.has_room()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        if not self.has_room():
            return False
        with self._lock:
            self.sent.append(json.loads(payload))
        return True

    def seqs(self) -> list[int]:
        with self._lock:
            return [m["seq"] for m in self.sent]


def telemetry(seq: int, value: float = 1.0) -> bytes:
    sample = Sample(ts=1, name="x", value=value)
    return encode(TelemetryBatch(site="s", session=1, seq=seq, device="d", samples=(sample,)))


def result(seq: int) -> bytes:
    return encode(JobResult(site="s", session=1, seq=seq, job_id="j", n_samples=3))


@pytest.fixture
def make(tmp_path: Path) -> Iterator:
    boxes: list[Outbox] = []

    def factory(pub: Recorder, **limits: object) -> Outbox:
        box = Outbox(tmp_path / "outbox.db", OutboxSettings(**limits), pub)  # type: ignore[arg-type]
        box.start()
        boxes.append(box)
        return box

    yield factory
    for b in boxes:
        b.stop(flush_s=0)


def fill(box: Outbox, n: int, kind: str = "telemetry") -> list[int]:
    build = telemetry if kind == "telemetry" else result
    futures = [box.append(kind, "t", build) for _ in range(n)]
    return [f.result(10) for f in futures]


def test_rows_are_stored_before_publish_and_replayed_historical_on_connect(make, tmp_path) -> None:
    pub = Recorder(connected=False)
    box = make(pub)
    assert fill(box, 5) == [1, 2, 3, 4, 5]
    assert read_stats(tmp_path / "outbox.db").depth == 5 and pub.sent == []
    pub.connected = True
    box.connected()
    wait_for(lambda: len(pub.sent) == 5, 30)
    assert pub.seqs() == [1, 2, 3, 4, 5] and all(m["historical"] for m in pub.sent)


def test_only_an_ack_deletes_rows_and_seq_survives_restart(make, tmp_path) -> None:
    pub = Recorder()
    box = make(pub)
    fill(box, 4)
    wait_for(lambda: len(pub.sent) == 4, 30)
    assert not any(m["historical"] for m in pub.sent)
    assert box.stats().depth == 4  # published (PUBACKed by the bus) is not acked
    box.ack(3)
    wait_for(lambda: box.stats().depth == 1, 30)
    box.ack(2)  # an older ack changes nothing
    box.ack(4)
    wait_for(lambda: box.stats().depth == 0, 30)
    box.stop(flush_s=0)
    again = make(Recorder())
    assert fill(again, 1) == [5]
    assert again.stats().last_acked == 4


@pytest.mark.parametrize("kept", ["job_result", "deployment"])
def test_drop_oldest_keeps_newest_never_drops_results_and_announces_gaps(
    make, tmp_path, kept
) -> None:
    pub = Recorder(connected=False)
    box = make(pub, max_rows=10)
    fill(box, 2, kind=kept)
    fill(box, 25)
    stats = read_stats(tmp_path / "outbox.db")
    assert stats.depth == 10 and stats.dropped == 17 and stats.last_seq == 27
    pub.connected = True
    box.connected()
    wait_for(lambda: len(pub.sent) == 10, 30)
    # Both job results survive; the newest 8 telemetry rows fill the rest.
    assert pub.seqs() == [1, 2, *range(20, 28)]
    assert pub.sent[-1]["gaps"] == [{"first": 3, "last": 19}]
    box.ack(27)
    wait_for(lambda: box.stats().depth == 0, 30)
    fill(box, 1)
    wait_for(lambda: len(pub.sent) == 11, 30)
    assert pub.sent[-1]["gaps"] == []  # acked past: no longer announced


def test_drop_newest_refuses_new_telemetry_but_keeps_results(make) -> None:
    pub = Recorder(connected=False)
    box = make(pub, max_rows=10, policy="drop_newest")
    fill(box, 12)
    fill(box, 1, kind="job_result")
    stats = box.stats()
    assert stats.depth == 11 and stats.dropped == 2 and stats.last_seq == 13
    pub.connected = True
    box.connected()
    wait_for(lambda: len(pub.sent) == 11, 30)
    assert pub.seqs() == [*range(1, 11), 13]
    assert pub.sent[0]["gaps"] == [{"first": 11, "last": 12}]


def test_byte_bound(make) -> None:
    one = len(telemetry(1))
    box = make(Recorder(connected=False), max_bytes=64 * 1024)
    fill(box, (64 * 1024) // one + 20)
    assert box.stats().bytes <= 64 * 1024 and box.stats().dropped >= 20


def test_unacked_rows_are_resent_after_the_ack_timeout(make) -> None:
    pub = Recorder()
    box = make(pub, ack_timeout_s=0.3)
    fill(box, 3)
    wait_for(lambda: len(pub.sent) >= 6, 30, "re-sends")
    assert pub.seqs()[:6] == [1, 2, 3, 1, 2, 3]
    assert all(m["historical"] for m in pub.sent[3:6])
    box.ack(3)
    wait_for(lambda: box.stats().depth == 0, 30, "the ack applied")
    n = len(pub.sent)
    # The timer still runs after the ack: a new row is sent and re-sent, and the re-send
    # cycle that covers it carries none of the acked rows.
    fill(box, 1)
    wait_for(lambda: pub.seqs()[n:].count(4) >= 2, 30, "seq 4 sent and re-sent")
    assert set(pub.seqs()[n:]) == {4}


def test_full_window_holds_publishes_back(make) -> None:
    pub = Recorder()
    pub.room = False
    box = make(pub)
    fill(box, 3)
    # The outbox waits on the full window (rather than giving up on the rows) ...
    wait_for(lambda: pub.room_waits >= 5, 30, "the outbox waiting for room")
    assert pub.sent == [] and box.stats().depth == 3
    pub.room = True
    wait_for(lambda: pub.seqs() == [1, 2, 3], 30)
    assert box.stats().depth == 3


def test_replay_is_paced_by_the_replay_rate(make) -> None:
    pub = Recorder(connected=False)
    box = make(pub, replay_rate=200.0)
    fill(box, 150)
    pub.connected = True
    started = time.monotonic()
    box.connected()
    wait_for(lambda: len(pub.sent) == 150, 30)
    # 150 rows at 200/s with a 50-row burst take at least 0.5 s.
    assert time.monotonic() - started >= 0.45
