"""Site benchmark: the telemetry path with the local history on vs off, side by side.

Run (not part of the default suite):

    .venv/bin/python -m pytest tests/bench/bench_history.py -s -p no:xdist

The path is the daemon's from the point a source has parsed a reading: its 10 values
become ``Sample``s (as every source does), go through the publish-mode tap
(site_node/history/tap.py) to the batcher (100 samples per batch), whose batches the outbox
stores in SQLite and publishes to a real Mosquitto; with the history on, the tap also hands
the reading to the history, whose writer thread commits in batches. Line parsing is left
out (it would make the history's share smaller). Measured until every batch is committed
in the outbox and every sample in the history; CPU is the whole process's (all threads:
tap, batcher, outbox, history writer, paho), per sample.

Prints samples/s and CPU us/sample for both, interleaved, and asserts the history keeps
at least 0.6x the rate of the path without it.
"""

from __future__ import annotations

import queue
import time
import uuid
from pathlib import Path

from fedmq_runtime.settings import MqttSettings
from schemas import Sample, TelemetryBatch, encode
from site_node.batcher import Batcher
from site_node.bus import SiteBus
from site_node.history import History, HistorySettings, Tap
from site_node.outbox import Outbox
from site_node.settings import OutboxSettings
from tests.helpers.broker import Broker

ROWS = 20_000
WIDTH = 10
BATCH = 100


def _readings() -> list[list[tuple[int, str, float]]]:
    t0 = 1_800_000_000_000
    return [[(t0 + i, f"s{j}", float(i * j)) for j in range(WIDTH)] for i in range(ROWS)]


def run_path(
    port: int, tmp: Path, history_on: bool, rows: list[list[tuple[int, str, float]]]
) -> tuple[float, float]:
    """(samples/s, CPU us/sample) of one pass over ``rows``."""
    tag = f"{'on' if history_on else 'off'}-{uuid.uuid4().hex[:6]}"
    events: queue.Queue = queue.Queue()
    bus = SiteBus(
        MqttSettings(port=port), f"hb-{tag}", lambda: (1, "bench/will", b""), events, 1000
    )
    bus.start()
    events.get(timeout=10)
    # No drops from the bounded queue to the outbox thread: the producer outruns it here
    # and the figure is the time until everything is stored.
    box = Outbox(tmp / f"outbox-{tag}.db", OutboxSettings(synchronous="NORMAL"), bus, 10**7)
    box.start()
    topic = f"bench-{tag}/t"

    def flush(device: str, samples: list[Sample]) -> None:
        box.append(
            "telemetry",
            topic,
            lambda seq: encode(
                TelemetryBatch(
                    site="bench", session=1, seq=seq, device=device, samples=tuple(samples)
                )
            ),
            len(samples),
        )

    batcher = Batcher(flush, BATCH, 3600)
    history = None
    if history_on:
        history = History(tmp / f"history-{tag}.db", HistorySettings())
        history.start()
    emit = Tap(batcher.add_row, history).row_emitter("d", "raw")
    n = ROWS * WIDTH
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for row in rows:
        # As a source does: one Sample per value of the reading, then one emit.
        emit([Sample(ts=ts, name=name, value=value, unit="u") for ts, name, value in row])
    batcher.flush_all()
    deadline = time.monotonic() + 120
    while box.stats().last_seq < n // BATCH:
        assert time.monotonic() < deadline, f"outbox took {box.stats()} of {n // BATCH}"
        time.sleep(0.005)
    if history is not None:
        assert history.flush(120)
        assert history.stats()["committed"] == n
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if history is not None:
        history.stop()
    box.stop(flush_s=0)
    bus.stop()
    return n / wall, cpu / n * 1e6


def test_history_on_vs_off(own_broker: Broker, tmp_path: Path) -> None:
    rows = _readings()
    results: dict[str, list[tuple[float, float]]] = {"history off": [], "history on": []}
    for _ in range(3):  # interleaved, so both see the same machine load
        results["history off"].append(run_path(own_broker.port, tmp_path, False, rows))
        results["history on"].append(run_path(own_broker.port, tmp_path, True, rows))
    best = {k: (max(r for r, _ in v), min(c for _, c in v)) for k, v in results.items()}
    base_rate, base_cpu = best["history off"]
    for k, (rate, cpu) in best.items():
        print(
            f"{k:>12}: {rate:9.0f} samples/s ({rate / base_rate:.2f}x), "
            f"{cpu:6.2f} CPU us/sample ({cpu / base_cpu:.2f}x); runs {results[k]}"
        )
    print(f"history cost: +{best['history on'][1] - base_cpu:.2f} CPU us/sample")
    assert best["history on"][0] >= 0.6 * base_rate
