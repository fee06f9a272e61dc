"""Broker topologies for tests: a bridged pair of Mosquittos and a three-node NATS cluster.

Both are built from the shipped examples in ``broker_config/topologies/`` (the files
docs/scaling.md shows), with only addresses, ports and directories replaced::

    central, plant = bridged_brokers(tmp_path)          # started; central is persistent
    wait_bridge_up(plant)                                # the bridge is connected
    central.kill(); central.start()                      # kill -9, same persistence file

    with nats_cluster(tmp_path / "nats") as cluster:     # three nodes, JetStream + MQTT
        cluster.nodes[0].port                            # node 1's MQTT port
        leader = cluster.stream_leader("$MQTT_msgs")     # a node name, e.g. "nats-3"
        cluster.node(leader).kill()                      # kill -9
        cluster.node(leader).start()

Every replacement must match the example file exactly once, so an edited example that the
helper no longer understands fails loudly instead of testing something else.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from site_node.outbox_store import read_stats
from tests.helpers.broker import REPO, Broker, dev_config, free_port, port_open
from tests.helpers.db import query
from tests.helpers.mqtt import TestClient
from tests.helpers.other_brokers import NATS_HINT, mqtt_connack
from tests.helpers.secure_broker import stay_user_line
from tests.helpers.wait import wait_for

__all__ = [
    "BRIDGE_STATE",
    "TOPOLOGIES",
    "NatsCluster",
    "NatsNode",
    "RawQos1Probe",
    "bridge_plant_config",
    "bridge_state",
    "bridged_brokers",
    "central_config",
    "drained",
    "nats_cluster",
    "nats_node_config",
    "render",
    "site_tally",
    "wait_bridge_up",
]

TOPOLOGIES = REPO / "broker_config" / "topologies"
# The bridge announces its state under its remote client id (notifications true).
BRIDGE_STATE = "$SYS/broker/connection/fedmq-bridge-plant1/state"
EXAMPLE_PREFIX = "fedmq/v1"


def render(text: str, replacements: list[tuple[str, str]]) -> str:
    """``text`` with each ``old`` replaced by ``new``; each ``old`` must occur exactly once."""
    for old, new in replacements:
        count = text.count(old)
        if count != 1:
            raise AssertionError(f"{old!r} occurs {count} times in the example, expected once")
        text = text.replace(old, new)
    return text


# --------------------------------------------------------------------------- bridge


def central_config(port: int, workdir: Path) -> str:
    """The dev config on ``port`` plus broker_config/topologies/central.conf, persisting
    into ``workdir``."""
    base = render(dev_config(port), [("persistence false\n", "")])
    central = render(
        (TOPOLOGIES / "central.conf").read_text(),
        [("persistence_location /var/lib/mosquitto/", f"persistence_location {workdir}/")],
    )
    return base + "\n" + central + stay_user_line()


def bridge_plant_config(port: int, central_port: int, prefix: str = EXAMPLE_PREFIX) -> str:
    """The dev config on ``port`` plus broker_config/topologies/bridge-plant.conf, bridged
    to ``127.0.0.1:central_port``, with the example's prefix replaced by ``prefix``."""
    bridge = render(
        (TOPOLOGIES / "bridge-plant.conf").read_text(),
        [("address central-broker.example.com:1883", f"address 127.0.0.1:{central_port}")],
    )
    if prefix != EXAMPLE_PREFIX:
        lines = [
            line.replace(f"topic {EXAMPLE_PREFIX}/", f"topic {prefix}/", 1)
            for line in bridge.splitlines()
        ]
        bridge = "\n".join(lines) + "\n"
    return dev_config(port) + "\n" + bridge


def bridged_brokers(workdir: Path, prefix: str = EXAMPLE_PREFIX) -> tuple[Broker, Broker]:
    """A persistent central Mosquitto and a plant Mosquitto bridged to it, both started.

    Returns ``(central, plant)``; the caller kills both at the end.
    """
    (workdir / "central").mkdir(parents=True)
    (workdir / "plant").mkdir(parents=True)
    central_port, plant_port = free_port(), free_port()
    central = Broker(
        workdir / "central",
        config_text=central_config(central_port, workdir / "central"),
        port=central_port,
    )
    plant = Broker(
        workdir / "plant",
        config_text=bridge_plant_config(plant_port, central_port, prefix),
        port=plant_port,
    )
    central.start()
    plant.start()
    return central, plant


def bridge_state(plant: Broker, timeout: float = 10.0) -> str | None:
    """The bridge's retained state on the plant broker: "1" up, "0" down, None unknown."""
    client = TestClient(plant.port).connect()
    try:
        client.subscribe(BRIDGE_STATE)
        with contextlib.suppress(AssertionError):
            return client.expect(lambda m: True, timeout=timeout).payload.decode()
        return None
    finally:
        client.close()


def wait_bridge_up(plant: Broker, timeout: float = 60.0) -> None:
    """Until the plant broker says its bridge to the central broker is connected."""
    wait_for(lambda: bridge_state(plant, 2.0) == "1", timeout, "the bridge connected", step=0.2)


# --------------------------------------------------------------------------- NATS cluster


def _nats_binary() -> str:
    binary = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )
    if binary is None:
        raise RuntimeError(NATS_HINT)
    return binary


@dataclass
class NatsNode:
    """One nats-server of the cluster: its own ports, store and log."""

    name: str
    workdir: Path
    binary: str
    port: int = field(default_factory=free_port)  # MQTT
    client_port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / "nats.conf"
        self.log = self.workdir / "nats.log"

    def start(self) -> NatsNode:
        """Start (or restart, on the same store and ports) without waiting for MQTT."""
        if self.running:
            return self
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=log, stderr=log, cwd=self.workdir
            )
        return self

    def kill(self) -> None:
        """kill -9: no clean leave, the other nodes elect new leaders."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def monitor(self, path: str, timeout: float = 5.0) -> dict[str, Any] | None:
        """GET ``path`` from the monitoring port as JSON; None when the node does not answer."""
        url = f"http://{self.host}:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return dict(json.load(resp))
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def nats_node_config(node: NatsNode, nodes: list[NatsNode]) -> str:
    """broker_config/topologies/nats-cluster.conf for ``node``, on loopback and its ports."""
    routes = {f"nats-route://nats-{i + 1}:6222": n for i, n in enumerate(nodes)}
    return render(
        (TOPOLOGIES / "nats-cluster.conf").read_text(),
        [
            ("server_name: nats-1", f"server_name: {node.name}"),
            ("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{node.client_port}"),
            ("http: 127.0.0.1:8222", f"http: 127.0.0.1:{node.http_port}"),
            ('store_dir: "/var/lib/nats"', f'store_dir: "{node.workdir / "js"}"'),
            ("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{node.cluster_port}"),
            ("port: 1883", f"listen: 127.0.0.1:{node.port}"),
        ]
        + [(route, f"nats-route://127.0.0.1:{n.cluster_port}") for route, n in routes.items()],
    )


@dataclass
class NatsCluster:
    """Three nats-server nodes (``nats-1`` .. ``nats-3``) routed to each other."""

    workdir: Path
    size: int = 3
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        binary = _nats_binary()
        self.nodes = [
            NatsNode(f"nats-{i + 1}", self.workdir / f"nats-{i + 1}", binary)
            for i in range(self.size)
        ]
        for node in self.nodes:
            node.conf.write_text(nats_node_config(node, self.nodes))

    def start(self, timeout: float = 90.0) -> NatsCluster:
        for node in self.nodes:
            node.start()
        self.wait_ready(timeout)
        return self

    def node(self, name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == name)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until every running node has a JetStream meta leader and answers MQTT CONNECTs."""

        def ready() -> bool:
            for node in self.nodes:
                if not node.running:
                    continue
                jsz = node.monitor("/jsz") or {}
                if not (jsz.get("meta_cluster") or {}).get("leader"):
                    return False
                if mqtt_connack(node.port) != 0:
                    return False
            return True

        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited: {node.log_text()[-2000:]}")
        wait_for(ready, timeout, "the NATS cluster ready (meta leader, MQTT)", step=0.3)

    def streams(self) -> dict[str, dict[str, Any]]:
        """JetStream streams by name (``/jsz?streams=true``), asked of the first live node."""
        for node in self.nodes:
            if not node.running:
                continue
            jsz = node.monitor("/jsz?accounts=true&streams=true")
            if jsz is None:
                continue
            out: dict[str, dict[str, Any]] = {}
            for account in jsz.get("account_details") or []:
                for stream in account.get("stream_detail") or []:
                    out[str(stream["name"])] = stream
            return out
        return {}

    def stream_leader(self, stream: str = "$MQTT_msgs") -> str | None:
        """The name of the node that leads ``stream`` now (None: no leader known)."""
        leader = ((self.streams().get(stream) or {}).get("cluster") or {}).get("leader")
        return str(leader) if leader else None

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


@contextlib.contextmanager
def nats_cluster(workdir: Path, timeout: float = 90.0) -> Iterator[NatsCluster]:
    """A started three-node cluster; every node is killed at the end."""
    cluster = NatsCluster(workdir)
    try:
        yield cluster.start(timeout)
    finally:
        cluster.stop()


# --------------------------------------------------------------------------- raw MQTT


class RawQos1Probe:
    """A plain paho QoS 1 publisher and a persistent-session subscriber, no fedmq at all.

    The publisher sends ``count`` numbered messages at about ``rate`` msg/s and records
    which ones the broker PUBACKed; the subscriber (``clean_session=False``, subscribed
    before the first publish) records which ones arrived. ``lost()`` is what a broker
    acknowledged and never delivered: what a publisher that trusts PUBACKs loses.
    Both clients reconnect by themselves (paho's loop) to the node they were given.
    """

    def __init__(
        self, pub_port: int, sub_port: int, topic: str, count: int = 4000, rate: float = 400.0
    ) -> None:
        self.topic, self.count, self.rate = topic, count, rate
        tag = uuid.uuid4().hex[:8]
        self.acked: set[int] = set()
        self.received: set[int] = set()
        self.end_seen = threading.Event()
        self.published = 0
        self._mids: dict[int, int] = {}
        self._early: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sub = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"raw-sub-{tag}",
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.sub.on_connect = lambda c, _u, _f, _rc, _p=None: c.subscribe(f"{topic}/#", 1)
        self.sub.on_message = self._on_message
        self.pub = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"raw-pub-{tag}",
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.pub.on_publish = self._on_publish
        self.sub.connect("127.0.0.1", sub_port, keepalive=5)
        self.sub.loop_start()
        self.pub.connect("127.0.0.1", pub_port, keepalive=5)
        self.pub.loop_start()
        self._thread = threading.Thread(target=self._run, name="raw-publisher", daemon=True)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        if msg.topic.endswith("/end"):
            self.end_seen.set()
            return
        with self._lock:
            self.received.add(int(msg.payload))

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any = None) -> None:
        with self._lock:
            n = self._mids.pop(mid, None)
            if n is None:
                self._early.add(mid)
            else:
                self.acked.add(n)

    def wait_subscribed(self, timeout: float = 30.0) -> None:
        """Until a message published now reaches the subscriber (the subscription is live)."""

        def round_trip() -> bool:
            self.pub.publish(f"{self.topic}/end", b"probe", qos=1)
            return self.end_seen.wait(0.5)

        wait_for(round_trip, timeout, "the raw subscriber receiving", step=0.1)
        self.end_seen.clear()

    def start(self) -> RawQos1Probe:
        self._thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        for n in range(self.count):
            if self._stop.is_set():
                return
            # Never hold our lock across paho's publish: its network thread holds paho's
            # locks while it runs on_publish, which takes ours. A PUBACK may come back
            # before the mid is registered here: on_publish keeps it in _early then.
            info = self.pub.publish(f"{self.topic}/n", str(n).encode(), qos=1)
            with self._lock:
                if info.mid in self._early:
                    self._early.discard(info.mid)
                    self.acked.add(n)
                else:
                    self._mids[info.mid] = n
                self.published = n + 1
            delay = start + (n + 1) / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def finished(self) -> bool:
        return not self._thread.is_alive() and self.published == self.count

    def wait_end_marker(self, timeout: float = 60.0) -> None:
        """Publish an end marker until the subscriber has it: what the broker still
        delivers from before it has been delivered by then (one stream, in order)."""

        def marker() -> bool:
            self.pub.publish(f"{self.topic}/end", b"end", qos=1)
            return self.end_seen.wait(1.0)

        wait_for(marker, timeout, "the raw end marker at the subscriber", step=0.1)

    def figures(self) -> dict[str, int]:
        with self._lock:
            return {
                "sent": self.published,
                "pubacked": len(self.acked),
                "received": len(self.received),
                "pubacked_lost": len(self.acked - self.received),
                "duplicates": 0,  # a set: duplicates do not count as arrivals
            }

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        for client in (self.pub, self.sub):
            client.disconnect()
            client.loop_stop()


# --------------------------------------------------------------------------- accounting


def site_tally(db: Path, site: str, outbox: Path, rows: int) -> dict[str, Any]:
    """One site's stream against the coordinator database, by (site, epoch, seq) and by
    sample. The site replays a counter file (values 0..rows-1) once, never restarted."""
    st = read_stats(outbox)
    produced = {(st.epoch, s) for s in range(1, st.last_seq + 1)}
    messages = query(db, "SELECT epoch, seq FROM messages WHERE site = ?", site)
    stored = {(str(e), int(s)) for e, s in messages}
    per_message = query(
        db,
        "SELECT epoch, seq, count(*), count(DISTINCT value) FROM telemetry WHERE site = ?"
        " GROUP BY epoch, seq",
        site,
    )
    values = sorted(v for (v,) in query(db, "SELECT value FROM telemetry WHERE site = ?", site))
    expected = [float(i) for i in range(rows)]
    distinct = set(values)
    return {
        "site": site,
        "epoch": st.epoch,
        "produced": len(produced),
        "stored": len(stored & produced),
        "message_rows": len(messages),
        "lost": len(produced - stored),
        "foreign": len(stored - produced),
        "messages_with_duplicate_samples": sum(1 for *_k, n, d in per_message if n != d),
        "samples": rows,
        "samples_stored": len(values),
        "samples_lost": len(set(expected) - distinct),
        "samples_duplicated": len(values) - len(distinct),
        "samples_exact": values == expected,
        "outbox_depth": st.depth,
        "outbox_dropped": st.dropped,
        "acked_all": st.last_acked == st.last_seq,
    }


def drained(db: Path, site: str, outbox: Path, rows: int) -> bool:
    """The site's outbox is empty and acked to its last seq, and all its rows are stored."""
    st = read_stats(outbox)
    n = query(db, "SELECT count(*) FROM telemetry WHERE site = ?", site)
    return (
        st.depth == 0
        and st.last_seq > 0
        and st.last_acked == st.last_seq
        and bool(n)
        and (n[0][0] >= rows)
    )
