"""Benchmark: ``fedmq serve`` persisted-and-acked throughput vs a bare paho subscriber.

Run (from the repository root; takes ~1-3 minutes)::

    .venv/bin/python tests/bench/bench_coordinator.py --publishers 4 --messages 10000 \
        --compare FEDMQ_WRITER_PROCESS=false

One run, one broker, the same pre-encoded stream each time (telemetry batches of 10
samples, QoS 1, from publisher processes so the publisher is not the measured side):

1. a bare paho subscriber (QoS 1, counting only): first to last message received;
2. ``fedmq serve`` as a subprocess on a fresh SQLite file: first to last application ack,
   i.e. until every site's ack covers its last seq (committed to disk and acked); then
   once more per ``--compare`` with those ``FEDMQ_...`` settings (side by side);
3. the bare subscriber again: the machine is shared, so two bare runs bracket the others.

The receive paths side by side (``[coordinator] receive``: paho vs asyncio), at 10 and at
100 samples per message, in one run (~5 minutes; the acceptance figures of issue 16)::

    .venv/bin/python tests/bench/bench_coordinator.py --receive-paths --publishers 4 \
        --messages 5000

Add ``--baseline CHECKOUT`` (e.g. ``git worktree add /tmp/base <commit>``) to run both
paths of that code in the same run as well (old vs new, ~2x as long).

Reports msg/s, samples/s, the ratio to the mean bare time, CPU microseconds per message
(all threads and processes of the measured side: less sensitive to other load than wall
time), the machine's load average, and ``fedmq sites`` latency with 1,000 registered
sites. Targets: ratio >= 0.9, >= 150,000 samples/s, ``fedmq sites`` <= 0.3 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
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
# --receive-paths: (serve's own CPU, its children's) at each _cpu() sample, when a list.
SPLIT: list[tuple[float, float]] | None = None
BROKER_PID = 0  # set in main(): the broker's CPU is sampled with the measured side's


def _publisher(
    port: int, prefix: str, site: str, n: int, ready: Any, go: Any, per_msg: int = SAMPLES
) -> None:
    t = Topics(prefix)
    topic = t.telemetry(site, "dev")
    payloads = []
    base = now_ms()  # recent: serve purges samples older than the retention at startup
    for seq in range(1, n + 1):
        samples = tuple(
            Sample(ts=base + seq, name=f"s{i}", value=seq + i / 10) for i in range(per_msg)
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


def _run_stream(
    port: int, prefix: str, publishers: int, n: int, wait_done: Any, samples: int = SAMPLES
) -> float:
    """Start publishers, release them together, return seconds until ``wait_done()``."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs, readies = [], []
    for i in range(publishers):
        ready = ctx.Event()
        p = ctx.Process(target=_publisher, args=(port, prefix, f"bench-{i}", n, ready, go, samples))
        p.start()
        procs.append(p)
        readies.append(ready)
    for p, r in zip(procs, readies, strict=True):
        while not r.wait(1):
            if not p.is_alive():
                raise SystemExit(f"publisher exited ({p.exitcode}) before it was ready")
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


def bare(
    port: int, publishers: int, n: int, drain: bool, samples: int = SAMPLES
) -> tuple[float, float, float]:
    """Seconds (wall, CPU, broker CPU) a counting QoS 1 subscriber needs for the stream."""
    prefix = f"bare-{uuid.uuid4().hex[:6]}/fedmq/v1"
    total = publishers * n
    got: list[float] = []
    cpu: list[float] = []  # this process (paho's thread; the main thread only waits)
    bcpu: list[float] = []
    done = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        got.append(time.perf_counter())
        if len(got) == 1:
            cpu.append(time.process_time())
            bcpu.append(_cpu_pid(BROKER_PID))
        if len(got) >= total:
            cpu.append(time.process_time())
            bcpu.append(_cpu_pid(BROKER_PID))
            done.set()

    cid = f"bare-{uuid.uuid4().hex[:6]}"
    c = _v5_client(cid, port, on_message)
    c.subscribe(Topics(prefix).all_sites(), 1)
    time.sleep(0.3)
    if not drain:
        elapsed = _run_stream(port, prefix, publishers, n, lambda: done.wait(600), samples)
    else:
        c.disconnect()
        c.loop_stop()
        _run_stream(port, prefix, publishers, n, lambda: None, samples)
        c = _v5_client(cid, port, on_message)  # the broker delivers the queued stream
        done.wait(600)
        elapsed = got[-1] - got[0]
    c.disconnect()
    c.loop_stop()
    if len(got) < total:
        raise SystemExit(f"bare subscriber got {len(got)} of {total}")
    return elapsed, cpu[-1] - cpu[0], bcpu[-1] - bcpu[0]


def serve(
    port: int,
    publishers: int,
    n: int,
    workdir: Path,
    drain: bool,
    env: dict[str, str],
    code: Path = REPO,
    samples: int = SAMPLES,
) -> tuple[float, float, float]:
    """Seconds (wall, CPU of serve and its writer process, broker CPU) until every site's
    ack covers its last seq."""
    prefix = f"serve-{uuid.uuid4().hex[:6]}/fedmq/v1"
    acked: dict[str, int] = {}
    stamps: list[float] = []
    cpu: list[float] = []
    bcpu: list[float] = []
    done = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        ack = Ack.model_validate_json(msg.payload)
        stamps.append(time.perf_counter())
        if len(stamps) == 1:
            cpu.append(_cpu(coord.proc))
            bcpu.append(_cpu_pid(BROKER_PID))
        acked[ack.site] = max(acked.get(ack.site, 0), ack.acked)
        if len(acked) == publishers and all(v >= n for v in acked.values()):
            cpu.append(_cpu(coord.proc))
            bcpu.append(_cpu_pid(BROKER_PID))
            done.set()

    c = _v5_client(f"acks-{uuid.uuid4().hex[:6]}", port, on_message)
    c.subscribe(f"{prefix}/site/+/ack", 1)
    db = workdir / f"bench-{uuid.uuid4().hex[:6]}.db"
    coord = Coordinator(db, port, prefix, env=env, cwd=code).start().wait_ready()
    try:
        if not drain:
            elapsed = _run_stream(port, prefix, publishers, n, lambda: done.wait(600), samples)
        else:
            coord.stop()  # its persistent session keeps the subscription and queues
            _run_stream(port, prefix, publishers, n, lambda: None, samples)
            coord = Coordinator(db, port, prefix, env=env, cwd=code).start()
            done.wait(600)
            # First ack (first committed batch) to last: startup imports are not ingest.
            elapsed = stamps[-1] - stamps[0]
    finally:
        coord.stop()
        c.disconnect()
        c.loop_stop()
    if not done.is_set():
        raise SystemExit(f"serve did not ack everything: {acked}")
    return elapsed, cpu[-1] - cpu[0], bcpu[-1] - bcpu[0]


def _cpu_pid(pid: int) -> float:
    """User+system CPU seconds of one process."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _cpu(proc: Any) -> float:
    """User+system CPU seconds of a process and its children (the writer process)."""
    import psutil

    p = psutil.Process(proc.pid)
    total = 0.0
    parent = 0.0
    for q in (p, *p.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            t = q.cpu_times()
            total += t.user + t.system
            if q is p:
                parent = t.user + t.system
    if SPLIT is not None:
        SPLIT.append((parent, total - parent))
    return total


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


def _load(avg: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.1f}" for x in avg)


RECEIVE_PATHS = ("paho", "asyncio")


def receive_paths(
    port: int,
    publishers: int,
    n: int,
    work: Path,
    sizes: list[int],
    rounds: int,
    baseline: Path | None = None,
) -> list[tuple[int, str, float, float, float]]:
    """Today's paho receive path vs the asyncio one (``FEDMQ_RECEIVE``), side by side in
    one run on one broker: per samples-per-message size, ``rounds`` rounds of both, the
    order alternating so neither always runs on a warmer or quieter machine; with
    ``baseline`` (another checkout), each path of that code too ("paho@base"). Returns
    (samples per message, path, seconds, CPU seconds of serve + its writer process, of
    serve's own process)."""
    out = []
    runs: list[tuple[str, Path]] = [(p, REPO) for p in RECEIVE_PATHS]
    if baseline is not None:
        runs += [(f"{p}@base", baseline) for p in RECEIVE_PATHS]
    for size in sizes:
        for r in range(rounds):
            order = runs if r % 2 == 0 else runs[::-1]
            for path, code in order:
                env = {"FEDMQ_RECEIVE": path.split("@")[0]}
                global SPLIT
                SPLIT = []
                secs, cpu, _ = serve(port, publishers, n, work, True, env, code, size)
                own = SPLIT[-1][0] - SPLIT[0][0]  # serve's process; the rest: writer child
                SPLIT = None
                out.append((size, path, secs, cpu, own))
                print(f"  {size:4} samples/msg {path:12} {publishers * n / secs:7.0f} msg/s",
                      flush=True)  # fmt: skip
    return out


def report_receive_paths(results: list[tuple[int, str, float, float, float]], total: int) -> None:
    """One line per size and path (the best round: the machine is shared) and the ratio."""
    print("receive path, side by side (drain: stream queued at the broker first; best round;")
    print(" CPU: serve + its writer process, per stored sample)")
    for size in sorted({r[0] for r in results}):
        best: dict[str, tuple[float, float, float]] = {}
        for sz, path, secs, cpu, own in results:
            if sz == size and (path not in best or secs < best[path][0]):
                best[path] = (secs, cpu, own)
        for path, (secs, cpu, own) in best.items():
            per = 1e6 / (total * size)
            print(
                f"  {size:4} samples/msg  {path:12} {total / secs:7.0f} msg/s"
                f" {total * size / secs:8.0f} samples/s"
                f"  CPU {cpu * per:5.2f} us/sample ({cpu * 1e6 / total:4.0f} us/msg;"
                f" serve {own * per:4.2f} + writer child {(cpu - own) * per:4.2f})"
            )
        if "paho" in best and "asyncio" in best:
            ratio = best["paho"][0] / best["asyncio"][0]
            cpu_ratio = best["paho"][1] / best["asyncio"][1]
            print(f"  {size:4} samples/msg  asyncio / paho: {ratio:.2f}x samples/s,"
                  f" {cpu_ratio:.2f}x less CPU per sample")  # fmt: skip
        for path in RECEIVE_PATHS:
            if path in best and f"{path}@base" in best:
                old, new = best[f"{path}@base"], best[path]
                print(f"  {size:4} samples/msg  {path} this / base: {old[0] / new[0]:.2f}x"
                      f" samples/s, {old[1] / new[1]:.2f}x less CPU per sample")  # fmt: skip


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
    ap.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="ENV=VALUE[,ENV=VALUE]",
        help="also run serve with these FEDMQ_... settings (e.g. FEDMQ_WRITER_PROCESS=false)",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="CHECKOUT",
        help="also run serve from another checkout (e.g. `git worktree add /tmp/base <commit>`):"
        " the old code side by side with this one",
    )
    ap.add_argument(
        "--receive-paths",
        action="store_true",
        help="only compare the receive paths (FEDMQ_RECEIVE=paho vs asyncio) side by side "
        "at each --samples size: msg/s, samples/s, CPU us per stored sample; with "
        "--baseline, both paths of that checkout too",
    )
    ap.add_argument(
        "--samples",
        type=int,
        action="append",
        metavar="N",
        help="samples per message (repeat for several sizes; --receive-paths default: 10 "
        "and 100, otherwise 10)",
    )
    ap.add_argument("--rounds", type=int, default=2, help="--receive-paths rounds per size")
    a = ap.parse_args()
    if a.receive_paths:
        main_receive_paths(a)
        return
    total = a.publishers * a.messages
    variants: list[tuple[str, dict[str, str], Path]] = [("default", {}, REPO)]
    if a.baseline is not None:
        base = a.baseline.resolve()
        rev = subprocess.run(["git", "-C", str(base), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
        variants.append((f"baseline {rev or base.name}", {}, base))
    variants += [(c, dict(kv.split("=", 1) for kv in c.split(",")), REPO) for c in a.compare]
    load_before = os.getloadavg()
    results: list[tuple[str, tuple[float, float, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(work)
        broker.start()
        global BROKER_PID
        assert broker.proc is not None
        BROKER_PID = broker.proc.pid
        try:
            results.append(("bare", bare(broker.port, a.publishers, a.messages, not a.live)))
            for name, env, code in variants:
                got = serve(broker.port, a.publishers, a.messages, work, not a.live, env, code)
                results.append((f"serve {name}", got))
            # Bare again: the machine is shared, so its rate brackets the serve runs.
            results.append(("bare", bare(broker.port, a.publishers, a.messages, not a.live)))
        finally:
            broker.kill()
        load_after = os.getloadavg()
        lat = sites_latency(work)
    print(f"stream: {a.publishers} publishers x {a.messages} msgs x {SAMPLES} samples, QoS 1")
    print(
        f"machine: {os.cpu_count()} cores, load avg 1/5/15 min before {_load(load_before)}, "
        f"after {_load(load_after)}"
    )
    mode = "live" if a.live else "drain (stream queued at the broker first)"
    print(f"mode: {mode}")
    t_bare = statistics.mean(r[1][0] for r in results if r[0] == "bare")
    for name, (secs, cpu, bcpu) in results:
        print(
            f"{name:34}: {total / secs:6.0f} msg/s {total * SAMPLES / secs:7.0f} samples/s"
            f"  ratio {t_bare / secs:.2f}  CPU {cpu * 1e6 / total:4.0f} us/msg"
            f" + broker {bcpu * 1e6 / total:3.0f}"
            f" (2-core ceiling {2 * total / (cpu + bcpu):6.0f} msg/s)"
        )
    print("(ratio: vs the mean of both bare runs; CPU: per message, all threads/processes")
    print(" of the measured side, plus Mosquitto's; the ceiling is what 2 fully used cores")
    print(" allow at that CPU cost, however the work were spread across them)")
    print(f"fedmq sites, 1000 sites: best {min(lat):.3f}s median {statistics.median(lat):.3f}s")


def main_receive_paths(a: argparse.Namespace) -> None:
    sizes = a.samples or [10, 100]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(work)
        broker.start()
        global BROKER_PID
        assert broker.proc is not None
        BROKER_PID = broker.proc.pid
        try:
            base = None if a.baseline is None else a.baseline.resolve()
            results = receive_paths(
                broker.port, a.publishers, a.messages, work, sizes, a.rounds, base
            )
        finally:
            broker.kill()
    print(f"stream: {a.publishers} publishers x {a.messages} msgs, QoS 1, SQLite")
    print(
        f"machine: {os.cpu_count()} cores, load avg 1/5/15 min before {_load(load_before)}, "
        f"after {_load(os.getloadavg())}"
    )
    report_receive_paths(results, a.publishers * a.messages)


if __name__ == "__main__":
    main()
