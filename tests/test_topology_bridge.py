"""A plant Mosquitto bridged to a central Mosquitto, the central one killed mid-stream.

Real ``fedmq-site run`` processes publish to the plant broker; the shipped bridge example
(broker_config/topologies/bridge-plant.conf) carries their data to the central broker
(broker_config/topologies/central.conf: persistent), where the real ``fedmq serve`` runs.
The central broker is killed with kill -9 while the sites stream and restarted on the same
persistence file; every sample the sites produced must then be in the database exactly
once, by (site, epoch, seq) and by sample, and every site outbox must drain to 0.

The short version (2 sites, one kill) is in the default run; the long one (3 sites at
1,000 samples/s, two kills) is marked ``topology``; see docs/scaling.md for the command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from site_node.outbox_store import read_stats
from tests.helpers.coord_proc import Coordinator
from tests.helpers.db import query
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)
from tests.helpers.topologies import (
    bridge_state,
    bridged_brokers,
    drained,
    site_tally,
    wait_bridge_up,
)
from tests.helpers.wait import wait_for


def _bridge_run(
    prefix: str, tmp_path: Path, make_site: Callable[..., SiteProc],
    sites: int, rate_hz: float, rows: int, kills: int, plant_kills: int = 0,
) -> int:  # fmt: skip
    """Stream, kill the central broker ``kills`` times, drain, account.

    In the last ``plant_kills`` of them the plant broker is killed too while the central
    one is down, and restarted (the dev config: no persistence): the bridge queue it held,
    messages it had PUBACKed to the sites, is gone, and only the site outboxes have them.
    Returns how many messages the database holds from a re-send (``historical``: a site
    replays unacked rows when it reconnects or the coordinator comes back online).
    """
    central, plant = bridged_brokers(tmp_path / "brokers", prefix)
    db = tmp_path / "c.db"
    coord = Coordinator(db, central.port, prefix)
    names = [f"plant-{i}" for i in range(sites)]
    try:
        coord.start().wait_ready()
        wait_bridge_up(plant)
        procs = {
            name: make_site(plant.port, prefix, site_id=name, rate_hz=rate_hz, rows=rows,
                            outbox={"ack_timeout_s": 5.0})
            for name in names
        }  # fmt: skip
        outboxes = {n: p.data_dir / "outbox.db" for n, p in procs.items()}
        saved = central.workdir / "mosquitto.db"
        for kill in range(kills):
            # Mid-stream, with a persistence file on disk (autosave_interval 10 s).
            want = 300 * (kill + 1)
            wait_for(partial(_stored_at_least, db, want), 120, f"{want} messages stored", step=0.2)
            wait_for(saved.exists, 60, "the central broker's persistence file")
            central.kill()
            assert _samples(db) < sites * rows, "the streams ended before the kill: test is void"
            wait_for(lambda: bridge_state(plant, 2.0) == "0", 30, "the plant sees the bridge down")
            # The sites keep producing into their outboxes while the central broker is down.
            last = {n: read_stats(o).last_seq for n, o in outboxes.items()}
            wait_for(
                partial(_grew, outboxes, last, 20),
                60,
                "20 more messages per site while the central broker is down",
                step=0.2,
            )
            if kill >= kills - plant_kills:
                before = {n: _connections(p) for n, p in procs.items()}
                plant.kill()  # its queue for the bridge: PUBACKed to the sites, now gone
                plant.start()
                wait_for(
                    partial(_reconnected, procs, before),
                    60,
                    "every site connected to the restarted plant broker",
                    step=0.2,
                )
            central.start()  # same config, same persistence file
            wait_bridge_up(plant)
        wait_for(
            lambda: all(drained(db, n, o, rows) for n, o in outboxes.items()),
            240,
            "every site drained into the central coordinator",
            step=0.5,
        )
        assert coord.alive()
    finally:
        code = coord.stop() if coord.proc is not None else 0
        central.kill()
        plant.kill()
    assert code == 0
    tallies = [site_tally(db, n, o, rows) for n, o in outboxes.items()]
    resent = int(query(db, "SELECT count(*) FROM messages WHERE historical")[0][0])
    sys.stdout.write(
        json.dumps({"bridge_central_kill9": {"kills": kills, "plant_kills": plant_kills,
                                             "stored_from_a_resend": resent,
                                             "sites": tallies}}, indent=1) + "\n"
    )  # fmt: skip
    for t in tallies:
        assert t["produced"] > 0 and t["stored"] == t["produced"] == t["message_rows"], t
        assert t["lost"] == t["foreign"] == 0, t
        assert t["messages_with_duplicate_samples"] == 0, t
        assert t["samples_exact"] and t["samples_stored"] == rows, t
        assert t["samples_lost"] == t["samples_duplicated"] == 0, t
        assert t["outbox_depth"] == t["outbox_dropped"] == 0 and t["acked_all"], t
    assert query(db, "SELECT count(*) FROM dead_letters")[0][0] == 0  # no echoes, no junk
    # serve reconnected after every kill
    assert coord.log_text().count("INFO coordinator.bus: connected to") >= kills + 1
    return resent


def _stored_at_least(db: Path, n: int) -> bool:
    return int(query(db, "SELECT count(*) FROM messages")[0][0]) >= n


def _connections(site: SiteProc) -> int:
    return site.log_text().count("site_node.bus: connected to")


def _reconnected(procs: dict[str, SiteProc], before: dict[str, int]) -> bool:
    return all(_connections(p) > before[name] for name, p in procs.items())


def _grew(outboxes: dict[str, Path], last: dict[str, int], n: int) -> bool:
    """Every site allocated ``n`` more seqs than ``last`` (its outbox is filling up)."""
    return all(read_stats(o).last_seq >= last[name] + n for name, o in outboxes.items())


def _samples(db: Path) -> int:
    return int(query(db, "SELECT count(*) FROM telemetry")[0][0])


@pytest.mark.slow
def test_central_broker_kill9_behind_a_bridge_short(
    prefix: str, tmp_path: Path, make_site: Callable[..., SiteProc]
) -> None:
    """2 sites x 500 samples/s for 16 s, the central broker killed once."""
    _bridge_run(prefix, tmp_path, make_site, sites=2, rate_hz=500.0, rows=8_000, kills=1)


@pytest.mark.topology
def test_central_broker_kill9_behind_a_bridge_long(
    prefix: str, tmp_path: Path, make_site: Callable[..., SiteProc]
) -> None:
    """3 sites x 1,000 samples/s for 40 s, the central broker killed twice; the second time
    the plant broker too while the central one is down, so the bridge's queue is lost."""
    resent = _bridge_run(
        prefix, tmp_path, make_site, sites=3, rate_hz=1000.0, rows=40_000, kills=2,
        plant_kills=1,
    )  # fmt: skip
    assert resent > 0, "the plant broker's kill lost nothing: the test is void"
