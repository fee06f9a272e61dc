"""The asyncio receive path (``receive = "asyncio"``, coordinator/bus_asyncio.py).

Across process boundaries, with a real ``fedmq serve`` on that path: real Mosquitto (a
kill -9 of serve mid-stream, a broker restart), a real nats-server (MQTT 3.1.1, reached
through ``protocol = "auto"``) and Mosquitto on the shipped TLS + ACL config. Every
sample a site produced is stored exactly once, and a site deletes only what serve
acked after its commit. The codec and the ack/backpressure rules are unit-tested on a
recording transport.
"""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.bus import BusOptions, Inbound
from coordinator.bus_asyncio import (
    AsyncBus,
    _Connection,
    connack_properties,
    connack_receive_maximum,
    connect_packet,
    publish_packet,
    subscribe_packet,
)
from fedmq_runtime.settings import MqttSettings
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import (
    Coordinator,
    fedmq,
    site_state,
    sites_json,
    start_fake_site,
    wait_until,
)
from tests.helpers.secure_broker import COORDINATOR_USER, SecureSetup, secure_setup
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)

ASYNC = {"FEDMQ_RECEIVE": "asyncio"}
ON_ASYNCIO = "receive path: asyncio"


def _count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def _produced(path: Path, site: str) -> set[tuple[Any, ...]]:
    out = set()
    for line in path.read_text().splitlines():
        seq, values = json.loads(line)
        out |= {(site, seq, name, ts, value) for name, ts, value in values}
    return out


def _stored(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT site, seq, name, ts, value FROM telemetry").fetchall()
    finally:
        conn.close()


def _all_acked(workdir: Path, sites: list[str], messages: int) -> Callable[[], bool]:
    def check() -> bool:
        states = [site_state(workdir, s) for s in sites]
        return all(st and st["produced"] == messages and st["acked"] == messages
                   for st in states)  # fmt: skip

    return check


# Across processes -----------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_of_serve_mid_stream_then_restart_stores_every_sample_once(
    own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    sites, messages = ["ka", "kb", "kc"], 4_000
    db = tmp_path / "c.db"
    coord = Coordinator(db, own_broker.port, prefix, env=ASYNC).start()
    procs = []
    try:
        coord.wait_ready()
        for s in sites:
            procs.append(
                start_fake_site(
                    own_broker.port, prefix, s, tmp_path, "--messages", str(messages),
                    "--produced", str(tmp_path / f"{s}.jsonl"), "--keepalive", "30",
                )
            )  # fmt: skip
        wait_until(lambda: _count(db, "SELECT count(*) FROM messages") >= 3_000, 300, "3k")
        coord.kill()  # kill -9: batches in flight, PUBACKs not yet sent
        at_kill = _count(db, "SELECT count(*) FROM messages")
        assert at_kill < len(sites) * messages, "the stream ended before the kill: void"
        coord = Coordinator(db, own_broker.port, prefix, env=ASYNC).start()
        wait_until(_all_acked(tmp_path, sites, messages), 600, "every site fully acked", 0.5)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        code = coord.stop()
    assert code == 0
    produced: set[tuple[Any, ...]] = set()
    for s in sites:
        produced |= _produced(tmp_path / f"{s}.jsonl", s)
    rows = _stored(db)
    assert len(rows) == len(produced) == len(sites) * messages * 2  # no duplicate
    assert set(rows) == produced  # nothing missing or foreign
    assert _count(db, "SELECT count(*) FROM messages") == len(sites) * messages
    assert "coordinator.bus: connected to" in coord.log_text()
    assert coord.log_text().count(ON_ASYNCIO) == 2  # both runs were on the asyncio path


@pytest.mark.slow
def test_broker_restart_mid_stream_loses_and_duplicates_nothing(
    own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    messages = 4_000
    db = tmp_path / "c.db"
    coord = Coordinator(db, own_broker.port, prefix, env=ASYNC).start()
    site = None
    try:
        coord.wait_ready()
        site = start_fake_site(
            own_broker.port, prefix, "br", tmp_path, "--messages", str(messages),
            "--produced", str(tmp_path / "br.jsonl"), "--keepalive", "30",
        )  # fmt: skip
        wait_until(lambda: (site_state(tmp_path, "br") or {}).get("acked", 0) >= 300, 60, "300")
        own_broker.stop()
        time.sleep(1.0)  # a window in which the broker is down, not a wait for anything
        own_broker.start()
        wait_until(_all_acked(tmp_path, ["br"], messages), 180, "all acked after restart", 0.5)
        assert coord.alive()
    finally:
        if site is not None:
            site.kill()
            site.wait()
        code = coord.stop()
    assert code == 0
    produced = _produced(tmp_path / "br.jsonl", "br")
    rows = _stored(db)
    assert len(rows) == len(produced) == messages * 2
    assert set(rows) == produced
    log = coord.log_text()
    assert log.count("INFO coordinator.bus: connected to") >= 2  # reconnected
    assert ON_ASYNCIO in log
    assert "INFO coordinator.bus: disconnected from broker: normal" in log  # serve's own stop


@pytest.mark.slow
def test_mqtt_3_1_1_against_real_nats_server(
    tmp_path: Path, make_site: Callable[..., SiteProc]
) -> None:
    if shutil.which("nats-server") is None:
        pytest.fail("nats-server is not installed: run `apt-get install -y nats-server`")
    from tests.helpers.other_brokers import nats_broker

    prefix = f"test-{time.time_ns() % 10**9}/fedmq/v1"
    with nats_broker(tmp_path / "nats") as b:
        db = tmp_path / "c.db"
        coord = Coordinator(db, b.port, prefix, env=ASYNC).start()
        try:
            coord.wait_ready(90)  # its MQTT 5 check is skipped when the broker refuses 5
            site = make_site(b.port, prefix, site_id="nats-site", rate_hz=200.0, rows=300)
            wait_until(
                lambda: sites_json(db).get("nats-site", {}).get("state") == "online",
                90, "site online", step=0.3,
            )  # fmt: skip

            def stored() -> bool:
                n = _count(db, "SELECT count(*) FROM telemetry WHERE site = 'nats-site'")
                return n == 300 and int(site.status()["last_acked"]) >= 1

            wait_until(stored, 120, "300 samples stored and acked", step=0.5)
            values = [
                v
                for (v,) in sqlite3.connect(db).execute(
                    "SELECT value FROM telemetry WHERE site = 'nats-site' ORDER BY value"
                )
            ]
            assert values == [float(i) for i in range(300)]
            assert site.terminate() == 0
        finally:
            assert coord.stop() == 0
    log = coord.log_text()
    assert "using MQTT 3.1.1 (protocol auto)" in log, log[-3000:]
    assert "WARNING coordinator.bus: disconnected" not in log
    assert ON_ASYNCIO in log


@pytest.fixture
def secure(tmp_path: Path, prefix: str) -> Iterator[SecureSetup]:
    s = secure_setup(tmp_path / "secure", ["tls-a"], prefix=prefix)
    yield s
    s.close()


@pytest.mark.slow
def test_tls_and_password_through_the_shipped_broker_config(
    secure: SecureSetup,
    broker_factory: Callable[..., Broker],
    tmp_path: Path,
    prefix: str,
    make_site: Callable[..., SiteProc],
) -> None:
    broker = broker_factory(config_text=secure.config_text)
    db = tmp_path / "fedmq.db"
    coord = Coordinator(
        db, broker.port, prefix, extra=("--config", str(secure.credentials_file(COORDINATOR_USER)))
    )
    coord.env = {"FEDMQ_MQTT__HOST": "localhost", **ASYNC}
    coord.start().wait_ready()
    try:
        creds = secure.credentials("tls-a")
        site = make_site(
            broker.port, prefix, site_id="tls-a", rate_hz=50.0,
            mqtt={**creds["mqtt"], "port": broker.port, "keepalive": 5},
            coordinator_public_key_file=creds["coordinator_public_key_file"],
        )  # fmt: skip
        wait_until(
            lambda: sites_json(db).get("tls-a", {}).get("state") == "online", 30, "online", 0.3
        )
        wait_until(lambda: int(site.status()["last_acked"]) >= 5, 30, "acks reach the site")
        rows = json.loads(fedmq("telemetry", "tls-a", "--db", str(db), "--json").stdout)
        assert rows, "telemetry stored"
        assert json.loads(fedmq("dead-letters", "--db", str(db), "--json").stdout) == []
        assert site.terminate() == 0
    finally:
        coord.stop()
    log = coord.log_text()
    assert "connected to localhost" in log and ON_ASYNCIO in log
    assert secure.password(COORDINATOR_USER) not in log


# The codec and the connection's rules, on a recording transport ----------------------


class _Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.paused = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _bus(protocol: str = "5", receive_maximum: int = 100) -> AsyncBus:
    settings = MqttSettings(prefix="u/fedmq/v1", protocol=protocol)  # type: ignore[arg-type]
    return AsyncBus(settings, queue.SimpleQueue(), BusOptions(receive_maximum=receive_maximum))


def _wire(bus: AsyncBus, chunks: list[bytes]) -> tuple[_Connection, _Transport]:
    """Feed ``chunks`` to a connection of ``bus`` (inside a running loop)."""

    async def run() -> tuple[_Connection, _Transport]:
        bus._generation += 1
        conn = _Connection(bus, bus._generation)
        t = _Transport()
        conn.connection_made(t)
        bus._conn = conn
        for c in chunks:
            conn.data_received(c)
        return conn, t

    return asyncio.run(run())


def _drain(q: queue.SimpleQueue[Inbound]) -> list[Inbound]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt3.1.1"])
def test_publishes_split_anywhere_are_parsed_whole(v5: bool) -> None:
    bus = _bus("5" if v5 else "3.1.1")
    big = bytes(range(256)) * 80  # a remaining length of three bytes
    packets = [
        publish_packet("a/b", b"one", 1, False, 7, v5),
        publish_packet("a/é", big, 1, True, 65535, v5),
        publish_packet("q0", b"", 0, False, 0, v5),
    ]
    if v5:  # a broker may add properties (message expiry, user properties): skipped
        body = b"\x00\x03a/p" + b"\x00\x09" + b"\x07\x02\x00\x00\x00\x3c\x01\x01" + b"x"
        packets.append(bytes((0x32, len(body))) + body)
    stream = b"".join(packets)
    splits = [[stream], [bytes([b]) for b in stream], [stream[:5], stream[5:4000], stream[4000:]]]
    for split in splits:
        _wire(bus, split)
        got = _drain(bus.inbound)
        topics = [(m.topic, m.payload, m.mid & 0xFFFF, m.qos, m.retain) for m in got]
        want = [
            ("a/b", b"one", 7, 1, False),
            ("a/é", big, 65535, 1, True),
            ("q0", b"", 0, 0, False),
        ]
        if v5:
            want.append(("a/p", b"x", 9, 1, False))
        assert topics == want


def test_acks_of_an_earlier_connection_are_dropped_and_backpressure_pauses_reading() -> None:
    bus = _bus(receive_maximum=4)
    stream = b"".join(publish_packet("t", b"p", 1, False, pid, True) for pid in range(1, 6))

    async def run() -> None:
        bus._loop = asyncio.get_running_loop()
        bus._generation = 1
        old = _Connection(bus, 1)
        old.connection_made(_Transport())
        bus._conn = old
        old.data_received(stream[:12])  # two deliveries on the first connection
        stale = [m.mid for m in _drain(bus.inbound)]
        bus._generation = 2  # a reconnect
        conn = _Connection(bus, 2)
        t = _Transport()
        conn.connection_made(t)
        bus._conn, bus._unacked = conn, 0
        conn.data_received(stream)
        fresh = [m.mid for m in _drain(bus.inbound)]
        assert bus._unacked == 5 and t.paused  # Receive Maximum 4 reached: no more reads
        for mid in stale:
            bus.ack(mid, 1)
        bus.ack(fresh[0], 1)
        bus.ack(fresh[1], 0)  # QoS 0: nothing to send
        await asyncio.sleep(0)
        assert bytes(t.written) == b"\x40\x02\x00\x01"  # only this connection's PUBACK
        assert t.paused
        for mid in fresh[1:]:
            bus.ack(mid, 1)
        await asyncio.sleep(0)
        assert bytes(t.written[4:]) == b"".join(
            b"\x40\x02" + pid.to_bytes(2, "big") for pid in range(2, 6)
        )
        assert not t.paused and bus._unacked == 0  # caught up: reading again

    asyncio.run(run())


def test_connect_and_subscribe_packets() -> None:
    c5 = connect_packet("cid", True, 30, 3600, 20_000, ("st", b"off"), "u", "pw")
    assert c5[0] == 0x10 and c5[2:8] == b"\x00\x04MQTT" and c5[8] == 5
    flags = c5[9]
    assert flags & 0x02 == 0  # no clean start: a persistent session
    assert flags & 0x04 and (flags >> 3) & 3 == 1 and flags & 0x20  # Will: QoS 1, retained
    assert flags & 0x80 and flags & 0x40
    assert b"\x11\x00\x00\x0e\x10" in c5 and b"\x21\x4e\x20" in c5  # expiry, Receive Max
    c3 = connect_packet("cid", False, 30, 3600, 20_000, None, None, None)
    assert c3 == b"\x10\x0f\x00\x04MQTT\x04\x00\x00\x1e\x00\x03cid"
    s5 = subscribe_packet(1, {"p/#": 1}, True)
    assert s5 == b"\x82\x09\x00\x01\x00\x00\x03p/#\x0d"  # QoS 1, noLocal, retainAsPublished
    assert subscribe_packet(1, {"p/#": 1}, False) == b"\x82\x08\x00\x01\x00\x03p/#\x01"


def test_our_publishes_respect_the_brokers_receive_maximum() -> None:
    # CONNACK: flags, reason, properties (Assigned Client Id, Receive Maximum 2, Max QoS).
    props = b"\x12\x00\x02id" + b"\x21\x00\x02" + b"\x24\x01"
    assert connack_receive_maximum(b"\x00\x00" + bytes((len(props),)) + props) == 2
    assert connack_receive_maximum(b"\x00\x00\x00") == 65_535  # none set: no limit
    assert connack_receive_maximum(b"\x00\x00") == 65_535  # a 3.1.1-style CONNACK
    # Shared Subscription Available (0x2A) = 0: what --group checks.
    props = b"\x21\x00\x05" + b"\x2a\x00" + b"\x0b\x81\x01"  # + a varint property
    assert connack_properties(b"\x00\x00" + bytes((len(props),)) + props) == {
        0x21: 5, 0x2A: 0, 0x0B: 129,
    }  # fmt: skip
    assert connack_properties(b"\x00\x00\x02\xff\x00") is None  # malformed
    bus = _bus()

    async def run() -> None:
        bus._loop = asyncio.get_running_loop()
        conn = _Connection(bus, 1)
        t = _Transport()
        conn.connection_made(t)
        bus._conn, bus._quota = conn, 2
        infos = [bus.publish(f"t/{i}", b"x", 1, False) for i in range(3)]
        q0 = bus.publish("t/q0", b"y", 0, False)
        await asyncio.sleep(0)
        sent = bytes(t.written)
        assert sent.count(b"t/") == 2 and b"t/2" not in sent  # the third waits its turn
        assert not q0.is_published()  # order kept: behind the held QoS 1 publish
        conn.data_received(b"\x40\x02\x00\x01")  # PUBACK of the first
        await asyncio.sleep(0)
        assert infos[0].is_published() and not infos[1].is_published()
        assert b"t/2" in bytes(t.written) and q0.is_published()

    asyncio.run(run())
