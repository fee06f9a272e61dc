"""A real coordinator and real sites end to end on the shipped TLS + password + ACL config.

Everything the federation needs must pass the ACL: site status/registration/heartbeat/
telemetry up, the coordinator's acks and signed commands down. If any of those were denied
the sites would never be listed online, or their outboxes would never drain.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, fedmq, sites_json, wait_until
from tests.helpers.secure_broker import COORDINATOR_USER, SecureSetup, secure_setup
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)

SITES = ["site-a", "site-b"]


@pytest.fixture
def setup(tmp_path: Path, prefix: str) -> Iterator[SecureSetup]:
    s = secure_setup(tmp_path / "secure", SITES, prefix=prefix)
    yield s
    s.close()


def _site_mqtt(setup: SecureSetup, site: str, port: int) -> dict[str, Any]:
    creds = setup.credentials(site)
    return {**creds["mqtt"], "port": port, "keepalive": 5}


@pytest.mark.slow
def test_site_and_coordinator_run_end_to_end_on_tls_and_acl(
    setup: SecureSetup,
    broker_factory: Callable[..., Broker],
    tmp_path: Path,
    prefix: str,
    make_site: Callable[..., SiteProc],
) -> None:
    broker = broker_factory(config_text=setup.config_text)
    coord_cfg = setup.credentials_file(COORDINATOR_USER)
    db = tmp_path / "fedmq.db"
    coord = Coordinator(db, broker.port, prefix, extra=("--config", str(coord_cfg)))
    coord.env = {"FEDMQ_MQTT__HOST": "localhost"}
    coord.start().wait_ready()
    try:
        sites = [
            make_site(
                broker.port,
                prefix,
                site_id=site,
                rate_hz=50.0,
                mqtt=_site_mqtt(setup, site, broker.port),
                coordinator_public_key_file=setup.credentials(site)["coordinator_public_key_file"],
            )
            for site in SITES
        ]

        def all_online() -> bool:
            rows = sites_json(db)
            return all(rows.get(s, {}).get("state") == "online" for s in SITES)

        wait_until(all_online, 30, "both sites online through TLS + ACL", step=0.3)

        # Acks travel coordinator -> site through the ACL: the outboxes get acked.
        def acked(site: SiteProc) -> bool:
            return int(site.status()["last_acked"]) >= 5

        for site in sites:
            wait_until(lambda s=site: acked(s), 30, f"acks reaching {site.settings['site_id']}")
            out = fedmq("telemetry", site.settings["site_id"], "--db", str(db), "--json")
            rows = json.loads(out.stdout)
            assert isinstance(rows, list) and len(rows) > 0, "telemetry stored for the site"

        # Nothing was refused on the way: no dead letters, no secret in any log.
        dead = json.loads(fedmq("dead-letters", "--db", str(db), "--json").stdout)
        assert dead == []
        for site in sites:
            assert site.terminate() == 0
            assert setup.password(site.settings["site_id"]) not in site.log_text()
        assert setup.password(COORDINATOR_USER) not in coord.log_text()

        def offline() -> bool:
            rows = sites_json(db)
            return all(rows[s]["state"] == "offline" for s in SITES)

        wait_until(offline, 15, "clean shutdowns recorded as offline", step=0.3)
    finally:
        coord.stop()
