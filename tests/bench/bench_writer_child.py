"""Benchmark: CPU per sample of the writer child's work (telemetry decode, SQLite insert,
commit), without a broker or ``fedmq serve`` around it. Run from the repository root::

    nice -n 5 .venv/bin/python tests/bench/bench_writer_child.py --samples 100
    nice -n 5 .venv/bin/python tests/bench/bench_writer_child.py --baseline /tmp/base

It encodes telemetry batches as sites send them (4 sites interleaved, ``--samples`` per
message), then feeds them, ``--messages`` per writer batch, to what the writer process
runs per batch (``decode_telemetry_row`` per message, ``Store.add_messages``, ``commit``)
on a fresh SQLite file, and reports the CPU microseconds per sample of each step: the best
batch (least disturbed by other load on a shared machine) and the mean. With
``--baseline CHECKOUT`` (e.g. ``git worktree add /tmp/base <commit>``) the same run is
repeated with that checkout's code, alternating, and the ratios printed. The end-to-end
figure (broker, serve, acks) is ``bench_coordinator.py --receive-paths``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEPS = ("decode", "insert", "commit")


def measure(samples: int, messages: int, batches: int) -> dict[str, list[float]]:
    """CPU seconds per batch of each step, in this process (the checkout on sys.path)."""
    from coordinator.ingest.writer_process import CachedTopics, decode_telemetry_row
    from coordinator.store.open import open_store
    from schemas import Codec, Sample, TelemetryBatch, Topics, encode
    from schemas.envelope import now_ms

    prefix = "bench/fedmq/v1"
    topics = Topics(prefix)
    base = now_ms()
    stream = []
    for b in range(batches):
        batch = []
        for k in range(messages):
            site, seq = f"bench-{k % 4}", (b * messages + k) // 4 + 1
            values = tuple(
                Sample(ts=base + seq, name=f"s{i}", value=seq + i / 10) for i in range(samples)
            )
            msg = TelemetryBatch(site=site, session=1, seq=seq, device="dev", samples=values)
            batch.append((topics.telemetry(site, "dev"), encode(msg), base))
        stream.append(batch)
    out: dict[str, list[float]] = {step: [] for step in STEPS}
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "bench.db")
        codec = Codec(CachedTopics(prefix), 1 << 20)
        try:
            for batch in stream:
                t0 = time.process_time()
                rows = []
                for topic, payload, at in batch:
                    got = decode_telemetry_row(codec, topic, payload, at)
                    assert got is not None, "the benchmark's own message was refused"
                    rows.append(got[0])
                t1 = time.process_time()
                store.add_messages(rows)
                t2 = time.process_time()
                store.commit()
                t3 = time.process_time()
                out["decode"].append(t1 - t0)
                out["insert"].append(t2 - t1)
                out["commit"].append(t3 - t2)
        finally:
            store.close()
    return out


def run(code: Path, a: argparse.Namespace) -> dict[str, list[float]]:
    """``measure`` in a fresh interpreter importing ``code``'s modules."""
    args = ["--samples", str(a.samples), "--messages", str(a.messages)]
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", *args, "--batches",
         str(a.batches)],
        cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed in {code}:\n{proc.stderr}")
    result: dict[str, list[float]] = json.loads(proc.stdout.splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--samples", type=int, default=100, help="samples per message (100)")
    ap.add_argument("--messages", type=int, default=2000, help="messages per batch (2000)")
    ap.add_argument("--batches", type=int, default=5, help="batches per run (5)")
    ap.add_argument("--rounds", type=int, default=2, help="runs per checkout (2)")
    ap.add_argument("--baseline", type=Path, metavar="CHECKOUT", help="also run this checkout")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        import coordinator

        here = Path(coordinator.__file__).resolve()
        if not here.is_relative_to(Path.cwd().resolve()):
            raise SystemExit(f"imported {here}, not the checkout in {Path.cwd()}")
        print(json.dumps(measure(a.samples, a.messages, a.batches)))
        return
    codes = {"this": REPO}
    if a.baseline is not None:
        codes["base"] = a.baseline.resolve()
    got: dict[str, dict[str, list[float]]] = {name: {s: [] for s in STEPS} for name in codes}
    for r in range(a.rounds):
        for name, code in list(codes.items())[:: 1 if r % 2 == 0 else -1]:
            for step, secs in run(code, a).items():
                got[name][step] += secs
    per = 1e6 / (a.samples * a.messages)
    print(f"writer child, {a.samples} samples/msg, {a.messages} msgs/batch, SQLite; CPU us per")
    print(f"sample (best batch / mean); load avg 1 min {os.getloadavg()[0]:.1f}")
    best: dict[str, float] = {}
    for name, steps in got.items():
        parts = [f"{s} {min(v) * per:.2f}/{sum(v) / len(v) * per:.2f}" for s, v in steps.items()]
        best[name] = sum(min(v) for v in steps.values()) * per
        mean = sum(sum(v) / len(v) for v in steps.values()) * per
        print(f"  {name:5} {'  '.join(parts)}  total {best[name]:.2f}/{mean:.2f}")
    if "base" in best:
        print(f"  base / this: {best['base'] / best['this']:.2f}x less CPU per sample (best)")


if __name__ == "__main__":
    main()
