"""A site whose data directory is wiped mid-stream (a re-imaged plant PC) starts a new
stream: with a real ``fedmq serve`` and real ``fedmq-site run`` processes, every sample
of both streams is stored once, an event names the restart, and the site is online
again although its session counter started over."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, fedmq, sites_json, wait_until
from tests.helpers.db import query
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)

ROWS = 600


def _values(db: Path, epoch: str) -> list[float]:
    rows = query(db, "SELECT value FROM telemetry WHERE site = 'wiped' AND epoch = ?", epoch)
    return sorted(float(v) for (v,) in rows)  # type: ignore[arg-type]


def test_wiped_site_restarts_its_stream_and_nothing_is_lost_or_merged(
    own_broker: Broker, prefix: str, tmp_path: Path, make_site: Callable[..., SiteProc]
) -> None:
    db = tmp_path / "c.db"
    coord = Coordinator(db, own_broker.port, prefix).start()
    try:
        coord.wait_ready()
        first = make_site(own_broker.port, prefix, site_id="wiped", rate_hz=100.0, rows=ROWS)
        wait_until(lambda: sites_json(db).get("wiped", {}).get("state") == "online", 60, "up")
        wait_until(lambda: len(query(db, "SELECT 1 FROM telemetry")) >= 150, 60, "150 stored")
        first.kill()  # mid-stream: then the data directory is lost
        [(old_epoch, old_session)] = query(db, "SELECT epoch, session FROM sites")
        assert old_epoch, "the site sent no epoch"
        shutil.rmtree(first.data_dir)
        stored_old = _values(db, str(old_epoch))
        assert len(stored_old) < ROWS, "the first stream ended before the wipe: test is void"

        second = make_site(own_broker.port, prefix, site_id="wiped", rate_hz=400.0, rows=ROWS)
        wait_until(lambda: len(query(db, "SELECT DISTINCT epoch FROM messages")) == 2, 60, "2")
        # The telemetry rows (writer child) and the site's current epoch (writer thread) are
        # committed by different writers: wait for the latter rather than read it at once.
        wait_until(lambda: query(db, "SELECT epoch FROM sites")[0][0] != old_epoch, 60, "epoch")
        [(new_epoch,)] = query(db, "SELECT epoch FROM sites")
        # The new stream's seq 1.. are new data, not "duplicates" of the old stream's.
        wait_until(lambda: len(_values(db, str(new_epoch))) >= ROWS, 120, "new stream stored")
        assert _values(db, str(new_epoch)) == [float(i) for i in range(ROWS)]  # once each
        # The old stream is kept, still queryable, never merged with the new one: what it
        # had stored at the kill (and what was in flight then) once each, in order.
        final_old = _values(db, str(old_epoch))
        assert final_old[: len(stored_old)] == stored_old
        assert final_old == [float(i) for i in range(len(final_old))]
        seqs = query(db, "SELECT seq FROM messages WHERE epoch = ? ORDER BY seq", new_epoch)
        assert seqs[0] == (1,)
        # Session 1 again after session >= 1 before: online, not "late session ignored".
        wait_until(lambda: sites_json(db)["wiped"]["state"] == "online", 30, "online again")
        assert int(query(db, "SELECT session FROM sites")[0][0]) <= int(old_session)  # type: ignore[call-overload]
        events = json.loads(fedmq("events", "--db", str(db), "--json").stdout)
        restarts = [e for e in events if e["event"] == "stream_restarted"]
        assert len(restarts) == 1 and "re-imaged" in restarts[0]["reason"]
        detail = fedmq("site", "wiped", "--db", str(db)).stdout
        assert str(old_epoch) in detail and str(new_epoch) in detail
        second.terminate()
    finally:
        coord.stop()
