"""``fedmq deploy`` / ``fedmq deployments`` against a real ``fedmq serve`` subprocess, a
real Mosquitto and real SQLite, with fake sites (tests/helpers/deploy_site.py) that check
each deploy command with the site's own verifier (site_node/command_guard.py), reassemble
and sha256-check the weights, and answer with durable deployment statuses.

Covered: the signed command (task, code hash, weights in chunks, cadence, rules, expiry),
statuses stored exactly once and acked, events per transition, `fedmq deployments`,
`--all` skipping a site with another code hash, `--wait` (active: exit 0; rejected:
exit 5 with the reason), rollback to the previously active version with its settings,
and the refusals (unknown model, unknown or deregistered site, wrong code hash, nothing
to roll back, no signing key, no token)."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.admin.signing import generate_keypair
from coordinator.api.token import token_path
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import FEDMQ, REPO, Coordinator, fedmq, wait_until
from tests.helpers.deploy_site import DeploySite, put_model
from tests.helpers.mqtt import TestClient

TASK = "toy"
HASH = "a" * 64
OTHER = "b" * 64


def _npz(n: int, seed: int) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, w=np.random.default_rng(seed).standard_normal(n).astype(np.float32))
    return buf.getvalue()


V1 = _npz(150_000, 1)  # ~600 KB: sent as deploy_chunk messages
V2 = _npz(100, 2)  # inline


def _sql(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _registered(db: Path, *sites: str) -> bool:
    try:
        rows = _sql(db, "SELECT site FROM sites WHERE registration IS NOT NULL")
    except sqlite3.Error:
        return False
    return set(sites) <= {r[0] for r in rows}


def _api_ready(db: Path) -> bool:
    try:
        return bool(_sql(db, "SELECT value FROM meta WHERE key = 'api_url'"))
    except sqlite3.Error:
        return False


class Fleet:
    def __init__(self, broker: Broker, tmp: Path, key: bool = True) -> None:
        self.tmp, self.broker = tmp, broker
        self.prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
        self.db = tmp / "c.db"
        generate_keypair(tmp / "k.key", tmp / "k.pub")
        put_model(self.db, "v1", TASK, HASH, V1)
        put_model(self.db, "v2", TASK, HASH, V2)
        extra = ("--signing-key", str(tmp / "k.key")) if key else ()
        self.coord = Coordinator(self.db, broker.port, self.prefix, extra).start()
        self.coord.wait_ready(60)
        wait_until(lambda: _api_ready(self.db), 30, "the API URL announced")
        self.sites: dict[str, DeploySite] = {}

    def site(self, name: str, code_hash: str = HASH, deploy_only: bool = False) -> DeploySite:
        s = DeploySite(self.broker.port, self.prefix, name, {TASK: code_hash},
                       self.tmp / "k.pub", self.tmp, deploy_only)  # fmt: skip
        self.sites[name] = s.start()
        wait_until(lambda: _registered(self.db, name), 30, f"{name} registered")
        return s

    def fedmq(
        self, *args: str, check: bool = False, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        return fedmq(*args, "--db", str(self.db), timeout=timeout, check=check)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*FEDMQ, *args, "--db", str(self.db)], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip

    def close(self) -> None:
        for s in self.sites.values():
            s.stop()
        self.coord.kill()


@pytest.fixture
def fleet(broker: Broker, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(broker, tmp_path)
    yield f
    f.close()


def _view(f: Fleet, *args: str) -> Any:
    proc = f.fedmq("deployments", "--json", *args, check=True)
    return json.loads(proc.stdout)


def test_deploy_report_roll_back_and_read_where_what_runs(fleet: Fleet) -> None:
    # a scores only (no dataset): it advertises the task in deploy_tasks alone.
    a, b = fleet.site("a", deploy_only=True), fleet.site("b", OTHER)
    before = int(time.time() * 1000)
    proc = fleet.fedmq("deploy", "v1", "--sites", "a", "--cadence", "5", "--rule", "rul < 30",
                       "--device", "e1", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    (dep,) = out["deployments"]
    assert dep["chunks"] >= 2 and dep["sites"] == ["a"] and dep["code_hash"] == HASH
    sent = {"site": "a", "outcome": "sent", "reason": "", "deployment_id": dep["deployment_id"],
            "model_version": "v1"}  # fmt: skip
    assert out["sites"] == [sent]
    got = a.wait_deploy()  # signature, expiry and replay checked; weights sha256-verified
    cmd = got.cmd
    assert got.weights == V1 and got.chunks == dep["chunks"]
    assert (cmd.deployment_id, cmd.model_version, cmd.task, cmd.code_hash) == (
        dep["deployment_id"], "v1", TASK, HASH,
    )  # fmt: skip
    assert (cmd.cadence_s, cmd.rules, cmd.devices, cmd.rollback) == (5.0, ("rul < 30",),
                                                                     ("e1",), False)  # fmt: skip
    assert before + 590_000 <= cmd.expires_at <= int(time.time() * 1000) + 600_000
    assert a.refused == []
    # The site reports; each status is stored once and acked, the row follows it.
    a.report(cmd, "accepted")
    since = int(time.time() * 1000)
    seq = a.report(cmd, "active", since=since)
    a.wait_acked(seq)
    a.resend()  # the same status again (a lost ack): stored once, no second event
    (row,) = _view(fleet)
    assert row["site"] == "a" and row["active"]["model_version"] == "v1"
    assert row["active"]["activated_at"] == since
    assert row["active"]["cadence_s"] == 5.0 and row["active"]["rules"] == ["rul < 30"]
    assert row["latest"]["state"] == "active"
    table = fleet.fedmq("deployments", check=True).stdout
    assert "v1" in table and "rul < 30" in table and "5 s" in table
    url = _sql(fleet.db, "SELECT value FROM meta WHERE key = 'api_url'")[0][0]
    with urllib.request.urlopen(url + "/api/deployments?site=a", timeout=10) as resp:
        assert json.loads(resp.read())["deployments"] == [row]  # the same rows, over HTTP

    # --all: b advertises another code hash and is skipped, a gets v2; --wait follows.
    proc2 = fleet.popen("deploy", "v2", "--all", "--wait", "60")
    got2 = a.wait_deploy()
    assert got2.weights == V2 and got2.chunks == 0 and got2.cmd.model_version == "v2"
    a.report(got2.cmd, "accepted")
    a.report(got2.cmd, "active", previous_version="v1")
    a.report(cmd, "replaced", reason=f"{got2.cmd.deployment_id} became active")
    stdout, stderr = proc2.communicate(timeout=90)
    assert proc2.returncode == 0, stdout + stderr
    assert re.search(r"^ +b +skipped: site b advertises toy with code hash bbbbbbbbbbbb", stdout,
                     re.M), stdout  # fmt: skip
    assert re.search(r"^ +a +active +v2 since", stdout, re.M), stdout
    assert b.received.empty()

    # Rollback: the version active before v2 (v1), with v1's cadence, rules and devices.
    proc3 = fleet.popen("deploy", "--rollback", "--sites", "a", "--wait", "60")
    back = a.wait_deploy()
    assert back.cmd.model_version == "v1" and back.cmd.rollback is True and back.weights == V1
    assert (back.cmd.cadence_s, back.cmd.rules, back.cmd.devices) == (5.0, ("rul < 30",),
                                                                      ("e1",))  # fmt: skip
    last = a.report(back.cmd, "rejected", reason="rule 'rul < 30': no output rul")
    stdout, stderr = proc3.communicate(timeout=90)
    assert proc3.returncode == 5, stdout + stderr
    assert re.search(r"^ +a +rejected +v1 since .*: rule 'rul < 30': no output rul", stdout,
                     re.M), stdout  # fmt: skip
    a.wait_acked(last)
    (row,) = _view(fleet)
    assert row["active"]["model_version"] == "v2"  # v2 keeps scoring
    assert row["latest"]["state"] == "rejected" and row["latest"]["rollback"] is True
    history = _view(fleet, "--site", "a", "--all-history")
    assert [(h["model_version"], h["state"]) for h in history] == [
        ("v1", "replaced"), ("v2", "active"), ("v1", "rejected"),
    ]  # fmt: skip

    # Stored exactly once: 6 statuses sent (one of them twice), 6 rows.
    stored = _sql(fleet.db, "SELECT seq FROM messages WHERE kind = 'deployment' ORDER BY seq")
    assert [r[0] for r in stored] == [1, 2, 3, 4, 5, 6]
    events = _sql(fleet.db, "SELECT event, state_from, state_to, reason FROM site_events "
                  "WHERE site = 'a' AND event LIKE 'deployment_%' ORDER BY id")  # fmt: skip
    assert [e[0] for e in events] == [
        "deployment_sent", "deployment_accepted", "deployment_active",
        "deployment_sent", "deployment_accepted", "deployment_active", "deployment_replaced",
        "deployment_sent", "deployment_rejected",
    ]  # fmt: skip
    assert "no output rul" in events[-1][3] and "rollback" in events[-1][3]

    # Rolling back again goes to the version active before the current one (v1).
    again = fleet.fedmq("deploy", "--rollback", "--sites", "a", "--json")
    assert again.returncode == 0, again.stderr
    assert a.wait_deploy().cmd.model_version == "v1"


def test_refusals_name_the_reason_and_send_nothing(fleet: Fleet, broker: Broker) -> None:
    fleet.site("a")
    fleet.site("b", OTHER)
    fleet.site("c")
    # c deregisters: its retained registration cleared.
    client = TestClient(broker.port).connect()
    try:
        client.publish(f"{fleet.prefix}/site/c/registration", b"", retain=True)
    finally:
        client.close()
    wait_until(lambda: not _registered(fleet.db, "c"), 30, "c deregistered")

    def refused(*args: str) -> tuple[int, str]:
        proc = fleet.fedmq("deploy", *args)
        return proc.returncode, proc.stderr

    code, err = refused("nope", "--sites", "a")
    assert code == 3 and "unknown model nope" in err
    code, err = refused("v1", "--sites", "a,zz")
    assert code == 5 and "unknown site zz" in err
    code, err = refused("v1", "--sites", "b")
    assert (
        code == 5 and "site b advertises toy with code hash bbbbbbbbbbbb, not aaaaaaaaaaaa" in err
    )
    code, err = refused("v1", "--sites", "c")
    assert code == 5 and "site c is deregistered" in err
    code, err = refused("--rollback", "--sites", "a")
    assert code == 5 and "site a: no active deployment to roll back" in err
    code, err = refused("v1", "--sites", "a", "--rule", "x" * 300)
    assert code == 2 and "rules" in err
    # Usage errors before anything reaches the daemon.
    code, err = refused("v1")
    assert code == 2 and "--sites A,B or --all" in err
    code, err = refused("v1", "--rollback", "--sites", "a")
    assert code == 2 and "no MODEL" in err
    assert all(s.received.empty() for s in fleet.sites.values())
    assert _sql(fleet.db, "SELECT count(*) FROM deployments") == [(0,)]

    # Only one version ever ran at a: nothing before it to roll back to.
    proc = fleet.fedmq("deploy", "v1", "--sites", "a")
    assert proc.returncode == 0, proc.stderr
    got = fleet.sites["a"].wait_deploy()
    fleet.sites["a"].wait_acked(fleet.sites["a"].report(got.cmd, "active"))
    code, err = refused("--rollback", "--sites", "a")
    assert code == 5 and "site a: no previous version to roll back to (only v1" in err

    # A site that does not answer before the command expires (and the 30 s a site's clock
    # may be off): --wait stops there (exit 5).
    proc = fleet.fedmq("deploy", "v2", "--sites", "a", "--expires", "1", "--wait", "150",
                       timeout=200)  # fmt: skip
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert "the command expired before the site answered" in proc.stdout
    assert "still waiting" not in proc.stdout  # it did not wait the whole 150 s
    assert fleet.sites["a"].wait_deploy().cmd.model_version == "v2"

    # The API needs the token to deploy.
    url = _sql(fleet.db, "SELECT value FROM meta WHERE key = 'api_url'")[0][0]
    body = json.dumps({"model": "v1", "sites": ["a"]}).encode()
    req = urllib.request.Request(url + "/api/deployments", method="POST", data=body)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 401
    assert token_path(fleet.db).is_file()


def test_no_signing_key_is_refused(broker: Broker, tmp_path: Path) -> None:
    f = Fleet(broker, tmp_path, key=False)
    try:
        f.site("a")
        proc = f.fedmq("deploy", "v1", "--sites", "a")
        assert proc.returncode == 2 and "no command-signing key" in proc.stderr
        assert f.sites["a"].received.empty()
    finally:
        f.close()


def test_deploy_help_teaches() -> None:
    out = fedmq("deploy", "--help").stdout
    for text in ("--rollback", "--wait", "--rule", "Example:", "fedmq deploy --rollback"):
        assert text in out
    assert "Example:" in fedmq("deployments", "--help").stdout
