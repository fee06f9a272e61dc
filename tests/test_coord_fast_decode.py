"""The writer process's row decode (samples validated into dicts, not models) accepts
exactly what the codec accepts and builds exactly the row the codec's message gives."""

from __future__ import annotations

import json

import pytest

from coordinator.ingest.writer_process import (
    CachedTopics,
    decode_telemetry_row,
    telemetry_row,
)
from schemas import Codec, DecodeError, Sample, SeqRange, TelemetryBatch, Topics, encode

P = "fd/fedmq/v1"
T = Topics(P)
TOPIC = T.telemetry("a", "d")


def _batch(**over: object) -> dict[str, object]:
    msg = TelemetryBatch(
        site="a", session=1, seq=3, device="d", gaps=(SeqRange(first=1, last=2),),
        samples=(Sample(ts=5, name="x", value=1.5, unit="C"), Sample(ts=6, name="y", value=2)),
    )  # fmt: skip
    data: dict[str, object] = json.loads(encode(msg))
    data.update(over)
    return data


def _sample(**over: object) -> bytes:
    s: dict[str, object] = {"ts": 5, "name": "x", "value": 1.5}
    s.update(over)
    s = {k: v for k, v in s.items() if v is not _DROP}
    return json.dumps(_batch(samples=[s])).encode()


_DROP = object()

CASES: list[tuple[str, bytes]] = [
    (TOPIC, json.dumps(_batch()).encode()),
    (TOPIC, json.dumps(_batch(extra="ignored", historical=True, epoch="e1")).encode()),
    (TOPIC, json.dumps({k: v for k, v in _batch().items() if k != "kind"}).encode()),
    (TOPIC, json.dumps(_batch(kind="heartbeat")).encode()),
    (T.telemetry("b", "d"), json.dumps(_batch()).encode()),  # spoofed site
    (T.telemetry("a", "e"), json.dumps(_batch()).encode()),  # wrong device
    (TOPIC, json.dumps(_batch(v="2.0")).encode()),
    (TOPIC, json.dumps(_batch(v="1.7")).encode()),
    (TOPIC, json.dumps(_batch(samples=[])).encode()),
    (TOPIC, json.dumps(_batch(seq=0)).encode()),
    (TOPIC, json.dumps(_batch(gaps=[{"first": 3, "last": 2}])).encode()),
    (TOPIC, b'{"v":"1.0",'),
    (TOPIC, b""),
    (TOPIC, b"\xff\xfe"),
    (TOPIC, json.dumps(_batch(pad="x" * 2000)).encode()),  # over max_payload
    (T.heartbeat("a"), json.dumps(_batch()).encode()),
    ("elsewhere/site/a/telemetry/d", json.dumps(_batch()).encode()),
    # Sample-level rules: each one the model enforces must be enforced here too.
    (TOPIC, _sample()),
    (TOPIC, _sample(unit="kPa", q="uncertain", extra=1)),
    (TOPIC, _sample(q="bad")),
    (TOPIC, _sample(q="ok")),
    (TOPIC, _sample(name="")),
    (TOPIC, _sample(name="n" * 128)),
    (TOPIC, _sample(name="n" * 129)),
    (TOPIC, _sample(unit="u" * 32)),
    (TOPIC, _sample(unit="u" * 33)),
    (TOPIC, _sample(ts=-1)),
    (TOPIC, _sample(ts=32_503_680_000_001)),
    (TOPIC, _sample(ts="7")),
    (TOPIC, _sample(ts=7.0)),
    (TOPIC, _sample(ts=7.5)),
    (TOPIC, _sample(value="2.5")),
    (TOPIC, _sample(value=3)),
    (TOPIC, _sample(value=True)),
    (TOPIC, _sample(value=None)),
    (TOPIC, _sample(value=_DROP)),
    (TOPIC, _sample(name=_DROP)),
    (TOPIC, _sample(ts=_DROP)),
    (TOPIC, _sample(unit=None)),
    (TOPIC, json.dumps(_batch(samples=[{"ts": 5, "name": "x", "value": 1}])).encode()[:-2]),
    (TOPIC, _sample().replace(b"1.5", b"1e999")),  # overflows to inf
    (TOPIC, _sample().replace(b"1.5", b"NaN")),
    (TOPIC, _sample().replace(b"1.5", b"Infinity")),
    (TOPIC, _sample().replace(b"1.5", b"-Infinity")),
    (TOPIC, json.dumps(_batch(samples=["x"])).encode()),
    (TOPIC, json.dumps(_batch(samples={"ts": 5})).encode()),
]


@pytest.mark.parametrize(("topic", "payload"), CASES)
def test_row_decode_agrees_with_the_codec(topic: str, payload: bytes) -> None:
    codec = Codec(CachedTopics(P), max_payload=1024)
    try:
        expected = codec.decode(topic, payload)
    except DecodeError:
        expected = None
    got = decode_telemetry_row(codec, topic, payload, 99)
    if isinstance(expected, TelemetryBatch):
        assert got is not None, "the codec accepts it"
        row, stored = got
        want = telemetry_row(expected, 99)
        assert row == want
        assert [tuple(map(type, s)) for s in row.samples] == [
            tuple(map(type, s)) for s in want.samples
        ]
        gaps = tuple((g.first, g.last) for g in expected.gaps)
        assert stored == (expected.site, expected.epoch, expected.seq, gaps, expected.historical)
    else:
        assert got is None  # the caller then runs codec.decode for the reason


def test_a_large_batch_keeps_every_sample_in_order() -> None:
    codec = Codec(CachedTopics(P), max_payload=1 << 20)
    samples = tuple(Sample(ts=i, name=f"s{i % 7}", value=i / 3, q="good") for i in range(500))
    msg = TelemetryBatch(site="a", session=2, seq=9, device="d", samples=samples)
    got = decode_telemetry_row(codec, TOPIC, encode(msg), 1)
    assert got is not None
    assert got[0] == telemetry_row(msg, 1)
