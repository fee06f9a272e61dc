"""Several ``fedmq serve`` instances on one PostgreSQL database (``--group``): real
Mosquitto, a real PostgreSQL, real site processes replaying counter files. The broker
splits the telemetry among the instances ($share/...); each acks what the database holds
contiguously; one leads (liveness, rebirth). Instances are killed with SIGKILL mid-stream
and restarted: every sample is stored exactly once, every site's outbox drains, and the
other instance takes the lead within seconds when the leader dies.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from site_node.outbox_store import read_stats
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import FEDMQ, REPO
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)
from tests.helpers.wait import wait_for

ROWS = 900  # samples per site: the counter file's rows, values 0..ROWS-1
SITES = [f"g-site-{i}" for i in range(5)]


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode(), params).fetchall()


class Instance:
    """One ``fedmq serve --group`` subprocess; restartable with the same client id."""

    def __init__(
        self, url: str, broker: Broker, prefix: str, name: str, log: Path, receive: str
    ) -> None:
        self.url, self.broker, self.prefix, self.name, self.log = url, broker, prefix, name, log
        self.receive = receive
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Instance:
        out = self.log.open("ab")
        # A short session expiry: a dead instance's share stops being queued for it soon.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FEDMQ_SESSION_EXPIRY_S": "5",
               "FEDMQ_RECEIVE": self.receive}  # fmt: skip
        args = ["serve", "--db", self.url, "--port", str(self.broker.port),
                "--prefix", self.prefix, "--batch-time", "0.02", "--no-http",
                "--group", "ingest", "--client-id", self.name]  # fmt: skip
        self.proc = subprocess.Popen([*FEDMQ, *args], stdout=out, stderr=out, cwd=REPO, env=env)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def leads(self) -> bool:
        return "won the leader lock" in self.text()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def stored_last_run(self) -> int:
        runs = re.findall(r"coordinator stopped \((\d+) messages stored\)", self.text())
        assert runs, f"{self.name} did not stop cleanly:\n{self.text()[-3000:]}"
        return int(runs[-1])


@pytest.fixture
def group(own_broker: Broker, prefix: str, tmp_path: Path, pg_url: str) -> Iterator[Any]:
    started: list[Instance] = []

    def make(name: str, receive: str = "paho") -> Instance:
        log = tmp_path / f"{name}.log"
        inst = Instance(pg_url, own_broker, prefix, name, log, receive).start()
        started.append(inst)
        return inst

    yield make
    for inst in started:
        if inst.proc is not None and inst.proc.poll() is None:
            inst.proc.kill()
            inst.proc.wait()


def _sites(make_site: Callable[..., SiteProc], broker: Broker, prefix: str) -> list[SiteProc]:
    return [
        make_site(broker.port, prefix, site_id=site, rate_hz=150.0, rows=ROWS,
                  outbox={"ack_timeout_s": 5.0})
        for site in SITES
    ]  # fmt: skip


def _stored(url: str) -> int:
    return int(query(url, "SELECT count(*) FROM telemetry")[0][0])


def _all_stored_once_and_acked(url: str, sites: list[SiteProc]) -> None:
    def drained() -> bool:
        for s in sites:
            st = read_stats(s.data_dir / "outbox.db")
            if st.depth or st.last_seq == 0 or st.last_acked != st.last_seq:
                return False
        return _stored(url) >= ROWS * len(sites)

    wait_for(drained, 240, "every site's samples stored and its outbox acked and drained")
    for site in SITES:
        values = query(url, "SELECT value FROM telemetry WHERE site = %s ORDER BY value", site)
        # Exactly once: each counter row 0..ROWS-1 once, nothing twice, nothing missing.
        assert [int(v) for (v,) in values] == list(range(ROWS)), site
        seqs = query(url, "SELECT seq FROM messages WHERE site = %s ORDER BY seq", site)
        assert [s for (s,) in seqs] == list(range(1, len(seqs) + 1)), site
    assert query(url, "SELECT count(*) FROM dead_letters")[0][0] == 0


@pytest.mark.slow
@pytest.mark.parametrize("receive", ["paho", "asyncio"])
def test_two_workers_one_killed_mid_stream_store_every_sample_once(
    receive: str,
    group: Callable[..., Instance],
    make_site: Callable[..., SiteProc],
    own_broker: Broker,
    prefix: str,
    pg_url: str,
) -> None:
    a = group("ingest-a", receive)
    wait_for(a.leads, 60, "the first instance to take the leader lock")
    b = group("ingest-b", receive)
    wait_for(lambda: "connected to" in b.text(), 60, "the second instance to connect")
    sites = _sites(make_site, own_broker, prefix)
    # Kill -9 the follower once part of the stream is stored, then restart it.
    wait_for(lambda: _stored(pg_url) >= 1000, 120, "a first part of the stream stored")
    b.kill()
    wait_for(lambda: _stored(pg_url) >= 2000, 120, "the stream going on without b")
    b.start()
    _all_stored_once_and_acked(pg_url, sites)
    # The liveness the leader keeps: every site registered and online.
    rows = query(pg_url, "SELECT site, state, registration IS NOT NULL FROM sites ORDER BY site")
    assert rows == [(s, "online", True) for s in SITES]
    assert not b.leads()  # a follower all along
    assert a.stop() == 0 and b.stop() == 0
    # Both took a share of the stream (the broker split it between them).
    assert a.stored_last_run() > 0 and b.stored_last_run() > 0


@pytest.mark.slow
def test_the_leader_killed_mid_stream_another_leads_and_nothing_is_lost(
    group: Callable[[str], Instance],
    make_site: Callable[..., SiteProc],
    own_broker: Broker,
    prefix: str,
    pg_url: str,
) -> None:
    a = group("ingest-a")
    wait_for(a.leads, 60, "the first instance to take the leader lock")
    b = group("ingest-b")
    wait_for(lambda: "connected to" in b.text(), 60, "the second instance to connect")
    sites = _sites(make_site, own_broker, prefix)
    wait_for(lambda: _stored(pg_url) >= 1000, 120, "a first part of the stream stored")
    a.kill()
    wait_for(b.leads, 30, "the other instance to take the lead")
    _all_stored_once_and_acked(pg_url, sites)
    # The new leader keeps liveness: heartbeats after the takeover reach the sites table.
    before = dict(query(pg_url, "SELECT site, last_seen FROM sites"))
    wait_for(
        lambda: all(ls > before[s] for s, ls in query(pg_url, "SELECT site, last_seen FROM sites")),
        30,
        "heartbeats stored by the new leader",
    )
    assert {st for (st,) in query(pg_url, "SELECT state FROM sites")} == {"online"}
    a.start()  # back as a follower
    wait_for(lambda: a.text().count("connected to") == 3, 60, "a back, connected")
    assert b.stop() == 0
    wait_for(lambda: a.text().count("won the leader lock") == 2, 30, "a to lead again")
    assert a.stop() == 0
