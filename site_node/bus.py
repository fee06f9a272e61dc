"""The site's MQTT connection: the only site module that imports paho.

One thread owns the connection loop. Each attempt uses a fresh paho client (so the Last
Will can carry the new session, and no stale in-memory queue survives a reconnect), with
exponential backoff and full jitter between attempts; a broker that is down at start is
retried forever; the backoff starts again from its minimum after every connection the
broker accepted (CONNACK) that held at least ``STABLE_S``. paho callbacks only put
:class:`Connected`, :class:`Disconnected` and :class:`Inbound` events into the inbound
queue. QoS 1 publishes are held to a bounded in-flight window (paho's message ids wrap at
65,535): :meth:`SiteBus.publish` refuses when the window is full and
:meth:`SiteBus.wait_room` blocks until it has room.

The MQTT version follows ``mqtt.protocol`` (:mod:`fedmq_runtime.mqtt_protocol`): with
``auto`` an attempt that MQTT 5 cannot make (CONNACK "unsupported protocol version", or
the broker closing before any CONNACK) is followed at once by one on 3.1.1. Every refused
or dropped connect is logged with its reason.
"""

from __future__ import annotations

import logging
import queue
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedmq_runtime.backoff import Backoff
from fedmq_runtime.broker_connection import connection_options
from fedmq_runtime.mqtt_protocol import ProtocolChoice, Version
from fedmq_runtime.settings import MqttSettings

# paho imports dnspython, when it is installed, for Client.connect_srv only (a DNS SRV
# lookup of the broker), which fedmq never calls: ~6.4 MB of a site's RSS for its whole
# life (tests/bench/bench_idle_rss.py). It is hidden while paho loads (paho then sets
# HAVE_DNS = False); whatever imports dnspython later still gets it.
_HIDE_DNS = "dns" not in sys.modules
if _HIDE_DNS:
    sys.modules["dns"] = None  # type: ignore[assignment]
try:
    import paho.mqtt.client as mqtt
finally:
    if _HIDE_DNS and sys.modules.get("dns", 0) is None:
        del sys.modules["dns"]
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

__all__ = [
    "BrokerProbe",
    "BusError",
    "BusEvent",
    "Connected",
    "Disconnected",
    "Inbound",
    "SiteBus",
    "WillFactory",
    "publish_once",
]

log = logging.getLogger(__name__)

# Broker-side session lifetime (MQTT 5): commands sent while the site is briefly away wait.
SESSION_EXPIRY_S = 3600
# A connection accepted and held this long resets the backoff; one dropped sooner (e.g. a
# duplicate client id taking the session over) keeps backing off, so it cannot spin.
STABLE_S = 1.0


class BusError(RuntimeError):
    """The broker could not be reached or refused us (one line, for the CLI)."""


@dataclass(frozen=True)
class Connected:
    """CONNACK success for the attempt that used ``session``."""

    session: int
    session_present: bool


@dataclass(frozen=True)
class Disconnected:
    session: int
    reason: str


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    retain: bool


BusEvent = Connected | Disconnected | Inbound
# Called before each attempt: (session, will topic, will payload); the will is retained QoS 1.
WillFactory = Callable[[], tuple[int, str, bytes]]


def _make_client(settings: MqttSettings, client_id: str, protocol: Version) -> mqtt.Client:
    v5 = protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        # 3.1.1 path: a persistent session so commands queued while away are delivered.
        clean_session=None if v5 else False,
        reconnect_on_failure=False,
    )
    client.connect_timeout = 5.0
    client.max_inflight_messages_set(65_000)  # our own window is the real bound
    client.max_queued_messages_set(0)
    try:
        login = connection_options(settings)  # the coordinator's bus applies the same
    except ValueError as exc:
        raise BusError(str(exc)) from None
    if login.username is not None:
        client.username_pw_set(login.username, login.password)
    if login.tls is not None:
        client.tls_set_context(login.tls)
    return client


def _connect(client: mqtt.Client, settings: MqttSettings, protocol: Version) -> None:
    if protocol == "5":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        client.connect(
            settings.host, settings.port, settings.keepalive, clean_start=False, properties=props
        )
    else:
        client.connect(settings.host, settings.port, settings.keepalive)


class SiteBus:
    """A self-reconnecting MQTT connection with a bounded QoS 1 in-flight window."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        will_factory: WillFactory,
        inbound: queue.Queue[BusEvent],
        window: int = 1000,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.inbound = inbound
        self.window = window
        self._will_factory = will_factory
        self._backoff = Backoff(backoff_min_s, backoff_max_s)
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._cond = threading.Condition()
        self._pending: set[int] = set()
        self._early: set[int] = set()
        self._client: mqtt.Client | None = None
        self._connected = False
        self._connacked_at: float | None = None
        self._session = 0
        self._thread: threading.Thread | None = None
        self._protocol = ProtocolChoice(settings.protocol, f"{settings.host}:{settings.port}", log)
        self._connack: tuple[int, str] | None = None  # this attempt's CONNACK, if any
        self._close_reason = "connection lost"
        # Fail at start, not on the connection thread: bad TLS files, password file, flags.
        _make_client(settings, client_id, self._protocol.current)

    # -- public --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def protocol(self) -> Version:
        """The MQTT version of the current (or next) connection attempt."""
        return self._protocol.current

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        """Start the connection thread; returns at once (the broker may be down)."""
        self._thread = threading.Thread(target=self._run, name="site-bus", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (no Will) and end the thread."""
        self._stop.set()
        client = self._client
        if client is not None:
            client.disconnect()
        self._lost.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def has_room(self) -> bool:
        return self._connected and len(self._pending) < self.window

    def wait_room(self, timeout: float) -> bool:
        """Block until the QoS 1 window has room (or ``timeout``); True if it has."""
        with self._cond:
            return self._cond.wait_for(self.has_room, timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Block until every QoS 1 publish is acknowledged by the broker."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Hand one message to paho; False when disconnected or the QoS 1 window is full."""
        client = self._client
        if client is None or not self._connected:
            return False
        if qos and len(self._pending) >= self.window:
            return False
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        if qos:
            with self._cond:
                # PUBACK may have beaten us here; on_publish then left the mid in _early.
                if info.mid in self._early:
                    self._early.discard(info.mid)
                else:
                    self._pending.add(info.mid)
        return True

    def subscribe(self, topics: list[str], qos: int = 1) -> bool:
        client = self._client
        if client is None or not self._connected:
            return False
        rc, _mid = client.subscribe([(t, qos) for t in topics])
        return bool(rc == mqtt.MQTT_ERR_SUCCESS)

    # -- connection thread ---------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            session, will_topic, will_payload = self._will_factory()
            protocol = self._protocol.current
            client = _make_client(self.settings, self.client_id, protocol)
            client.will_set(will_topic, will_payload, qos=1, retain=True)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_publish = self._on_publish
            client.on_message = self._on_message
            client.user_data_set(session)
            self._lost.clear()
            self._connacked_at = None
            self._connack = None
            self._close_reason = "connection lost"
            retry_now = False
            try:
                _connect(client, self.settings, protocol)
            except (OSError, ssl.SSLError) as exc:
                log.warning(
                    "broker %s:%s unreachable: %s",
                    self.settings.host,
                    self.settings.port,
                    exc.strerror if isinstance(exc, OSError) and exc.strerror else exc,
                )
            else:
                self._client = client
                client.loop_start()
                self._lost.wait()
                client.loop_stop()
                self._client = None
                self._set_connected(False)
                if self._stop.is_set():
                    break
                if self._connack is None:
                    retry_now = self._protocol.closed_before_connack(self._close_reason)
                else:
                    retry_now = self._protocol.connack(*self._connack)
            accepted = self._connacked_at
            if accepted is not None and time.monotonic() - accepted >= STABLE_S:
                self._backoff.reset()  # the broker took us: the next outage starts from min
            if retry_now:
                continue  # the same broker, now on MQTT 3.1.1: no reason to wait
            delay = self._backoff.next_delay()
            if not self._stop.is_set():
                log.info("reconnecting in %.1f s", delay)
            self._stop.wait(delay)

    def _set_connected(self, value: bool) -> None:
        with self._cond:
            self._connected = value
            if not value:
                self._pending.clear()
                self._early.clear()
            self._cond.notify_all()

    # -- paho callbacks: translate and enqueue only ----------------------------------------

    def _on_connect(self, client, session, flags, reason_code, properties=None):  # type: ignore[no-untyped-def]
        self._connack = (int(reason_code.value), str(reason_code))
        if reason_code.is_failure:
            log.error(
                "broker %s:%s refused the connection (MQTT %s): %s (reason code %d)",
                self.settings.host,
                self.settings.port,
                self._protocol.current,
                reason_code,
                reason_code.value,
            )
            return
        self._protocol.connack(0, str(reason_code))  # logs the auto choice once
        self._connacked_at = time.monotonic()
        self._set_connected(True)
        log.info(
            "connected to %s:%s (MQTT %s, session %d)",
            self.settings.host,
            self.settings.port,
            self._protocol.current,
            session,
        )
        self.inbound.put(Connected(session, bool(flags.session_present)))

    def _on_disconnect(self, client, session, flags, reason_code, properties=None):  # type: ignore[no-untyped-def]
        was = self._connected
        self._close_reason = str(reason_code)
        self._set_connected(False)
        self._lost.set()
        if was:
            level = logging.INFO if self._stop.is_set() else logging.WARNING
            log.log(level, "disconnected from broker: %s", reason_code)
            self.inbound.put(Disconnected(session, str(reason_code)))

    def _on_publish(self, client, session, mid, reason_code, properties=None):  # type: ignore[no-untyped-def]
        with self._cond:
            if mid in self._pending:
                self._pending.discard(mid)
            else:
                self._early.add(mid)
            self._cond.notify_all()

    def _on_message(self, client, session, msg):  # type: ignore[no-untyped-def]
        self.inbound.put(Inbound(msg.topic, bytes(msg.payload), bool(msg.retain)))


def publish_once(
    settings: MqttSettings,
    client_id: str,
    messages: list[tuple[str, bytes, bool]],
    timeout: float = 10.0,
) -> None:
    """Connect, publish ``(topic, payload, retain)`` at QoS 1, wait for PUBACKs, disconnect.

    With ``protocol = "auto"`` a broker that refuses MQTT 5 is asked again on 3.1.1.

    Raises:
        BusError: unreachable, refused, or not acknowledged within ``timeout``.
    """
    choice = ProtocolChoice(settings.protocol, f"{settings.host}:{settings.port}", log)
    while True:
        outcome = _publish_once(settings, client_id, messages, timeout, choice.current)
        if outcome is None:
            return
        connack, reason = outcome
        retry = (
            choice.closed_before_connack(reason)
            if connack is None
            else choice.connack(connack, reason)
        )
        if not retry:
            what = f"{reason} (reason code {connack})" if connack is not None else reason
            raise BusError(f"broker {settings.host}:{settings.port} refused the connection: {what}")


def _publish_once(
    settings: MqttSettings,
    client_id: str,
    messages: list[tuple[str, bytes, bool]],
    timeout: float,
    protocol: Version,
) -> tuple[int | None, str] | None:
    """One attempt: None when published, else (CONNACK reason code or None, reason)."""
    client = _make_client(settings, client_id, protocol)
    done = threading.Event()
    answer: list[tuple[int | None, str]] = []

    def on_connect(c, u, flags, reason_code, properties=None):  # type: ignore[no-untyped-def]
        answer.append((int(reason_code.value), str(reason_code)))
        done.set()

    def on_disconnect(c, u, flags, reason_code, properties=None):  # type: ignore[no-untyped-def]
        if not answer:
            answer.append((None, f"closed before CONNACK: {reason_code}"))
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(settings.host, settings.port, settings.keepalive)
    except (OSError, ssl.SSLError) as exc:
        raise BusError(f"broker {settings.host}:{settings.port} unreachable: {exc}") from None
    client.loop_start()
    try:
        if not done.wait(timeout):
            return None, f"no CONNACK within {timeout:g} s"
        if answer[0][0] != 0:
            return answer[0]
        infos = [client.publish(t, p, qos=1, retain=r) for t, p, r in messages]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise BusError("the broker did not acknowledge the publish in time")
        return None
    finally:
        client.disconnect()
        client.loop_stop()


class BrokerProbe:
    """One short-lived connection for ``fedmq-site doctor``: CONNACK, SUBACK and PUBACK
    codes and retained messages, as plain values (the doctor never touches paho).

    A clean session (nothing left behind on the broker) under ``client_id``; no Will.
    ``protocol = "auto"`` is resolved as the daemon does (MQTT 5, else 3.1.1).
    """

    def __init__(self, settings: MqttSettings, client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        self.protocol: Version = "3.1.1" if settings.protocol == "3.1.1" else "5"
        self._client: mqtt.Client | None = None
        self._cond = threading.Condition()
        self._connack: tuple[int, str] | None = None
        self._closed: str | None = None
        self._pubacks: dict[int, int] = {}
        self._subacks: dict[int, int] = {}
        self._messages: list[Inbound] = []

    def connect(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """(CONNACK reason code, reason); code None when the broker closed first.

        Raises:
            BusError: TCP/TLS failure (the doctor checks those before, with their reason).
        """
        quiet = logging.getLogger("fedmq.doctor.protocol")  # the doctor prints its own line
        quiet.propagate = False
        if not quiet.handlers:
            quiet.addHandler(logging.NullHandler())
        choice = ProtocolChoice(
            self.settings.protocol, f"{self.settings.host}:{self.settings.port}", quiet
        )
        while True:
            self.protocol = choice.current
            code, reason = self._attempt(timeout)
            retry = (
                choice.closed_before_connack(reason)
                if code is None
                else choice.connack(code, reason)
            )
            if not retry:
                return code, reason
            self.close()

    def _attempt(self, timeout: float) -> tuple[int | None, str]:
        v5 = self.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
            reconnect_on_failure=False,
        )
        login = connection_options(self.settings)
        if login.username is not None:
            client.username_pw_set(login.username, login.password)
        if login.tls is not None:
            client.tls_set_context(login.tls)
        with self._cond:
            self._connack, self._closed = None, None
            self._pubacks.clear()  # message ids start again on a new connection
            self._subacks.clear()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        try:
            client.connect(self.settings.host, self.settings.port, 30)
        except (OSError, ssl.SSLError) as exc:
            raise BusError(str(exc)) from None
        self._client = client
        client.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: self._connack is not None or self._closed, timeout)
            if self._connack is not None:
                return self._connack
            return None, self._closed or f"no CONNACK within {timeout:g} s"

    @property
    def closed(self) -> str | None:
        """Why the broker closed the connection (None while it is open)."""
        return self._closed

    def publish_rc(self, topic: str, payload: bytes, timeout: float = 5.0) -> int | None:
        """Publish at QoS 1; the PUBACK reason code (MQTT 3.1.1: 0), None if none came
        (the broker closed the connection or stayed silent)."""
        assert self._client is not None
        info = self._client.publish(topic, payload, qos=1)
        with self._cond:
            self._cond.wait_for(lambda: info.mid in self._pubacks or self._closed, timeout)
            return self._pubacks.get(info.mid)

    def subscribe_rc(self, topic: str, timeout: float = 5.0) -> int | None:
        """Subscribe at QoS 1; the SUBACK code (0-2 granted, >= 0x80 refused), or None."""
        assert self._client is not None
        _rc, mid = self._client.subscribe(topic, 1)
        with self._cond:
            self._cond.wait_for(lambda: mid in self._subacks or self._closed, timeout)
            return self._subacks.get(mid) if mid is not None else None

    def wait_message(self, topic: str, timeout: float) -> Inbound | None:
        """The first message received on ``topic`` (exact name) within ``timeout``."""
        with self._cond:
            self._cond.wait_for(
                lambda: any(m.topic == topic for m in self._messages) or self._closed, timeout
            )
            return next((m for m in self._messages if m.topic == topic), None)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    # paho callbacks ---------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):  # type: ignore[no-untyped-def]
        with self._cond:
            self._connack = (int(reason_code.value), str(reason_code))
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):  # type: ignore[no-untyped-def]
        with self._cond:
            self._closed = str(reason_code)
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties=None):  # type: ignore[no-untyped-def]
        with self._cond:
            self._pubacks[mid] = int(reason_code.value)
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties=None):  # type: ignore[no-untyped-def]
        with self._cond:
            self._subacks[mid] = int(reason_codes[0].value)
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg):  # type: ignore[no-untyped-def]
        with self._cond:
            self._messages.append(Inbound(msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()
