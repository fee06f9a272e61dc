"""`fedmq broker init --broker mosquitto|rabbitmq|nats`: the same ACL matrix on each real
broker (issue 17, item 5).

A site may publish its own status, registration, heartbeat, telemetry, job status and
results, predictions and alarms, and nothing else (not another site's topics, not
commands or acks, not the coordinator's status); it may read its own commands and acks
and the coordinator's status and nothing else. A reader (--reader) reads every site's
status, registration, heartbeats, telemetry, predictions and alarms and the coordinator's
status, never commands or acks, and publishes nothing.

All clients speak MQTT 3.1.1 (what RabbitMQ and NATS speak), where a denied publish still
gets a PUBACK (Mosquitto, NATS) or closes the connection (RabbitMQ) and a denied
subscription gets SUBACK 0x80 (NATS), closes the connection (RabbitMQ) or is granted and
never delivers (Mosquitto 2.0). So the proof is what arrives: the coordinator, subscribed
to everything, never sees a denied publish, although a permitted marker published after it
on the same connection does arrive (MQTT keeps per-connection order); a denied
subscriber never receives what is published afterwards on the topics it asked for.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from coordinator.admin.broker_init import (
    Layout,
    add_reader,
    add_site,
    grants,
    init_broker,
    nats_subjects,
    rabbit_regex,
    render_acl,
)
from schemas import Topics
from tests.helpers.broker import Broker, free_port, port_open
from tests.helpers.other_brokers import RABBIT_BIN, NatsBroker, RabbitBroker
from tests.helpers.secure_broker import secure_config
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)
from tests.helpers.wait import wait_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PREFIX = "fedmq/v1"
SITES = ["site-a", "site-b"]
READER = "nodered"
T = Topics(PREFIX)


class Probe:
    """One MQTT 3.1.1 connection as an account; it never reconnects."""

    def __init__(self, port: int, user: str, password: str, client_id: str | None = None):
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.rc: int | None = None
        self.closed = False
        self._subacks: dict[int, int] = {}
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{user}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv311,
        )
        self.c.username_pw_set(user, password)
        self.c.reconnect_delay_set(600, 600)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.c.on_subscribe = lambda _c, _u, mid, rcs, _p: self._subacks.__setitem__(
            mid, rcs[0].value
        )
        self.port = port

    def _on_connect(self, _c: object, _u: object, _f: object, rc: object, _p: object) -> None:
        self.rc = int(getattr(rc, "value", rc))  # type: ignore[call-overload]

    def _on_disconnect(self, *_a: object) -> None:
        self.closed = True

    def connect(self) -> int:
        self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        wait_for(lambda: self.rc is not None or self.closed, 20, "CONNACK")
        return -1 if self.rc is None else self.rc

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if not self.closed:
            self.c.publish(topic, payload, qos=1, retain=retain)

    def subscribe(self, topic: str) -> int | None:
        """The SUBACK code (1: granted QoS 1, 128: refused), None if the broker hung up."""
        _rc, mid = self.c.subscribe(topic, 1)
        wait_for(lambda: mid in self._subacks or self.closed, 20, f"SUBACK for {topic}")
        return self._subacks.get(mid)  # type: ignore[arg-type]

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


class Matrix:
    """The ACL matrix against one running broker with accounts from `fedmq broker init`."""

    def __init__(self, port: int, deploy: Path, fresh_ids: bool = False) -> None:
        # fresh_ids: a new client id per probe (Probe's default). nats-server jails a client
        # id that connects again while its previous connection is still being closed
        # ("flapping") and drops it for a second without a CONNACK; Mosquitto here replaces
        # the client id with the username anyway.
        self.port, self.deploy, self.fresh_ids = port, deploy, fresh_ids
        self.seen: list[tuple[str, bytes]] = []

    def password(self, user: str) -> str:
        rel = {"coordinator": "coordinator", READER: f"readers/{READER}"}.get(user)
        path = self.deploy / (rel or f"sites/{user}") / "credentials.toml"
        return str(tomllib.loads(path.read_text())["mqtt"]["password"])

    def probe(self, user: str, client_id: str | None = None) -> Probe:
        if client_id is None and not self.fresh_ids:
            client_id = user  # RabbitMQ: an account may only use its own client id's queues
        p = Probe(self.port, user, self.password(user), client_id)
        assert p.connect() == 0, f"{user} refused"
        return p

    def run(self) -> None:
        self.logins()
        self.observer = self.probe("coordinator")
        try:
            assert self.observer.subscribe(f"{PREFIX}/#") == 1
            self.site_writes()
            self.site_reads()
            self.reader_reads()
            self.reader_writes()
        finally:
            self.observer.close()

    def _observe(self, until: Callable[[list[tuple[str, bytes]]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(self.seen):
            with contextlib.suppress(queue.Empty):
                self.seen.append(self.observer.messages.get(timeout=0.1))

    def logins(self) -> None:
        for user in ["coordinator", *SITES, READER]:
            self.probe(user).close()
        for user, password in [("site-a", "wrong"), ("nobody", "x"), (READER, "")]:
            p = Probe(self.port, user, password)
            assert p.connect() != 0, f"{user} with a wrong password was accepted"
            p.close()

    def site_writes(self) -> None:
        denied = [
            T.telemetry("site-b", "d1"),
            T.status("site-b"),
            T.registration("site-b"),
            T.job_result("site-b", "j1"),
            T.cmd("site-a", "train"),
            T.cmd("site-b", "train"),
            T.ack("site-a"),
            T.ack("site-b"),
            T.coordinator_status(),
            f"{PREFIX}/site/site-a/other",
            f"{PREFIX}/site/site-a/telemetry/d1/deeper",
            f"{PREFIX}/site/site-b/alarm/d1",
            "elsewhere/topic",
        ]
        for topic in denied:
            self._denied_write("site-a", topic, marker_user="site-a")
        allowed = [
            (T.status("site-a"), True),
            (T.registration("site-a"), True),
            (T.heartbeat("site-a"), False),
            (T.telemetry("site-a", "d1"), False),
            (T.job_status("site-a", "j1"), False),
            (T.job_result("site-a", "j1"), False),
            (f"{PREFIX}/site/site-a/prediction/d1", False),
            (f"{PREFIX}/site/site-a/alarm/d1", True),
        ]
        site = self.probe("site-a")
        try:
            for topic, retain in allowed:
                site.publish(topic, b"ok", retain=retain)
            want = {t for t, _ in allowed}
            self._observe(lambda seen: want <= {t for t, p in seen if p == b"ok"}, 20)
            assert want <= {t for t, p in self.seen if p == b"ok"}, "a permitted publish is lost"
        finally:
            site.close()
        self._assert_never_seen(denied)

    def _denied_write(self, user: str, topic: str, marker_user: str | None) -> None:
        marker = f"marker-{uuid.uuid4().hex[:8]}".encode()
        p = self.probe(user)
        try:
            p.publish(topic, b"denied")
            if marker_user == user:
                p.publish(T.heartbeat(user), marker)
                self._observe(lambda seen: (T.heartbeat(user), marker) in seen or p.closed, 20)
        finally:
            p.close()

    def _assert_never_seen(self, topics: list[str]) -> None:
        # Whatever is still on its way: a marker published now arrives after it.
        marker = f"marker-{uuid.uuid4().hex[:8]}".encode()
        p = self.probe("site-b")
        p.publish(T.heartbeat("site-b"), marker)
        self._observe(lambda seen: (T.heartbeat("site-b"), marker) in seen, 20)
        p.close()
        self.seen += self.observer.drain(0.5)
        leaked = sorted({t for t, payload in self.seen if payload == b"denied"})
        assert not leaked, f"denied publishes were relayed: {leaked}"
        assert set(topics).isdisjoint({t for t, p in self.seen if p == b"denied"})

    def site_reads(self) -> None:
        own = self.probe("site-a")
        coord = self.probe("coordinator", client_id="coordinator-pub")
        try:
            for topic in [T.site_commands("site-a"), T.ack("site-a"), T.coordinator_status()]:
                assert own.subscribe(topic) == 1, topic
            others = [T.cmd("site-b", "train"), T.ack("site-b"), T.telemetry("site-b", "d")]
            for topic in others:
                coord.publish(topic, b"secret")
            mine = [T.cmd("site-a", "ping"), T.ack("site-a"), T.coordinator_status()]
            for topic in mine:
                coord.publish(topic, b"for-a")
            wait_for(lambda: own.messages.qsize() >= len(mine), 20, "site-a's own messages")
            got = own.drain(1.0)
            assert sorted(t for t, _ in got) == sorted(mine)
        finally:
            own.close()
        for topic in [
            T.site_commands("site-b"),
            T.ack("site-b"),
            f"{PREFIX}/#",
            f"{PREFIX}/site/+/telemetry/+",
            # Shared subscriptions (an ingest group's $share/GROUP/...) are no way round it.
            f"$share/x/{PREFIX}/site/+/telemetry/+",
            f"$share/x/{PREFIX}/site/site-b/cmd/#",
        ]:
            self._denied_read("site-a", topic, coord, [T.cmd("site-b", "ping"), T.ack("site-b"),
                                                       T.telemetry("site-b", "d")])  # fmt: skip
        coord.close()

    def _denied_read(self, user: str, topic: str, coord: Probe, publish: list[str]) -> None:
        p = self.probe(user)
        try:
            code = p.subscribe(topic)
            for t in publish:
                coord.publish(t, b"secret")
            got = [] if p.closed else p.drain(1.0)
            assert not got, f"{user} subscribed to {topic} (SUBACK {code}) and received {got}"
        finally:
            p.close()

    def reader_reads(self) -> None:
        reader = self.probe(READER)
        site = self.probe("site-a")
        coord = self.probe("coordinator", client_id="coordinator-pub")
        try:
            wanted = [
                T.status("site-a"),
                T.registration("site-a"),
                T.heartbeat("site-a"),
                T.telemetry("site-a", "d1"),
                f"{PREFIX}/site/site-a/prediction/d1",
                f"{PREFIX}/site/site-a/alarm/d1",
                f"{PREFIX}/site/site-a/deployment",
            ]
            filters = [
                f"{PREFIX}/site/+/status",
                f"{PREFIX}/site/+/registration",
                f"{PREFIX}/site/+/heartbeat",
                f"{PREFIX}/site/+/telemetry/+",
                f"{PREFIX}/site/+/prediction/+",
                f"{PREFIX}/site/+/alarm/+",
                f"{PREFIX}/site/+/deployment",
                T.coordinator_status(),
            ]
            for f in filters:
                assert reader.subscribe(f) == 1, f
            for topic in wanted:
                site.publish(topic, b"row")
            coord.publish(T.coordinator_status(), b"row")
            coord.publish(T.cmd("site-a", "ping"), b"secret")
            coord.publish(T.ack("site-a"), b"secret")
            want = {*wanted, T.coordinator_status()}
            got: list[tuple[str, bytes]] = []

            def rows() -> bool:
                got.extend(reader.drain(0.1))
                return {t for t, p in got if p == b"row"} >= want

            wait_for(rows, 20, "the reader's rows")
            got += reader.drain(1.0)
            # (Retained status, registration and alarm of earlier steps come first.)
            assert {t for t, p in got if p == b"row"} == want
            assert not [t for t, p in got if p == b"secret"]
        finally:
            reader.close()
            site.close()
        for topic in [T.site_commands("site-a"), T.ack("site-a"), f"{PREFIX}/site/+/cmd/#"]:
            self._denied_read(READER, topic, coord, [T.cmd("site-a", "ping"), T.ack("site-a")])
        coord.close()

    def reader_writes(self) -> None:
        denied = [
            T.telemetry(READER, "x"),
            T.status(READER),
            T.telemetry("site-a", "d1"),
            T.status("site-a"),
            T.cmd("site-a", "ping"),
            T.ack("site-a"),
            T.coordinator_status(),
            f"{PREFIX}/site/site-a/alarm/d1",
        ]
        for topic in denied:
            self._denied_write(READER, topic, marker_user=None)
        self._assert_never_seen(denied)


def _deploy(tmp_path: Path, broker: str, tls: bool = False) -> Path:
    deploy = tmp_path / "deploy"
    init_broker(deploy, SITES, prefix=PREFIX, broker=broker, readers=[READER], tls=tls)
    return deploy


def test_mosquitto_accounts_pass_the_matrix(
    tmp_path: Path, broker_factory: Callable[..., Broker]
) -> None:
    # The shipped mosquitto.conf (max_queued_bytes included), its loopback plain listener.
    deploy = _deploy(tmp_path, "mosquitto", tls=True)
    data = tmp_path / "data"
    data.mkdir()
    plain = free_port()
    b = broker_factory(config_text=secure_config(deploy, data, plain_port=plain))
    # The fixture waits for the TLS listener; the plain one opens right after it.
    wait_for(lambda: port_open(plain), 20, "the plain listener")
    Matrix(plain, deploy).run()
    assert b.running


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitBroker]:
    b = RabbitBroker(tmp_path_factory.mktemp("rabbit"), anonymous=False).start()
    try:
        yield b
    finally:
        b.stop()


def test_rabbitmq_accounts_pass_the_matrix(tmp_path: Path, rabbit: RabbitBroker) -> None:
    deploy = _deploy(tmp_path, "rabbitmq")
    script = Layout(deploy).rabbitmq_script
    env = {**rabbit.env, "RABBITMQCTL": str(RABBIT_BIN / "rabbitmqctl")}
    out = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["account", "coordinator", "account", "site-a", "account",
                                  "site-b", "account", READER]  # fmt: skip
    # Idempotent: run again (existing users get their password changed, not an error).
    again = subprocess.run(
        ["sh", str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    Matrix(rabbit.port, deploy).run()


def test_nats_accounts_pass_the_matrix(tmp_path: Path) -> None:
    deploy = _deploy(tmp_path, "nats")
    b = NatsBroker(tmp_path / "nats", anonymous=False)
    b.auth_text = Layout(deploy).nats_accounts.read_text()
    b.start()
    try:
        Matrix(b.port, deploy, fresh_ids=True).run()
    finally:
        b.stop()


# --- Rendering, unit level ---------------------------------------------------------------


def test_one_grant_model_for_every_broker() -> None:
    site = next(g for g in grants(PREFIX, ["site-a"], [READER]) if g.user == "site-a")
    template = (Path(__file__).resolve().parents[1] / "broker_config/acl.template").read_text()
    acl = render_acl(template, PREFIX)
    # The Mosquitto template's per-site patterns are exactly the model's site grants.
    patterns = {
        (kind, topic.replace("%u", "site-a"))
        for kind, topic in (
            line.split()[1:] for line in acl.splitlines() if line.startswith("pattern ")
        )
    }
    assert patterns == {("write", t) for t in site.write} | {("read", t) for t in site.read}
    assert "coordinator-train" not in acl and "{train}" not in template


@pytest.mark.parametrize(
    ("filters", "matches", "refuses"),
    [
        (
            ["fedmq/v1/site/site-a/telemetry/+"],
            ["fedmq.v1.site.site-a.telemetry.d1", "fedmq.v1.site.site-a.telemetry.*"],
            ["fedmq.v1.site.site-b.telemetry.d1", "fedmq.v1.site.site-a.telemetry.#",
             "fedmq.v1.site.site-a.telemetry.d1.x", "fedmq.v1.site.site-aXtelemetry.d1"],
        ),
        (
            ["fedmq/v1/site/site-a/cmd/#"],
            ["fedmq.v1.site.site-a.cmd.ping", "fedmq.v1.site.site-a.cmd.#",
             "fedmq.v1.site.site-a.cmd"],
            ["fedmq.v1.site.site-b.cmd.ping", "fedmq.v1.site.#"],
        ),
        ([], [], ["fedmq.v1.site.site-a.status", "#"]),
    ],
)  # fmt: skip
def test_rabbit_regex(filters: list[str], matches: list[str], refuses: list[str]) -> None:
    import re

    rx = re.compile(rabbit_regex(filters))
    assert all(rx.match(k) for k in matches)
    assert not any(rx.match(k) for k in refuses)


def test_nats_subjects() -> None:
    assert nats_subjects(["fedmq/v1/#", "fedmq/v1/site/+/telemetry/+"]) == [
        "fedmq.v1",
        "fedmq.v1.>",
        "fedmq.v1.site.*.telemetry.*",
    ]


def test_readers_and_sites_are_added_and_kept_apart(tmp_path: Path) -> None:
    for broker in ("mosquitto", "rabbitmq", "nats"):
        deploy = tmp_path / broker
        init_broker(deploy, ["site-a"], prefix=PREFIX, broker=broker, readers=[READER])
        add_site(deploy, "site-c")
        add_reader(deploy, "telegraf")
        layout = Layout(deploy)
        text = {
            "mosquitto": layout.acl,
            "rabbitmq": layout.rabbitmq_definitions,
            "nats": layout.nats_accounts,
        }[broker].read_text()
        assert "telegraf" in text and READER in text
        if broker != "mosquitto":
            assert "site-c" in text  # Mosquitto's patterns need no line per site
            assert not layout.passwd.exists()
        for bad, why in [
            (lambda d=deploy: add_site(d, READER), "reader"),
            (lambda d=deploy: add_reader(d, "site-a"), "site"),
            (lambda d=deploy: add_reader(d, "telegraf"), "exists"),
            (lambda d=deploy: add_reader(d, "Bad Name"), "reader name"),
        ]:
            with pytest.raises(ValueError, match=why):
                bad()
    with pytest.raises(ValueError, match="unknown broker"):
        init_broker(tmp_path / "x", ["site-a"], broker="hivemq")
    with pytest.raises(ValueError, match="must differ"):
        init_broker(tmp_path / "y", ["site-a"], readers=["site-a"])


def test_shipped_nats_conf_accepts_the_generated_accounts(tmp_path: Path) -> None:
    import shutil as sh

    binary = sh.which("nats-server") or "/usr/sbin/nats-server"
    deploy = _deploy(tmp_path, "nats")
    conf = (Path(__file__).resolve().parents[1] / "broker_config/nats.conf").read_text()
    (tmp_path / "nats.conf").write_text(conf.replace("/var/lib/nats", str(tmp_path / "js")))
    sh.copyfile(Layout(deploy).nats_accounts, tmp_path / "nats-accounts.conf")
    out = subprocess.run(
        [binary, "-c", str(tmp_path / "nats.conf"), "-t"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "is valid" in out.stdout + out.stderr, out.stderr
    # The check can fail: a broken accounts file is refused.
    (tmp_path / "nats-accounts.conf").write_text("accounts: { FEDMQ: { users: [ }")
    bad = subprocess.run(
        [binary, "-c", str(tmp_path / "nats.conf"), "-t"], capture_output=True, text=True
    )
    assert bad.returncode != 0


# --- The real daemons on the generated accounts ------------------------------------------


def _run_real_site_and_serve(
    tmp_path: Path, port: int, deploy: Path, site: str, make_site: Callable[..., SiteProc]
) -> None:
    """`fedmq serve` and `fedmq-site run` with nothing but the generated credentials:
    the site comes online, its telemetry is stored and acked (the coordinator writes the
    site's ack topic), both over MQTT 3.1.1 found by protocol = "auto"."""
    from site_node.outbox_store import read_stats
    from tests.helpers.coord_proc import Coordinator, sites_json, wait_until
    from tests.helpers.db import query

    creds = tomllib.loads((deploy / "sites" / site / "credentials.toml").read_text())
    db = tmp_path / "c.db"
    coord = Coordinator(
        db, port, PREFIX, extra=("--config", str(deploy / "coordinator" / "credentials.toml"))
    )
    coord.env = {"FEDMQ_MQTT__HOST": "127.0.0.1"}
    coord.start().wait_ready(60)
    try:
        mqtt_settings = {k: creds["mqtt"][k] for k in ("username", "password")}
        proc = make_site(
            port,
            PREFIX,
            site_id=site,
            rows=300,
            rate_hz=100.0,
            coordinator_public_key_file=creds["coordinator_public_key_file"],
            mqtt=mqtt_settings,
        )
        wait_until(lambda: sites_json(db).get(site, {}).get("state") == "online", 90, "online")

        def stored() -> int:
            rows = query(db, "SELECT count(*) FROM telemetry WHERE site = ?", site)
            return int(rows[0][0]) if rows else 0

        wait_until(lambda: stored() == 300, 120, "300 samples stored", step=0.3)

        def acked() -> bool:
            st = read_stats(proc.data_dir / "outbox.db")
            return st.last_seq > 0 and st.last_acked == st.last_seq

        wait_until(acked, 60, "the site's outbox acked by the coordinator", step=0.3)
        assert "3.1.1" in proc.log_text()
    finally:
        coord.stop()


def test_real_site_and_serve_on_generated_nats_accounts(
    tmp_path: Path, make_site: Callable[..., SiteProc]
) -> None:
    deploy = tmp_path / "deploy"
    init_broker(deploy, ["plant-n"], prefix=PREFIX, broker="nats")
    b = NatsBroker(tmp_path / "nats", anonymous=False)
    b.auth_text = Layout(deploy).nats_accounts.read_text()
    b.start()
    try:
        _run_real_site_and_serve(tmp_path, b.port, deploy, "plant-n", make_site)
    finally:
        b.stop()


def test_real_site_and_serve_on_generated_rabbitmq_accounts(
    tmp_path: Path, rabbit: RabbitBroker, make_site: Callable[..., SiteProc]
) -> None:
    deploy = tmp_path / "deploy"
    init_broker(deploy, ["plant-r"], prefix=PREFIX, broker="rabbitmq")
    env = {**rabbit.env, "RABBITMQCTL": str(RABBIT_BIN / "rabbitmqctl")}
    script = str(Layout(deploy).rabbitmq_script)
    out = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    _run_real_site_and_serve(tmp_path, rabbit.port, deploy, "plant-r", make_site)


def test_cli_broker_choice_readers_and_modes(tmp_path: Path) -> None:
    import stat

    from click.testing import CliRunner

    from coordinator.cli import cli

    sites = tmp_path / "sites.txt"
    sites.write_text("press-1\n")
    runner = CliRunner()
    for broker, secret in [
        ("rabbitmq", "rabbitmq-definitions.json"),
        ("nats", "nats-accounts.conf"),
    ]:
        out = tmp_path / broker
        args = ["broker", "init", "--sites", str(sites), "--out", str(out)]
        res = runner.invoke(cli, [*args, "--broker", broker, "--reader", READER])
        assert res.exit_code == 0, res.output
        path = out / "broker" / secret
        assert str(path) in res.output and str(out / "readers" / READER / "credentials.toml") in (
            res.output
        )
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        password = tomllib.loads((out / "sites/press-1/credentials.toml").read_text())["mqtt"]
        if broker == "rabbitmq":
            # Only a salted hash, in RabbitMQ's scheme: it verifies against the password.
            import base64
            import hashlib

            users = json.loads(path.read_text())["users"]
            stored = base64.b64decode(next(u for u in users if u["name"] == "press-1")[
                "password_hash"])  # fmt: skip
            salt, digest = stored[:4], stored[4:]
            assert hashlib.sha256(salt + password["password"].encode()).digest() == digest
            assert password["password"] not in path.read_text()
            assert password["password"] not in (out / "broker/rabbitmq-users.sh").read_text()
        else:
            assert password["password"] in path.read_text()  # nats-server needs it
        assert password["password"] not in res.output  # the terminal never shows it
        assert not (out / "broker" / "passwd").exists()
        more = runner.invoke(cli, ["broker", "add-reader", "telegraf", "--out", str(out)])
        assert more.exit_code == 0 and "telegraf" in path.read_text()
    bad = runner.invoke(
        cli, ["broker", "init", "--sites", str(sites), "--out", str(tmp_path / "x"),
              "--broker", "hivemq"],
    )  # fmt: skip
    assert bad.exit_code == 2 and "hivemq" in bad.output
    clash = runner.invoke(
        cli, ["broker", "init", "--sites", str(sites), "--out", str(tmp_path / "y"),
              "--reader", "press-1"],
    )  # fmt: skip
    assert clash.exit_code == 2 and "must differ" in clash.output
