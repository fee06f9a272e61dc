"""Stream identity, hostile-but-valid input and storage failures in the writer's batch
logic, on a real SQLite file (publish and PUBACK captured), driven through
``Ingestor.process`` exactly as the writer thread does."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.bus import Inbound
from coordinator.ingest.acks import AckTracker
from coordinator.store import read as db_read
from schemas import (
    Ack,
    Heartbeat,
    Sample,
    SeqRange,
    SiteStatus,
    TelemetryBatch,
    decode,
    encode,
)
from schemas.errors import DecodeError
from tests.test_coord_ingest import Harness, T


def tel(
    site: str, seq: int, epoch: str = "", historical: bool = False, device: str = "d"
) -> tuple[str, TelemetryBatch]:
    batch = TelemetryBatch(
        site=site, epoch=epoch, session=1, seq=seq, device=device, historical=historical,
        samples=(Sample(ts=1_000 + seq, name="x", value=float(seq)),),
    )  # fmt: skip
    return T.telemetry(site, device), batch


def status(site: str, epoch: str, session: int, state: str = "online") -> tuple[str, SiteStatus]:
    msg = SiteStatus.model_validate(
        {"site": site, "epoch": epoch, "session": session, "state": state}
    )
    return T.status(site), msg


def heartbeat(site: str, epoch: str, session: int, **fields: Any) -> tuple[str, Heartbeat]:
    hb = Heartbeat(site=site, epoch=epoch, session=session, interval_s=1.0, **fields)
    return T.heartbeat(site), hb


@pytest.fixture(params=[False, True], ids=["in-process", "writer-process"])
def h(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Harness]:
    harness = Harness(tmp_path / "c.db", writer_process=request.param)
    yield harness
    if harness.ing.writer is not None:
        harness.ing.writer.stop()


def _db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "c.db")


def _acks(h: Harness, site: str) -> list[tuple[str, int]]:
    out = []
    for topic, payload in h.published:
        if topic == T.ack(site):
            ack = Ack.model_validate_json(payload)
            out.append((ack.epoch, ack.acked))
    return out


def _events(tmp_path: Path, kind: str) -> list[str]:
    rows = _db(tmp_path).execute("SELECT reason FROM site_events WHERE event = ?", (kind,))
    return [r[0] for r in rows]


# 1. A site's stream has an identity ---------------------------------------------------


def test_a_wiped_site_starts_a_new_stream_stored_beside_the_old_one(
    h: Harness, tmp_path: Path
) -> None:
    h.feed(*(tel("a", s, "old") for s in range(1, 13)), at=1_000)
    assert _acks(h, "a")[-1] == ("old", 12)
    # Data directory wiped: a new epoch, seq from 1 again (1..14).
    h.feed(*(tel("a", s, "new") for s in range(1, 15)), at=2_000)
    db = _db(tmp_path)
    rows = db.execute("SELECT epoch, count(*) FROM messages GROUP BY epoch ORDER BY epoch")
    assert rows.fetchall() == [("new", 14), ("old", 12)]  # nothing taken for a duplicate
    samples = db.execute("SELECT epoch, count(*) FROM telemetry GROUP BY epoch ORDER BY epoch")
    assert samples.fetchall() == [("new", 14), ("old", 12)]
    assert _acks(h, "a")[-1] == ("new", 14)  # acks name the stream they are for
    [why] = _events(tmp_path, "stream_restarted")
    assert "state lost or site re-imaged" in why
    assert db.execute("SELECT epoch, acked FROM sites").fetchone() == ("new", 14)
    streams = db.execute("SELECT epoch, acked FROM streams ORDER BY epoch").fetchall()
    assert streams == [("new", 14), ("old", 12)]


def test_stream_state_survives_a_restart_of_the_coordinator(tmp_path: Path) -> None:
    h = Harness(tmp_path / "c.db")
    h.feed(tel("a", 1, "e1"), tel("a", 2, "e1"), tel("a", 4, "e1"))
    h.store.close()
    h2 = Harness(tmp_path / "c.db")
    h2.feed(tel("a", 3, "e1"))
    assert _acks(h2, "a") == [("e1", 4)]  # seq 4 stored before the restart counts
    h2.feed(tel("a", 1, "e2"))
    assert _acks(h2, "a")[-1] == ("e2", 1)
    assert len(_events(tmp_path, "stream_restarted")) == 1


def test_a_new_stream_counts_its_sessions_afresh(h: Harness, tmp_path: Path) -> None:
    h.feed(status("a", "old", 5), heartbeat("a", "old", 5), at=1_000)
    h.feed(status("a", "old", 5, "offline"), at=1_100)
    # The re-imaged site boots with session 1: it is online, not "late session 1 < 5".
    h.feed(status("a", "new", 1), heartbeat("a", "new", 1), at=1_200)
    state = _db(tmp_path).execute("SELECT state, session, epoch FROM sites").fetchone()
    assert state == ("online", 1, "new")
    assert _events(tmp_path, "ignored_status") == []


def test_a_late_will_of_the_old_stream_is_ignored(h: Harness, tmp_path: Path) -> None:
    h.feed(status("a", "old", 3), heartbeat("a", "old", 3), at=1_000)
    h.feed(status("a", "new", 1), heartbeat("a", "new", 1), at=1_100)
    h.feed(status("a", "old", 3, "offline"), at=1_200)  # the old connection's Will
    row = _db(tmp_path).execute("SELECT state, epoch, conflict_at FROM sites").fetchone()
    assert row == ("online", "new", 0)


def test_two_live_processes_with_one_site_id_are_a_conflict(h: Harness, tmp_path: Path) -> None:
    h.feed(status("a", "p1", 1), tel("a", 1, "p1"), at=1_000)
    h.feed(status("a", "p2", 1), tel("a", 1, "p2"), at=1_010)
    for i in range(2, 6):  # both keep streaming, interleaved
        h.feed(tel("a", i, "p1"), at=1_000 + 20 * i)
        h.feed(tel("a", i, "p2"), at=1_010 + 20 * i)
    conflicts = _events(tmp_path, "conflict")
    assert len(conflicts) == 1  # reported, not once per message
    assert "two live processes use site id 'a'" in conflicts[0]
    db = _db(tmp_path)
    assert db.execute("SELECT conflict_at > 0 FROM sites").fetchone() == (1,)
    # Both streams are stored whole and each is acked on its own.
    rows = db.execute("SELECT epoch, count(*) FROM messages GROUP BY epoch ORDER BY epoch")
    assert rows.fetchall() == [("p1", 5), ("p2", 5)]
    assert ("p1", 5) in _acks(h, "a") and ("p2", 5) in _acks(h, "a")
    # `fedmq sites` shows it while it lasts, and names the cause.
    listed, _ = db_read.sites(db_read.open_db(tmp_path / "c.db"), now=1_200)
    assert listed[0]["state"] == "conflict" and listed[0]["conflict"] is True
    assert "two live processes" in listed[0]["reason"]
    later, _ = db_read.sites(db_read.open_db(tmp_path / "c.db"), now=1_200 + 600_000)
    assert later[0]["state"] != "conflict"


def test_replays_of_an_old_stream_are_stored_without_a_conflict(h: Harness, tmp_path: Path) -> None:
    h.feed(tel("a", 1, "old"), at=1_000)
    h.feed(tel("a", 1, "new"), at=2_000)
    h.feed(tel("a", 2, "old", historical=True), at=2_100)  # e.g. a restored backup
    assert _events(tmp_path, "conflict") == []
    assert _db(tmp_path).execute("SELECT count(*) FROM messages").fetchone() == (3,)


# 2. A valid-looking message never stops the coordinator --------------------------------


def test_integers_beyond_64_bits_are_dead_letters_and_the_rest_is_stored(
    h: Harness, tmp_path: Path
) -> None:
    evil = json.loads(encode(tel("evil", 1)[1]))
    evil["seq"] = 2**63
    hb = json.loads(encode(heartbeat("evil", "", 1)[1]))
    hb["outbox_depth"] = 2**64
    h.feed(
        (T.telemetry("evil", "d"), json.dumps(evil).encode()),
        (T.heartbeat("evil"), json.dumps(hb).encode()),
        tel("good", 1),
    )
    db = _db(tmp_path)
    reasons = [r[0] for r in db.execute("SELECT reason FROM dead_letters")]
    assert reasons == ["invalid", "invalid"]
    assert _acks(h, "good") == [("", 1)]
    assert sorted(h.pubacks) == [1, 2, 3]
    assert h.ing.recoveries == 0


_BIG = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), 2**64, 0, 1]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=_BIG, session=_BIG, first=_BIG, last=_BIG, depth=_BIG, ts=_BIG, round_=_BIG, n=_BIG)
def test_anything_decode_accepts_can_be_stored(
    tmp_path_factory: pytest.TempPathFactory,
    seq: int,
    session: int,
    first: int,
    last: int,
    depth: int,
    ts: int,
    round_: int,
    n: int,
) -> None:
    """Over the accepted space, not just rejected bytes: every integer field of a message
    that ``decode`` accepts fits the store."""
    h = Harness(tmp_path_factory.mktemp("p") / "c.db")
    candidates = [
        (
            T.telemetry("a", "d"),
            {"v": "1.1", "kind": "telemetry", "site": "a", "session": session, "seq": seq,
             "device": "d", "gaps": [{"first": first, "last": last}],
             "samples": [{"ts": ts, "name": "x", "value": 1.0}]},
        ),
        (
            T.heartbeat("a"),
            {"v": "1.1", "kind": "heartbeat", "site": "a", "session": session, "seq": seq,
             "interval_s": 1, "outbox_depth": depth, "outbox_dropped": n, "last_acked": seq,
             "samples_dropped": depth},
        ),
        (
            T.job_status("a", "j1"),
            {"v": "1.1", "kind": "job_status", "site": "a", "session": session, "seq": seq,
             "job_id": "j1", "round": round_, "state": "running"},
        ),
        (T.status("a"), {"v": "1.1", "kind": "site_status", "site": "a", "session": session,
                         "state": "online"}),
    ]  # fmt: skip
    accepted = []
    for topic, body in candidates:
        payload = json.dumps(body).encode()
        try:
            decode(topic, payload)
        except DecodeError:
            continue
        accepted.append((topic, payload))
    if not accepted:
        return
    h.feed(*accepted)
    assert h.ing.recoveries == 0  # no storage error: stored in the batch as it came
    assert h.ing.dead.count == 0
    assert len(h.pubacks) == len(accepted)
    h.store.close()


def test_a_row_the_store_refuses_is_a_dead_letter_and_the_batch_goes_on(
    h: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the store refuses (here: a row it cannot hold), that message alone is a
    dead letter with the reason; the writer keeps running and the others are stored."""
    store = h.ing.store
    real = store.add_messages

    def refuse_seq_2(rows: Any) -> Any:
        if any(r.seq == 2 for r in rows):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return real(rows)

    monkeypatch.setattr(store, "add_messages", refuse_seq_2)
    h.ing.writer = None  # the refusal is in this process's store
    h.feed(tel("a", 1), tel("a", 2), tel("b", 1))
    db = _db(tmp_path)
    assert db.execute("SELECT site, seq FROM messages ORDER BY site").fetchall() == [
        ("a", 1),
        ("b", 1),
    ]
    [(reason, detail)] = db.execute("SELECT reason, detail FROM dead_letters").fetchall()
    assert reason == "storage_error" and "OverflowError" in detail
    assert sorted(h.pubacks) == [1, 2, 3]  # the dead letter too: never redelivered forever
    assert _acks(h, "a")[-1] == ("", 1) and _acks(h, "b")[-1] == ("", 1)
    h.feed(tel("a", 3))  # and the writer carries on
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (3,)


def test_a_killed_writer_process_is_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    h = Harness(tmp_path / "c.db", writer_process=True)
    try:
        h.feed(tel("a", 1))
        assert h.ing.writer is not None and h.ing.writer.started
        os.kill(h.ing.writer._proc.pid, signal.SIGKILL)
        h.ing.writer._proc.join(10)
        h.feed(tel("a", 2), tel("a", 3))  # the dead child's pipe breaks mid-batch
        assert _acks(h, "a")[-1] == ("", 3)
        assert _db(tmp_path).execute("SELECT count(*) FROM telemetry").fetchone() == (3,)
        assert h.ing.recoveries >= 1
        h.feed(tel("a", 4))
        assert _acks(h, "a")[-1] == ("", 4)
        assert h.ing.writer.started  # a new child took over
    finally:
        if h.ing.writer is not None:
            h.ing.writer.stop()


# Gaps: bounded, clipped, merged, purged ------------------------------------------------


def test_a_message_with_20000_gaps_is_a_dead_letter(h: Harness, tmp_path: Path) -> None:
    body = json.loads(encode(tel("a", 40_001)[1]))
    body["gaps"] = [{"first": 2 * i + 1, "last": 2 * i + 1} for i in range(20_000)]
    h.feed((T.telemetry("a", "d"), json.dumps(body).encode()), tel("b", 1))
    [(reason, detail)] = _db(tmp_path).execute("SELECT reason, detail FROM dead_letters")
    assert reason == "invalid" and "gaps" in detail
    assert _acks(h, "b") == [("", 1)]


def test_gaps_count_only_between_the_ack_and_the_message(h: Harness, tmp_path: Path) -> None:
    h.feed(tel("a", 1), tel("a", 2))
    # A range reaching past the message's own seq must not let the ack jump ahead.
    h.feed(
        (T.telemetry("a", "d"), tel("a", 10)[1].model_copy(
            update={"gaps": (SeqRange(first=1, last=5), SeqRange(first=8, last=10**12))}
        )),
    )  # fmt: skip
    assert _acks(h, "a")[-1] == ("", 5)  # 3-5 dropped; 6, 7 still awaited; 8-9 dropped
    gaps = _db(tmp_path).execute("SELECT first, last FROM gaps ORDER BY first").fetchall()
    assert gaps == [(8, 9)]  # 3-5 acked past and purged; nothing beyond seq 10
    h.feed(tel("a", 6), tel("a", 7))
    assert _acks(h, "a")[-1] == ("", 10)
    assert _db(tmp_path).execute("SELECT count(*) FROM gaps").fetchone() == (0,)
    reasons = _events(tmp_path, "gap")
    assert len(reasons) == 1 and "5 messages in 2 ranges" in reasons[0]


def test_ack_tracker_advances_over_many_ranges_in_linear_time() -> None:
    t = AckTracker()
    n = 50_000
    for i in range(n, 0, -1):  # worst case: announced in reverse order, one apart
        t.gap("a", 2 * i, 2 * i)
    assert t.acked("a") == 0
    t.committed("a", range(1, 2 * n + 2, 2))
    assert t.acked("a") == 2 * n + 1


# One site cannot starve the others -------------------------------------------------------


def test_a_site_over_its_byte_budget_is_deferred_not_lost(tmp_path: Path) -> None:
    h = Harness(tmp_path / "c.db", site_bytes_per_s=1.0, site_burst_bytes=2_000.0)
    flood = [tel("flood", s) for s in range(1, 40)]
    h.feed(*flood, tel("calm", 1))
    db = _db(tmp_path)
    stored = db.execute("SELECT count(*) FROM messages WHERE site = 'flood'").fetchone()[0]
    assert 0 < stored < 39
    assert _acks(h, "flood")[-1] == ("", stored)  # acked: only what was stored
    assert _acks(h, "calm") == [("", 1)]
    assert len(h.pubacks) == 40  # deferred ones are PUBACKed: the site's outbox re-sends
    [why] = _events(tmp_path, "over_budget")
    assert "left unacked for the site to re-send later" in why


def test_devices_per_site_are_bounded(tmp_path: Path) -> None:
    h = Harness(tmp_path / "c.db", site_max_devices=3)
    h.feed(*(tel("a", i, device=f"dev{i}") for i in range(1, 7)))
    db = _db(tmp_path)
    assert db.execute("SELECT count(DISTINCT device) FROM messages").fetchone() == (3,)
    reasons = [r[0] for r in db.execute("SELECT reason FROM dead_letters")]
    assert reasons == ["device_limit"] * 3
    h.store.close()
    h2 = Harness(tmp_path / "c.db", site_max_devices=3)  # the bound survives a restart
    h2.feed(tel("a", 7, device="dev9"), tel("a", 8, device="dev1"))
    assert db.execute("SELECT count(DISTINCT device) FROM messages").fetchone() == (3,)
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (4,)


def test_retained_durable_messages_are_refused_and_cleared(h: Harness, tmp_path: Path) -> None:
    topic, msg = tel("a", 1)
    h.ing.process([Inbound(topic, encode(msg), 1, 1, True, 1_000)])
    assert _db(tmp_path).execute("SELECT reason FROM dead_letters").fetchall() == [
        ("retained_durable",)
    ]
    assert (topic, b"") in h.published  # cleared from the broker
    assert h.pubacks == [1]


def test_unknown_site_ids_are_bounded_and_rebirths_rate_limited(tmp_path: Path) -> None:
    h = Harness(tmp_path / "c.db", max_unregistered_sites=50, rebirth_per_s=5.0)
    h.feed(*(heartbeat(f"s{i}", "", 1) for i in range(400)))
    db = _db(tmp_path)
    assert db.execute("SELECT count(*) FROM sites").fetchone() == (50,)
    assert db.execute(
        "SELECT count(*) FROM dead_letters WHERE reason = 'site_limit'"
    ).fetchone() == (350,)
    rebirths = [t for t, _ in h.published if t.endswith("/cmd/rebirth")]
    assert 1 <= len(rebirths) <= 10
