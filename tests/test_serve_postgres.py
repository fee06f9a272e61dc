"""``fedmq serve --db postgresql://...`` end to end: real Mosquitto, a real PostgreSQL, a
site process streaming, the coordinator killed with SIGKILL mid-stream and restarted:
every sample lands in PostgreSQL exactly once and the site's outbox drains (acks only
after commit). The read commands say they read SQLite only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import postgres
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import FEDMQ, REPO, fedmq, site_state, start_fake_site
from tests.helpers.wait import wait_for


@pytest.fixture
def procs() -> Any:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def serve(url: str, broker: Broker, prefix: str, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = ["serve", "--db", url, "--port", str(broker.port), "--prefix", prefix,
            "--batch-time", "0.02"]  # fmt: skip
    return subprocess.Popen([*FEDMQ, *args], stdout=out, stderr=out, cwd=REPO, env=env)


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode()).fetchall()


def site_row(url: str, site: str) -> tuple[Any, ...] | None:
    rows = query(url, f"SELECT state, acked FROM sites WHERE site = '{site}'")
    return rows[0] if rows else None


@pytest.mark.slow
def test_serve_on_postgres_stores_every_sample_once_across_a_kill(
    own_broker: Broker, prefix: str, tmp_path: Path, pg_url: str, procs: list[Any]
) -> None:
    log = tmp_path / "serve.log"
    coord = serve(pg_url, own_broker, prefix, log)
    procs.append(coord)
    wait_for(
        lambda: (
            query(pg_url, "SELECT to_regclass('meta')")[0][0] is not None
            and query(pg_url, "SELECT value FROM meta WHERE key = 'session'")
        ),
        60,
        "fedmq serve to migrate PostgreSQL and count its session",
    )
    n, k = 600, 5
    produced = tmp_path / "produced.jsonl"
    site = start_fake_site(own_broker.port, prefix, "pg-site", tmp_path,
                           "--messages", str(n), "--samples", str(k), "--window", "200",
                           "--ack-timeout", "2", "--produced", str(produced))  # fmt: skip
    procs.append(site)
    # Kill -9 once some of the stream is committed, then restart on the same database.
    wait_for(lambda: (site_row(pg_url, "pg-site") or (0, 0))[1] >= 50, 60, "acks begin")
    coord.send_signal(signal.SIGKILL)
    coord.wait()
    coord = serve(pg_url, own_broker, prefix, log)
    procs.append(coord)
    wait_for(
        lambda: (site_state(tmp_path, "pg-site") or {}).get("acked") == n,
        120,
        f"the site's {n} messages acked ({log})",
    )
    assert query(pg_url, "SELECT value FROM meta WHERE key = 'session'") == [("2",)]
    # Exactly once: every seq, every sample, none twice, values as produced.
    seqs = query(pg_url, "SELECT seq FROM messages WHERE site = 'pg-site' ORDER BY seq")
    assert [s for (s,) in seqs] == list(range(1, n + 1))
    stored = query(
        pg_url,
        "SELECT seq, name, ts, value FROM telemetry WHERE site = 'pg-site' ORDER BY seq, pos",
    )
    expected = []
    for line in produced.read_text().splitlines():
        seq, values = json.loads(line)
        expected += [(seq, name, ts, value) for name, ts, value in values]
    assert len(stored) == n * k
    assert sorted(stored) == sorted(expected)
    # The samples live in day partitions of the telemetry table.
    parts = query(
        pg_url, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'telemetry'::regclass"
    )
    assert parts[0][0] >= 1
    coord.send_signal(signal.SIGTERM)
    assert coord.wait(30) == 0
    assert "cannot open database" not in log.read_text()


def test_read_commands_say_they_read_sqlite_only() -> None:
    out = fedmq("sites", "--db", "postgresql://fedmq@db.plant:5432/fedmq", check=False)
    assert out.returncode == 2
    assert "fedmq sites reads SQLite" in out.stderr and "psql" in out.stderr
    help_text = fedmq("serve", "--help").stdout
    assert "postgresql://" in help_text


@pytest.mark.slow
def test_serve_rides_out_a_postgres_restart_without_loss_or_dead_letters(
    own_broker: Broker, prefix: str, tmp_path: Path, procs: list[Any]
) -> None:
    # A private server this test stops and starts again on the same port.
    server = postgres.PgServer(postgres._tmp_root())
    server.start()
    try:
        url = server.create_db()
        log = tmp_path / "serve.log"
        procs.append(serve(url, own_broker, prefix, log))
        wait_for(lambda: query(url, "SELECT to_regclass('meta')")[0][0] is not None, 60,
                 "fedmq serve to migrate PostgreSQL")  # fmt: skip
        n = 400
        site = start_fake_site(own_broker.port, prefix, "pg-site", tmp_path,
                               "--messages", str(n), "--samples", "3", "--window", "100",
                               "--ack-timeout", "2")  # fmt: skip
        procs.append(site)
        wait_for(lambda: (site_row(url, "pg-site") or (0, 0))[1] >= 30, 60, "acks begin")
        server.stop()  # mid-stream: writes fail until it is back
        wait_for(lambda: "storage unavailable" in log.read_text()
                 or "writer process" in log.read_text(), 60, "serve to notice")  # fmt: skip
        server.start()
        wait_for(
            lambda: (site_state(tmp_path, "pg-site") or {}).get("acked") == n,
            120,
            f"the site's {n} messages acked after the restart ({log})",
        )
        assert procs[0].poll() is None, "serve must survive a database restart"
        seqs = query(url, "SELECT seq FROM messages WHERE site = 'pg-site' ORDER BY seq")
        assert [s for (s,) in seqs] == list(range(1, n + 1))
        assert query(url, "SELECT count(*) FROM telemetry") == [(n * 3,)]
        assert query(url, "SELECT count(*) FROM dead_letters") == [(0,)]
    finally:
        server.stop()
