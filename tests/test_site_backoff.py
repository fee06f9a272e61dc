"""Reconnect backoff: after every broker restart a site (default settings) is back within
5 s of the broker's return; its backoff does not ratchet up over repeated restarts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers.broker import Broker
from tests.helpers.mqtt import wait_for
from tests.helpers.site_proc import SiteProc, site_settings

CONNECTED = "INFO site_node.bus: connected to"
# Broker down this long each time; 6 s is past the backoff's cap.
OUTAGES_S = (1.0, 2.0, 6.0, 1.0, 3.0)


@pytest.mark.slow
def test_site_reconnects_within_5_s_of_each_broker_restart(
    own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    settings = site_settings(tmp_path, own_broker.port, prefix)
    del settings["reconnect_min_s"], settings["reconnect_max_s"]  # the shipped defaults
    site = SiteProc(tmp_path / "proc", settings).start()
    try:
        wait_for(lambda: site.log_text().count(CONNECTED) == 1, 30, "first connect")
        waits = []
        for i, outage in enumerate(OUTAGES_S, start=2):
            own_broker.stop()
            time.sleep(outage)  # the outage itself, not a wait for a result
            own_broker.start()
            back = time.monotonic()
            wait_for(lambda n=i: site.log_text().count(CONNECTED) >= n, 60, f"reconnect {i}")
            waits.append(round(time.monotonic() - back, 2))
        print("seconds to reconnect after each restart:", waits)
        assert max(waits) <= 5.0, f"seconds to reconnect after each restart: {waits}"
        assert site.alive()
    finally:
        site.kill()
