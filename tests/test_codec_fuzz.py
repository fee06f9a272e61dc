"""Hostile payloads: whatever arrives, ``decode`` raises nothing but DecodeError."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import KINDS, Cleared, Codec, DecodeError, Topics, encode
from tests.test_schemas_messages import any_message, topic_for

T = Topics()
TOPICS = [
    T.status("plant-1"),
    T.registration("plant-1"),
    T.heartbeat("plant-1"),
    T.telemetry("plant-1", "press-1"),
    T.job_result("plant-1", "j-1"),
    T.cmd("plant-1", "train"),
    T.coordinator_status(),
]
CODEC = Codec(max_payload=64 * 1024)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: Python's json writes them as NaN/Infinity
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
envelope_keys = st.sampled_from(
    ["v", "kind", "site", "session", "seq", "ts", "historical", "gaps", "device", "samples",
     "job_id", "state", "cmd_id", "expires_at", "weights", "index", "total", "data", "acked"]
)  # fmt: skip


def check(topic: str, payload: bytes) -> None:
    try:
        got = CODEC.decode(topic, payload)
    except DecodeError as exc:
        assert exc.reason is not None and isinstance(exc.detail, str)
        return
    # Anything accepted is a deregistration or a real message that round trips.
    if isinstance(got, Cleared):
        assert payload == b""
    else:
        assert got.kind in KINDS
        assert CODEC.decode(topic, encode(got)) == got


@settings(max_examples=200, deadline=None)
@given(topic=st.sampled_from(TOPICS), payload=st.binary(max_size=300))
def test_arbitrary_bytes(topic: str, payload: bytes) -> None:
    check(topic, payload)


@settings(max_examples=200, deadline=None)
@given(topic=st.sampled_from(TOPICS), value=json_values)
def test_arbitrary_json_values(topic: str, value: Any) -> None:
    check(topic, json.dumps(value).encode())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    topic=st.sampled_from(TOPICS),
    kind=st.sampled_from(sorted(KINDS)),
    fields=st.dictionaries(envelope_keys | st.text(max_size=8), json_values, max_size=8),
)
def test_objects_with_a_valid_kind_and_random_fields(
    topic: str, kind: str, fields: dict[str, Any]
) -> None:
    check(topic, json.dumps({**fields, "kind": kind}).encode())


@settings(max_examples=150, deadline=None)
@given(msg=any_message, data=st.data())
def test_mutated_real_messages(msg: Any, data: st.DataObject) -> None:
    """Valid messages with one field replaced by a random JSON value, or bytes cut/flipped."""
    payload = encode(msg)
    body = json.loads(payload)
    key = data.draw(st.sampled_from(sorted(body)))
    body[key] = data.draw(json_values)
    check(topic_for(msg), json.dumps(body).encode())
    cut = data.draw(st.integers(0, len(payload)))
    flip = data.draw(st.integers(0, 255))
    mutated = payload[:cut] + bytes([flip]) + payload[cut + 1 :]
    check(topic_for(msg), mutated)


def test_deeply_nested_json_is_rejected_cleanly() -> None:
    for depth in (1_000, 100_000):
        check(T.heartbeat("plant-1"), b"[" * depth + b"]" * depth)
        check(T.heartbeat("plant-1"), b'{"a":' * depth + b"1" + b"}" * depth)


def test_huge_numbers_are_rejected_cleanly() -> None:
    digits = b"9" * 20_000  # past Python's int/str conversion limit
    check(
        T.heartbeat("plant-1"), b'{"kind":"heartbeat","site":"plant-1","session":' + digits + b"}"
    )
    check(T.heartbeat("plant-1"), b"[" + digits + b"]")
