"""Hostile-but-valid input against a real ``fedmq serve`` and a real Mosquitto: the
daemon keeps running, other sites' samples are stored and acked within seconds, and the
bad input is a dead letter or an event with its reason."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import psutil

from schemas import Ack, Sample, TelemetryBatch, Topics, now_ms
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, fedmq, wait_until
from tests.helpers.mqtt import TestClient


def _batch(site: str, seq: int, n: int = 1, device: str = "dev", **extra: Any) -> bytes:
    body = TelemetryBatch(
        site=site, session=1, seq=1, device=device,
        samples=tuple(Sample(ts=now_ms(), name="t", value=float(i)) for i in range(n)),
    ).model_dump(mode="json")  # fmt: skip
    return json.dumps({**body, "seq": seq, **extra}).encode()  # seq unchecked: hostile


def _count(db: Path, sql: str, *args: Any) -> int:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return int(conn.execute(sql, args).fetchone()[0])
    finally:
        conn.close()


def _good_site_is_acked(port: int, t: Topics, seq: int) -> None:
    """Publish seq of the honest site "good" and wait for its ack (within seconds)."""
    acks = TestClient(port).connect().subscribe(t.ack("good"))
    try:
        TestClient(port).connect().publish(t.telemetry("good", "dev"), _batch("good", seq))
        acks.expect(lambda m: Ack.model_validate_json(m.payload).acked >= seq, timeout=20)
    finally:
        acks.close()


def test_huge_integers_and_gap_floods_never_stop_serve(
    own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    db = tmp_path / "c.db"
    coord = Coordinator(db, own_broker.port, prefix).start()
    try:
        coord.wait_ready()
        t = Topics(prefix)
        evil = TestClient(own_broker.port).connect()
        evil.publish(t.telemetry("evil", "dev"), _batch("evil", 2**63))
        evil.publish(t.heartbeat("evil"), json.dumps({
            "v": "1.1", "kind": "heartbeat", "site": "evil", "session": 2**63,
            "interval_s": 1, "outbox_depth": 2**64,
        }).encode())  # fmt: skip
        gaps = [{"first": 2 * i + 1, "last": 2 * i + 1} for i in range(20_000)]
        for seq in range(20):
            evil.publish(t.telemetry("evil", "dev"), _batch("evil", 40_001 + seq, gaps=gaps))
        _good_site_is_acked(own_broker.port, t, 1)
        wait_until(
            lambda: _count(db, "SELECT count(*) FROM dead_letters WHERE reason = 'invalid'") >= 22,
            30,
            "22 dead letters",
        )
        assert coord.alive()
        dead = json.loads(fedmq("dead-letters", "--db", str(db), "--json").stdout)
        details = " ".join(d["detail"] for d in dead)
        assert "less than or equal to 9223372036854775807" in details
        assert "gaps" in details
        # And it stays up after a restart (nothing redelivered kills it either).
        assert coord.stop() == 0
        coord = Coordinator(db, own_broker.port, prefix).start()
        coord.wait_ready()
        _good_site_is_acked(own_broker.port, t, 2)
        assert coord.alive()
    finally:
        coord.stop()


def test_a_retained_flood_and_a_sample_flood_do_not_starve_other_sites(
    own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    db = tmp_path / "c.db"
    coord = Coordinator(
        db,
        own_broker.port,
        prefix,
        env={"FEDMQ_SITE_MAX_DEVICES": "20", "FEDMQ_SITE_BYTES_PER_S": "200000",
             "FEDMQ_SITE_BURST_BYTES": "2000000"},
    ).start()  # fmt: skip
    try:
        coord.wait_ready()
        t = Topics(prefix)
        flood = TestClient(own_broker.port).connect()
        for i in range(300):  # retained spam on telemetry/<anything>
            flood.publish(t.telemetry("spam", f"d{i}"), _batch("spam", i + 1, device=f"d{i}"),
                          retain=True)  # fmt: skip
        for i in range(30):  # and more devices than a site may have
            flood.publish(t.telemetry("spam", f"x{i}"), _batch("spam", 500 + i, device=f"x{i}"))
        big = [_batch("spam", 1000 + k, n=10_000, device="x0") for k in range(100)]  # 100 x 10k
        for payload in big:
            flood.publish(t.telemetry("spam", "x0"), payload)
        _good_site_is_acked(own_broker.port, t, 1)
        wait_until(
            lambda: _count(db, "SELECT count(*) FROM site_events WHERE event = 'device_limit'"),
            30,
            "a device_limit event",
        )
        wait_until(
            lambda: _count(db, "SELECT count(*) FROM site_events WHERE event = 'over_budget'"),
            30,
            "an over_budget event",
        )
        assert _count(db, "SELECT count(DISTINCT device) FROM messages WHERE site = 'spam'") <= 20
        refused = _count(db, "SELECT count(*) FROM dead_letters WHERE reason = 'retained_durable'")
        assert refused == 300
        # Restart: the broker replays no retained telemetry (the coordinator cleared it:
        # every retained copy that reached it was refused and removed from the broker).
        assert coord.stop() == 0
        probe = TestClient(own_broker.port).connect().subscribe(f"{prefix}/site/spam/telemetry/+")
        retained = [m for m in probe.collect(timeout=2.0) if m.retain]
        assert retained == [], f"{len(retained)} retained telemetry messages left"
        coord = Coordinator(db, own_broker.port, prefix).start()
        coord.wait_ready()
        _good_site_is_acked(own_broker.port, t, 2)
        assert coord.alive()
    finally:
        coord.stop()


def test_killing_the_writer_child_does_not_stop_serve(
    own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    db = tmp_path / "c.db"
    coord = Coordinator(db, own_broker.port, prefix).start()
    try:
        coord.wait_ready()
        t = Topics(prefix)
        _good_site_is_acked(own_broker.port, t, 1)  # the writer child is up
        for attempt in range(3):
            assert coord.proc is not None
            children = psutil.Process(coord.proc.pid).children(recursive=True)
            writers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
            assert writers, "no writer child found"
            for w in writers:
                os.kill(w.pid, signal.SIGKILL)
            _good_site_is_acked(own_broker.port, t, 2 + attempt)
            assert coord.alive()
        assert _count(db, "SELECT count(*) FROM telemetry WHERE site = 'good'") == 4
    finally:
        coord.stop()
