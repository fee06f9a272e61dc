"""End-to-end delivery: broker outage, site kill -9 with a full outbox, overflow policy.

The site runs as a real subprocess against a real Mosquitto; a minimal acker
(tests/helpers/acker.py) stores and acks like the coordinator will.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemas import Topics
from site_node.outbox import read_stats
from tests.helpers.acker import Acker, Stored
from tests.helpers.broker import Broker
from tests.helpers.mqtt import TestClient, wait_for
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)

SITE = "site-a"


@pytest.fixture
def make_acker(tmp_path: Path) -> Iterator[Callable[..., Acker]]:
    ackers: list[Acker] = []

    def make(port: int, prefix: str) -> Acker:
        a = Acker(port, prefix, tmp_path / f"acker{len(ackers)}.db").start()
        ackers.append(a)
        return a

    yield make
    for a in ackers:
        a.stop()


def values(rows: list[Stored]) -> list[float]:
    return [s["value"] for r in rows if r.kind == "telemetry" for s in r.payload["samples"]]


def outbox_rows(site: SiteProc) -> dict[int, bytes]:
    db = sqlite3.connect(str(site.data_dir / "outbox.db"))
    try:
        return dict(db.execute("SELECT seq, payload FROM outbox"))
    finally:
        db.close()


@pytest.mark.slow
@pytest.mark.parametrize("outage_s", [8, pytest.param(30, marks=pytest.mark.slow, id="30s")])
def test_broker_outage_every_sample_once_in_order_replayed_historical(
    own_broker: Broker,
    prefix: str,
    make_site: Callable[..., SiteProc],
    make_acker: Callable[..., Acker],
    outage_s: int,
) -> None:
    acker = make_acker(own_broker.port, prefix)
    site = make_site(own_broker.port, prefix, rate_hz=20.0)
    wait_for(lambda: len(acker.stored(SITE)) >= 5, 20, "live telemetry")
    down_at = time.time() * 1000
    own_broker.stop()
    time.sleep(outage_s)
    up_at = time.time() * 1000
    own_broker.start()
    # Let the replay finish and live data flow a little after it.
    wait_for(lambda: any(r.payload["ts"] > up_at + 2000 for r in acker.stored(SITE)), 30)
    assert site.terminate() == 0
    final = read_stats(site.data_dir / "outbox.db")
    rows = acker.stored(SITE)
    # Every seq the site ever allocated reached the acker, each stored once, in order.
    assert [r.seq for r in rows] == list(range(1, final.last_seq + 1))
    got = values(rows)
    assert got == [float(i) for i in range(len(got))], "a sample was lost or duplicated"
    assert len(got) >= 20 * (outage_s + 2) * 0.5
    # Batches made while the broker was down reached the acker only by replay.
    during = [r for r in rows if down_at + 500 < r.payload["ts"] < up_at - 500]
    assert len(during) >= outage_s
    assert all(r.historical for r in during)
    after = [r for r in rows if r.payload["ts"] > up_at + 2000]
    assert after and not any(r.historical for r in after)
    assert set(outbox_rows(site)) <= {r.seq for r in rows}


@pytest.mark.slow
def test_kill9_with_10000_unacked_rows_all_delivered_and_seq_continues(
    own_broker: Broker,
    prefix: str,
    make_site: Callable[..., SiteProc],
    make_acker: Callable[..., Acker],
) -> None:
    # No acker yet: every row stays in the outbox. One sample per row, fast.
    site = make_site(own_broker.port, prefix, rate_hz=4000.0, batch_max_samples=1)
    path = site.data_dir / "outbox.db"
    wait_for(lambda: read_stats(path).depth >= 10_000, 60, "10,000 unacked rows")
    site.kill()
    before = outbox_rows(site)
    assert len(before) >= 10_000
    last = max(before)
    assert sorted(before) == list(range(1, last + 1))

    acker = make_acker(own_broker.port, prefix)
    site2 = make_site(own_broker.port, prefix, rate_hz=5.0, batch_max_samples=1)
    # make_site reuses the same data dir (same site id under the same tmp_path).
    assert site2.data_dir == site.data_dir
    wait_for(lambda: acker.acked(SITE) > last, 60, "replay of every unacked row")
    rows = {r.seq: r for r in acker.stored(SITE)}
    for seq, payload in before.items():
        stored = rows[seq].payload
        assert stored["samples"] == json.loads(payload)["samples"]
        assert rows[seq].historical
    newer = sorted(s for s in rows if s > last)
    assert newer and newer[0] == last + 1, "seq did not continue after the restart"
    assert not rows[newer[-1]].historical
    wait_for(lambda: read_stats(path).depth <= 2, 20, "outbox emptied by acks")


@pytest.mark.slow
def test_overflow_drop_oldest_keeps_newest_and_reports_drops(
    own_broker: Broker,
    prefix: str,
    make_site: Callable[..., SiteProc],
    make_acker: Callable[..., Acker],
    tmp_path: Path,
) -> None:
    t = Topics(prefix)
    hb = TestClient(own_broker.port).connect().subscribe(t.heartbeat(SITE))
    try:
        site = make_site(
            own_broker.port,
            prefix,
            rate_hz=200.0,
            batch_max_samples=1,
            outbox={"max_rows": 50, "policy": "drop_oldest"},
        )
        path = site.data_dir / "outbox.db"
        wait_for(lambda: read_stats(path).dropped >= 100, 30, "drops")
        beat = hb.expect(lambda m: json.loads(m.payload)["outbox_dropped"] >= 100, timeout=5)
        assert json.loads(beat.payload)["outbox_depth"] <= 50
        site.kill()
        stats = read_stats(path)
        kept = sorted(outbox_rows(site))
        assert stats.depth == 50
        assert kept == list(range(stats.last_seq - 49, stats.last_seq + 1)), "not the newest"
        assert stats.dropped == stats.last_seq - 50
        # The dropped range travels as a gap, so the acker can ack past it.
        acker = make_acker(own_broker.port, prefix)
        make_site(own_broker.port, prefix, rate_hz=1.0, outbox={"max_rows": 50})
        wait_for(lambda: acker.acked(SITE) >= stats.last_seq, 30, "ack past the gap")
        assert set(range(1, stats.last_seq - 49)) <= acker.gap_seqs(SITE)
        assert min(r.seq for r in acker.stored(SITE)) == stats.last_seq - 49
    finally:
        hb.close()
