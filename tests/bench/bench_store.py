"""Benchmark: the same telemetry stream into SQLite and into PostgreSQL, side by side.

Run (from the repository root; ~1-2 minutes)::

    .venv/bin/python tests/bench/bench_store.py --messages 60000 --serve-messages 20000

Two levels, each run on both backends in one process, one after the other:

1. **store**: pre-built telemetry rows (``--samples`` per message, the batch size ``fedmq
   serve`` commits: 2,000 messages) through ``Store.add_messages`` + ``commit``: what the
   writer process does per batch, without MQTT and decoding. SQLite: a fresh WAL file,
   synchronous=FULL; PostgreSQL: a private server (Debian's binaries) with its durable
   defaults (fsync, synchronous_commit=on), a fresh database.
2. **serve**: ``fedmq serve`` end to end (``--db FILE`` vs ``--db postgresql://...``):
   the stream is queued at a Mosquitto broker while serve is stopped, then serve starts
   and drains it; timed from the first application ack to the one that covers every
   site's last seq (persisted, then acked).

Reports samples/s, the PostgreSQL/SQLite ratio (target >= 0.7), and CPU microseconds per
sample over every process that does the work: this one (store level) or serve and its
writer process (serve level), plus all PostgreSQL server processes (the postmaster, its
live backends and the CPU of ended ones it reaped, read from /proc/<pid>/stat) and, at
serve level, Mosquitto.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from coordinator.store import DurableRow, SqliteStore  # noqa: E402
from tests.helpers.postgres import PgServer  # noqa: E402

BATCH = 2_000  # fedmq serve's default --batch-size
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int, reaped: bool = False) -> float:
    """utime+stime of ``pid`` in seconds (+ its reaped children's with ``reaped``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / TICK


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and every live descendant, plus what it reaped."""
    import psutil

    total = proc_cpu(pid, reaped=True)
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return total
    return total + sum(proc_cpu(c.pid) for c in children)


def rows(messages: int, samples: int, site: str = "bench") -> list[DurableRow]:
    base = int(time.time() * 1000)
    return [
        DurableRow(site, seq, "telemetry", 1, base + seq, base + seq, False, "dev", None,
                   tuple((f"s{i}", base + seq, seq + i / 10, "C", "good")
                         for i in range(samples)), None, "e1")
        for seq in range(1, messages + 1)
    ]  # fmt: skip


def store_level(
    open_store: Callable[[], Any], data: list[DurableRow], pg_pid: int
) -> tuple[float, float]:
    """(wall s, CPU s) to add and commit ``data`` in batches of BATCH messages."""
    store = open_store()
    cpu0, pg0, t0 = time.process_time(), tree_cpu(pg_pid) if pg_pid else 0.0, time.perf_counter()
    for i in range(0, len(data), BATCH):
        store.add_messages(data[i : i + BATCH])
        store.commit()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0 + ((tree_cpu(pg_pid) - pg0) if pg_pid else 0.0)
    counts = store.counts()
    store.close()
    assert counts["telemetry"] == sum(len(r.samples) for r in data), counts
    return wall, cpu


# Serve level ------------------------------------------------------------------------------


def _publisher(port: int, prefix: str, site: str, n: int, samples: int, done: Any) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from schemas import Sample, TelemetryBatch, Topics, encode, now_ms

    topic = Topics(prefix).telemetry(site, "dev")
    base = now_ms()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{site}-{uuid.uuid4().hex[:6]}")
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port, 60)
    c.loop_start()
    info = None
    for seq in range(1, n + 1):
        values = [Sample(ts=base + seq, name=f"s{i}", value=seq + i / 10) for i in range(samples)]
        batch = TelemetryBatch(site=site, session=1, seq=seq, device="dev", samples=tuple(values))
        info = c.publish(topic, encode(batch), 1)
    if info is not None:
        info.wait_for_publish(timeout=600)
    c.disconnect()
    c.loop_stop()
    done.set()


def serve_level(
    db: str, port: int, broker_pid: int, pg_pid: int, publishers: int, n: int, samples: int
) -> tuple[float, float]:
    """(wall s, CPU s) for ``fedmq serve --db db`` to drain a queued stream."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from schemas import Ack
    from tests.helpers.coord_proc import FEDMQ

    prefix = f"bench-{uuid.uuid4().hex[:6]}/fedmq/v1"
    acked: dict[str, int] = {}
    stamps: list[float] = []
    cpu: list[float] = []
    done = threading.Event()
    coord: Any = None

    def sample_cpu() -> float:
        return tree_cpu(coord.pid) + proc_cpu(broker_pid) + (tree_cpu(pg_pid) if pg_pid else 0)

    def on_ack(client: Any, userdata: Any, msg: Any) -> None:
        ack = Ack.model_validate_json(msg.payload)
        stamps.append(time.perf_counter())
        if len(stamps) == 1:
            cpu.append(sample_cpu())
        acked[ack.site] = max(acked.get(ack.site, 0), ack.acked)
        if len(acked) == publishers and all(v >= n for v in acked.values()) and not done.is_set():
            cpu.append(sample_cpu())
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"acks-{uuid.uuid4().hex[:6]}",
                    protocol=mqtt.MQTTv5)  # fmt: skip
    c.on_message = on_ack
    c.connect("127.0.0.1", port, 60, clean_start=True, properties=Properties(PacketTypes.CONNECT))
    c.loop_start()
    c.subscribe(f"{prefix}/site/+/ack", 1)
    import subprocess

    args = [*FEDMQ, "serve", "--db", db, "--port", str(port), "--prefix", prefix, "--no-http"]
    log = open(Path(tempfile.gettempdir()) / f"bench-store-serve-{os.getpid()}.log", "ab")  # noqa: SIM115
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start() -> Any:
        return subprocess.Popen(args, stdout=log, stderr=log, cwd=REPO, env=env)

    def wait_online() -> None:  # its persistent session exists once its status is out
        seen = threading.Event()
        s = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"st-{uuid.uuid4().hex[:6]}")

        def on_status(cl: Any, u: Any, m: Any) -> None:
            if b'"online"' in m.payload:
                seen.set()

        s.on_message = on_status
        s.connect("127.0.0.1", port, 60)
        s.loop_start()
        s.subscribe(f"{prefix}/coordinator/status", 1)
        if not seen.wait(120):
            raise SystemExit("fedmq serve did not come online")
        s.disconnect()
        s.loop_stop()

    coord = start()
    wait_online()
    coord.terminate()
    coord.wait(30)
    # Queue the stream at the broker (serve's session keeps its subscription).
    ctx = mp.get_context("spawn")
    events = [ctx.Event() for _ in range(publishers)]
    procs = [ctx.Process(target=_publisher, args=(port, prefix, f"site-{i}", n, samples, e))
             for i, e in enumerate(events)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(900)
    coord = start()
    try:
        if not done.wait(900):
            raise SystemExit(f"serve did not ack everything: {acked}")
    finally:
        coord.terminate()
        coord.wait(30)
        c.disconnect()
        c.loop_stop()
        log.close()
    return stamps[-1] - stamps[0], cpu[-1] - cpu[0]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=60_000, help="store level: messages")
    ap.add_argument("--samples", type=int, default=10, help="samples per message")
    ap.add_argument("--serve-messages", type=int, default=20_000,
                    help="serve level: messages per publisher (0: skip it)")  # fmt: skip
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2, help="store level: runs per backend")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fedmq-pg-bench-"))
    pg = PgServer(tmp, durable=True)
    pg.start()
    assert pg.proc is not None
    load0 = os.getloadavg()
    lines: list[str] = []
    try:
        data = rows(a.messages, a.samples)
        n_samples = a.messages * a.samples
        res: dict[str, list[tuple[float, float]]] = {"sqlite": [], "postgres": []}
        for r in range(a.repeat):  # interleaved: the machine is shared
            db = tmp / f"s{r}.db"
            res["sqlite"].append(store_level(partial(SqliteStore, db), data, 0))
            url = pg.create_db()
            from coordinator.store.postgres import PostgresStore

            res["postgres"].append(store_level(partial(PostgresStore, url), data, pg.proc.pid))
        lines.append(f"store level: {a.messages} messages x {a.samples} samples, "
                     f"batches of {BATCH}, best of {a.repeat}")  # fmt: skip
        best = {k: min(v) for k, v in res.items()}
        for k, (wall, cpu) in best.items():
            lines.append(f"  {k:8}: {n_samples / wall:9.0f} samples/s  "
                         f"CPU {cpu * 1e6 / n_samples:5.2f} us/sample")  # fmt: skip
        lines.append(f"  postgres/sqlite: {best['sqlite'][0] / best['postgres'][0]:.2f}x")
        if a.serve_messages:
            from tests.helpers.broker import Broker

            (tmp / "broker").mkdir()
            broker = Broker(tmp / "broker")
            broker.start()
            assert broker.proc is not None
            try:
                total = a.publishers * a.serve_messages * a.samples
                sv = {
                    "sqlite": serve_level(str(tmp / "serve.db"), broker.port, broker.proc.pid, 0,
                                          a.publishers, a.serve_messages, a.samples),
                    "postgres": serve_level(pg.create_db(), broker.port, broker.proc.pid,
                                            pg.proc.pid, a.publishers, a.serve_messages,
                                            a.samples),
                }  # fmt: skip
            finally:
                broker.kill()
            lines.append(f"serve level: {a.publishers} sites x {a.serve_messages} messages x "
                         f"{a.samples} samples queued at Mosquitto, then drained")  # fmt: skip
            for k, (wall, cpu) in sv.items():
                lines.append(f"  {k:8}: {total / wall:9.0f} samples/s  "
                             f"CPU {cpu * 1e6 / total:5.2f} us/sample (serve + writer + "
                             f"broker{' + postgres' if k == 'postgres' else ''})")  # fmt: skip
            lines.append(f"  postgres/sqlite: {sv['sqlite'][0] / sv['postgres'][0]:.2f}x")
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load avg {load0[0]:.1f} before, {load1[0]:.1f} after")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
