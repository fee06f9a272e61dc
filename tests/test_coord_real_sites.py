"""Acceptance with real ``fedmq-site run`` processes: liveness and exactly-once ingest.

The coordinator is killed -9 in the middle of the sites' streams and restarted; what the
site outboxes say they produced (every seq acked, nothing dropped) must be in the
coordinator database exactly once, sample by sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from site_node.outbox_store import read_stats
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, sites_json, wait_until
from tests.helpers.db import query
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)

ROWS = 6_000  # counter-file rows per site: samples 0..ROWS-1, 10 per message


@pytest.mark.slow
def test_real_sites_coordinator_kill9_mid_stream_every_sample_once(
    own_broker: Broker, prefix: str, tmp_path: Path, make_site: Callable[..., SiteProc]
) -> None:
    db = tmp_path / "c.db"
    coord = Coordinator(db, own_broker.port, prefix).start()
    names = ["real-0", "real-1", "real-2"]
    try:
        coord.wait_ready()
        sites = {
            n: make_site(own_broker.port, prefix, site_id=n, rate_hz=1000.0, rows=ROWS,
                         outbox={"ack_timeout_s": 5.0})
            for n in names
        }  # fmt: skip
        wait_until(
            lambda: (
                {s: r["state"] for s, r in sites_json(db).items()} == dict.fromkeys(names, "online")
            ),
            60,
            "3 real sites online",
            step=0.3,
        )
        wait_until(lambda: query(db, "SELECT count(*) FROM messages")[0][0] >= 300, 60, "300")
        coord.kill()
        at_kill = query(db, "SELECT count(*) FROM telemetry")[0][0]
        assert at_kill < len(names) * ROWS, "streams ended before the kill: test is void"
        time.sleep(1.0)
        coord = Coordinator(db, own_broker.port, prefix).start()

        def done(name: str) -> bool:
            st = read_stats(sites[name].data_dir / "outbox.db")
            n = query(db, "SELECT count(*) FROM telemetry WHERE site = ?", name)
            return st.depth == 0 and st.last_acked == st.last_seq and bool(n) and n[0][0] == ROWS

        wait_until(lambda: all(done(n) for n in names), 120, "every site drained", step=0.5)
        for name, site in sites.items():
            st = read_stats(site.data_dir / "outbox.db")
            assert st.dropped == 0
            values = query(db, "SELECT value FROM telemetry WHERE site = ? ORDER BY value", name)
            assert [v for (v,) in values] == [float(i) for i in range(ROWS)]  # once each
            seqs = query(db, "SELECT seq FROM messages WHERE site = ? ORDER BY seq", name)
            assert [s for (s,) in seqs] == list(range(1, st.last_seq + 1))
        # And liveness with the real daemon: kill -9 one site -> offline (its Will).
        sites["real-2"].kill()
        wait_until(lambda: sites_json(db)["real-2"]["state"] == "offline", 1.5 * 5 + 2, "Will")
        assert sites_json(db)["real-0"]["state"] == "online"
    finally:
        assert coord.stop() == 0
