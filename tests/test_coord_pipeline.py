"""The writer thread pipelined with the writer process (``Ingestor._batch``): while the
child stores batch N's telemetry the thread collects (and, with the asyncio receive path,
decodes) batch N+1, and submits it before N's own commit and acks. Driven through the real
thread, a real writer process and a real SQLite file (no broker: PUBACKs and publishes are
captured). What must hold: every message stored once, each PUBACK only after its message
is committed (seen from another connection), the thread never waits for the child inside a
write transaction, and failures with a batch in flight lose or ack nothing wrongly."""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import threading
from pathlib import Path
from typing import Any, Literal

import pytest

from coordinator.bus import Inbound
from coordinator.ingest import writer_process
from coordinator.ingest.ingestor import Ingestor
from coordinator.settings import CoordinatorSettings
from coordinator.store import SqliteStore
from fedmq_runtime.settings import MqttSettings
from schemas import Ack, Heartbeat, Sample, TelemetryBatch, Topics, encode
from tests.helpers.wait import wait_for

P = "pl/fedmq/v1"
T = Topics(P)
SITES = ("a", "b", "c")


class Pipeline:
    """An Ingestor thread with its writer process on ``db``; checks each PUBACK."""

    def __init__(self, db: Path, receive: Literal["paho", "asyncio"], **settings: Any) -> None:
        self.db = db
        self.store = SqliteStore(db)
        self.check = sqlite3.connect(db, check_same_thread=False)  # sees committed rows only
        self.inbound: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.pubacks: list[int] = []
        self.uncommitted: list[int] = []  # PUBACKed before their message was committed
        self.acks: dict[str, int] = {}
        self.keys: dict[int, tuple[str, int]] = {}  # mid -> (site, seq) of a durable message
        self.lock = threading.Lock()
        cfg = CoordinatorSettings(
            mqtt=MqttSettings(prefix=P), receive=receive, batch_size=40, **settings
        )
        self.ing = Ingestor(self.store, cfg, 3, self._publish, self._puback, self.inbound)
        self.mid = 0

    def _puback(self, mid: int, qos: int) -> None:
        key = self.keys.get(mid)
        if key is not None:
            got = self.check.execute(
                "SELECT count(*) FROM messages WHERE site = ? AND seq = ?", key
            ).fetchone()[0]
            if got != 1:
                self.uncommitted.append(mid)
        with self.lock:
            self.pubacks.append(mid)

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if topic.endswith("/ack"):
            ack = Ack.model_validate_json(payload)
            with self.lock:
                self.acks[ack.site] = max(self.acks.get(ack.site, 0), ack.acked)

    def put(self, topic: str, payload: bytes, key: tuple[str, int] | None) -> None:
        self.mid += 1
        if key is not None:
            self.keys[self.mid] = key
        self.inbound.put(Inbound(topic, payload, self.mid, 1, False, 1_000 + self.mid))

    def telemetry(self, site: str, seq: int, samples: int = 5) -> None:
        values = tuple(Sample(ts=10_000 + seq, name=f"x{i}", value=seq + i) for i in range(samples))
        msg = TelemetryBatch(site=site, session=1, seq=seq, device="d1", samples=values)
        self.put(T.telemetry(site, "d1"), encode(msg), (site, seq))

    def heartbeat(self, site: str, seq: int) -> None:
        hb = Heartbeat(site=site, session=1, ts=10_000 + seq, interval_s=5, uptime_s=seq)
        self.put(T.heartbeat(site), encode(hb), None)

    def close(self) -> None:
        self.ing.stop(timeout=60)
        self.check.close()
        self.store.close()


def _stream(p: Pipeline, n: int, first: int = 1) -> None:
    """``n`` telemetry messages per site, interleaved, with a heartbeat now and then."""
    for seq in range(first, first + n):
        for site in SITES:
            p.telemetry(site, seq)
            if seq % 17 == 0:
                p.heartbeat(site, seq)


def _stored(db: Path) -> tuple[int, int, int]:
    with sqlite3.connect(db) as c:
        msgs = c.execute("SELECT count(*) FROM messages").fetchone()[0]
        distinct = c.execute("SELECT count(*) FROM (SELECT DISTINCT site, seq FROM messages)")
        samples = c.execute("SELECT count(*) FROM telemetry").fetchone()[0]
        return msgs, distinct.fetchone()[0], samples


@pytest.mark.parametrize("receive", ["paho", "asyncio"])
def test_a_queued_stream_is_stored_once_and_acked_after_commit(
    tmp_path: Path, receive: Literal["paho", "asyncio"]
) -> None:
    p = Pipeline(tmp_path / "c.db", receive)
    in_tx: list[bool] = []
    wp = p.ing.writer
    assert wp is not None
    results = wp.results

    def checked_results() -> Any:
        in_tx.append(p.store.conn.in_transaction)  # waiting for the child: no write tx
        return results()

    wp.results = checked_results  # type: ignore[method-assign]
    submitted: list[Any] = []
    submit = wp.submit

    def counted_submit(batch: Any, hold: bool = False) -> None:
        submitted.extend(batch)
        submit(batch, hold)

    wp.submit = counted_submit  # type: ignore[method-assign]
    ready = wp.ready

    def slow_child(timeout: float | None = 0.0) -> bool:
        return False if timeout == 0.0 else ready(timeout)  # "still busy" when polled

    wp.ready = slow_child  # type: ignore[method-assign]
    n = 200
    _stream(p, n)  # queued before the thread starts: many batches back to back
    _stream(p, 30, first=50)  # replays of stored seqs in later batches: stored once
    p.ing.start()
    try:
        total = p.mid
        wait_for(lambda: len(p.pubacks) >= total, timeout=120, what="every message PUBACKed")
        wait_for(lambda: all(p.acks.get(s) == n for s in SITES), timeout=60, what="site acks")
    finally:
        p.close()
    assert sorted(p.pubacks) == list(range(1, total + 1))  # each exactly once
    assert p.uncommitted == []
    assert len(in_tx) >= 5 and not any(in_tx)
    assert _stored(p.db) == (len(SITES) * n, len(SITES) * n, len(SITES) * n * 5)
    pre = sum(isinstance(e, bytes) for e in submitted)
    if receive == "paho":
        assert pre == 0  # decoding stays in the child: it would slow paho's thread
    else:
        assert pre > 0  # decoded while the child stored the previous batch


def test_a_failed_commit_with_a_batch_in_flight_loses_and_acks_nothing_wrongly(
    tmp_path: Path,
) -> None:
    p = Pipeline(tmp_path / "c.db", "asyncio")
    wp = p.ing.writer
    assert wp is not None
    flush, submit, results = p.ing._flush, wp.submit, wp.results
    busy = [0]  # batches submitted to the writer process and not answered yet

    def counted_submit(batch: Any, hold: bool = False) -> None:
        submit(batch, hold)
        busy[0] += 1

    def counted_results() -> Any:
        busy[0] -= 1
        return results()

    failed: list[bool] = []

    def flaky_flush(b: Any) -> None:
        # Fail once, after a few batches, while the next batch is in the writer process.
        if not failed and busy[0] == 1 and len(p.pubacks) > 40:
            failed.append(True)
            raise RuntimeError("injected failure before commit")
        flush(b)

    wp.submit = counted_submit  # type: ignore[method-assign]
    wp.results = counted_results  # type: ignore[method-assign]
    p.ing._flush = flaky_flush  # type: ignore[method-assign]
    n = 120
    _stream(p, n)
    p.ing.start()
    try:
        total = p.mid
        wait_for(lambda: len(set(p.pubacks)) >= total, timeout=120, what="every message")
        wait_for(lambda: all(p.acks.get(s) == n for s in SITES), timeout=60, what="site acks")
    finally:
        p.close()
    assert failed and p.ing.recoveries >= 1
    assert p.uncommitted == []
    assert _stored(p.db) == (len(SITES) * n, len(SITES) * n, len(SITES) * n * 5)


def test_a_killed_writer_process_between_batches_is_restarted_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    p = Pipeline(tmp_path / "c.db", "asyncio")
    wp = p.ing.writer
    assert wp is not None
    results = wp.results
    calls: list[int] = []

    def killing_results() -> Any:
        calls.append(1)
        if len(calls) == 3:  # a batch is in the child; kill -9 it
            os.kill(wp._proc.pid, signal.SIGKILL)
            wp._proc.join(10)
        return results()

    wp.results = killing_results  # type: ignore[method-assign]
    n = 120
    _stream(p, n)
    p.ing.start()
    try:
        total = p.mid
        wait_for(lambda: len(set(p.pubacks)) >= total, timeout=120, what="every message")
        wait_for(lambda: all(p.acks.get(s) == n for s in SITES), timeout=60, what="site acks")
    finally:
        p.close()
    assert len(calls) > 3 and p.ing.recoveries >= 1
    assert p.uncommitted == []
    assert _stored(p.db) == (len(SITES) * n, len(SITES) * n, len(SITES) * n * 5)


def test_predecode_is_the_childs_own_decode(tmp_path: Path) -> None:
    """What the parent hands over decoded is exactly what the child would store."""
    import pickle

    codec = writer_process.Codec(writer_process.CachedTopics(P), 1 << 20)
    values = tuple(Sample(ts=5 + i, name=f"x{i}", value=i / 3) for i in range(7))
    msg = TelemetryBatch(site="a", session=1, seq=9, device="d1", samples=values)
    args = (T.telemetry("a", "d1"), encode(msg), 123)
    got = writer_process.predecode(codec, *args)
    assert got is not None
    assert pickle.loads(got) == writer_process.decode_telemetry_row(codec, *args)
    assert writer_process.predecode(codec, T.telemetry("a", "d2"), encode(msg), 1) is None
    assert writer_process.predecode(codec, args[0], b"{", 1) is None


def test_a_held_batch_is_written_only_after_release(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    SqliteStore(db).close()
    w = writer_process.WriterProcess(db, P, 1 << 20)
    w.start()
    try:
        values = (Sample(ts=5, name="x", value=1.0),)
        msg = TelemetryBatch(site="a", session=1, seq=1, device="d1", samples=values)
        w.submit([(T.telemetry("a", "d1"), encode(msg), 9)], hold=True)
        assert not w.ready(1.0)  # decoded, waiting: nothing written, no answer
        with sqlite3.connect(db) as other:
            assert other.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
            w.release()
            assert w.results() == [("a", "", 1, (), False)]
            assert other.execute("SELECT count(*) FROM telemetry").fetchone()[0] == 1
    finally:
        w.stop()
