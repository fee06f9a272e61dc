"""Site benchmark: RSS/CPU of a telemetry-only site, and outbox vs bare paho publish rate.

Run (not part of the default suite):

    .venv/bin/python -m pytest tests/bench/bench_site.py -s

Prints the figures and asserts the targets: telemetry-only site RSS <= 50 MB with neither
torch nor syft loaded, and the outbox path (SQLite write + publish) >= 0.7x the rate of a
bare paho QoS 1 publish loop with the same in-flight window, measured side by side.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fedmq_runtime.settings import MqttSettings
from schemas import Sample, TelemetryBatch, encode
from site_node.bus import SiteBus
from site_node.outbox import Outbox
from site_node.settings import OutboxSettings
from tests.helpers.broker import Broker
from tests.helpers.site_proc import SiteProc, site_settings

N = 20_000
WINDOW = 1000
HEAVY = ("/torch/", "libtorch", "/syft/", "/zmq/", "/nacl/", "/numpy/")


def _payload() -> bytes:
    s = (Sample(ts=1_700_000_000_000, name="s2", value=642.5, unit="R"),)
    return encode(TelemetryBatch(site="bench", session=1, seq=1, device="d", samples=s))


class Counter:
    """A subscriber counting arrivals on one topic."""

    def __init__(self, port: int, topic: str) -> None:
        self.count = 0
        self.done = threading.Event()
        self.target = 0
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cnt-{uuid.uuid4().hex[:6]}")
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.subscribe(topic, qos=0)
        c.loop_start()
        self.client = c
        time.sleep(0.3)

    def _on_message(self, c, u, m):  # type: ignore[no-untyped-def]
        self.count += 1
        if self.count >= self.target:
            self.done.set()

    def expect(self, n: int) -> None:
        self.count, self.target = 0, n
        self.done.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def bare_rate(port: int, topic: str, counter: Counter) -> float:
    payload = _payload()
    cond = threading.Condition()
    inflight = [0]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bare-{uuid.uuid4().hex[:6]}")
    c.max_inflight_messages_set(65_000)

    def on_publish(*_a):  # type: ignore[no-untyped-def]
        with cond:
            inflight[0] -= 1
            cond.notify()

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(0.2)
    counter.expect(N)
    t0 = time.perf_counter()
    for _ in range(N):
        with cond:
            cond.wait_for(lambda: inflight[0] < WINDOW)
            inflight[0] += 1
        c.publish(topic, payload, qos=1)
    assert counter.done.wait(60)
    rate = N / (time.perf_counter() - t0)
    c.disconnect()
    c.loop_stop()
    return rate


def outbox_rate(port: int, topic: str, counter: Counter, tmp: Path, sync: str) -> float:
    payload = _payload()
    events: queue.Queue = queue.Queue()
    settings = MqttSettings(port=port)
    bus = SiteBus(
        settings, f"ob-{uuid.uuid4().hex[:6]}", lambda: (1, "bench/will", b""), events, WINDOW
    )
    bus.start()
    events.get(timeout=10)
    box = Outbox(tmp / f"outbox-{sync}.db", OutboxSettings(synchronous=sync), bus)  # type: ignore[arg-type]
    box.start()
    counter.expect(N)
    t0 = time.perf_counter()
    for _ in range(N):
        box.append("telemetry", topic, lambda _seq: payload)
    assert counter.done.wait(60)
    rate = N / (time.perf_counter() - t0)
    box.stop(flush_s=0)
    bus.stop()
    return rate


def test_outbox_vs_bare_publish(own_broker: Broker, tmp_path: Path) -> None:
    topic = f"bench-{uuid.uuid4().hex[:6]}/t"
    counter = Counter(own_broker.port, topic)
    try:
        rates: dict[str, list[float]] = {"bare": [], "outbox FULL": [], "outbox NORMAL": []}
        for _ in range(2):  # interleaved, so both see the same machine load
            rates["bare"].append(bare_rate(own_broker.port, topic, counter))
            rates["outbox FULL"].append(
                outbox_rate(own_broker.port, topic, counter, tmp_path, "FULL")
            )
            rates["outbox NORMAL"].append(
                outbox_rate(own_broker.port, topic, counter, tmp_path, "NORMAL")
            )
    finally:
        counter.close()
    best = {k: max(v) for k, v in rates.items()}
    for k, v in best.items():
        print(f"{k:>14}: {v:9.0f} msg/s  ({v / best['bare']:.2f}x bare; runs {rates[k]})")
    assert best["outbox FULL"] >= 0.7 * best["bare"]


def _sample(pid: int, seconds: float) -> tuple[float, float]:
    p = psutil.Process(pid)
    c0 = sum(p.cpu_times()[:2])
    time.sleep(seconds)
    cpu = (sum(p.cpu_times()[:2]) - c0) / seconds * 100
    return p.memory_info().rss / 2**20, cpu


def _heavy_maps(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines() if any(h in line for h in HEAVY)})


def test_site_rss_and_cpu_idle_and_at_100_samples_per_s(own_broker: Broker, tmp_path: Path) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:6]}/fedmq/v1"
    figures = {}
    for label, overrides in (
        ("idle", {"devices": []}),
        ("100 samples/s", {"rate_hz": 100.0, "batch_max_samples": 100, "batch_max_wait_s": 1.0}),
    ):
        (tmp_path / label.replace(" ", "_").replace("/", "")).mkdir()
        settings = site_settings(
            tmp_path / label.replace(" ", "_").replace("/", ""),
            own_broker.port,
            prefix,
            **overrides,
        )
        Path(settings["data_dir"]).parent.mkdir(parents=True, exist_ok=True)
        site = SiteProc(
            tmp_path / f"proc-{label.replace(' ', '_').replace('/', '')}", settings
        ).start()
        try:
            site.wait_log("connected to", 20)
            time.sleep(3)
            rss, cpu = _sample(site.pid, 10.0)
            figures[label] = (rss, cpu)
            assert _heavy_maps(site.pid) == [], "a telemetry-only site loaded torch/syft/numpy"
        finally:
            site.kill()
    for label, (rss, cpu) in figures.items():
        print(f"site {label:>14}: RSS {rss:5.1f} MB, CPU {cpu:4.1f} %")
    assert all(rss <= 50 for rss, _ in figures.values())
    code = (
        "import sys, site_node.cli, site_node.daemon; "
        "bad = [m for m in ('torch', 'syft', 'numpy') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-s"]))
