"""Acceptance (issue 17, item 3): a plant's CSV with 2015 timestamps and a machine id
column replays through a real ``fedmq-site run`` into a real ``fedmq serve`` as one device
per machine, stored with the recorded 2015 times and flagged historical."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, wait_until
from tests.helpers.db import query
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)

MACHINES = (1, 2, 3, 4)
HOURS = 12
START = datetime(2015, 1, 1, 6, 0, 0, tzinfo=timezone.utc)


def pdm_csv(path: Path) -> dict[tuple[str, int], float]:
    """The Azure PdM telemetry layout, rows ordered by time; returns the oracle:
    (device, ts ms) -> volt."""
    lines = ["datetime,machineID,volt,rotate,pressure,vibration"]
    oracle: dict[tuple[str, int], float] = {}
    for hour in range(HOURS):
        when = START + timedelta(hours=hour)
        for machine in MACHINES:
            volt = 150 + machine + hour / 10
            lines.append(f"{when:%Y-%m-%d %H:%M:%S},{machine},{volt},{400 + hour},100,40")
            oracle[(f"pdm-{machine}", int(when.timestamp() * 1000))] = volt
    path.write_text("\n".join(lines) + "\n")
    return oracle


def test_csv_with_2015_times_becomes_per_machine_devices_with_those_times(
    own_broker: Broker, prefix: str, tmp_path: Path, make_site: Callable[..., SiteProc]
) -> None:
    oracle = pdm_csv(tmp_path / "PdM_telemetry.csv")
    db = tmp_path / "c.db"
    # Retention runs every second; heartbeats older than ~1 s go, so each purge logs a line
    # (the telemetry retention stays the default 90 days, counted from arrival).
    purge_env = {"FEDMQ_PURGE_INTERVAL_S": "1", "FEDMQ_HEARTBEAT_RETENTION_DAYS": "0.00001"}
    coord = Coordinator(db, own_broker.port, prefix, env=purge_env).start()
    try:
        coord.wait_ready()
        device = {
            "name": "pdm",
            "source": "file",
            "path": str(tmp_path / "PdM_telemetry.csv"),
            "format": "csv",
            "header": True,
            "columns": [
                {"name": "volt", "unit": "V"},
                {"name": "rotate", "unit": "rpm"},
                {"name": "pressure", "unit": "psi"},
                {"name": "vibration", "unit": "mm/s"},
            ],
            "timestamp_column": "datetime",
            "timestamp_format": "iso",
            "device_column": "machineID",
            "rate_hz": 200.0,
        }
        site = make_site(own_broker.port, prefix, site_id="plant-csv", devices=[device])
        expected = len(oracle) * 4

        def stored() -> int:
            rows = query(db, "SELECT count(*) FROM telemetry WHERE site = 'plant-csv'")
            return int(rows[0][0]) if rows else 0

        wait_until(lambda: stored() >= expected, 120, f"{expected} samples stored", step=0.3)
        rows = query(
            db,
            "SELECT device, ts, value, unit, historical FROM telemetry "
            "WHERE site = 'plant-csv' AND name = 'volt'",
        )
        got = {(d, ts): v for d, ts, v, _u, _h in rows}
        assert got == oracle
        assert {(u, h) for *_x, u, h in rows} == {("V", 1)}
        assert min(ts for _d, ts in got) == int(START.timestamp() * 1000)
        devices = query(db, "SELECT DISTINCT device FROM telemetry WHERE site = 'plant-csv'")
        assert sorted(d for (d,) in devices) == [f"pdm-{m}" for m in MACHINES]

        # The site re-announced its registration with every machine as a device.
        def registered() -> list[str]:
            rows = query(db, "SELECT registration FROM sites WHERE site = 'plant-csv'")
            if not rows or not rows[0][0]:
                return []
            reg = json.loads(rows[0][0])
            return sorted(d["device"] for d in reg.get("telemetry", []))

        want = [f"pdm-{m}" for m in MACHINES]
        wait_until(lambda: registered() == want, 30, "registration lists the machines")
        assert "new device pdm-4" in site.log_text()
        # Purges ran after everything was stored: the 2015 samples are still there (their
        # own times are ~4,000 days past the retention; they arrived just now).
        purges = coord.log_text().count("retention: purged")
        wait_until(lambda: coord.log_text().count("retention: purged") >= purges + 2, 60, "purges")
        assert "telemetry samples" in coord.log_text() and stored() == expected
    finally:
        coord.stop()
