"""``fedmq sites forget ID [--purge]``: a gone site leaves the list; its data stays unless
purged; a live site is refused. A real database filled through the Store, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.store import DurableRow, EventRow, HeartbeatRow, SiteRecord, SqliteStore
from coordinator.store.forget import PURGED_TABLES
from fedmq_runtime.clock import now_ms
from tests.helpers.coord_proc import fedmq, sites_json
from tests.helpers.db import query


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "c.db"
    now = now_ms()
    store = SqliteStore(path)
    store.meta_set("patience", "3")
    store.save_sites(
        [
            SiteRecord("live", None, "online", 1, last_alive=now, interval_s=60.0),
            SiteRecord("gone", None, None, 1, last_alive=now - 3_600_000),  # deregistered
            SiteRecord("old", None, "offline", 1, last_alive=now - 3_600_000),
        ]
    )
    for site in ("live", "gone", "old"):
        samples = [("t", now - i, float(i), "C", "good") for i in range(3)]
        store.add_messages(
            [DurableRow(site, 1, "telemetry", 1, now, now, False, "press", None, samples, None)]
        )
        store.add_events([EventRow(site, now, "state", None, "online", "status online", 1)])
        store.add_heartbeats(
            [HeartbeatRow(site, now, now, 1, 10.0, 5.0, 1.0, 2.0, 3.0, 0, 0, 0, 1, 0)]
        )
    store.commit()
    store.close()
    return path


def _count(db: Path, table: str, site: str) -> int:
    return int(query(db, f"SELECT count(*) FROM {table} WHERE site = ?", site)[0][0])


def test_forget_keeps_the_data_and_records_an_event(db: Path) -> None:
    out = fedmq("sites", "forget", "gone", "--db", str(db))
    assert "forgot gone" in out.stdout and "kept" in out.stdout
    assert set(sites_json(db)) == {"live", "old"}
    telemetry = json.loads(fedmq("telemetry", "gone", "--db", str(db), "--json").stdout)
    assert len(telemetry) == 3
    assert _count(db, "messages", "gone") == 1 and _count(db, "heartbeats", "gone") == 1
    events = [e for (e,) in query(db, "SELECT event FROM site_events WHERE site = 'gone'")]
    assert events == ["state", "forgotten"]
    # plain `fedmq sites` still lists (the group runs without a subcommand)
    listing = fedmq("sites", "--db", str(db)).stdout
    assert "live" in listing and "gone" not in listing


def test_forget_purge_deletes_every_row_of_the_site_only(db: Path) -> None:
    out = fedmq("sites", "forget", "old", "--db", str(db), "--purge")
    assert "purged" in out.stdout and "3 telemetry" in out.stdout
    for table in ("sites", *PURGED_TABLES):
        assert _count(db, table, "old") == 0, table
    assert _count(db, "telemetry", "live") == 3 and _count(db, "telemetry", "gone") == 3


def test_a_live_site_is_refused_and_kept(db: Path) -> None:
    out = fedmq("sites", "forget", "live", "--db", str(db), "--purge", check=False)
    assert out.returncode == 2
    assert "site 'live' is online: deregister it first" in out.stderr
    assert _count(db, "sites", "live") == 1 and _count(db, "telemetry", "live") == 3


def test_unknown_site_and_missing_database_are_one_line_errors(db: Path, tmp_path: Path) -> None:
    out = fedmq("sites", "forget", "nope", "--db", str(db), check=False)
    assert out.returncode == 3 and "no site 'nope'" in out.stderr
    missing = tmp_path / "missing.db"
    out = fedmq("sites", "forget", "x", "--db", str(missing), check=False)
    assert out.returncode == 3 and "no database" in out.stderr
    assert not missing.exists()
