"""The coordinator's control API, against a real ``fedmq serve`` subprocess: the token
(0600, next to the database) is needed to submit and cancel, reads need none on loopback
(the default address) and everything needs it off loopback; ``fedmq train`` submits a run,
follows it to its end, and Ctrl-C cancels it (exit 130, the run stored interrupted and
its sites sent a signed cancel)."""

from __future__ import annotations

import json
import signal
import sqlite3
import stat
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.admin.signing import generate_keypair
from coordinator.api.server import is_loopback, parse_bind
from coordinator.api.token import token_path
from coordinator.cli.serve import DEFAULT_HTTP, serve
from coordinator.training.aggregate import dump_npz
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import FEDMQ, REPO, Coordinator, fedmq, sites_json, wait_until
from tests.helpers.fake_trainer import FakeTrainer
from tests.helpers.mqtt import TestClient

TASK, CODE_HASH = "toy", "c" * 64


def _answer(_rnd: int, glob: dict[str, np.ndarray] | None) -> tuple[bytes, int]:
    base = glob or {"w": np.zeros(3, np.float32)}
    return dump_npz({k: v + np.float32(1) for k, v in base.items()}), 100


def _url(db: Path) -> str:
    conn = sqlite3.connect(str(db))
    try:
        return str(conn.execute("SELECT value FROM meta WHERE key = 'api_url'").fetchone()[0])
    finally:
        conn.close()


def _http(method: str, url: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, data=None if body is None else json.dumps(body).encode(), method=method
    )
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _serve(broker: Broker, tmp: Path, *extra: str) -> Coordinator:
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    generate_keypair(tmp / "k.key", tmp / "k.pub")
    coord = Coordinator(
        tmp / "c.db", broker.port, prefix, ("--signing-key", str(tmp / "k.key"), *extra)
    )
    coord.start().wait_ready(60)
    wait_until(lambda: _has_url(coord.db), 20, "the API URL announced")
    return coord


def _has_url(db: Path) -> bool:
    try:
        _url(db)
        return True
    except (sqlite3.Error, TypeError):
        return False


@pytest.fixture
def coord(broker: Broker, tmp_path: Path) -> Iterator[Coordinator]:
    c = _serve(broker, tmp_path)
    yield c
    c.kill()


def test_the_default_address_is_loopback_and_a_bad_one_is_a_usage_error(tmp_path: Path) -> None:
    option = next(p for p in serve.params if p.name == "http")
    assert option.default == DEFAULT_HTTP == "127.0.0.1:8321"
    assert is_loopback(parse_bind(DEFAULT_HTTP)[0])
    assert not is_loopback("0.0.0.0") and not is_loopback("plant-server")
    proc = fedmq("serve", "--db", str(tmp_path / "x.db"), "--http", "nonsense", check=False)
    assert proc.returncode == 2 and "HOST:PORT" in proc.stderr


def test_changes_need_the_token_reads_on_loopback_do_not(coord: Coordinator) -> None:
    url, path = _url(coord.db), token_path(coord.db)
    assert url.startswith("http://127.0.0.1:")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) >= 32
    spec = {"spec": {"task": TASK, "rounds": 1, "min_sites": 1, "wait_sites_s": 0}}
    assert _http("POST", url + "/api/runs", None, spec)[0] == 401
    assert _http("POST", url + "/api/runs", "wrong", spec)[0] == 401
    assert _http("POST", url + "/api/runs/run-x/cancel", None, {})[0] == 401
    assert _http("POST", url + "/api/runs/run-x/resume", None, {})[0] == 401
    assert _http("GET", url + "/api/health") == (200, {"ok": True})
    assert _http("GET", url + "/api/runs/run-x/events")[0] == 404
    code, body = _http("POST", url + "/api/runs", token, spec)
    assert code == 202, body
    # No site offers the task: the run cannot start, and says why.
    page = wait_until(
        lambda: _http("GET", url + f"/api/runs/{body['run_id']}/events?wait=2")[1]["outcome"],
        30, "the run's outcome",
    )  # fmt: skip
    assert page["code"] == "failed" and "0 live site(s) advertise toy" in page["error"]
    assert _http("POST", url + "/api/runs", token, {"spec": {"rounds": 1}})[0] == 400


def test_off_loopback_every_request_needs_the_token(broker: Broker, tmp_path: Path) -> None:
    coord = _serve(broker, tmp_path, "--http", "0.0.0.0:0")
    try:
        port = _url(coord.db).rsplit(":", 1)[1]
        local = f"http://127.0.0.1:{port}"
        token = token_path(coord.db).read_text().strip()
        assert _http("GET", local + "/api/health")[0] == 401
        assert _http("GET", local + "/api/runs/run-x/events")[0] == 401
        assert _http("GET", local + "/api/health", token) == (200, {"ok": True})
    finally:
        coord.kill()


def _sites(coord: Coordinator, broker: Broker, n: int, **kw: Any) -> list[FakeTrainer]:
    made = [
        FakeTrainer(broker.port, coord.prefix, f"s{i}-{uuid.uuid4().hex[:4]}", TASK, CODE_HASH,
                    _answer, rows=1000, **kw).start()
        for i in range(n)
    ]  # fmt: skip
    ids = [s.site for s in made]
    wait_until(lambda: all(sites_json(coord.db).get(s, {}).get("state") == "online" for s in ids),
               30, f"{ids} online", step=0.3)  # fmt: skip
    return made


def test_fedmq_train_submits_follows_and_finishes_a_run(coord: Coordinator, broker: Broker) -> None:
    sites = _sites(coord, broker, 2)
    try:
        proc = fedmq(
            "train", "--task", TASK, "--rounds", "2", "--min-sites", "2", "--round-timeout", "30",
            "--wait-sites", "20", "--db", str(coord.db), timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = proc.stdout
        assert "round 1: sent to" in out and "round 2 aggregated: 2 results" in out
        run_id = out.split("run ", 1)[1].split(":", 1)[0]
        assert f"run {run_id} done" in out
        run = json.loads(fedmq("run", run_id, "--db", str(coord.db), "--json").stdout)
        assert run["state"] == "done" and [r["n_results"] for r in run["rounds"]] == [2, 2]
    finally:
        for s in sites:
            s.stop()


def test_ctrl_c_cancels_the_run_and_exits_130(coord: Coordinator, broker: Broker) -> None:
    # "done" 60 s after the result: the round stays open until the run is cancelled.
    sites = _sites(coord, broker, 2, done_delay_s=60.0)
    cancels = TestClient(broker.port).connect()
    cancels.subscribe(f"{coord.prefix}/site/+/cmd/cancel")
    proc = subprocess.Popen(
        [*FEDMQ, "train", "--task", TASK, "--rounds", "1", "--min-sites", "2",
         "--round-timeout", "120", "--wait-sites", "20", "--db", str(coord.db), "--json"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[dict[str, Any]] = []
    reader = threading.Thread(
        target=lambda: lines.extend(json.loads(x) for x in proc.stdout or [] if x.startswith("{"))
    )
    reader.start()
    try:
        wait_until(lambda: any(e["event"] == "round_started" for e in lines), 60, "round 1 sent")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130, proc.stderr.read() if proc.stderr else ""
        reader.join(10)
        run_id = lines[0]["run_id"]
        assert lines[-1]["event"] == "run_finished" and lines[-1]["reason"] == "interrupted"
        run = json.loads(fedmq("run", run_id, "--db", str(coord.db), "--json").stdout)
        assert run["state"] == "failed" and run["reason"] == "interrupted"
        assert [r["state"] for r in run["rounds"]] == ["failed"]
        got = cancels.collect(3.0)
        assert {m.topic.split("/")[-3] for m in got} == {s.site for s in sites}
    finally:
        if proc.poll() is None:
            proc.kill()
        cancels.close()
        for s in sites:
            s.stop()
