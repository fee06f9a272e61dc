"""One contract for every Store implementation (parametrize ``IMPLEMENTATIONS`` to add one)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.store import (
    DeadLetterRow,
    DurableRow,
    EventRow,
    HeartbeatRow,
    Migration,
    SiteRecord,
    SqliteStore,
    Store,
)

IMPLEMENTATIONS: dict[str, Callable[..., Any]] = {"sqlite": SqliteStore}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Store]]:
    opened: list[Any] = []

    def factory(**kwargs: Any) -> Store:
        s = IMPLEMENTATIONS[request.param](tmp_path / "c.db", **kwargs)
        opened.append(s)
        return s  # type: ignore[no-any-return]

    yield factory
    for s in opened:
        s.close()


def tel(site: str, seq: int, n: int = 3, at: int = 1000) -> DurableRow:
    samples = [(f"s{i}", 10_000 + seq, float(seq + i), "C", "good") for i in range(n)]
    return DurableRow(
        site, seq, "telemetry", 1, 10_000 + seq, at, False, "dev", None, samples, None
    )


def count(store: Any, sql: str) -> int:
    return int(store.conn.execute(sql).fetchone()[0])


def test_replayed_messages_are_stored_once_with_their_samples(make: Any) -> None:
    store = make()
    new = store.add_messages([tel("a", 1), tel("a", 2), tel("b", 1)])
    assert [(r.site, r.seq) for r in new] == [("a", 1), ("a", 2), ("b", 1)]
    store.commit()
    # A replay (outage) mixed with new rows and an in-batch duplicate (broker redelivery).
    new = store.add_messages([tel("a", 2), tel("a", 3), tel("a", 3), tel("b", 1)])
    store.commit()
    assert [(r.site, r.seq) for r in new] == [("a", 3)]
    assert count(store, "SELECT count(*) FROM messages") == 4
    assert count(store, "SELECT count(*) FROM telemetry") == 12
    assert count(store, "SELECT count(*) FROM telemetry WHERE site='a' AND seq=3") == 3


def test_job_messages_keep_their_payload(make: Any) -> None:
    store = make()
    row = DurableRow("a", 7, "job_status", 1, 5, 6, True, None, "j1", (), '{"state":"done"}')
    assert store.add_messages([row]) == [row]
    store.commit()
    got = store.conn.execute("SELECT kind, job_id, payload, historical FROM messages").fetchone()
    assert tuple(got) == ("job_status", "j1", '{"state":"done"}', 1)


def test_commit_makes_writes_visible_to_other_connections(make: Any, tmp_path: Path) -> None:
    store = make()
    store.add_messages([tel("a", 1)])
    other = sqlite3.connect(tmp_path / "c.db")
    assert other.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    store.commit()
    assert other.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    other.close()


def test_durability_pragmas(make: Any) -> None:
    store = make()
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_sites_round_trip_and_sessions_count_starts(make: Any) -> None:
    store = make()
    assert store.begin_session() == 1
    rec = SiteRecord("a", registration='{"name":"A"}', status="online", session=4, acked=9)
    rec.cpu_percent = 12.5
    store.save_sites([rec, SiteRecord("b")])
    store.commit()
    store.close()
    again = make()
    assert again.begin_session() == 2
    loaded = {r.site: r for r in again.load_sites()}
    assert loaded["a"] == rec
    assert loaded["b"] == SiteRecord("b")


def test_seqs_and_gaps_above(make: Any) -> None:
    store = make()
    store.add_messages([tel("a", s) for s in (1, 2, 5, 7)] + [tel("b", 9)])
    assert store.add_gap("a", 3, 4, 1) is True
    assert store.add_gap("a", 3, 4, 2) is False  # announced again: recorded once
    store.commit()
    assert store.seqs_above("a", 2) == [5, 7]
    assert store.gaps_above("a", 2) == [(3, 4)]
    assert store.gaps_above("a", 4) == []


def test_events_heartbeats_dead_letters_and_retention(make: Any) -> None:
    store = make()
    store.add_events([EventRow("a", 5, "state", None, "online", "status online", 1)])
    hb = HeartbeatRow("a", 100, 99, 1, 1.0, 2.0, 3.0, 4.0, 5.0, 6, 7, 8, 9, 0)
    store.add_heartbeats([hb, hb._replace(received_at=300)])
    store.add_messages([tel("a", 1), tel("a", 2000)])  # sample ts 10_001.. and 12_000..
    store.add_dead_letters([DeadLetterRow("t", "x", 1, "not_json", "bad", 5)])
    store.save_sites([SiteRecord("a")])  # retention applies to the sites the store knows
    store.commit()
    store.add_messages([DurableRow("a", 3, "job_status", 1, 5, 6, False, None, "j", (), "{}")])
    assert store.purge(heartbeats_before=200, telemetry_before=11_000) == (1, 3, 1)
    store.commit()
    assert [r[0] for r in store.conn.execute("SELECT seq FROM messages ORDER BY seq")] == [
        3,
        2000,
    ]
    assert count(store, "SELECT count(*) FROM heartbeats") == 1
    columns = [c[1] for c in store.conn.execute("PRAGMA table_info(heartbeats)")]
    assert columns == list(HeartbeatRow._fields)  # rows are inserted positionally
    assert count(store, "SELECT count(*) FROM telemetry") == 3
    assert count(store, "SELECT count(*) FROM site_events") == 1
    assert count(store, "SELECT count(*) FROM dead_letters") == 1


def test_named_migrations_run_once_and_others_can_add_tables(make: Any) -> None:
    calls: list[str] = []

    def runs(db: Any) -> None:
        calls.append("runs")
        db["runs"].create({"run_id": str, "task": str}, pk="run_id")

    store = make(extra_migrations=[Migration("train_0001_runs", runs)])
    store.close()
    store = make(extra_migrations=[Migration("train_0001_runs", runs)])
    assert calls == ["runs"]
    names = [r[0] for r in store.conn.execute("SELECT name FROM _migrations ORDER BY name")]
    assert names == ["core_0001", "core_0002_streams", "train_0001_runs"]
    store.conn.execute("INSERT INTO runs VALUES ('r1', 'rul')")


def test_a_migrated_database_opens_without_importing_sqlite_utils(tmp_path: Path) -> None:
    # sqlite-utils imports pandas (~0.9 s, ~100 MB here): a restart and the writer process
    # open an up-to-date database without it; a new migration still gets it.
    import subprocess
    import sys

    from tests.helpers.coord_proc import REPO

    db = tmp_path / "c.db"
    probe = (
        "import sys; from coordinator.store import SqliteStore; "
        f"SqliteStore({str(db)!r}).close(); print('sqlite_utils' in sys.modules)"
    )

    def opened() -> str:
        run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             cwd=REPO, check=True)  # fmt: skip
        return run.stdout.strip()

    assert opened() == "True"  # a new database: the migrations ran
    assert opened() == "False"
    names = [r[0] for r in sqlite3.connect(db).execute("SELECT name FROM _migrations")]
    assert names == ["core_0001", "core_0002_streams"]
