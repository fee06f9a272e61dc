"""The telemetry writer process: its fast decode accepts exactly what the codec accepts,
and it commits before it answers (the parent acks only after the answer)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from coordinator.ingest.writer_process import (
    CachedTopics,
    WriterError,
    WriterProcess,
    decode_telemetry,
)
from coordinator.store import SqliteStore
from schemas import Codec, DecodeError, Sample, SeqRange, TelemetryBatch, Topics, encode

P = "wp/fedmq/v1"
T = Topics(P)


def _batch(**over: object) -> dict[str, object]:
    msg = TelemetryBatch(
        site="a", session=1, seq=3, device="d", gaps=(SeqRange(first=1, last=2),),
        samples=(Sample(ts=5, name="x", value=1.5, unit="C"),),
    )  # fmt: skip
    data: dict[str, object] = json.loads(encode(msg))
    data.update(over)
    return data


def _without(key: str) -> dict[str, object]:
    data = _batch()
    del data[key]
    return data


CASES: list[tuple[str, bytes]] = [
    (T.telemetry("a", "d"), json.dumps(_batch()).encode()),
    (T.telemetry("a", "d"), json.dumps(_batch(extra="ignored")).encode()),
    (T.telemetry("a", "d"), json.dumps(_without("kind")).encode()),  # union needs kind
    (T.telemetry("a", "d"), json.dumps(_batch(kind="heartbeat")).encode()),
    (T.telemetry("b", "d"), json.dumps(_batch()).encode()),  # spoofed site
    (T.telemetry("a", "e"), json.dumps(_batch()).encode()),  # wrong device
    (T.telemetry("a", "d"), json.dumps(_batch(v="2.0")).encode()),
    (T.telemetry("a", "d"), json.dumps(_batch(samples=[])).encode()),
    (T.telemetry("a", "d"), json.dumps(_batch(seq=0)).encode()),
    (T.telemetry("a", "d"), b'{"v":"1.0",'),
    (T.telemetry("a", "d"), b""),
    (T.telemetry("a", "d"), b"\xff\xfe"),
    (T.telemetry("a", "d"), json.dumps(_batch(pad="x" * 2000)).encode()),  # too large
    (T.heartbeat("a"), json.dumps(_batch()).encode()),
    ("elsewhere/site/a/telemetry/d", json.dumps(_batch()).encode()),
]


@pytest.mark.parametrize(("topic", "payload"), CASES)
def test_fast_decode_agrees_with_the_codec(topic: str, payload: bytes) -> None:
    codec = Codec(CachedTopics(P), max_payload=1024)
    try:
        expected = codec.decode(topic, payload)
    except DecodeError:
        expected = None
    got = decode_telemetry(codec, topic, payload)
    if isinstance(expected, TelemetryBatch):
        assert got == expected
    else:
        assert got is None  # the caller then runs codec.decode for the reason


def test_answers_after_commit_and_stores_a_replay_once(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    SqliteStore(db).close()  # migrations are the parent's job
    w = WriterProcess(db, P, 1024)
    w.start()
    try:
        good = (T.telemetry("a", "d"), json.dumps(_batch()).encode(), 7)
        bad = (T.telemetry("a", "d"), b"{", 7)
        w.submit([good, bad, good])
        stored = ("a", "", 3, ((1, 2),), False)
        assert w.results() == [stored, None, stored]
        other = sqlite3.connect(db)  # committed before the answer
        assert other.execute("SELECT count(*) FROM telemetry").fetchone()[0] == 1
        row = other.execute("SELECT site, seq, device, received_at FROM messages").fetchone()
        assert row == ("a", 3, "d", 7)
        other.close()
    finally:
        w.stop()


def test_a_dead_writer_process_is_an_error_not_a_hang(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    SqliteStore(db).close()
    w = WriterProcess(db, P, 1024)
    w.start()
    w._proc.kill()  # kill -9
    w._proc.join(10)
    with pytest.raises(WriterError):
        w.submit([(T.telemetry("a", "d"), json.dumps(_batch()).encode(), 1)])
        w.results()
    w.stop()
