"""A reading (one file or serial row = several samples) always goes into one batch whole,
so a kill -9 of the site never stores half a row; and the queue to the outbox is bounded."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from schemas import Sample, TelemetryBatch, encode
from site_node.batcher import Batcher
from site_node.outbox import Outbox, OutboxRefused
from site_node.settings import OutboxSettings
from site_node.sources import FileDeviceConfig
from site_node.sources.file_replay import FileSource
from tests.helpers.acker import Acker
from tests.helpers.broker import Broker
from tests.helpers.mqtt import wait_for
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)


def row(ts: int, width: int = 3) -> list[Sample]:
    return [Sample(ts=ts, name=f"c{i}", value=float(ts)) for i in range(width)]


def test_add_row_never_splits_a_row_across_batches() -> None:
    batches: list[list[Sample]] = []
    b = Batcher(lambda _d, s: batches.append(s), max_samples=10, max_wait_s=60)
    for ts in range(1, 21):
        b.add_row("d", row(ts))
    b.flush_all()
    assert sum(len(x) for x in batches) == 60
    for batch in batches:
        assert 0 < len(batch) <= 10 and len(batch) % 3 == 0
    wide: list[list[Sample]] = []
    b = Batcher(lambda _d, s: wide.append(s), max_samples=2, max_wait_s=60)
    b.add_row("d", row(1, width=5))  # wider than a batch: a batch of its own
    assert [len(x) for x in wide] == [5]


def test_file_source_emits_whole_rows(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("".join(f"{i},{i},{i}\n" for i in range(50)))
    cfg = FileDeviceConfig.model_validate(
        {
            "name": "d",
            "source": "file",
            "path": str(path),
            "columns": [{"name": n, "unit": "u"} for n in ("a", "b", "c")],
            "format": "csv",
            "rate_hz": 1000.0,
        }
    )
    rows: list[list[Sample]] = []
    src = FileSource(cfg)
    src.start(lambda s: pytest.fail("single samples emitted"), rows.append)
    assert src.join(10)
    assert len(rows) == 50 and all(len(r) == 3 for r in rows)
    assert src.stats()["samples"] == 150


@pytest.mark.slow
def test_killed_site_stored_only_whole_rows(
    own_broker: Broker, prefix: str, make_site, tmp_path: Path
) -> None:
    data = tmp_path / "rows.csv"
    data.write_text("".join(f"{i} {i} {i}\n" for i in range(100_000)))
    acker = Acker(own_broker.port, prefix, tmp_path / "acker.db").start()
    try:
        device = {
            "name": "counter",
            "source": "file",
            "path": str(data),
            "format": "whitespace",
            "columns": [{"name": n, "unit": "u"} for n in ("a", "b", "c")],
            "rate_hz": 200.0,
        }
        # 10 samples per batch is not a multiple of the row's 3: the old batcher tore rows.
        site: SiteProc = make_site(own_broker.port, prefix, devices=[device])
        wait_for(lambda: len(acker.stored("site-a")) >= 30, 30, "batches stored")
        site.kill()
        rows = acker.stored("site-a")
        by_value: dict[float, set[str]] = defaultdict(set)
        for r in rows:
            if r.kind != "telemetry":
                continue
            assert len(r.payload["samples"]) % 3 == 0, r.payload["samples"]
            for s in r.payload["samples"]:
                by_value[s["value"]].add(s["name"])
        assert by_value and all(names == {"a", "b", "c"} for names in by_value.values())
    finally:
        acker.stop()


class Stalled:
    connected = False

    def has_room(self) -> bool:
        return False

    def wait_room(self, timeout: float) -> bool:
        time.sleep(min(timeout, 0.01))
        return False

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        return False


def test_queue_to_the_outbox_is_bounded_and_counts_what_it_refuses(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", OutboxSettings(), Stalled(), max_queued=5)  # type: ignore[arg-type]
    box.start()
    release = threading.Event()
    try:

        def slow(seq: int) -> bytes:
            release.wait(10)  # the outbox thread is stuck (a slow disk)
            sample = Sample(ts=1, name="x", value=1.0)
            batch = TelemetryBatch(site="s", session=1, seq=seq, device="d", samples=(sample,))
            return encode(batch)

        first = box.append("telemetry", "t", slow, samples=1)
        wait_for(lambda: box._q.qsize() == 0, 5, "the outbox thread took the first message")
        queued = [box.append("telemetry", "t", slow, samples=10) for _ in range(5)]
        refused = [box.append("telemetry", "t", slow, samples=10) for _ in range(3)]
        job = box.append("job_status", "t", slow)  # job messages are never refused
        for f in refused:  # refused at once, without blocking the caller
            assert isinstance(f.exception(0), OutboxRefused)
        assert box.stats().samples_dropped == 30
        release.set()
        assert first.result(10) == 1
        assert [f.result(10) for f in queued] == [2, 3, 4, 5, 6]
        assert job.result(10) == 7
    finally:
        release.set()
        box.stop(flush_s=0)


def test_a_batch_closed_by_a_row_that_does_not_fit_goes_out_at_once() -> None:
    batches: list[list[Sample]] = []
    b = Batcher(lambda _d, s: batches.append(s), max_samples=10, max_wait_s=60)
    for ts in range(1, 5):
        b.add_row("d", row(ts))
    assert [len(x) for x in batches] == [9]  # the 4th row did not fit: the 3 before left
    assert b.pending() == 3
