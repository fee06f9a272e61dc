"""Every message kind through a real Mosquitto: publish, receive, decode, compare."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schemas import QOS, RETAINED, Cleared, Codec, Topics, encode
from tests.helpers.mqtt import TestClient
from tests.test_schemas_messages import SAMPLES, topic_for


def test_each_kind_travels_through_the_broker(
    mqtt_client: Callable[..., TestClient], prefix: str
) -> None:
    topics = Topics(prefix)
    codec = Codec(topics)
    sent: dict[tuple[str, str], Any] = {}
    publisher = mqtt_client()
    subscriber = mqtt_client().subscribe(f"{prefix}/#", qos=1)
    for kind, msg in sorted(SAMPLES.items()):
        topic = topic_for(msg, topics)
        channel = topics.parse(topic).channel
        publisher.publish(topic, encode(msg), qos=QOS[channel], retain=channel in RETAINED)
        sent[topic, kind] = msg

    received: dict[tuple[str, str], Any] = {}
    while len(received) < len(sent):
        got = subscriber.expect(lambda m: True, timeout=10)
        msg = codec.decode(got.topic, got.payload)
        assert not isinstance(msg, Cleared)
        received[got.topic, msg.kind] = msg
    assert received == sent

    # A late subscriber sees exactly the retained topics (status, registration,
    # alarm, coordinator status), each with the retain flag; then deregister clears them.
    late = mqtt_client().subscribe(f"{prefix}/#", qos=1)
    retained = {m.topic: m for m in late.collect(timeout=1.0)}
    expected = {t for (t, _k) in sent if topics.parse(t).channel in RETAINED}
    assert set(retained) == expected and len(expected) == 4
    assert all(m.retain for m in retained.values())
    for topic, m in retained.items():
        assert codec.decode(topic, m.payload) in sent.values()

    for topic in expected:
        publisher.publish(topic, b"", qos=1, retain=True)
    for _ in expected:
        got = subscriber.expect(lambda m: m.topic in expected and m.payload == b"")
        assert isinstance(codec.decode(got.topic, got.payload), Cleared)
    assert mqtt_client().subscribe(f"{prefix}/#").collect(timeout=0.5) == []
