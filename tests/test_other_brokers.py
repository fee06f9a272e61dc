"""The NATS and RabbitMQ test brokers themselves: real servers, MQTT 3.1.1, users."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.helpers.broker import port_open
from tests.helpers.mqtt import TestClient
from tests.helpers.other_brokers import (
    NatsBroker,
    RabbitBroker,
    mqtt_connack,
    nats_broker,
    rabbitmq_broker,
)
from tests.helpers.secure_broker import subscribe_rc
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.slow  # real brokers (RabbitMQ boots in ~10 s)


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitBroker]:
    with rabbitmq_broker(tmp_path_factory.mktemp("rabbit")) as b:
        yield b


def _round_trip(
    port: int, topic: str, username: str | None = None, password: str | None = None
) -> None:
    sub = TestClient(port, username=username, password=password, protocol=mqtt.MQTTv311)
    pub = TestClient(port, username=username, password=password, protocol=mqtt.MQTTv311)
    sub.connect()
    pub.connect()
    try:
        assert sub.connect_rc == 0 and pub.connect_rc == 0
        assert subscribe_rc(sub, topic) == 1
        pub.publish(topic, b"hello")
        got = sub.expect(lambda m: m.topic == topic, timeout=20)
        assert got.payload == b"hello"
    finally:
        sub.close()
        pub.close()


def _v5_connect(port: int) -> list[tuple[str, int]]:
    """What an MQTT 5 client sees: CONNACK codes and disconnect reasons, in order."""
    events: list[tuple[str, int]] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_connect = lambda _c, _u, _f, rc, _p=None: events.append(("connack", rc.value))
    c.on_disconnect = lambda _c, _u, _f, rc, _p=None: events.append(("closed", rc.value))
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        wait_for(lambda: events, 20, "a CONNACK or a close")
    finally:
        c.disconnect()
        c.loop_stop()
    return events


def test_nats_mqtt_311_round_trip_and_users(tmp_path: Path) -> None:
    with nats_broker(tmp_path / "nats") as b:
        assert mqtt_connack(b.port) == 0
        _round_trip(b.port, "fedmq/v1/anon")
        # MQTT 5 gets a CONNACK "unsupported protocol version" (0x84)
        assert _v5_connect(b.port)[0] == ("connack", 0x84)
        b.add_user("site-a", "pw-a")
        _round_trip(b.port, "fedmq/v1/site-a", username="site-a", password="pw-a")
        bad = TestClient(b.port, username="site-a", password="wrong", protocol=mqtt.MQTTv311)
        assert bad.connect().connect_rc != 0
        bad.close()
        # anonymous still allowed beside the users (no_auth_user)
        assert mqtt_connack(b.port) == 0
        port = b.port
    assert not port_open(port)


def test_nats_without_anonymous_refuses_it(tmp_path: Path) -> None:
    b = NatsBroker(tmp_path / "nats", anonymous=False)
    b.users["site-a"] = {"password": "pw-a"}
    b.start()
    try:
        assert mqtt_connack(b.port) not in (None, 0)
        _round_trip(b.port, "fedmq/v1/x", username="site-a", password="pw-a")
    finally:
        b.stop()


def test_rabbitmq_mqtt_311_users_and_topic_permissions(rabbit: RabbitBroker) -> None:
    assert mqtt_connack(rabbit.port) == 0
    _round_trip(rabbit.port, "fedmq/v1/anon")
    # MQTT 5: RabbitMQ 3.10 closes the connection without any CONNACK
    assert all(kind == "closed" for kind, _rc in _v5_connect(rabbit.port))
    rabbit.add_user("site-r", "pw-r", topic_write="^fedmq\\.v1\\.site-r\\.", topic_read=".*")
    _round_trip(rabbit.port, "fedmq/v1/site-r/t", username="site-r", password="pw-r")
    assert "site-r" in rabbit.ctl("list_users")
    bad = TestClient(rabbit.port, username="site-r", password="wrong", protocol=mqtt.MQTTv311)
    assert bad.connect(timeout=20).connect_rc != 0
    bad.close()


def test_rabbitmq_stop_frees_its_ports(tmp_path: Path) -> None:
    b = RabbitBroker(tmp_path / "rabbit").start()
    ports = (b.port, b.dist_port, b.epmd_port)
    assert all(port_open(p) for p in ports)
    b.stop()
    assert not b.running
    wait_for(lambda: not any(port_open(p) for p in ports), 20, "ports closed")
