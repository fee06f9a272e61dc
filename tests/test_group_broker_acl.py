"""Ingest groups (`fedmq serve --group`) on the accounts of `fedmq broker init`, and what
each broker does with a shared subscription (issue 16).

Mosquitto 2.0 on the shipped production config (TLS listener, use_username_as_clientid,
the generated ACL):

* The ACL needs nothing new: Mosquitto's acl_file never checks a SUBSCRIBE (every
  subscription, $share/... included, gets SUBACK "granted") and checks each delivery on
  the message's own topic, so the coordinator's ``topic readwrite P/#`` covers
  ``$share/GROUP/P/site/+/telemetry/+`` and a site still receives nothing of another
  site's telemetry through ``$share/...``.
* But each instance needs its own account: the client id is the username, so two
  instances on the one ``coordinator`` account take each other's connection over.
  ``fedmq broker init --coordinator NAME`` / ``add-coordinator`` make more accounts.
* A site that joins the coordinators' own group gets its turn of the round robin and,
  its delivery denied, the message is dropped for the whole group (the site re-sends it
  after its ack timeout): why the group name should not be guessable.

nats-server 2.9 (MQTT) and RabbitMQ 3.10 (rabbitmq_mqtt) do not implement shared
subscriptions: an open broker grants ``$share/g/T`` as a literal topic and delivers none of
T's messages; with the generated accounts NATS refuses it (SUBACK 0x80) and RabbitMQ closes
the connection (the topic permission regex does not match ``$share...``).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from coordinator.admin.broker_init import (
    COORDINATOR_USER,
    BrokerInitError,
    Layout,
    add_coordinator,
    add_reader,
    add_site,
    grants,
    init_broker,
    render_nats_accounts,
    render_rabbitmq_definitions,
)
from schemas import Topics
from site_node.outbox_store import read_stats
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import FEDMQ, REPO
from tests.helpers.other_brokers import RABBIT_BIN, NatsBroker, RabbitBroker
from tests.helpers.secure_broker import secure_config
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)
from tests.helpers.wait import wait_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PREFIX = "fedmq/v1"
T = Topics(PREFIX)
GROUP = "plant-7f3a9c"
SHARED = T.shared_telemetry(GROUP)
N = 100


class Client:
    """One MQTT connection that records messages, SUBACK codes and disconnects."""

    def __init__(
        self,
        port: int,
        user: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        v5: bool = True,
        tls: Mapping[str, object] | None = None,
    ) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.subacks: dict[int, int] = {}
        self.rc: int | None = None
        self.disconnects = 0
        self.v5 = v5
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        if user is not None:
            self.c.username_pw_set(user, password)
        if tls is not None:
            self.c.tls_set(**dict(tls))  # type: ignore[arg-type]
        self.c.reconnect_delay_set(600, 600)  # never reconnect: a takeover stays visible
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.c.on_subscribe = lambda _c, _u, mid, rcs, _p: self.subacks.__setitem__(
            mid, rcs[0].value
        )
        self.port = port

    def _on_connect(self, _c: object, _u: object, _f: object, rc: object, _p: object) -> None:
        self.rc = int(getattr(rc, "value", rc))  # type: ignore[call-overload]

    def _on_disconnect(self, *_a: object) -> None:
        self.disconnects += 1

    def connect(self) -> Client:
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0
        self.c.connect("127.0.0.1", self.port, keepalive=30, properties=props)
        self.c.loop_start()
        wait_for(lambda: self.rc is not None or self.disconnects, 30, "CONNACK")
        assert self.rc == 0, f"connection refused: {self.rc}"
        return self

    def subscribe(self, topic: str) -> int | None:
        """The SUBACK code (1: QoS 1 granted, >= 128: refused), None if hung up on."""
        _rc, mid = self.c.subscribe(topic, 1)
        wait_for(lambda: mid in self.subacks or self.disconnects, 30, f"SUBACK for {topic}")
        return self.subacks.get(mid)  # type: ignore[arg-type]

    def publish_all(self, topic: str, payloads: list[bytes]) -> None:
        infos = [self.c.publish(topic, p, qos=1) for p in payloads]
        wait_for(lambda: all(i.is_published() for i in infos), 60, "PUBACKs")

    def drain(self, quiet: float = 1.0) -> list[tuple[str, bytes]]:
        out = []
        while True:
            try:
                out.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _password(deploy: Path, user: str) -> str:
    layout = Layout(deploy)
    node = {COORDINATOR_USER: layout.coordinator}.get(user)
    if node is None:
        extra = layout.extra_coordinator(user)
        node = extra if extra.exists() else layout.site(user)
    return str(tomllib.loads((node / "credentials.toml").read_text())["mqtt"]["password"])


def _payloads(tag: str) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(N)]


# --- Mosquitto: the shipped production config and the generated ACL --------------------


@pytest.fixture
def mosquitto_group(
    tmp_path: Path, broker_factory: Callable[..., Broker]
) -> Iterator[Callable[..., Client]]:
    """The shipped mosquitto.conf (TLS, use_username_as_clientid, ACL) with accounts for
    sites site-a, site-b and two coordinator instances; yields a connect function."""
    deploy = tmp_path / "deploy"
    init_broker(deploy, ["site-a", "site-b"], prefix=PREFIX, tls=True, coordinators=["ingest-2"])
    data = tmp_path / "data"
    data.mkdir()
    b = broker_factory(config_text=secure_config(deploy, data))
    tls = {"ca_certs": str(Layout(deploy).broker / "tls" / "ca.crt")}
    clients: list[Client] = []

    def connect(user: str, client_id: str | None = None) -> Client:
        c = Client(b.port, user, _password(deploy, user), client_id, tls=tls)
        clients.append(c)
        return c.connect()

    yield connect
    for c in clients:
        c.close()
    assert b.running


def test_group_instances_need_their_own_accounts(mosquitto_group: Callable[..., Client]) -> None:
    # Two instances on the one coordinator account: the broker makes both client ids
    # "coordinator", and the second connection takes the first one's over.
    first = mosquitto_group(COORDINATOR_USER, "ingest-1")
    second = mosquitto_group(COORDINATOR_USER, "ingest-2")
    wait_for(lambda: first.disconnects > 0, 30, "the first instance taken over")
    assert second.disconnects == 0
    # With an account each, both stay connected.
    one = mosquitto_group("ingest-2")
    two = mosquitto_group(COORDINATOR_USER)
    assert one.subscribe(SHARED) == 1 and two.subscribe(SHARED) == 1
    probe = mosquitto_group("site-a")
    probe.publish_all(T.heartbeat("site-a"), [b"x"])
    assert one.disconnects == 0 and two.disconnects == 0


def test_coordinator_accounts_split_the_telemetry_and_sites_read_nothing_through_share(
    mosquitto_group: Callable[..., Client],
) -> None:
    workers = [mosquitto_group(COORDINATOR_USER), mosquitto_group("ingest-2")]
    for w in workers:
        assert w.subscribe(SHARED) == 1
    # site-b tries to read site-a's telemetry through shared subscriptions of its own
    # group: granted by Mosquitto 2.0 (it never checks a SUBSCRIBE; a broker that does may
    # refuse), and in any case nothing is delivered.
    spy = mosquitto_group("site-b")
    for topic in [
        f"$share/x/{PREFIX}/site/+/telemetry/+",
        f"$share/x/{PREFIX}/site/site-a/telemetry/d1",
        f"$share/y/{PREFIX}/#",
    ]:
        assert spy.subscribe(topic) is not None, topic
    # The control: a shared subscription of site-b's own commands does deliver to it, so
    # nothing arriving above is the ACL at work, not $share failing for sites.
    assert spy.subscribe(f"$share/x/{T.site_commands('site-b')}") == 1

    mosquitto_group("site-a").publish_all(T.telemetry("site-a", "d1"), _payloads("a"))
    got: list[list[tuple[str, bytes]]] = [[], []]

    def all_in() -> bool:
        for i, w in enumerate(workers):
            got[i] += w.drain(0.05)
        return sum(map(len, got)) >= N

    wait_for(all_in, 60, "every telemetry message at one of the instances")
    mosquitto_group(COORDINATOR_USER, "cmd-sender").publish_all(T.cmd("site-b", "ping"), [b"own"])
    got[0] += workers[0].drain(0.5)
    got[1] += workers[1].drain(0.1)
    payloads = [p for share in got for _t, p in share]
    assert sorted(payloads) == sorted(_payloads("a")), "lost or duplicated telemetry"
    assert all(len(share) > 0 for share in got), f"not split: {[len(s) for s in got]}"
    seen = spy.drain(0.5)
    # (Once per share group whose filter matches: x and y.)
    assert set(seen) == {(T.cmd("site-b", "ping"), b"own")}, f"site-b read {seen}"


def test_a_site_in_the_coordinators_group_swallows_its_turn(
    mosquitto_group: Callable[..., Client],
) -> None:
    # Why GROUP should be a name no site can guess: a site subscribed with the
    # coordinators' group name is one more member of the round robin; its deliveries are
    # denied and dropped, not given to another member (Mosquitto 2.0.11: SUBACK granted).
    # A Mosquitto that refuses the subscription instead must lose nothing.
    workers = [mosquitto_group(COORDINATOR_USER), mosquitto_group("ingest-2")]
    for w in workers:
        assert w.subscribe(SHARED) == 1
    intruder = mosquitto_group("site-b")
    joined = intruder.subscribe(SHARED) == 1
    mosquitto_group("site-a").publish_all(T.telemetry("site-a", "d1"), _payloads("a"))
    expect = N // 2 if joined else N  # (joined: about 2 in 3, the coordinators' turns)
    wait_for(lambda: sum(w.messages.qsize() for w in workers) >= expect, 60, "telemetry")
    received = {p for w in workers for _t, p in w.drain(1.0)}
    assert intruder.drain(0.2) == []
    missing = set(_payloads("a")) - received
    if joined:
        assert 0 < len(missing) < N, f"{len(missing)} of {N} missing"
    else:
        assert not missing


@pytest.mark.parametrize("receive", ["paho", "asyncio"])
def test_serve_group_on_the_generated_accounts_stores_every_sample_once(
    receive: str,
    tmp_path: Path,
    broker_factory: Callable[..., Broker],
    pg_url: str,
    make_site: Callable[..., SiteProc],
) -> None:
    """Two real `fedmq serve --group` instances, each with its own generated account, on
    the shipped TLS config; two real sites with theirs: every sample stored once, both
    outboxes acked, both instances storing a share, no connection taken over."""
    import psycopg

    sites, rows = ["g-a", "g-b"], 300
    deploy = tmp_path / "deploy"
    init_broker(deploy, sites, prefix=PREFIX, tls=True, coordinators=["ingest-2"])
    data = tmp_path / "data"
    data.mkdir()
    b = broker_factory(config_text=secure_config(deploy, data))
    layout = Layout(deploy)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FEDMQ_MQTT__HOST": "localhost",
           "FEDMQ_MQTT__PORT": str(b.port), "FEDMQ_SESSION_EXPIRY_S": "5",
           "FEDMQ_RECEIVE": receive}  # fmt: skip
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    for creds, extra in [
        (layout.coordinator / "credentials.toml", ("--client-id", "ingest-1")),
        (layout.extra_coordinator("ingest-2") / "credentials.toml", ()),
    ]:
        log = tmp_path / f"serve-{len(procs)}.log"
        args = ["serve", "--config", str(creds), "--db", pg_url, "--group", GROUP,
                "--no-http", "--batch-time", "0.02", *extra]  # fmt: skip
        with log.open("ab") as out:
            procs.append(
                (subprocess.Popen([*FEDMQ, *args], stdout=out, stderr=out, cwd=REPO, env=env), log)
            )

    def stored() -> int:
        with psycopg.connect(pg_url) as conn:
            return int(conn.execute(b"SELECT count(*) FROM telemetry").fetchall()[0][0])

    try:
        wait_for(
            lambda: any("won the leader lock" in log.read_text() for _p, log in procs),
            60,
            "an instance leading",
        )
        site_procs = []
        for site in sites:
            site_creds = tomllib.loads((layout.site(site) / "credentials.toml").read_text())
            site_procs.append(
                make_site(
                    b.port,
                    PREFIX,
                    site_id=site,
                    rows=rows,
                    rate_hz=100.0,
                    mqtt={**site_creds["mqtt"], "host": "localhost", "port": b.port},
                    coordinator_public_key_file=site_creds["coordinator_public_key_file"],
                )
            )

        def drained() -> bool:
            for proc in site_procs:
                st = read_stats(proc.data_dir / "outbox.db")
                if st.last_seq == 0 or st.last_acked != st.last_seq:
                    return False
            return stored() >= rows * len(sites)

        wait_for(drained, 240, "every sample stored and every outbox acked")
        with psycopg.connect(pg_url) as conn:
            for site in sites:
                values = conn.execute(
                    b"SELECT value FROM telemetry WHERE site = %s ORDER BY value", (site,)
                ).fetchall()
                assert [v for (v,) in values] == [float(i) for i in range(rows)], site
    finally:
        for proc, _log in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _log in procs:
            proc.wait(timeout=60)
    shares = []
    for _proc, log in procs:
        text = log.read_text(errors="replace")
        found = re.findall(r"coordinator stopped \((\d+) messages stored\)", text)
        assert found, text[-3000:]
        shares.append(int(found[-1]))
    assert all(n > 0 for n in shares), f"the telemetry was not split: {shares}"
    broker_log = b.log.read_text(errors="replace")
    assert "already connected, closing old connection" not in broker_log
    assert "as coordinator (p5" in broker_log and "as ingest-2 (p5" in broker_log


# --- Rendering: extra coordinator accounts on every broker -----------------------------


def test_extra_coordinator_accounts_get_the_coordinators_grants(tmp_path: Path) -> None:
    accounts = grants(PREFIX, ["site-a"], ["nodered"], ["ingest-2"])
    by_user = {g.user: g for g in accounts}
    assert by_user["ingest-2"].read == by_user[COORDINATOR_USER].read == (f"{PREFIX}/#",)
    assert by_user["ingest-2"].write == by_user[COORDINATOR_USER].write
    assert by_user["ingest-2"].role == "coordinator"
    passwords = {g.user: "pw" for g in accounts}
    defs = render_rabbitmq_definitions(accounts, passwords)
    topics = {t["user"]: t for t in defs["topic_permissions"]}  # type: ignore[attr-defined]
    assert topics["ingest-2"]["read"] == topics[COORDINATOR_USER]["read"]
    assert '"user": "ingest-2"' in render_nats_accounts(PREFIX, accounts, passwords)

    for broker in ("mosquitto", "rabbitmq", "nats"):
        deploy = tmp_path / broker
        init_broker(deploy, ["site-a"], prefix=PREFIX, broker=broker, coordinators=["ingest-2"])
        add_coordinator(deploy, "ingest-3")
        layout = Layout(deploy)
        for name in ("ingest-2", "ingest-3"):
            node = layout.extra_coordinator(name)
            creds = tomllib.loads((node / "credentials.toml").read_text())
            assert creds["client_id"] == creds["mqtt"]["username"] == name
            assert Path(creds["signing_key_file"]) == node / "signing.key"
            assert (node / "signing.key").read_bytes() == (
                layout.coordinator / "signing.key"
            ).read_bytes()
            assert (node / "signing.key").stat().st_mode & 0o077 == 0
        if broker == "mosquitto":
            acl = layout.acl.read_text()
            assert "user ingest-2\ntopic readwrite fedmq/v1/#\n" in acl
            assert "user ingest-3\ntopic readwrite fedmq/v1/#\n" in acl
            assert "ingest-3:" in layout.passwd.read_text()
            # The first account keeps its Mosquitto credentials as before (no client_id).
            assert "client_id" not in (layout.coordinator / "credentials.toml").read_text()
        else:
            text = (
                layout.rabbitmq_definitions if broker == "rabbitmq" else layout.nats_accounts
            ).read_text()
            assert "ingest-3" in text
        for bad, why in [
            (lambda d=deploy: add_coordinator(d, "ingest-2"), "exists"),
            (lambda d=deploy: add_coordinator(d, "site-a"), "site's or reader's"),
            (lambda d=deploy: add_coordinator(d, COORDINATOR_USER), "first coordinator"),
            (lambda d=deploy: add_coordinator(d, "Bad Name"), "username"),
            (lambda d=deploy: add_site(d, "ingest-2"), "coordinator account"),
            (lambda d=deploy: add_reader(d, "ingest-3"), "coordinator account"),
        ]:
            with pytest.raises(BrokerInitError, match=why):
                bad()
    with pytest.raises(BrokerInitError, match="must differ"):
        init_broker(tmp_path / "x", ["site-a"], coordinators=["site-a"])


def test_cli_init_and_add_coordinator(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from coordinator.cli import cli

    sites = tmp_path / "sites.txt"
    sites.write_text("press-1\n")
    out = tmp_path / "deploy"
    runner = CliRunner()
    res = runner.invoke(
        cli, ["broker", "init", "--sites", str(sites), "--out", str(out), "--coordinator", "i-2"]
    )
    assert res.exit_code == 0, res.output
    assert str(out / "coordinators" / "i-2" / "credentials.toml") in res.output
    res = runner.invoke(cli, ["broker", "add-coordinator", "i-3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert str(out / "coordinators" / "i-3" / "signing.key") in res.output
    res = runner.invoke(cli, ["broker", "add-coordinator", "press-1", "--out", str(out)])
    assert res.exit_code != 0 and "site's or reader's" in res.output


# --- NATS and RabbitMQ: no shared subscriptions -----------------------------------------


def _two_members_and_a_plain_subscriber(port: int) -> list[int]:
    """Two members of one share group and a plain subscriber get N telemetry messages:
    how many each receives (plain last)."""
    members = [
        Client(
            port,
            v5=False,
        ).connect()
        for _ in range(2)
    ]
    plain = Client(
        port,
        v5=False,
    ).connect()
    try:
        for m in members:
            assert m.subscribe(SHARED) == 1  # accepted (as a literal topic)
        assert plain.subscribe(f"{PREFIX}/site/+/telemetry/+") == 1
        pub = Client(
            port,
            v5=False,
        ).connect()
        pub.publish_all(T.telemetry("site-a", "d1"), _payloads("a"))
        pub.close()
        wait_for(lambda: plain.messages.qsize() >= N, 60, "the plain subscriber's copies")
        return [len(m.drain(1.0)) for m in members] + [len(plain.drain(0.1))]
    finally:
        for c in [*members, plain]:
            c.close()


def test_nats_treats_share_as_a_literal_topic_and_the_accounts_refuse_it(
    tmp_path: Path,
) -> None:
    b = NatsBroker(tmp_path / "open").start()
    try:
        assert _two_members_and_a_plain_subscriber(b.port) == [0, 0, N]
    finally:
        b.stop()
    deploy = tmp_path / "deploy"
    init_broker(deploy, ["site-a"], prefix=PREFIX, broker="nats", coordinators=["ingest-2"])
    b = NatsBroker(tmp_path / "accounts", anonymous=False)
    b.auth_text = Layout(deploy).nats_accounts.read_text()
    b.start()
    try:
        for user in (COORDINATOR_USER, "ingest-2"):
            c = Client(b.port, user, _password(deploy, user), v5=False).connect()
            assert c.subscribe(SHARED) == 0x80  # "$share.plant-7f3a9c.fedmq.v1..." not allowed
            assert c.subscribe(f"{PREFIX}/site/+/telemetry/+") == 1
            c.close()
    finally:
        b.stop()


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitBroker]:
    b = RabbitBroker(tmp_path_factory.mktemp("rabbit"), anonymous=True).start()
    try:
        yield b
    finally:
        b.stop()


def test_rabbitmq_treats_share_as_a_literal_topic_and_the_accounts_refuse_it(
    tmp_path: Path, rabbit: RabbitBroker
) -> None:
    import subprocess

    assert _two_members_and_a_plain_subscriber(rabbit.port) == [0, 0, N]
    deploy = tmp_path / "deploy"
    init_broker(deploy, ["site-a"], prefix=PREFIX, broker="rabbitmq", coordinators=["ingest-2"])
    env = {**rabbit.env, "RABBITMQCTL": str(RABBIT_BIN / "rabbitmqctl")}
    script = str(Layout(deploy).rabbitmq_script)
    out = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for user in (COORDINATOR_USER, "ingest-2"):
        # The client id is the username: RabbitMQ's queue permissions follow it.
        ok = Client(rabbit.port, user, _password(deploy, user), client_id=user, v5=False)
        assert ok.connect().subscribe(f"{PREFIX}/site/+/telemetry/+") == 1
        ok.close()
        c = Client(rabbit.port, user, _password(deploy, user), client_id=user, v5=False)
        assert c.connect().subscribe(SHARED) is None  # the broker closes the connection
        assert c.disconnects > 0
        c.close()
