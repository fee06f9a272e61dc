"""A plain paho client for tests: connect, subscribe, collect what arrives."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class TestClient:
    """Collects every message on its subscriptions into a queue."""

    __test__ = False

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
        tls: dict[str, object] | None = None,
    ) -> None:
        self.messages: queue.Queue[Received] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(**tls)  # type: ignore[arg-type]
        self.client.on_message = self._on_message
        self.connect_rc: object = None
        self.client.on_connect = self._on_connect
        self.host, self.port = host, port

    def _on_connect(self, client, userdata, flags, rc, properties=None):
        self.connect_rc = rc

    def _on_message(self, client, userdata, msg):
        self.messages.put(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos))

    def connect(self, timeout: float = 5.0) -> TestClient:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        wait_for(lambda: self.connect_rc is not None, timeout, "CONNACK")
        return self

    def subscribe(self, topic: str, qos: int = 1) -> TestClient:
        result, _mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.1)
        return self

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(timeout=5)

    def collect(self, timeout: float = 1.0) -> list[Received]:
        """Everything that arrives until ``timeout`` passes with nothing new."""
        out = []
        while True:
            try:
                out.append(self.messages.get(timeout=timeout))
            except queue.Empty:
                return out

    def expect(self, predicate: Callable[[Received], bool], timeout: float = 5.0) -> Received:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("expected message did not arrive")
            try:
                msg = self.messages.get(timeout=remaining)
            except queue.Empty:
                raise AssertionError("expected message did not arrive") from None
            if predicate(msg):
                return msg

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
