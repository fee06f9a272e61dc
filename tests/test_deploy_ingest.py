"""Deployment statuses through the writer's batch logic on a real SQLite file (no broker:
publish and PUBACK captured), driven through ``Ingestor.process`` as the thread does:
stored once per (site, epoch, seq) and acked, the site's row updated only by a newer
status (``since``, then seq), an event per transition, a retained status refused."""

from __future__ import annotations

import queue
import sqlite3
from pathlib import Path
from typing import Any

from coordinator.bus import Inbound
from coordinator.ingest.ingestor import Ingestor
from coordinator.settings import CoordinatorSettings
from coordinator.store import DeploymentRow, SiteDeploymentRow, SqliteStore
from fedmq_runtime.settings import MqttSettings
from schemas import Ack, DeploymentStatus, Registration, Topics, encode

P = "ut/fedmq/v1"
T = Topics(P)
HASH = "c" * 64


class Harness:
    def __init__(self, db: Path) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.pubacks: list[int] = []
        self.store = SqliteStore(db)
        cfg = CoordinatorSettings(mqtt=MqttSettings(prefix=P))
        self.ing = Ingestor(
            self.store, cfg, 7, lambda t, p, q, r: self.published.append((t, p)),
            lambda mid, qos: self.pubacks.append(mid), queue.SimpleQueue(),
        )  # fmt: skip
        self.mid = 0

    def feed(self, *msgs: Any, at: int = 1_000, retain: bool = False) -> None:
        items = []
        for topic, msg in msgs:
            self.mid += 1
            items.append(Inbound(topic, encode(msg), self.mid, 1, retain, at))
        self.ing.process(items)

    def acks(self, site: str) -> list[int]:
        return [Ack.model_validate_json(p).acked for t, p in self.published if t == T.ack(site)]


def status(seq: int, state: str, since: int, dep: str = "d1", **kw: Any) -> tuple[str, Any]:
    msg = DeploymentStatus(
        site="a", session=1, epoch="ep", seq=seq, deployment_id=dep,
        model_version=kw.pop("version", "run-1-r3"), task="cmapss-rul", code_hash=HASH,
        state=state, since=since, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return T.deployment("a"), msg


def events(db: Path) -> list[tuple[str, str | None, str | None, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT event, state_from, state_to, reason FROM site_events "
            "WHERE event LIKE 'deployment_%' ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def test_statuses_are_stored_once_acked_and_move_the_sites_row(tmp_path: Path) -> None:
    h = Harness(tmp_path / "c.db")
    reg = Registration(site="a", session=1, epoch="ep")
    sent = SiteDeploymentRow("a", "d1", "run-1-r3", "cmapss-rul", "sent", "", 900, "", 900)
    h.store.add_deployment(
        DeploymentRow("d1", 900, "run-1-r3", "cmapss-rul", HASH, 5.0, (), (), False, "t"), [sent]
    )
    h.store.commit()
    h.feed((T.registration("a"), reg), status(1, "accepted", 1_000))
    h.feed(status(2, "active", 1_100, previous_version="run-0-r1"), at=1_200)
    assert h.pubacks == [1, 2, 3]
    assert h.acks("a")[-1] == 2  # acked like predictions: the contiguous seq
    row = h.store.site_deployment("a", "d1")
    assert row is not None
    assert (row.state, row.since, row.activated_at, row.previous_version, row.seq) == (
        "active", 1_100, 1_100, "run-0-r1", 2,
    )  # fmt: skip
    # The same message again (a resend after a lost ack): stored once, no new event.
    h.feed(status(2, "active", 1_100, previous_version="run-0-r1"), at=1_300)
    kinds = [r.kind for r in h.store.messages("a")]
    assert kinds.count("deployment") == 2
    assert h.acks("a")[-1] == 2
    got = events(tmp_path / "c.db")
    assert [(e[0], e[1], e[2]) for e in got] == [
        ("deployment_accepted", "sent", "accepted"),
        ("deployment_active", "accepted", "active"),
    ]
    assert "d1: run-1-r3 (cmapss-rul), was run-0-r1" in got[1][3]
    assert h.store.site_deployment("a", "d1").updated_at == 1_200  # type: ignore[union-attr]


def test_an_older_status_never_overwrites_a_newer_one(tmp_path: Path) -> None:
    h = Harness(tmp_path / "c.db")
    h.feed((T.registration("a"), Registration(site="a", session=1, epoch="ep")))
    # Delivered out of order: active (seq 3) first, then the earlier accepted (seq 2).
    h.feed(status(3, "active", 2_000))
    h.feed(status(2, "accepted", 1_500))
    row = h.store.site_deployment("a", "d1")
    assert row is not None and (row.state, row.seq, row.activated_at) == ("active", 3, 2_000)
    # A later replacement keeps when it became active (the history rollback reads).
    h.feed(status(4, "replaced", 3_000, reason="d2 became active"))
    row = h.store.site_deployment("a", "d1")
    assert row is not None and (row.state, row.activated_at) == ("replaced", 2_000)
    assert h.store.deployment_history("a") == [row]
    got = [(e[0], e[1], e[2]) for e in events(tmp_path / "c.db")]
    assert got == [
        ("deployment_active", None, "active"),
        ("deployment_replaced", "active", "replaced"),
    ]
    # A rejection names its reason in the event.
    h.feed(status(5, "rejected", 3_100, dep="d2", reason="task hash not allowed"))
    assert "task hash not allowed" in events(tmp_path / "c.db")[-1][3]


def test_a_retained_status_is_refused_as_durable_data(tmp_path: Path) -> None:
    h = Harness(tmp_path / "c.db")
    h.feed((T.registration("a"), Registration(site="a", session=1, epoch="ep")))
    h.feed(status(1, "active", 1_000), retain=True)
    assert h.store.site_deployment("a", "d1") is None
    conn = sqlite3.connect(tmp_path / "c.db")
    reasons = [r[0] for r in conn.execute("SELECT reason FROM dead_letters")]
    conn.close()
    assert reasons == ["retained_durable"]
