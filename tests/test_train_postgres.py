"""Training runs on the PostgreSQL store, end to end: a real PostgreSQL
(tests/helpers/postgres.py), a real Mosquitto, ``fedmq serve --db postgresql://...`` and
``fedmq train --db postgresql://...`` as subprocesses.

* kill -9 of serve in the middle of a round, then the same command again: serve resumes
  the run by itself and finishes it, each result counted once, and the ``fedmq train``
  that submitted it (API URL read from PostgreSQL, token from --token-file) follows it
  to the end. Fake training sites (the real wire protocol, no syft): the model's value
  says which results were counted.
* A run of two rounds over two real ``fedmq-site run`` processes training a small task
  (cmapss-rul, one epoch on three engine units each) stores its models in PostgreSQL.
* What stays SQLite-only answers with a clear error: the deployment routes (503), and
  ``fedmq train`` without a token says where it looked.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from coordinator.admin.signing import generate_keypair
from coordinator.api.client import ApiClient, ApiError
from coordinator.training.aggregate import load_npz
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import FEDMQ, REPO, fedmq
from tests.helpers.data import TRAIN_FD001
from tests.helpers.fake_trainer import FakeTrainer
from tests.helpers.mqtt import TestClient
from tests.helpers.resumed_run import assert_resumed_run, delta_answer
from tests.helpers.site_proc import SiteProc, site_settings
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.slow

TASK, CODE_HASH = "toy", "c" * 64
DELTAS = [1.0, 2.0, 3.0]  # each fake site's move: the model moves by their mean per round


def query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode(), args or None).fetchall()


def _session(url: str) -> int:
    if query(url, "SELECT to_regclass('meta')")[0][0] is None:
        return 0
    rows = query(url, "SELECT value FROM meta WHERE key = 'session'")
    return int(rows[0][0]) if rows else 0


@dataclass
class PgServe:
    """``fedmq serve --db postgresql://...`` as a subprocess; ``kill()`` is kill -9."""

    url: str
    port: int
    prefix: str
    key: Path
    token: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout: float = 90) -> PgServe:
        before = _session(self.url)
        args = ["serve", "--db", self.url, "--port", str(self.port), "--prefix", self.prefix,
                "--signing-key", str(self.key), "--token-file", str(self.token),
                "--http", "127.0.0.1:0"]  # fmt: skip
        out = self.log.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([*FEDMQ, *args], stdout=out, stderr=out, cwd=REPO, env=env)
        # Ready: this start counted its session, and published its retained online status
        # (it subscribes first: nothing published from now on is missed).
        session = wait_for(
            lambda: self._alive() and _session(self.url) > before and _session(self.url),
            timeout,
            "fedmq serve to migrate PostgreSQL and count its session",
            step=0.2,
        )
        client = TestClient(self.port)
        client.connect(timeout=10)
        try:
            client.subscribe(f"{self.prefix}/coordinator/status")
            client.expect(
                lambda m: (
                    json.loads(m.payload).get("state") == "online"
                    and json.loads(m.payload).get("session") == session
                ),
                timeout=timeout,
            )
        finally:
            client.close()
        return self

    def _alive(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log_text()[-3000:]
        return True

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def serve(broker: Broker, prefix: str, tmp_path: Path, pg_url: str) -> Iterator[PgServe]:
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    s = PgServe(pg_url, broker.port, prefix, tmp_path / "k.key", tmp_path / "api.token",
                tmp_path / "serve.log")  # fmt: skip
    try:
        yield s
    finally:
        s.kill()


def _online(url: str, ids: list[str], task: str) -> bool:
    rows = query(url, "SELECT site, state, registration FROM sites")
    ready = {s for s, state, reg in rows if state == "online" and reg and task in reg}
    return set(ids) <= ready


def _train(url: str, token: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*FEDMQ, "train", *args, "--db", url, "--token-file", str(token), "--json"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_kill_9_mid_round_on_postgres_then_start_again_finishes_the_run(
    serve: PgServe, broker: Broker, prefix: str, tmp_path: Path
) -> None:
    url = serve.url
    serve.start()
    sites = [
        FakeTrainer(broker.port, prefix, f"p{i}-{uuid.uuid4().hex[:4]}", TASK, CODE_HASH,
                    delta_answer(d), rows=1000, done_delay_s=2.0).start()
        for i, d in enumerate(DELTAS)
    ]  # fmt: skip
    ids = [s.site for s in sites]
    train = None
    lines: list[dict[str, Any]] = []
    try:
        wait_for(lambda: _online(url, ids, TASK), 60, "fake sites online", step=0.3)
        train = _train(url, serve.token, "--task", TASK, "--rounds", "3", "--min-sites", "3",
                       "--round-timeout", "60", "--wait-sites", "20",
                       "--rejoin-wait", "30")  # fmt: skip
        reader = threading.Thread(
            target=lambda: lines.extend(
                json.loads(x) for x in train.stdout or [] if x.startswith("{")
            )
        )
        reader.start()
        # Mid-round: round 2 open, and at least one of its results already stored.
        wait_for(
            lambda: (
                query(
                    url,
                    "SELECT 1 FROM messages m JOIN train_jobs j ON m.job_id = j.job_id "
                    "WHERE j.round = 2 AND m.kind = 'job_result'",
                )
                and query(url, "SELECT 1 FROM rounds WHERE round = 2 AND state = 'open'")
            ),
            90,
            "round 2 open with a result stored",
            step=0.1,
        )
        serve.kill()  # kill -9
        (run_id,) = query(url, "SELECT run_id FROM runs")[0]
        assert query(url, "SELECT state FROM runs") == [("running",)]
        serve.start()  # the same command again, nothing else
        assert train.wait(240) == 0, (train.stderr.read() if train.stderr else "")[-3000:]
        reader.join(10)
        # Deployments stay SQLite-only: the API says so rather than failing obscurely.
        (api,) = query(url, "SELECT value FROM meta WHERE key = 'api_url'")[0]
        with pytest.raises(ApiError, match="SQLite") as refused:
            ApiClient(api, serve.token.read_text().strip()).deployments()
        assert refused.value.status == 503
    finally:
        if train is not None and train.poll() is None:
            train.kill()
        for s in sites:
            s.stop()
    log = serve.log_text()
    assert f"run {run_id} was running when the coordinator stopped: resuming it" in log
    assert_resumed_run(url, run_id, ids, DELTAS)
    # The training read commands read PostgreSQL too.
    run = json.loads(fedmq("run", run_id, "--db", url, "--json").stdout)
    assert run["state"] == "done" and [r["n_results"] for r in run["rounds"]] == [3, 3, 3]
    assert [r["run_id"] for r in json.loads(fedmq("runs", "--db", url, "--json").stdout)] == [
        run_id
    ]
    listed = json.loads(fedmq("jobs", "--run", run_id, "--db", url, "--json").stdout)
    assert len([j for j in listed if not j["late"]]) == 9
    out = tmp_path / "m.npz"
    fedmq("models", "export", f"{run_id}-r3", "--out", str(out), "--db", url)
    np.testing.assert_allclose(load_npz(out.read_bytes())["w"], np.full((4, 3), 6.0), rtol=1e-6)
    missing = fedmq("models", "export", "nope", "--out", str(out), "--db", url, check=False)
    assert missing.returncode == 3 and "no model 'nope'" in missing.stderr, missing.stderr
    # The follower saw the resumed run through to its end.
    assert any(e["event"] == "run_started" and e.get("resumed_at_round") == 2 for e in lines)
    assert lines[-1]["event"] == "run_finished" and lines[-1]["state"] == "done"


def test_train_without_a_token_says_where_it_looked(pg_url: str, tmp_path: Path) -> None:
    env_home = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    proc = subprocess.run(
        [*FEDMQ, "train", "--task", TASK, "--db", pg_url], capture_output=True, text=True,
        cwd=REPO, env={**os.environ, **env_home}, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"no API token at {tmp_path / 'cfg' / 'fedmq' / 'api.token'}" in proc.stderr
    assert "--token-file" in proc.stderr
    given = subprocess.run(
        [*FEDMQ, "train", "--task", TASK, "--db", pg_url, "--token-file",
         str(tmp_path / "none.token")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert given.returncode == 2, given.stderr
    assert f"no API token in {tmp_path / 'none.token'} (--token-file)" in given.stderr


UNITS = {"a": [1, 2, 3], "b": [4, 5, 6]}
REAL_TASK = "cmapss-rul"


@pytest.mark.train
def test_two_rounds_over_real_sites_store_models_in_postgres(
    serve: PgServe, broker: Broker, prefix: str, tmp_path: Path
) -> None:
    url = serve.url
    serve.start()
    sites: list[SiteProc] = []
    try:
        for site_id, units in UNITS.items():
            training = {
                "allow": [REAL_TASK], "approval": "auto",
                "datasets": [{"name": f"fd001-{site_id}", "task": REAL_TASK,
                              "paths": [str(TRAIN_FD001)], "params": {"units": units}}],
            }  # fmt: skip
            settings = site_settings(
                tmp_path, broker.port, prefix, site_id=site_id, devices=[], training=training,
                coordinator_public_key_file=str(tmp_path / "k.pub"),
            )  # fmt: skip
            sites.append(SiteProc(tmp_path / site_id, settings).start())
        wait_for(lambda: _online(url, list(UNITS), REAL_TASK), 240, "real sites online", step=1)
        train = _train(url, serve.token, "--task", REAL_TASK, "--rounds", "2",
                       "--min-sites", "2", "--sites", "a,b", "--round-timeout", "240",
                       "--epochs", "1")  # fmt: skip
        out, err = train.communicate(timeout=600)
        assert train.returncode == 0, err[-3000:]
    finally:
        for proc in sites:
            proc.kill()
    events = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    run_id = events[0]["run_id"]
    assert events[-1]["event"] == "run_finished" and events[-1]["state"] == "done"
    rounds = query(url, "SELECT round, state, n_results FROM rounds WHERE run_id = %s "
                   "ORDER BY round", run_id)  # fmt: skip
    assert rounds == [(1, "aggregated", 2), (2, "aggregated", 2)]
    models = query(url, "SELECT round, n_sites, n_samples, sha256, size, weights FROM models "
                   "WHERE run_id = %s ORDER BY round", run_id)  # fmt: skip
    assert [(r, n) for r, n, *_ in models] == [(1, 2), (2, 2)]
    for _r, _n, samples, sha, size, weights in models:
        raw = bytes(weights)
        assert samples > 0 and len(raw) == size and hashlib.sha256(raw).hexdigest() == sha
        with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
            assert len(arrays.files) > 4
    jobs = query(url, "SELECT site, state, late FROM train_jobs WHERE run_id = %s", run_id)
    assert sorted(jobs) == [("a", "done", 0)] * 2 + [("b", "done", 0)] * 2
