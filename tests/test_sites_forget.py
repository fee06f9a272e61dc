"""``fedmq sites forget ID [--purge]``: a gone site leaves the list; its data stays unless
purged; a live site is refused. A real database filled through the Store, the real CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.store import DurableRow, EventRow, HeartbeatRow, SiteRecord, SqliteStore
from coordinator.store.forget import PURGED_TABLES
from fedmq_runtime.clock import now_ms
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, fedmq, sites_json, wait_until
from tests.helpers.db import query
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)


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
            SiteRecord("old", None, None, 1, last_alive=now - 3_600_000),  # deregistered
            # offline, but its retained status and registration are still on the broker
            SiteRecord(
                "away", '{"kind": "registration"}', "offline", 1, last_alive=now - 3_600_000
            ),
        ]
    )
    for site in ("live", "gone", "old", "away"):
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
    assert set(sites_json(db)) == {"live", "old", "away"}
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


def test_an_offline_site_not_deregistered_is_refused_and_kept(db: Path) -> None:
    out = fedmq("sites", "forget", "away", "--db", str(db), check=False)
    assert out.returncode == 2
    assert "offline but not deregistered" in out.stderr
    assert _count(db, "sites", "away") == 1
    help_text = fedmq("sites", "forget", "--help").stdout
    assert "mosquitto_pub -r -n -t P/site/SITE/status" in help_text


@pytest.mark.slow
def test_a_real_deregistered_site_is_forgotten_and_stays_forgotten_across_a_serve_restart(
    broker: Broker, prefix: str, tmp_path: Path, make_site: Callable[..., SiteProc]
) -> None:
    db = tmp_path / "real.db"
    serve = Coordinator(db, broker.port, prefix).start().wait_ready(60)
    try:
        site = make_site(broker.port, prefix, site_id="retired", rate_hz=20.0)
        wait_until(lambda: sites_json(db).get("retired", {}).get("state") == "online", 60, "on")
        assert site.terminate() == 0
        wait_until(lambda: sites_json(db)["retired"]["state"] == "offline", 30, "offline")
        refused = fedmq("sites", "forget", "retired", "--db", str(db), check=False)
        assert refused.returncode == 2 and "not deregistered" in refused.stderr
        out = site.cli("deregister")
        assert out.returncode == 0, out.stderr
        wait_until(
            lambda: (
                query(db, "SELECT status, registration FROM sites WHERE site = 'retired'")
                == [(None, None)]
            ),
            30,
            "retained status and registration cleared",
        )
        fedmq("sites", "forget", "retired", "--db", str(db))
        assert "retired" not in sites_json(db)
        assert serve.stop() == 0
        serve = Coordinator(db, broker.port, prefix).start().wait_ready(60)
        # a site started after serve subscribed: once it is listed, anything retained for
        # the forgotten one has been delivered too (retained messages come at subscribe)
        make_site(broker.port, prefix, site_id="marker", rate_hz=20.0)
        wait_until(lambda: "marker" in sites_json(db), 60, "the marker site listed")
        assert "retired" not in sites_json(db)
        assert _count(db, "telemetry", "retired") > 0  # kept
    finally:
        serve.stop()
