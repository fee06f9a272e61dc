"""Several ``fedmq serve`` instances on one PostgreSQL database (``--group``): real
Mosquitto, a real PostgreSQL, real site processes replaying counter files. The broker
splits the telemetry among the instances ($share/...); each acks what the database holds
contiguously; one leads (liveness, rebirth). Instances are killed with SIGKILL mid-stream
and restarted: every sample is stored exactly once, every site's outbox drains, and the
other instance takes the lead within seconds when the leader dies.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from coordinator.admin.signing import generate_keypair
from coordinator.store.training import TrainDb
from coordinator.training.aggregate import dump_npz, load_npz
from site_node.outbox_store import read_stats
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import FEDMQ, REPO
from tests.helpers.fake_trainer import FakeTrainer
from tests.helpers.other_brokers import NatsBroker
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)
from tests.helpers.wait import wait_for

ROWS = 900  # samples per site: the counter file's rows, values 0..ROWS-1
SITES = [f"g-site-{i}" for i in range(5)]
# The instances' session expiry: short, so that a dead instance's share stops being queued
# for it soon (docs/scaling.md measures the drain with a long one: FEDMQ_TEST_EXPIRY=86400).
EXPIRY = os.environ.get("FEDMQ_TEST_EXPIRY", "5")


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode(), params).fetchall()


class Instance:
    """One ``fedmq serve --group`` subprocess; restartable with the same client id."""

    def __init__(
        self, url: str, broker: Any, prefix: str, name: str, log: Path, receive: str,
        extra: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.url, self.broker, self.prefix, self.name, self.log = url, broker, prefix, name, log
        self.receive, self.extra = receive, extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Instance:
        out = self.log.open("ab")
        # A short session expiry: a dead instance's share stops being queued for it soon.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FEDMQ_SESSION_EXPIRY_S": EXPIRY,
               "FEDMQ_RECEIVE": self.receive}  # fmt: skip
        args = ["serve", "--db", self.url, "--port", str(self.broker.port),
                "--prefix", self.prefix, "--batch-time", "0.02",
                "--group", "ingest", "--client-id", self.name,
                *(self.extra or ("--no-http",))]  # fmt: skip
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

    def make(name: str, receive: str = "paho", extra: tuple[str, ...] = ()) -> Instance:
        log = tmp_path / f"{name}.log"
        inst = Instance(pg_url, own_broker, prefix, name, log, receive, extra).start()
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
    killed = time.monotonic()
    wait_for(b.leads, 30, "the other instance to take the lead", step=0.05)
    print(f"leader killed: the other leads {time.monotonic() - killed:.2f} s later")
    _all_stored_once_and_acked(pg_url, sites)
    print(f"session expiry {EXPIRY} s: drained {time.monotonic() - killed:.1f} s after the kill")
    # The new leader keeps liveness: heartbeats after the takeover reach the sites table.
    before = dict(query(pg_url, "SELECT site, last_seen FROM sites"))
    wait_for(
        lambda: all(ls > before[s] for s, ls in query(pg_url, "SELECT site, last_seen FROM sites")),
        30,
        "heartbeats stored by the new leader",
    )
    assert {st for (st,) in query(pg_url, "SELECT state FROM sites")} == {"online"}
    a.start()  # back as a follower
    wait_for(lambda: a.text().count("coordinator session") == 2, 60, "a back, connecting")
    assert b.stop() == 0
    wait_for(lambda: a.text().count("won the leader lock") == 2, 30, "a to lead again")
    assert a.stop() == 0


def _delta(delta: float) -> Any:
    def answer(_rnd: int, glob: dict[str, np.ndarray] | None) -> tuple[bytes, int]:
        base = glob if glob is not None else {"w": np.zeros((4, 3), np.float32)}
        return dump_npz({k: v + np.float32(delta) for k, v in base.items()}), 100

    return answer


@pytest.mark.slow
def test_the_leader_killed_mid_round_the_run_finishes_under_the_other(
    group: Callable[..., Instance], own_broker: Broker, prefix: str, pg_url: str, tmp_path: Path
) -> None:
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    token = tmp_path / "api.token"
    extra = ("--signing-key", str(tmp_path / "k.key"), "--token-file", str(token),
             "--http", "127.0.0.1:0")  # fmt: skip
    a = group("lead-a", extra=extra)
    wait_for(a.leads, 60, "the first instance to take the leader lock")
    b = group("lead-b", extra=extra)
    wait_for(lambda: "connected to" in b.text(), 60, "the second instance to connect")
    assert "control API on" not in b.text()  # a follower serves none
    sites = [
        FakeTrainer(own_broker.port, prefix, f"t{i}-{uuid.uuid4().hex[:4]}", "toy", "c" * 64,
                    _delta(float(i + 1)), rows=1000, done_delay_s=2.0).start()
        for i in range(3)
    ]  # fmt: skip
    ids = sorted(s.site for s in sites)
    train = None
    try:
        wait_for(
            lambda: sorted(
                s for s, st in query(pg_url, "SELECT site, state FROM sites") if st == "online"
            ) == ids,
            60,
            "the sites online at the leader",
        )  # fmt: skip
        train = subprocess.Popen(
            [*FEDMQ, "train", "--task", "toy", "--rounds", "3", "--min-sites", "3",
             "--round-timeout", "60", "--wait-sites", "20", "--rejoin-wait", "30",
             "--db", pg_url, "--token-file", str(token), "--json"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(
            lambda: query(
                pg_url,
                "SELECT 1 FROM messages m JOIN train_jobs j ON m.job_id = j.job_id "
                "WHERE j.round = 2 AND m.kind = 'job_result'",
            ) and query(pg_url, "SELECT 1 FROM rounds WHERE round = 2 AND state = 'open'"),
            120,
            "round 2 open with a result stored",
            step=0.1,
        )  # fmt: skip
        a.kill()  # the leader, mid-round
        killed = time.monotonic()
        wait_for(b.leads, 30, "the other instance to take the lead", step=0.05)
        print(f"leader killed mid-round: the other leads {time.monotonic() - killed:.2f} s later")
        out, err = train.communicate(timeout=240)
        assert train.returncode == 0, err[-3000:]
        print(f"the run finished {time.monotonic() - killed:.1f} s after the kill")
    finally:
        if train is not None and train.poll() is None:
            train.kill()
        for s in sites:
            s.stop()
    (run_id,) = query(pg_url, "SELECT run_id FROM runs")[0]
    assert f"run {run_id} was running when the coordinator stopped: resuming it" in b.text()
    assert query(pg_url, "SELECT state FROM runs") == [("done",)]
    rounds = query(pg_url, "SELECT round, state, n_results FROM rounds ORDER BY round")
    assert rounds == [(1, "aggregated", 3), (2, "aggregated", 3), (3, "aggregated", 3)]
    # Each site's result counted once per round: 3 x 100 samples, the model moved by the
    # mean delta (1 + 2 + 3) / 3 = 2 per round.
    models = query(pg_url, "SELECT n_samples FROM models ORDER BY round")
    assert [n for (n,) in models] == [300] * 3
    db = TrainDb(pg_url)
    try:
        weights = db.model_weights(f"{run_id}-r3")
    finally:
        db.close()
    assert weights is not None
    np.testing.assert_allclose(load_npz(weights)["w"], np.full((4, 3), 6.0), rtol=1e-6)
    events = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert events[-1]["event"] == "run_finished" and events[-1]["state"] == "done"
    assert b.stop() == 0


@pytest.mark.slow
def test_a_leader_whose_lock_connection_drops_exits_and_the_other_leads(
    group: Callable[..., Instance], pg_url: str
) -> None:
    a = group("drop-a")
    wait_for(a.leads, 60, "the first instance to take the leader lock")
    b = group("drop-b")
    wait_for(lambda: "connected to" in b.text(), 60, "the second instance to connect")
    # The server ends the leader's lock session (as a restart or a network cut would).
    killed = query(
        pg_url,
        "SELECT pg_terminate_backend(pid) FROM pg_locks "
        "WHERE locktype = 'advisory' AND granted AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    assert killed == [(True,)]
    assert a.proc is not None
    assert a.proc.wait(30) == 1  # it must not go on acting as the leader
    assert "a leader without the lock must not act" in a.text()
    wait_for(b.leads, 30, "the other instance to take the lead")
    assert b.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize("receive", ["paho", "asyncio"])
def test_a_group_on_a_broker_without_shared_subscriptions_stops_with_the_reason(
    receive: str, tmp_path: Path, pg_url: str, prefix: str
) -> None:
    # nats-server 2.9 speaks MQTT 3.1.1 only and takes $share/... as an ordinary topic:
    # a group there would store nothing, silently. serve says why and stops (exit 4).
    nats = NatsBroker(tmp_path / "nats").start()
    try:
        inst = Instance(pg_url, nats, prefix, "on-nats", tmp_path / "nats.log", receive).start()
        assert inst.proc is not None
        assert inst.proc.wait(90) == 4, inst.text()[-3000:]
    finally:
        nats.stop()
    assert "speaks MQTT 3.1.1 only: --group needs MQTT 5 shared subscriptions" in inst.text()
