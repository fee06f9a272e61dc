"""The writer thread's batch logic on a real SQLite file (no broker: publish and PUBACK
are captured), driven through ``Ingestor.process`` exactly as the thread does."""

from __future__ import annotations

import queue
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.bus import Inbound
from coordinator.ingest.ingestor import Ingestor
from coordinator.settings import CoordinatorSettings
from coordinator.store import SqliteStore
from fedmq_runtime.settings import MqttSettings
from schemas import (
    Ack,
    Heartbeat,
    Registration,
    Sample,
    SeqRange,
    SiteStatus,
    TelemetryBatch,
    Topics,
    encode,
)

P = "ut/fedmq/v1"
T = Topics(P)


class Harness:
    def __init__(self, db: Path, **settings: Any) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.pubacks: list[int] = []
        self.store = SqliteStore(db)
        cfg = CoordinatorSettings(mqtt=MqttSettings(prefix=P), **settings)
        self.ing = Ingestor(
            self.store, cfg, 7, lambda t, p, q, r: self.published.append((t, p)),
            lambda mid, qos: self.pubacks.append(mid), queue.SimpleQueue(),
        )  # fmt: skip
        self.mid = 0

    def feed(self, *msgs: Any, at: int = 1_000) -> None:
        items = []
        for topic, msg in msgs:
            self.mid += 1
            payload = msg if isinstance(msg, bytes) else encode(msg)
            items.append(Inbound(topic, payload, self.mid, 1, False, at))
        self.ing.process(items)

    def acks(self, site: str) -> list[int]:
        return [Ack.model_validate_json(p).acked for t, p in self.published if t == T.ack(site)]


def tel(site: str, seq: int, gaps: tuple[SeqRange, ...] = ()) -> tuple[str, TelemetryBatch]:
    batch = TelemetryBatch(
        site=site, session=1, seq=seq, device="d", gaps=gaps,
        samples=(Sample(ts=seq, name="x", value=float(seq)),),
    )  # fmt: skip
    return T.telemetry(site, "d"), batch


@pytest.fixture(params=[False, True], ids=["in-process", "writer-process"])
def h(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Harness]:
    harness = Harness(tmp_path / "c.db", writer_process=request.param)
    yield harness
    if harness.ing.writer is not None:
        harness.ing.writer.stop()


def test_pubacks_and_app_acks_follow_the_commit(h: Harness, tmp_path: Path) -> None:
    h.feed(tel("a", 1), tel("a", 2), tel("a", 4))
    assert h.pubacks == [1, 2, 3]  # every message, including the one above the hole
    assert h.acks("a") == [2]  # contiguous only; session is the coordinator's
    assert Ack.model_validate_json(h.published[0][1]).session == 7
    other = sqlite3.connect(tmp_path / "c.db")  # committed before the acks went out
    assert other.execute("SELECT count(*) FROM messages").fetchone()[0] == 3
    h.feed(tel("a", 3), tel("a", 2))  # hole filled + a replay
    assert h.acks("a")[-1] == 4
    assert other.execute("SELECT count(*) FROM telemetry").fetchone()[0] == 4


def test_gap_is_an_event_and_moves_the_ack(h: Harness) -> None:
    h.feed(tel("a", 1), tel("a", 5, gaps=(SeqRange(first=2, last=4),)))
    assert h.acks("a") == [5]
    events = h.store.conn.execute("SELECT event, reason FROM site_events WHERE event='gap'")
    assert [(e, "(3 messages)" in r) for e, r in events] == [("gap", True)]


def test_heartbeat_last_acked_is_the_base_when_nothing_is_stored(h: Harness) -> None:
    hb = Heartbeat(site="n", session=1, interval_s=1, last_acked=900)
    h.feed((T.heartbeat("n"), hb), tel("n", 901))
    assert h.acks("n")[-1] == 901


def test_rebirth_for_unregistered_traffic_rate_limited(h: Harness) -> None:
    h.feed(tel("u", 1))
    h.feed(tel("u", 2))
    rebirths = [t for t, _ in h.published if t == T.cmd("u", "rebirth")]
    assert rebirths == [T.cmd("u", "rebirth")]  # once per rebirth_interval_s
    reg = Registration(site="r", session=1)
    h.feed(
        (T.status("r"), SiteStatus(site="r", session=1, state="online")), (T.registration("r"), reg)
    )
    assert not [t for t, _ in h.published if t == T.cmd("r", "rebirth")]


def test_state_ack_and_registration_survive_a_restart(tmp_path: Path) -> None:
    h = Harness(tmp_path / "c.db")
    h.feed((T.registration("a"), Registration(site="a", session=1)), tel("a", 1), tel("a", 3))
    h.store.close()
    h2 = Harness(tmp_path / "c.db")
    h2.feed(tel("a", 2))
    assert h2.acks("a") == [3]  # seq 3 was stored before the restart
    assert not [t for t, _ in h2.published if "rebirth" in t]


def test_tick_purges_by_retention_and_stamps_alive(h: Harness) -> None:
    h.feed(tel("a", 1))  # sample ts = 1 ms: ancient
    h.ing.tick(100 * 86_400_000)
    h.ing.process([h.ing.inbound.get_nowait()])
    c = h.store.conn
    assert c.execute("SELECT count(*) FROM telemetry").fetchone()[0] == 0
    assert c.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    assert c.execute("SELECT value FROM meta WHERE key='alive_at'").fetchone()[0] == str(
        100 * 86_400_000
    )
