"""Broker restart mid-stream (no broker persistence): the coordinator reconnects,
resubscribes, and every sample the site produced ends up stored exactly once."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, site_state, start_fake_site, wait_until

MESSAGES = 6_000


@pytest.mark.slow
def test_broker_restart_mid_stream_loses_and_duplicates_nothing(
    own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    db = tmp_path / "c.db"
    coord = Coordinator(db, own_broker.port, prefix).start()
    site = None
    try:
        coord.wait_ready()
        site = start_fake_site(
            own_broker.port, prefix, "br", tmp_path, "--messages", str(MESSAGES),
            "--produced", str(tmp_path / "br.jsonl"), "--keepalive", "30",
        )  # fmt: skip
        wait_until(lambda: (site_state(tmp_path, "br") or {}).get("acked", 0) >= 500, 60, "500")
        own_broker.stop()
        time.sleep(2.0)
        own_broker.start()

        def finished() -> bool:
            st = site_state(tmp_path, "br") or {}
            return st.get("produced") == MESSAGES and st.get("acked") == MESSAGES

        wait_until(finished, 120, "every message acked after the restart", step=0.5)
        assert coord.alive()
    finally:
        if site is not None:
            site.kill()
            site.wait()
        code = coord.stop()
    assert code == 0
    produced = set()
    for line in (tmp_path / "br.jsonl").read_text().splitlines():
        seq, values = json.loads(line)
        produced |= {("br", seq, n, ts, v) for n, ts, v in values}
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT site, seq, name, ts, value FROM telemetry").fetchall()
    conn.close()
    assert len(rows) == len(produced) == MESSAGES * 2
    assert set(rows) == produced
    assert coord.log_text().count("INFO coordinator.bus: connected to") >= 2  # reconnected
