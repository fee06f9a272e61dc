"""Two ingest workers of one group on a real PostgreSQL database, driven batch by batch
through ``Ingestor.process`` (publish and PUBACK captured): each acks what the database
holds contiguously, whoever committed it; only the leader keeps sites and sends rebirth.
The same over real processes: tests/test_serve_group.py."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from coordinator.bus import Inbound
from coordinator.ingest.ingestor import _LEAD, Ingestor
from coordinator.settings import GROUP_SESSION_EXPIRY_S, CoordinatorSettings
from coordinator.store.postgres import PostgresStore
from fedmq_runtime.settings import MqttSettings
from schemas import (
    Ack,
    Heartbeat,
    Registration,
    SeqRange,
    encode,
)
from tests.test_coord_ingest import P, T, tel  # one way to build test messages


class Worker:
    def __init__(self, url: str, name: str, session: int) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.pubacks: list[int] = []
        self.store = PostgresStore(url)
        cfg = CoordinatorSettings(
            mqtt=MqttSettings(prefix=P), db=url, ingest_group="g", client_id=name,
            writer_process=False,
        )  # fmt: skip
        self.ing = Ingestor(
            self.store, cfg, session, lambda t, p, q, r: self.published.append((t, p)),
            lambda mid, qos: self.pubacks.append(mid), queue.SimpleQueue(),
        )  # fmt: skip
        self.mid = 0

    def feed(self, *msgs: Any) -> None:
        items: list[Any] = []
        for topic, msg in msgs:
            if msg is _LEAD:
                items.append(_LEAD)
                continue
            self.mid += 1
            items.append(Inbound(topic, encode(msg), self.mid, 1, False, 1_000))
        self.ing.process(items)

    def acks(self, site: str) -> list[int]:
        return [Ack.model_validate_json(p).acked for t, p in self.published if t == T.ack(site)]


@pytest.fixture
def pair(pg_url: str) -> Iterator[tuple[Worker, Worker]]:
    leader, follower = Worker(pg_url, "w-leader", 1), Worker(pg_url, "w-follower", 2)
    leader.feed(("", _LEAD))
    yield leader, follower
    leader.store.close()
    follower.store.close()


def test_workers_committing_out_of_order_ack_the_contiguous_run_from_the_database(
    pair: tuple[Worker, Worker],
) -> None:
    leader, follower = pair
    follower.feed(tel("a", 2), tel("a", 3))
    assert follower.pubacks == [1, 2]  # PUBACKed: committed
    assert follower.acks("a") == [0]  # seq 1 is not stored anywhere yet
    leader.feed(tel("a", 1))
    assert leader.acks("a") == [3]  # the follower's 2 and 3 count
    follower.feed(tel("a", 5, gaps=(SeqRange(first=4, last=4),)))
    assert follower.acks("a")[-1] == 5  # a gap announced to one worker counts for all
    leader.feed(tel("a", 6))
    assert leader.acks("a")[-1] == 6


def test_only_the_leader_keeps_sites_and_sends_rebirth(pair: tuple[Worker, Worker]) -> None:
    leader, follower = pair
    follower.feed(tel("u", 1))
    assert not [t for t, _ in follower.published if "/cmd/" in t]
    assert follower.store.load_sites() == []  # a follower never writes the sites
    leader.feed(tel("u", 2))
    assert [t for t, _ in leader.published if "/cmd/" in t] == [T.cmd("u", "rebirth")]
    leader.feed((T.registration("u"), Registration(site="u", session=1)))
    (rec,) = leader.store.load_sites()
    assert rec.registration is not None


def test_a_follower_pubacks_but_never_stores_what_is_the_leaders(
    pair: tuple[Worker, Worker], pg_url: str
) -> None:
    # What a session kept from when it led still arrives (or a stepping-down leader's
    # queue): PUBACKed, nothing stored; the leader stores its own copy.
    leader, follower = pair
    hb = Heartbeat(site="f", session=1, interval_s=1)
    msgs = ((T.registration("f"), Registration(site="f", session=1)), (T.heartbeat("f"), hb))
    follower.feed(*msgs)
    assert follower.pubacks == [1, 2]
    assert follower.store.load_sites() == []
    leader.ing.step_down()
    leader.feed(*msgs, tel("f", 1))
    assert leader.pubacks == [1, 2, 3]
    assert leader.store.load_sites() == []  # telemetry only now: no site row either
    assert leader.acks("f") == [1]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM heartbeats").fetchone() == (0,)


def test_a_heartbeat_re_acks_what_the_others_committed(pair: tuple[Worker, Worker]) -> None:
    leader, follower = pair
    leader.feed((T.registration("h"), Registration(site="h", session=1)))
    follower.feed(tel("h", 1), tel("h", 2))
    hb = Heartbeat(site="h", session=1, interval_s=1, last_acked=0)
    leader.feed((T.heartbeat("h"), hb))
    assert leader.acks("h") == [2]
    leader.feed((T.heartbeat("h"), hb))  # the ack it saved with the last batch
    (rec,) = [r for r in leader.store.load_sites() if r.site == "h"]
    assert rec.acked == 2
    assert leader.store.stream_acked("h", "") == 2


def test_a_group_needs_postgres_and_a_client_id_of_its_own(pg_url: str) -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        CoordinatorSettings(db="c.db", ingest_group="g", client_id="w1")
    with pytest.raises(ValueError, match="client_id"):
        CoordinatorSettings(db=pg_url, ingest_group="g")
    with pytest.raises(ValueError, match="MQTT 5"):
        CoordinatorSettings(
            db=pg_url, ingest_group="g", client_id="w1", mqtt=MqttSettings(protocol="3.1.1")
        )
    cfg = CoordinatorSettings(db=pg_url, ingest_group="g", client_id="w1")
    assert cfg.session_expiry_s == GROUP_SESSION_EXPIRY_S  # short unless set
    cfg = CoordinatorSettings(db=pg_url, ingest_group="g", client_id="w1", session_expiry_s=9)
    assert cfg.session_expiry_s == 9


def test_group_topics() -> None:
    assert T.shared_telemetry("g1") == f"$share/g1/{P}/site/+/telemetry/+"
    leader = T.all_but_telemetry()
    for topic in (T.status("s"), T.heartbeat("s"), T.job_result("s", "j"), T.alarm("s", "d")):
        assert any(_matches(f, topic) for f in leader), topic
    assert not any(_matches(f, T.telemetry("s", "d")) for f in leader)
    assert not any(_matches(f, T.ack("s")) or _matches(f, T.cmd("s", "train")) for f in leader)


def _matches(filt: str, topic: str) -> bool:
    f, t = filt.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def test_the_leader_takes_no_ack_base_for_what_the_followers_stored(
    pair: tuple[Worker, Worker], pg_url: str
) -> None:
    leader, follower = pair
    leader.feed((T.registration("k"), Registration(site="k", session=1)))
    follower.feed(tel("k", 1), tel("k", 2), tel("k", 3))
    hb = Heartbeat(site="k", session=1, interval_s=1, last_acked=3)
    leader.feed((T.heartbeat("k"), hb))
    with psycopg.connect(pg_url) as conn:
        events = conn.execute("SELECT event FROM site_events WHERE site = 'k'").fetchall()
    assert ("ack_base",) not in events  # it was stored: no "nothing stored" base
    assert leader.acks("k") == [3]
