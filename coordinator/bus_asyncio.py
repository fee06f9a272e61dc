"""The coordinator's asyncio MQTT client: :class:`coordinator.bus.Bus`'s interface and
guarantees over a small packet codec of its own (``[coordinator] receive = "asyncio"``).

It replaces the paho bus when selected (serve builds one or the other, never both: one
module per process talks to MQTT). What it keeps from the paho bus:

- one persistent session: MQTT 5 ``clean_start=False`` with a session expiry and a
  Receive Maximum, or 3.1.1 ``clean_session=False``; ``protocol = "auto"`` falls back to
  3.1.1 through :class:`fedmq_runtime.mqtt_protocol.ProtocolChoice` as the paho bus does;
- QoS 1 subscriptions (MQTT 5: noLocal and retainAsPublished), renewed on every connect;
- a PUBACK only when the caller says the message is committed (:meth:`AsyncBus.ack`);
  a PUBACK for a delivery of an earlier connection is dropped (the broker redelivers it,
  and the store's idempotent insert ignores the copy);
- backpressure: at most ``receive_maximum`` deliveries unacked, on 3.1.1 too (the socket
  is no longer read until the writer catches up);
- TLS and credentials from :mod:`fedmq_runtime.broker_connection`; the retained offline
  Will and the retained online status on every connect; reconnection with backoff.

Why: paho's receive loop cost ~55-130 us of CPU per message here (one Python callback
chain, a lock and a socket write per PUBACK). This reads every complete packet of a
socket read in one pass, and writes the PUBACKs of a committed batch in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import struct
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any

from coordinator.bus import BusOptions, Inbound, shared_refusal
from fedmq_runtime.broker_connection import connection_options
from fedmq_runtime.clock import now_ms
from fedmq_runtime.mqtt_protocol import ProtocolChoice, Version
from fedmq_runtime.settings import MqttSettings
from schemas import CoordinatorStatus, Topics, encode

__all__ = ["AsyncBus", "PublishInfo"]

# The same logger as the paho bus: it replaces it, and operators grep one name.
log = logging.getLogger("coordinator.bus")

_PUBLISH, _PUBACK, _CONNACK, _SUBACK, _PINGRESP, _DISCONNECT = 3, 4, 2, 9, 13, 14
_PINGREQ = b"\xc0\x00"
_U16 = struct.Struct(">H")


# Codec ---------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return _U16.pack(len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def connect_packet(
    client_id: str,
    v5: bool,
    keepalive: int,
    session_expiry_s: int,
    receive_maximum: int,
    will: tuple[str, bytes] | None,
    username: str | None,
    password: str | None,
) -> bytes:
    """CONNECT without clean start, with a QoS 1 retained Will when given."""
    flags = 0
    if will is not None:
        flags |= 0x04 | (1 << 3) | 0x20
    if username is not None:
        flags |= 0x80
        if password is not None:
            flags |= 0x40
    body = _utf8("MQTT") + bytes((5 if v5 else 4, flags)) + _U16.pack(keepalive)
    if v5:
        props = b"\x11" + struct.pack(">I", session_expiry_s) + b"\x21" + _U16.pack(receive_maximum)
        body += _varint(len(props)) + props
    body += _utf8(client_id)
    if will is not None:
        if v5:
            body += b"\x00"  # no will properties
        body += _utf8(will[0]) + _utf8(will[1])
    if username is not None:
        body += _utf8(username)
        if password is not None:
            body += _utf8(password)
    return _packet(0x10, body)


def publish_packet(
    topic: str, payload: bytes, qos: int, retain: bool, pid: int, v5: bool, dup: bool = False
) -> bytes:
    body = _utf8(topic)
    if qos:
        body += _U16.pack(pid)
    if v5:
        body += b"\x00"
    return _packet(0x30 | (dup << 3) | (qos << 1) | int(retain), body + payload)


def subscribe_packet(pid: int, topics: dict[str, int], v5: bool) -> bytes:
    body = _U16.pack(pid) + (b"\x00" if v5 else b"")
    for topic, qos in topics.items():
        # noLocal (our own acks and commands do not come back) and retainAsPublished;
        # never noLocal on a shared subscription ($share/...): a protocol error there.
        local = 0 if topic.startswith("$share/") else 0x04
        body += _utf8(topic) + bytes((qos | local | 0x08 if v5 else qos,))
    return _packet(0x82, body)


def unsubscribe_packet(pid: int, topics: list[str], v5: bool) -> bytes:
    body = _U16.pack(pid) + (b"\x00" if v5 else b"")
    for topic in topics:
        body += _utf8(topic)
    return _packet(0xA2, body)


def _read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """(value, position after it), or None when ``buf`` ends inside it."""
    value, shift = 0, 0
    while pos < len(buf):
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise ValueError("malformed remaining length")
    return None


# MQTT 5 property ids -> size: bytes, or -1 a length-prefixed string/binary, -2 a string
# pair, -3 a variable byte integer.
_PROPERTY_SIZES = {
    0x01: 1, 0x02: 4, 0x03: -1, 0x08: -1, 0x09: -1, 0x0B: -3, 0x11: 4, 0x12: -1, 0x13: 2,
    0x15: -1, 0x16: -1, 0x17: 1, 0x18: 4, 0x19: 1, 0x1A: -1, 0x1C: -1, 0x1F: -1, 0x21: 2,
    0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x26: -2, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1,
}  # fmt: skip
_RECEIVE_MAXIMUM = 0x21
_SHARED_AVAILABLE = 0x2A  # Shared Subscription Available


def connack_properties(body: bytes) -> dict[int, int] | None:
    """The numeric properties of an MQTT 5 CONNACK body ({} when it has none, None when
    it is malformed)."""
    got = _read_varint(body, 2) if len(body) > 2 else None
    if got is None:
        return {}
    length, pos = got
    end = min(pos + length, len(body))
    out: dict[int, int] = {}
    while pos < end:
        prop = body[pos]
        pos += 1
        size = _PROPERTY_SIZES.get(prop)
        if size is None:
            return None
        if size > 0:
            out[prop] = int.from_bytes(body[pos : pos + size], "big")
            pos += size
        elif size == -1:
            pos += 2 + _U16.unpack_from(body, pos)[0]
        elif size == -2:
            pos += 2 + _U16.unpack_from(body, pos)[0]
            pos += 2 + _U16.unpack_from(body, pos)[0]
        else:  # -3: a variable byte integer
            value_pos = _read_varint(body, pos)
            if value_pos is None:
                return None
            out[prop], pos = value_pos
    return out


def connack_receive_maximum(body: bytes) -> int:
    """The broker's Receive Maximum from an MQTT 5 CONNACK body: how many of our QoS 1
    publishes may be unacknowledged at once (65,535 when it sets none)."""
    props = connack_properties(body)
    if props is None:  # malformed: assume mosquitto's default rather than guess
        return 20
    return max(1, props.get(_RECEIVE_MAXIMUM, 65_535))


class PublishInfo:
    """What :meth:`AsyncBus.publish` returns: paho's ``wait_for_publish``/``is_published``."""

    __slots__ = ("_done",)

    def __init__(self) -> None:
        self._done = threading.Event()

    def wait_for_publish(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def is_published(self) -> bool:
        return self._done.is_set()


class _Out:
    __slots__ = ("info", "payload", "pid", "qos", "retain", "topic")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain
        self.pid = 0
        self.info = PublishInfo()


class _Connection(asyncio.Protocol):
    """One connection's packets; the bus owns everything that outlives it."""

    def __init__(self, bus: AsyncBus, generation: int) -> None:
        self.bus = bus
        self.generation = generation
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.connack: asyncio.Future[tuple[int, bool, int, bool]] = (
            asyncio.get_running_loop().create_future()
        )
        self.paused = False
        self.last_read = time.monotonic()
        self._topics: dict[bytes, str] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(str(exc) if exc else "connection closed")
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(str(exc) if exc else "closed"))

    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        buf = self.buf
        buf += data
        pos, end = 0, len(buf)
        bus = self.bus
        put = bus.inbound.put
        v5 = bus._v5
        gen = self.generation << 16
        topics = self._topics
        at = now_ms()
        mv = memoryview(buf)
        ok = True
        try:
            while pos + 2 <= end:
                first = buf[pos]
                if buf[pos + 1] < 0x80:  # the common case: a one-byte remaining length
                    length, start = buf[pos + 1], pos + 2
                else:
                    got = _read_varint(buf, pos + 1)
                    if got is None:
                        break
                    length, start = got
                stop = start + length
                if stop > end:
                    break
                kind = first >> 4
                if kind == _PUBLISH:
                    tlen = (buf[start] << 8) | buf[start + 1]
                    p = start + 2 + tlen
                    raw = bytes(mv[start + 2 : p])
                    topic = topics.get(raw)
                    if topic is None:
                        topic = topics[raw] = raw.decode()
                        if len(topics) > 100_000:
                            topics.clear()
                    qos = (first >> 1) & 3
                    mid = 0
                    if qos:
                        mid = gen | (buf[p] << 8) | buf[p + 1]
                        p += 2
                        bus._unacked += 1
                    if v5:
                        if buf[p] < 0x80:
                            p += 1 + buf[p]
                        else:
                            plen, p = _read_varint(buf, p) or (0, p)
                            p += plen
                    put(Inbound(topic, bytes(mv[p:stop]), mid, qos, bool(first & 1), at))
                else:
                    self._control(kind, bytes(mv[start:stop]))
                pos = stop
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            log.warning("malformed packet from the broker (%s): reconnecting", exc)
            ok = False
        finally:
            mv.release()
        if not ok:
            if self.transport is not None:
                self.transport.close()
            return
        del buf[:pos]
        if bus._unacked >= bus.options.receive_maximum:
            self.pause_reading()

    def _control(self, kind: int, body: bytes) -> None:
        bus = self.bus
        if kind == _PUBACK:
            bus._puback(_U16.unpack_from(body)[0])
        elif kind == _CONNACK:
            code = body[1] if len(body) > 1 else 0x80
            quota = connack_receive_maximum(body) if bus._v5 else 65_535
            shared = bool((connack_properties(body) or {}).get(_SHARED_AVAILABLE, 1))
            if not self.connack.done():
                self.connack.set_result((code, bool(body[0] & 1), quota, shared and bus._v5))
        elif kind == _SUBACK:
            codes = body[2:]
            if bus._v5 and codes:
                plen, p = _read_varint(body, 2) or (0, 2)
                codes = body[p + plen :]
            topics = bus._sub_pids.pop(_U16.unpack_from(body)[0], []) if len(body) >= 2 else []
            for i, c in enumerate(codes):
                if c < 0x80:
                    continue
                topic = topics[i] if i < len(topics) else "?"
                why = f"broker refused the subscription to {topic} (reason code {c:#x})"
                log.error("%s", why)
                if topic.startswith("$share/"):
                    bus.refused = why
        elif kind == _DISCONNECT:
            reason = body[0] if body else 0
            log.warning("broker sent DISCONNECT (reason code %d)", reason)
        # PINGRESP: last_read is enough.


class AsyncBus:
    """Narrow MQTT interface: ``start``, ``subscribe``, ``publish``, ``ack``, ``stop``.

    Thread-safe like the paho bus: ``publish`` and ``ack`` may be called from any thread
    (the writer acks a committed batch), the network runs on one asyncio thread.

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
        self._unwanted: list[str] = []  # as Bus.unsubscribe_at_connect
        self._protocol = ProtocolChoice(settings.protocol, f"{settings.host}:{settings.port}", log)
        self._login = connection_options(settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: _Connection | None = None
        self._generation = 0
        self._stopping = False
        self._releading = False  # lead() closed the connection on purpose
        self._sub_pids: dict[int, list[str]] = {}  # SUBSCRIBE packet id -> its filters
        # As Bus.refused: why the broker cannot do what this coordinator needs.
        self.refused: str | None = None
        self._stopped: asyncio.Event | None = None
        # Filled by any thread, drained on the loop (one wake-up per burst).
        self._acks: deque[int] = deque()
        self._outgoing: deque[_Out] = deque()
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._unacked = 0  # deliveries of this connection not yet PUBACKed
        self._inflight: dict[int, _Out] = {}  # our QoS 1 publishes by packet id
        self._next_pid = 0
        self._quota = 65_535
        self._task: asyncio.Task[None] | None = None

    @property
    def protocol(self) -> Version:
        return self._protocol.current

    @property
    def _v5(self) -> bool:
        return self._protocol.current == "5"

    def _status(self, state: str) -> bytes:
        return encode(
            CoordinatorStatus(session=self.options.session, state=state, key_id=self.options.key_id)  # type: ignore[arg-type]
        )

    # Lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; reconnects with backoff until :meth:`stop`."""
        log.info("receive path: asyncio (coordinator.bus_asyncio)")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="mqtt-asyncio", daemon=True
        )
        self._thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        loop = _new_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._stopped = asyncio.Event()
        ready.set()
        self._task = loop.create_task(self._main())
        try:
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            log.info("disconnected from broker: stopped before connecting")
        finally:
            loop.close()

    def stop(self, timeout: float = 5.0, announce: bool = True) -> None:
        """Clean shutdown: retained offline status (unless ``announce`` is False, as in
        Bus.stop), then DISCONNECT (no Will is sent)."""
        loop = self._loop
        if loop is None or self._thread is None:
            return
        if self.connected.is_set() and self.options.announce and announce:
            info = self.publish(self.topics.coordinator_status(), self._status("offline"), 1, True)
            info.wait_for_publish(timeout)
        self._stopping = True
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(timeout)

    def _shutdown(self) -> None:
        conn = self._conn
        assert self._stopped is not None
        self._stopped.set()
        if conn is not None and conn.transport is not None:
            conn.transport.write(b"\xe0\x00")  # DISCONNECT, normal: the Will is not sent
            conn.transport.close()  # the session ends once it is written
        elif self._task is not None:
            self._task.cancel()  # connecting, or waiting to: nothing to say goodbye to

    async def _main(self) -> None:
        delay = 1.0
        while not self._stopping:
            outcome = await self._session()
            if self._stopping:
                break
            if outcome == "switch":
                continue  # protocol fallback: at once
            if outcome == "connected":
                delay = 1.0
            assert self._stopped is not None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), delay)
            delay = min(delay * 2, 10.0)
        log.info("disconnected from broker: normal disconnection")

    async def _session(self) -> str:
        """One connection, from connect to close: 'connected', 'failed' or 'switch'."""
        s = self.settings
        loop = asyncio.get_running_loop()
        self._generation = (self._generation + 1) & 0xFFFF or 1
        conn = _Connection(self, self._generation)
        tls = self._login.tls
        try:
            await loop.create_connection(
                lambda: conn, s.host, s.port, ssl=tls, server_hostname=s.host if tls else None
            )
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("cannot connect to broker %s:%s: %s", s.host, s.port, exc)
            return "failed"
        assert conn.transport is not None
        will = (self.topics.coordinator_status(), self._status("offline"))
        with_will = self.options.announce  # lead() may change it while we connect
        conn.transport.write(
            connect_packet(
                self.options.client_id, self._v5, s.keepalive, self.options.session_expiry_s,
                self.options.receive_maximum, will if with_will else None,
                self._login.username, self._login.password,
            )
        )  # fmt: skip
        try:
            code, present, quota, shared = await asyncio.wait_for(
                asyncio.shield(conn.connack), s.keepalive
            )
        except (ConnectionError, asyncio.TimeoutError) as exc:
            conn.transport.close()
            if self._protocol.closed_before_connack(str(exc) or "timeout"):
                return "switch"
            return "failed"
        if code:
            value, name = _refusal(code, self._v5)
            log.warning(
                "broker %s:%s refused the connection (MQTT %s): %s (reason code %d)",
                s.host, s.port, self._protocol.current, name, value,
            )  # fmt: skip
            conn.transport.close()
            return "switch" if self._protocol.connack(value, name) else "failed"
        self._protocol.connack(0, "Success")
        if self.options.announce and not with_will:  # lead() came while connecting
            self._releading = False
            conn.transport.write(b"\xe0\x00")
            conn.transport.close()
            return "switch"  # again at once, with the Will
        if self.options.shared and not shared:
            self.refused = shared_refusal(f"{s.host}:{s.port}", self._protocol.current)
        log.info(
            "connected to %s:%s (MQTT %s, session present: %s)",
            s.host, s.port, self._protocol.current, present,
        )  # fmt: skip
        self._conn = conn
        self._unacked = 0
        self._quota = quota  # the broker's Receive Maximum for our QoS 1 publishes
        self._acks.clear()  # PUBACKs of the last connection: the broker redelivers those
        if self._unwanted:
            conn.transport.write(unsubscribe_packet(self._pid(), self._unwanted, self._v5))
        if self._subscriptions:
            self._write_subscribe(conn, dict(self._subscriptions))
        if self.options.announce:
            self._send(
                conn, _Out(self.topics.coordinator_status(), self._status("online"), 1, True)
            )
        for out in list(self._inflight.values()):  # unconfirmed: again, as duplicates
            conn.transport.write(
                publish_packet(out.topic, out.payload, out.qos, out.retain, out.pid, self._v5,
                               dup=True)
            )  # fmt: skip
        self.connected.set()
        self._drain()
        pinger = asyncio.create_task(self._keepalive(conn))
        why = await conn.closed
        pinger.cancel()
        self.connected.clear()
        self._conn = None
        if self._releading:
            self._releading = False
            log.info("reconnecting as the leader (Will and retained status)")
        elif not self._stopping:
            log.warning("disconnected from broker: %s (reconnecting)", why)
        return "connected"

    async def _keepalive(self, conn: _Connection) -> None:
        ka = self.settings.keepalive
        while True:
            await asyncio.sleep(ka / 2)
            if conn.transport is None or conn.transport.is_closing():
                return
            if time.monotonic() - conn.last_read > ka * 1.5:
                log.warning("no packet from the broker for %.0f s: reconnecting", ka * 1.5)
                conn.transport.close()
                return
            conn.transport.write(_PINGREQ)

    # Traffic -------------------------------------------------------------------------

    def unsubscribe_at_connect(self, topics: list[str]) -> None:
        """As :meth:`coordinator.bus.Bus.unsubscribe_at_connect`."""
        self._unwanted = list(topics)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and again after every reconnect."""
        self._unwanted = [t for t in self._unwanted if t != topic]
        self._subscriptions[topic] = qos
        loop = self._loop
        if loop is not None and self.connected.is_set():
            loop.call_soon_threadsafe(self._subscribe_now, {topic: qos})

    def lead(self) -> None:
        """As :meth:`coordinator.bus.Bus.lead`: reconnect (same session) with the Will and
        the retained online status."""
        if self.options.announce:
            return
        self.options = replace(self.options, announce=True)
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._reconnect)

    def _reconnect(self) -> None:
        conn = self._conn
        # Not connected yet: _session reconnects after the CONNACK (its CONNECT had no Will).
        self._releading = conn is not None
        if conn is not None and conn.transport is not None:
            conn.transport.write(b"\xe0\x00")  # a normal DISCONNECT: the session stays
            conn.transport.close()

    def _subscribe_now(self, topics: dict[str, int]) -> None:
        conn = self._conn
        if conn is not None and conn.transport is not None:
            self._write_subscribe(conn, topics)

    def _write_subscribe(self, conn: _Connection, topics: dict[str, int]) -> None:
        pid = self._pid()
        self._sub_pids[pid] = list(topics)  # the SUBACK's reason codes come in this order
        assert conn.transport is not None
        conn.transport.write(subscribe_packet(pid, topics, self._v5))

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Any:
        """Queue a publish (thread-safe); ``wait_for_publish(timeout)`` waits for the
        PUBACK (QoS 1) or the write (QoS 0). Queued while disconnected, sent on connect."""
        out = _Out(topic, payload, qos, retain)
        self._outgoing.append(out)
        self._wake()
        return out.info

    def ack(self, mid: int, qos: int) -> None:
        """Send the PUBACK of a committed message (no-op for QoS 0)."""
        if qos:
            self._acks.append(mid)
            self._wake()

    def _wake(self) -> None:
        loop = self._loop
        if loop is None:
            return  # not started: the first CONNACK drains what is queued
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: stopping
            loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        """On the loop: write queued PUBACKs and publishes in as few writes as possible."""
        with self._wake_lock:
            self._wake_pending = False
        conn = self._conn
        if conn is None or conn.transport is None or conn.transport.is_closing():
            return  # sent after the next CONNACK; PUBACKs of this connection are moot
        gen = conn.generation
        acks = self._acks
        out = bytearray()
        n = 0
        while acks:
            mid = acks.popleft()
            if mid >> 16 == gen:
                out += b"\x40\x02" + _U16.pack(mid & 0xFFFF)
                n += 1
        self._unacked = max(0, self._unacked - n)
        while self._outgoing:
            item = self._outgoing[0]
            if item.qos and len(self._inflight) >= self._quota:
                break  # the rest when PUBACKs free the broker's Receive Maximum
            self._outgoing.popleft()
            out += self._encode(item)
            if not item.qos:
                item.info._done.set()
        if out:
            conn.transport.write(bytes(out))
        if conn.paused and self._unacked < self.options.receive_maximum // 2:
            conn.resume_reading()

    def _send(self, conn: _Connection, item: _Out) -> None:
        assert conn.transport is not None
        conn.transport.write(self._encode(item))

    def _encode(self, item: _Out) -> bytes:
        pid = 0
        if item.qos:
            pid = item.pid = self._pid()
            self._inflight[pid] = item
        return publish_packet(item.topic, item.payload, item.qos, item.retain, pid, self._v5)

    def _pid(self) -> int:
        for _ in range(65_535):
            self._next_pid = self._next_pid % 65_535 + 1
            if self._next_pid not in self._inflight:
                return self._next_pid
        raise RuntimeError("65535 publishes in flight")

    def _puback(self, pid: int) -> None:
        out = self._inflight.pop(pid, None)
        if out is not None:
            out.info._done.set()
        if self._outgoing and self._loop is not None:
            self._wake()  # publishes held back by the broker's Receive Maximum


# CONNACK refusals as the paho bus words them (3.1.1 return codes mapped to MQTT 5 codes).
_REFUSALS = {
    0x80: "Unspecified error", 0x81: "Malformed packet", 0x82: "Protocol error",
    0x83: "Implementation specific error", 0x84: "Unsupported protocol version",
    0x85: "Client identifier not valid", 0x86: "Bad user name or password",
    0x87: "Not authorized", 0x88: "Server unavailable", 0x89: "Server busy", 0x8A: "Banned",
    0x8C: "Bad authentication method", 0x90: "Topic name invalid", 0x95: "Packet too large",
    0x97: "Quota exceeded", 0x9C: "Use another server", 0x9D: "Server moved",
    0x9F: "Connection rate exceeded",
}  # fmt: skip
_V311_REFUSALS = {1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}


def _refusal(code: int, v5: bool) -> tuple[int, str]:
    """(MQTT 5 reason code, its name) of a refusing CONNACK. A 3.1.1 CONNACK to our MQTT 5
    CONNECT (nats-server) carries return code 1: unsupported protocol version."""
    if code in _V311_REFUSALS and (not v5 or code == 1):
        code = _V311_REFUSALS[code]
    return code, _REFUSALS.get(code, f"reason code {code}")


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (faster socket reads), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]
