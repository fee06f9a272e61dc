"""Benchmark: ``fedmq serve`` persisted-and-acked throughput vs a bare paho subscriber.

Run (from the repository root; takes ~1-2 minutes)::

    .venv/bin/python tests/bench/bench_coordinator.py [--publishers 4] [--messages 15000]

One run, one broker, the same pre-encoded stream twice (telemetry batches of 10 samples,
QoS 1, from publisher processes so the publisher is not the measured side):

1. a bare paho subscriber (QoS 1, counting only): time from the go signal to the last
   message received;
2. ``fedmq serve`` as a subprocess on a fresh SQLite file: time from the go signal until
   every site's application ack covers its last seq (i.e. committed to disk and acked).

Reports msg/s, samples/s, the ratio serve/bare, and ``fedmq sites`` latency with 1,000
registered sites. Targets: ratio >= 0.9, >= 150,000 samples/s, ``fedmq sites`` <= 0.3 s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from schemas import Ack, Sample, TelemetryBatch, Topics, encode, now_ms  # noqa: E402
from tests.helpers.broker import Broker  # noqa: E402
from tests.helpers.coord_proc import FEDMQ, Coordinator  # noqa: E402

SAMPLES = 10


def _publisher(port: int, prefix: str, site: str, n: int, ready: Any, go: Any) -> None:
    t = Topics(prefix)
    topic = t.telemetry(site, "dev")
    payloads = []
    base = now_ms()  # recent: serve purges samples older than the retention at startup
    for seq in range(1, n + 1):
        samples = tuple(
            Sample(ts=base + seq, name=f"s{i}", value=seq + i / 10) for i in range(SAMPLES)
        )
        payloads.append(
            encode(TelemetryBatch(site=site, session=1, seq=seq, device="dev", samples=samples))
        )
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{site}-{uuid.uuid4().hex[:6]}")
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port, 60)
    c.loop_start()
    ready.set()
    go.wait()
    info = None
    for p in payloads:
        info = c.publish(topic, p, 1)
    if info is not None:
        info.wait_for_publish(timeout=300)
    c.disconnect()
    c.loop_stop()


def _run_stream(port: int, prefix: str, publishers: int, n: int, wait_done: Any) -> float:
    """Start publishers, release them together, return seconds until ``wait_done()``."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs, readies = [], []
    for i in range(publishers):
        ready = ctx.Event()
        p = ctx.Process(target=_publisher, args=(port, prefix, f"bench-{i}", n, ready, go))
        p.start()
        procs.append(p)
        readies.append(ready)
    for r in readies:
        r.wait(120)
    time.sleep(0.5)
    start = time.perf_counter()
    go.set()
    wait_done()
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join(60)
    return elapsed


def _v5_client(client_id: str, port: int, on_message: Any) -> Any:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    c.connect("127.0.0.1", port, 60, clean_start=False, properties=props)
    c.loop_start()
    return c


def bare(port: int, publishers: int, n: int, drain: bool) -> float:
    """Seconds a counting QoS 1 subscriber needs for the stream."""
    prefix = f"bare-{uuid.uuid4().hex[:6]}/fedmq/v1"
    total = publishers * n
    got: list[float] = []
    done = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        got.append(time.perf_counter())
        if len(got) >= total:
            done.set()

    cid = f"bare-{uuid.uuid4().hex[:6]}"
    c = _v5_client(cid, port, on_message)
    c.subscribe(Topics(prefix).all_sites(), 1)
    time.sleep(0.3)
    if not drain:
        elapsed = _run_stream(port, prefix, publishers, n, lambda: done.wait(600))
    else:
        c.disconnect()
        c.loop_stop()
        _run_stream(port, prefix, publishers, n, lambda: None)
        c = _v5_client(cid, port, on_message)  # the broker delivers the queued stream
        done.wait(600)
        elapsed = got[-1] - got[0]
    c.disconnect()
    c.loop_stop()
    if len(got) < total:
        raise SystemExit(f"bare subscriber got {len(got)} of {total}")
    return elapsed


def serve(port: int, publishers: int, n: int, workdir: Path, drain: bool) -> float:
    """Seconds ``fedmq serve`` needs until every site's ack covers its last seq."""
    prefix = f"serve-{uuid.uuid4().hex[:6]}/fedmq/v1"
    acked: dict[str, int] = {}
    stamps: list[float] = []
    done = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        ack = Ack.model_validate_json(msg.payload)
        stamps.append(time.perf_counter())
        acked[ack.site] = max(acked.get(ack.site, 0), ack.acked)
        if len(acked) == publishers and all(v >= n for v in acked.values()):
            done.set()

    c = _v5_client(f"acks-{uuid.uuid4().hex[:6]}", port, on_message)
    c.subscribe(f"{prefix}/site/+/ack", 1)
    db = workdir / "bench.db"
    coord = Coordinator(db, port, prefix).start().wait_ready()
    try:
        if not drain:
            elapsed = _run_stream(port, prefix, publishers, n, lambda: done.wait(600))
        else:
            coord.stop()  # its persistent session keeps the subscription and queues
            _run_stream(port, prefix, publishers, n, lambda: None)
            coord = Coordinator(db, port, prefix).start()
            done.wait(600)
            # First ack (first committed batch) to last: startup imports are not ingest.
            elapsed = stamps[-1] - stamps[0]
    finally:
        coord.stop()
        c.disconnect()
        c.loop_stop()
    if not done.is_set():
        raise SystemExit(f"serve did not ack everything: {acked}")
    return elapsed


def sites_latency(workdir: Path, n_sites: int = 1000, runs: int = 7) -> list[float]:
    from coordinator.store import SiteRecord, SqliteStore

    db = workdir / "sites.db"
    store = SqliteStore(db)
    now = time.time_ns() // 1_000_000
    reg = {
        "name": "x",
        "hierarchy": {"enterprise": "acme", "site": "detroit", "line": "l1"},
        "device": {"hostname": "h"},
        "tasks": [{"name": "rul", "code_hash": "a" * 64}],
    }
    store.save_sites(
        SiteRecord(f"s{i:04d}", json.dumps(reg), "online", 1, last_alive=now, last_seen=now)
        for i in range(n_sites)
    )
    store.commit()
    store.close()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([*FEDMQ, "sites", "--db", str(db)], capture_output=True, check=True)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--messages", type=int, default=15_000, help="per publisher")
    ap.add_argument(
        "--live",
        action="store_true",
        help="measure while publishing (publisher-bound on small machines) instead of "
        "draining a stream queued at the broker",
    )
    a = ap.parse_args()
    total = a.publishers * a.messages
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(work)
        broker.start()
        try:
            t_bare = bare(broker.port, a.publishers, a.messages, not a.live)
            t_serve = serve(broker.port, a.publishers, a.messages, work, not a.live)
        finally:
            broker.kill()
        lat = sites_latency(work)
    print(f"stream: {a.publishers} publishers x {a.messages} msgs x {SAMPLES} samples, QoS 1")
    mode = "live" if a.live else "drain (stream queued at the broker first)"
    print(f"mode: {mode}")
    for name, secs in (("bare paho subscriber", t_bare), ("fedmq serve (acked)", t_serve)):
        print(f"{name:21}: {total / secs:9.0f} msg/s {total * SAMPLES / secs:9.0f} samples/s")
    print(f"ratio serve/bare     : {t_bare / t_serve:.2f}")
    print(f"fedmq sites, 1000 sites: best {min(lat):.3f}s median {statistics.median(lat):.3f}s")


if __name__ == "__main__":
    main()
