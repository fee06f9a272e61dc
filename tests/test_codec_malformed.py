"""A table of malformed inputs: each is rejected with its exact reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas import Codec, DecodeError, Reason, Topics, decode, encode
from tests.test_schemas_messages import SAMPLES

T = Topics()
TELEMETRY = T.telemetry("plant-1", "press-1")


def body(sample: str, /, **changes: Any) -> bytes:
    """The payload of ``SAMPLES[sample]`` with some fields changed (None deletes one)."""
    data = json.loads(encode(SAMPLES[sample]))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return json.dumps(data).encode()


def with_sample_value(raw_value: str) -> bytes:
    """A telemetry payload whose sample value is the raw JSON token ``raw_value``."""
    return body("telemetry").replace(b'"value": 21.5', b'"value": ' + raw_value.encode())


CASES: list[tuple[str, str, bytes, Reason]] = [
    ("wildcard topic", "fedmq/v1/site/+/status", body("site_status"), Reason.BAD_TOPIC),
    ("foreign prefix", "other/v1/site/plant-1/status", body("site_status"), Reason.BAD_TOPIC),
    ("unknown leaf", "fedmq/v1/site/plant-1/bogus", body("site_status"), Reason.BAD_TOPIC),
    ("bad site level", "fedmq/v1/site/Plant/status", body("site_status"), Reason.BAD_TOPIC),
    ("empty on telemetry", TELEMETRY, b"", Reason.EMPTY),
    ("empty on ack", T.ack("plant-1"), b"", Reason.EMPTY),
    ("empty on cmd", T.cmd("plant-1", "ping"), b"", Reason.EMPTY),
    ("invalid UTF-8", TELEMETRY, b'{"kind": "telemetry", "x": "\xff\xfe"}', Reason.NOT_UTF8),
    ("lone continuation byte", TELEMETRY, b"\x80", Reason.NOT_UTF8),
    ("not JSON", TELEMETRY, b"temp=21.5", Reason.NOT_JSON),
    ("truncated JSON", TELEMETRY, body("telemetry")[:-3], Reason.NOT_JSON),
    ("JSON array", TELEMETRY, b'[{"kind": "telemetry"}]', Reason.NOT_OBJECT),
    ("JSON string", TELEMETRY, b'"telemetry"', Reason.NOT_OBJECT),
    ("JSON number", TELEMETRY, b"42", Reason.NOT_OBJECT),
    ("JSON null", TELEMETRY, b"null", Reason.NOT_OBJECT),
    ("unknown kind", TELEMETRY, body("telemetry", kind="telemetry2"), Reason.UNKNOWN_KIND),
    ("kind missing", TELEMETRY, body("telemetry", kind=None), Reason.UNKNOWN_KIND),
    ("kind not a string", TELEMETRY, body("telemetry", kind=7), Reason.UNKNOWN_KIND),
    ("major version 2", TELEMETRY, body("telemetry", v="2.0"), Reason.UNSUPPORTED_VERSION),
    ("major version 0", TELEMETRY, body("telemetry", v="0.9"), Reason.UNSUPPORTED_VERSION),
    (
        "v2 payload of another shape",
        TELEMETRY,
        json.dumps({"v": "2.0", "kind": "telemetry", "points": []}).encode(),
        Reason.UNSUPPORTED_VERSION,
    ),
    ("malformed version", TELEMETRY, body("telemetry", v="one"), Reason.INVALID),
    ("heartbeat on telemetry", TELEMETRY, body("heartbeat"), Reason.WRONG_TOPIC),
    ("status on registration", T.registration("plant-1"), body("site_status"), Reason.WRONG_TOPIC),
    ("ping on cmd/train", T.cmd("plant-1", "train"), body("ping"), Reason.WRONG_TOPIC),
    (
        "train_chunk on cmd/cancel",
        T.cmd("plant-1", "cancel"),
        body("train_chunk"),
        Reason.WRONG_TOPIC,
    ),
    ("ack on coordinator status", T.coordinator_status(), body("ack"), Reason.WRONG_TOPIC),
    ("site mismatch", T.status("plant-2"), body("site_status"), Reason.SITE_MISMATCH),
    ("site mismatch on cmd", T.cmd("plant-2", "ping"), body("ping"), Reason.SITE_MISMATCH),
    ("device mismatch", T.telemetry("plant-1", "press-2"), body("telemetry"), Reason.WRONG_TOPIC),
    ("job mismatch", T.job_status("plant-1", "j-2"), body("job_status"), Reason.WRONG_TOPIC),
    (
        "result job mismatch",
        T.job_result("plant-1", "j-2"),
        body("result_chunk"),
        Reason.WRONG_TOPIC,
    ),
    ("NaN value", TELEMETRY, with_sample_value("NaN"), Reason.INVALID),
    ("Infinity value", TELEMETRY, with_sample_value("Infinity"), Reason.INVALID),
    ("-Infinity value", TELEMETRY, with_sample_value("-Infinity"), Reason.INVALID),
    ("overflowing float", TELEMETRY, with_sample_value("1e999"), Reason.INVALID),
    (
        "NaN in heartbeat",
        T.heartbeat("plant-1"),
        body("heartbeat").replace(b"12.5", b"NaN"),
        Reason.INVALID,
    ),
    ("missing field", TELEMETRY, body("telemetry", samples=None), Reason.INVALID),
    ("missing session", TELEMETRY, body("telemetry", session=None), Reason.INVALID),
    ("empty samples", TELEMETRY, body("telemetry", samples=[]), Reason.INVALID),
    ("negative seq", TELEMETRY, body("telemetry", seq=-1), Reason.INVALID),
    ("zero seq on durable", TELEMETRY, body("telemetry", seq=0), Reason.INVALID),
    ("seq as string", TELEMETRY, body("telemetry", seq="eight"), Reason.INVALID),
    ("bad gap range", TELEMETRY, body("telemetry", gaps=[{"first": 5, "last": 2}]), Reason.INVALID),
    ("bad state", T.status("plant-1"), body("site_status", state="maybe"), Reason.INVALID),
    ("bad quality", TELEMETRY, body("telemetry").replace(b'"good"', b'"great"'), Reason.INVALID),
    (
        "bad site in payload",
        T.status("plant-1"),
        body("site_status", site="Plant 1"),
        Reason.INVALID,
    ),
    ("ts before 1970", TELEMETRY, body("telemetry", ts=-5), Reason.INVALID),
    ("bad code hash", T.cmd("plant-1", "train"), body("train", code_hash="xyz"), Reason.INVALID),
]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_input_is_rejected_with_its_reason(
    topic: str, payload: bytes, reason: Reason
) -> None:
    with pytest.raises(DecodeError) as info:
        decode(topic, payload)
    assert info.value.reason is reason, info.value.detail
    assert info.value.detail and "\n" not in info.value.detail


def test_payload_over_the_limit_is_too_large() -> None:
    payload = body("telemetry")
    codec = Codec(max_payload=len(payload) - 1)
    with pytest.raises(DecodeError) as info:
        codec.decode(TELEMETRY, payload)
    assert info.value.reason is Reason.TOO_LARGE
    # Exactly at the limit is fine, and the limit applies before anything is parsed.
    assert Codec(max_payload=len(payload)).decode(TELEMETRY, payload) == SAMPLES["telemetry"]
    with pytest.raises(DecodeError) as info:
        Codec(max_payload=10).decode(TELEMETRY, b"\xff" * 11)
    assert info.value.reason is Reason.TOO_LARGE


def test_codec_bound_to_another_prefix_rejects_default_topics() -> None:
    codec = Codec(Topics("acme/pdm/fedmq/v1"))
    with pytest.raises(DecodeError) as info:
        codec.decode(T.status("plant-1"), body("site_status"))
    assert info.value.reason is Reason.BAD_TOPIC
    good = codec.topics.status("plant-1")
    assert codec.decode(good, body("site_status")) == SAMPLES["site_status"]


def test_every_reason_is_covered_by_the_table() -> None:
    covered = {c[3] for c in CASES} | {Reason.TOO_LARGE}
    assert covered == set(Reason)


def test_a_topic_validates_only_its_own_kinds_and_a_kindless_payload_is_refused() -> None:
    # The decoder validates against the kinds the topic carries; a payload without ``kind``
    # is not taken for that kind (its model has a default) but refused as before.
    ack = b'{"v":"1.1","site":"a","session":1,"seq":0,"ts":1,"acked":3}'
    with pytest.raises(DecodeError) as info:
        decode("fedmq/v1/site/a/ack", ack)
    assert info.value.reason == Reason.UNKNOWN_KIND
    msg = decode("fedmq/v1/site/a/ack", ack.replace(b'{"v"', b'{"kind":"ack","v"'))
    assert type(msg).__name__ == "Ack"
    # A valid message of another kind is still named for what it is: the wrong topic.
    with pytest.raises(DecodeError) as info:
        decode("fedmq/v1/site/a/heartbeat", encode(msg))
    assert info.value.reason == Reason.WRONG_TOPIC
