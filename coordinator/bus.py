"""The coordinator's only MQTT client (the only coordinator module that imports paho).

One persistent session (MQTT 5 ``clean_start=False`` with a session expiry, or 3.1.1
``clean_session=False``), QoS 1 subscriptions, and manual acknowledgements: a PUBACK is
sent only when the caller says the message is committed (:meth:`Bus.ack`). Callbacks only
translate and enqueue :class:`Inbound` items. The coordinator's retained status is
published online on every connect and its retained offline Last Will is set up front.

The MQTT version follows ``mqtt.protocol`` (:mod:`fedmq_runtime.mqtt_protocol`): with
``auto`` a broker that refuses MQTT 5 (CONNACK "unsupported protocol version", or a close
before any CONNACK) gets a fresh 3.1.1 client at once. Every refused or dropped connect is
logged with its reason; a disconnect asked for by :meth:`Bus.stop` is logged at INFO.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from fedmq_runtime.broker_connection import connection_options
from fedmq_runtime.clock import now_ms
from fedmq_runtime.mqtt_protocol import ProtocolChoice, Version
from fedmq_runtime.settings import MqttSettings
from schemas import CoordinatorStatus, Topics, encode

__all__ = ["Bus", "BusOptions", "Inbound", "shared_refusal"]

log = logging.getLogger(__name__)


def shared_refusal(broker: str, protocol: str) -> str:
    """Why an ingest group cannot run on ``broker`` (no shared subscriptions)."""
    if protocol != "5":
        return (
            f"broker {broker} speaks MQTT 3.1.1 only: --group needs MQTT 5 shared "
            "subscriptions ($share/GROUP/...), which nats-server (2.9) and RabbitMQ (3.x) do "
            "not implement: they take $share/... as an ordinary topic and would deliver none "
            "of the telemetry. Run one fedmq serve without --group, or use a broker with "
            "shared subscriptions (Mosquitto 2)"
        )
    return f"broker {broker} says it has no shared subscriptions: --group needs them"


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
    # schemas.commands.public_key_id of the command-signing key, in the retained status.
    key_id: str = ""
    # An ingest group's instance: needs MQTT 5 shared subscriptions ($share/...); a broker
    # without them sets Bus.refused instead of silently delivering nothing.
    shared: bool = False


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
        # Filters a resumed session may still hold and this instance must not receive
        # (a group member that led before: the leader's topics), dropped at each connect.
        self._unwanted: list[str] = []
        self._protocol = ProtocolChoice(settings.protocol, f"{settings.host}:{settings.port}", log)
        self._login = connection_options(settings)  # the site's bus applies the same
        self._lock = threading.Lock()  # guards client replacement against stop()
        self._stopping = False
        self._connack_seen = False  # of the current client's current attempt
        self._sub_mids: dict[int, str] = {}  # SUBSCRIBE packet id -> its topic filter
        # Why the broker cannot do what this coordinator needs (an ingest group's shared
        # subscription); ``fedmq serve`` stops with it. None: nothing wrong.
        self.refused: str | None = None
        self.client = self._new_client(self._protocol.current)

    @property
    def protocol(self) -> Version:
        """The MQTT version in use (or being tried)."""
        return self._protocol.current

    @property
    def _v5(self) -> bool:
        return self._protocol.current == "5"

    def _new_client(self, protocol: Version) -> mqtt.Client:
        kwargs: dict[str, Any] = {}
        if protocol != "5":
            kwargs["clean_session"] = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.options.client_id,
            protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
            manual_ack=True,
            **kwargs,
        )
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(1, 10)
        if self._login.username is not None:
            client.username_pw_set(self._login.username, self._login.password)
        if self._login.tls is not None:
            client.tls_set_context(self._login.tls)
        if self.options.announce:
            client.will_set(
                self.topics.coordinator_status(), self._status("offline"), qos=1, retain=True
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _status(self, state: str) -> bytes:
        return encode(
            CoordinatorStatus(session=self.options.session, state=state, key_id=self.options.key_id)  # type: ignore[arg-type]
        )

    # Lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; paho keeps reconnecting with backoff."""
        self._start(self.client)

    def _start(self, client: mqtt.Client) -> None:
        s = self.settings
        self._connack_seen = False
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.options.session_expiry_s
            props.ReceiveMaximum = self.options.receive_maximum
            client.connect_async(s.host, s.port, s.keepalive, clean_start=False, properties=props)
        else:
            client.connect_async(s.host, s.port, s.keepalive)
        client.loop_start()

    def stop(self, timeout: float = 5.0, announce: bool = True) -> None:
        """Clean shutdown: retained offline status (unless ``announce`` is False: a leader
        that lost its lock must not say "offline" over its successor), then disconnect
        (no Will is sent)."""
        with self._lock:
            self._stopping = True
            client = self.client
        if self.connected.is_set() and self.options.announce and announce:
            info = client.publish(
                self.topics.coordinator_status(), self._status("offline"), qos=1, retain=True
            )
            info.wait_for_publish(timeout=timeout)
        client.disconnect()
        client.loop_stop()

    def _fall_back(self, old: mqtt.Client) -> None:
        """Replace ``old`` (refused on MQTT 5) by a client on the protocol now chosen."""
        old.loop_stop()  # paho's thread ends before it reconnects on MQTT 5
        with self._lock:
            if self._stopping or old is not self.client:
                return
            self.client = self._new_client(self._protocol.current)
            self._start(self.client)

    # Traffic -------------------------------------------------------------------------

    def unsubscribe_at_connect(self, topics: list[str]) -> None:
        """Unsubscribe from ``topics`` at every connect (before subscribing): what a
        persistent session kept from an earlier life, e.g. a group member that led."""
        self._unwanted = list(topics)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and again after every reconnect."""
        self._unwanted = [t for t in self._unwanted if t != topic]
        self._subscriptions[topic] = qos
        if self.connected.is_set():
            self._subscribe(topic, qos)

    def _subscribe(self, topic: str, qos: int) -> None:
        if self._v5:
            # noLocal: our own acks and commands under P/site/# do not come back to us.
            # retainAsPublished: a site that publishes durable data retained is seen doing
            # so at once (MQTT 3.1.1 shows the flag only when a subscription starts).
            # A shared subscription ($share/...) must not set noLocal (a protocol error).
            local = not topic.startswith("$share/")
            options = SubscribeOptions(qos=qos, noLocal=local, retainAsPublished=True)
            _rc, mid = self.client.subscribe(topic, options=options)
        else:
            _rc, mid = self.client.subscribe(topic, qos)
        if mid is not None:
            self._sub_mids[mid] = topic

    def lead(self) -> None:
        """Become the coordinator the sites see (an instance that won the leader lock):
        reconnect, resuming the same persistent session, with the Will and the retained
        online status that a follower (``announce=False``) goes without."""
        with self._lock:
            if self._stopping or self.options.announce:
                return
            self.options = replace(self.options, announce=True)
            old = self.client
            # Replaced first: the old client's callbacks from here on are ignored.
            self.client = self._new_client(self._protocol.current)
            self.connected.clear()
        old.disconnect()  # a normal DISCONNECT: the session and its queue stay
        old.loop_stop()
        with self._lock:
            if not self._stopping:
                self._start(self.client)

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
        if client is not self.client:
            return  # a client lead() replaced
        self._connack_seen = True
        if rc.is_failure:
            log.warning(
                "broker %s:%s refused the connection (MQTT %s): %s (reason code %d)",
                self.settings.host,
                self.settings.port,
                self._protocol.current,
                rc,
                rc.value,
            )
            if self._protocol.connack(int(rc.value), str(rc)):
                self._switch(client)
            return
        self._protocol.connack(0, str(rc))  # logs the auto choice once
        if self.options.shared:
            available = getattr(props, "SharedSubscriptionAvailable", 1) if self._v5 else 0
            if not available:
                self.refused = shared_refusal(
                    f"{self.settings.host}:{self.settings.port}", self._protocol.current
                )
        log.info(
            "connected to %s:%s (MQTT %s, session present: %s)",
            self.settings.host,
            self.settings.port,
            self._protocol.current,
            getattr(flags, "session_present", None),
        )
        if self._unwanted:
            client.unsubscribe(list(self._unwanted))
        for topic, qos in list(self._subscriptions.items()):  # lead() may add meanwhile
            self._subscribe(topic, qos)
        if self.options.announce:
            client.publish(self.topics.coordinator_status(), self._status("online"), 1, True)
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if client is not self.client:
            return  # a client lead() replaced
        was = self.connected.is_set()
        self.connected.clear()
        if self._stopping:
            log.info("disconnected from broker: %s", rc)
            return
        if was or self._connack_seen:
            self._connack_seen = False  # paho's next reconnect is a new attempt
            if was:
                log.warning("disconnected from broker: %s (reconnecting)", rc)
            return
        if self._protocol.closed_before_connack(str(rc)):
            self._switch(client)

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, codes: Any, props: Any = None
    ) -> None:
        topic = self._sub_mids.pop(mid, "?")
        for rc in codes:
            if getattr(rc, "is_failure", False) or (isinstance(rc, int) and rc >= 0x80):
                why = f"broker refused the subscription to {topic}: {rc}"
                log.error("%s", why)
                if topic.startswith("$share/"):
                    self.refused = why

    def _switch(self, client: Any) -> None:
        # From paho's own thread: the old client's loop is stopped from another one.
        threading.Thread(target=self._fall_back, args=(client,), daemon=True).start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.inbound.put(
            Inbound(msg.topic, msg.payload, msg.mid, msg.qos, bool(msg.retain), now_ms())
        )
