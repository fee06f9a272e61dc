"""The coordinator's only MQTT client (the only coordinator module that imports paho).

One persistent session (MQTT 5 ``clean_start=False`` with a session expiry, or 3.1.1
``clean_session=False``), QoS 1 subscriptions, and manual acknowledgements: a PUBACK is
sent only when the caller says the message is committed (:meth:`Bus.ack`). Callbacks only
translate and enqueue :class:`Inbound` items. The coordinator's retained status is
published online on every connect and its retained offline Last Will is set up front.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from fedmq_runtime.broker_connection import connection_options
from fedmq_runtime.clock import now_ms
from fedmq_runtime.settings import MqttSettings
from schemas import CoordinatorStatus, Topics, encode

__all__ = ["Bus", "BusOptions", "Inbound"]

log = logging.getLogger(__name__)


class Inbound(NamedTuple):
    """One received message; ``mid``/``qos`` are needed to ack it after commit."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    received_at: int


@dataclass(frozen=True)
class BusOptions:
    client_id: str = "fedmq-coordinator"
    session: int = 0
    session_expiry_s: int = 24 * 3600
    receive_maximum: int = 20_000
    # False for publish-only helpers (``fedmq train``): no retained coordinator status and
    # no Will, so their coming and going never looks like the coordinator's.
    announce: bool = True


class Bus:
    """Narrow MQTT interface: ``start``, ``subscribe``, ``publish``, ``ack``, ``stop``.

    Raises ``fedmq_runtime.settings.SettingsError`` at construction for credentials or TLS
    settings that cannot work (``fedmq_runtime.broker_connection``).
    """

    def __init__(
        self,
        settings: MqttSettings,
        inbound: queue.SimpleQueue[Inbound],
        options: BusOptions | None = None,
    ) -> None:
        self.settings = settings
        self.options = options or BusOptions()
        self.topics = Topics(settings.prefix)
        self.inbound = inbound
        self.connected = threading.Event()
        self._subscriptions: dict[str, int] = {}
        self._v5 = settings.protocol == "5"
        kwargs: dict[str, Any] = {}
        if not self._v5:
            kwargs["clean_session"] = False
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.options.client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            manual_ack=True,
            **kwargs,
        )
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 10)
        login = connection_options(settings)  # the site's bus applies the same
        if login.username is not None:
            self.client.username_pw_set(login.username, login.password)
        if login.tls is not None:
            self.client.tls_set_context(login.tls)
        if self.options.announce:
            self.client.will_set(
                self.topics.coordinator_status(), self._status("offline"), qos=1, retain=True
            )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def _status(self, state: str) -> bytes:
        return encode(CoordinatorStatus(session=self.options.session, state=state))  # type: ignore[arg-type]

    # Lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; paho keeps reconnecting with backoff."""
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.options.session_expiry_s
            props.ReceiveMaximum = self.options.receive_maximum
        s = self.settings
        if self._v5:
            self.client.connect_async(
                s.host, s.port, s.keepalive, clean_start=False, properties=props
            )
        else:
            self.client.connect_async(s.host, s.port, s.keepalive)
        self.client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Clean shutdown: retained offline status, then disconnect (no Will is sent)."""
        if self.connected.is_set() and self.options.announce:
            info = self.client.publish(
                self.topics.coordinator_status(), self._status("offline"), qos=1, retain=True
            )
            info.wait_for_publish(timeout=timeout)
        self.client.disconnect()
        self.client.loop_stop()

    # Traffic -------------------------------------------------------------------------

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and again after every reconnect."""
        self._subscriptions[topic] = qos
        if self.connected.is_set():
            self._subscribe(topic, qos)

    def _subscribe(self, topic: str, qos: int) -> None:
        if self._v5:
            # noLocal: our own acks and commands under P/site/# do not come back to us.
            # retainAsPublished: a site that publishes durable data retained is seen doing
            # so at once (MQTT 3.1.1 shows the flag only when a subscription starts).
            options = SubscribeOptions(qos=qos, noLocal=True, retainAsPublished=True)
            self.client.subscribe(topic, options=options)
        else:
            self.client.subscribe(topic, qos)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Any:
        """Queue a publish (thread-safe; paho sends it from its network thread).

        Returns paho's message info: ``wait_for_publish(timeout)`` waits for the PUBACK.
        """
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def ack(self, mid: int, qos: int) -> None:
        """Send the PUBACK of a committed message (no-op for QoS 0)."""
        if qos:
            self.client.ack(mid, qos)

    # paho callbacks: translate and enqueue only --------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.warning("broker refused connection: %s", rc)
            return
        log.info(
            "connected to %s:%s (session present: %s)",
            self.settings.host,
            self.settings.port,
            getattr(flags, "session_present", None),
        )
        for topic, qos in self._subscriptions.items():
            self._subscribe(topic, qos)
        if self.options.announce:
            client.publish(self.topics.coordinator_status(), self._status("online"), 1, True)
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connected.clear()
        log.warning("disconnected from broker: %s (reconnecting)", rc)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.inbound.put(
            Inbound(msg.topic, msg.payload, msg.mid, msg.qos, bool(msg.retain), now_ms())
        )
