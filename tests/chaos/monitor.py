"""Heartbeats on the wire: what each site announces (samples it dropped, outbox errors)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from schemas import Topics

__all__ = ["Beat", "HeartbeatMonitor", "counter_total"]


@dataclass(frozen=True)
class Beat:
    at: float  # monotonic time of receipt
    session: int
    samples_dropped: int
    outbox_dropped: int
    outbox_error: str | None


def counter_total(values: list[int]) -> int:
    """The total a counter counted, across resets (a site restart may start it at 0 again)."""
    total, last = 0, 0
    for value in values:
        total += value - last if value >= last else value
        last = value
    return total


class HeartbeatMonitor:
    """A plain paho subscriber to every site's heartbeat; reconnects after broker restarts."""

    def __init__(self, port: int, prefix: str) -> None:
        # Topics builds one site's topics; the wildcard over all sites is spelled here.
        self._filter = Topics(prefix).heartbeat("x").replace("/site/x/", "/site/+/")
        self._beats: dict[str, list[Beat]] = {}
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"chaos-monitor-{uuid.uuid4().hex[:8]}"
        )
        self._client.reconnect_delay_set(1, 1)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._port = port

    def start(self) -> HeartbeatMonitor:
        self._client.connect_async("127.0.0.1", self._port, keepalive=10)
        self._client.loop_start()
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def beats(self, site: str) -> list[Beat]:
        with self._lock:
            return list(self._beats.get(site, ()))

    def samples_dropped(self, site: str) -> int:
        return counter_total([b.samples_dropped for b in self.beats(site)])

    def outbox_errors(self, site: str) -> list[str]:
        return sorted({b.outbox_error for b in self.beats(site) if b.outbox_error})

    def _on_connect(self, client: mqtt.Client, *_args: object) -> None:
        client.subscribe(self._filter, qos=0)

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
            beat = Beat(
                time.monotonic(),
                int(body.get("session", 0)),
                int(body.get("samples_dropped") or 0),
                int(body.get("outbox_dropped") or 0),
                body.get("outbox_error"),
            )
            site = str(body["site"])
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            self._beats.setdefault(site, []).append(beat)
