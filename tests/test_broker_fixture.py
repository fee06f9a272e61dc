"""The broker fixture itself: a real Mosquitto that can be stopped, killed and restarted."""

from __future__ import annotations

from collections.abc import Callable

from tests.helpers.broker import Broker, port_open
from tests.helpers.mqtt import TestClient


def test_session_broker_round_trip(mqtt_client: Callable[..., TestClient], prefix: str) -> None:
    sub = mqtt_client().subscribe(f"{prefix}/#")
    mqtt_client().publish(f"{prefix}/x", b"hello")
    got = sub.expect(lambda m: m.topic == f"{prefix}/x")
    assert got.payload == b"hello"


def test_private_broker_kill_and_restart_on_same_port(own_broker: Broker) -> None:
    port = own_broker.port
    own_broker.kill()
    assert not port_open(port)
    own_broker.start()
    assert own_broker.port == port and port_open(port)
    c = TestClient(port).connect()
    c.subscribe("t/#")
    c.publish("t/1", b"x")
    assert c.expect(lambda m: m.topic == "t/1").payload == b"x"
    c.close()
