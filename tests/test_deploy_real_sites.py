"""``fedmq deploy`` end to end with nothing faked: a real Mosquitto, a real ``fedmq serve``
(signing key), real ``fedmq-site run`` processes with ``[training]`` pinning the
coordinator's key and cmapss-rul, the task's real weights, and the site's scoring engine.

Both sites only score (no dataset): they advertise the task as ``deploy_tasks``. ``east``
approves automatically, ``west`` waits for ``fedmq-site approve``. Covered: deploy with
``--wait`` (active), a second version replacing the first, ``--rollback`` to it (its
weights still on the site's disk), manual approval, ``fedmq deployments`` showing which
version runs where, and a site killed and restarted coming back with its model.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator.admin.signing import generate_keypair
from schemas import Registration, Topics
from site_node.training.tasks import scan
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, fedmq
from tests.helpers.deploy_site import put_model
from tests.helpers.mqtt import TestClient
from tests.helpers.site_proc import SiteProc, site_settings
from tests.helpers.wait import wait_for

TASK = "cmapss-rul"
pytestmark = [pytest.mark.slow, pytest.mark.train]
WAIT_S = 240  # a site's scoring process imports torch at its first activation


@dataclass
class Stack:
    db: Path
    prefix: str
    coord: Coordinator
    sites: dict[str, SiteProc]
    port: int

    def fedmq(self, *args: str) -> subprocess.CompletedProcess[str]:
        return fedmq(*args, "--db", str(self.db), timeout=WAIT_S + 60, check=False)

    def where(self) -> dict[str, Any]:
        out = self.fedmq("deployments", "--json")
        assert out.returncode == 0, out.stderr
        return {row["site"]: row for row in json.loads(out.stdout)}

    def history(self, site: str) -> list[tuple[str, str]]:
        out = self.fedmq("deployments", "--site", site, "--all-history", "--json")
        assert out.returncode == 0, out.stderr
        return [(h["model_version"], h["state"]) for h in json.loads(out.stdout)]

    def registration(self, site: str) -> Registration:
        client = TestClient(self.port).connect()
        try:
            client.subscribe(Topics(self.prefix).registration(site))
            msg = client.expect(lambda m: m.retain and bool(m.payload), timeout=10)
            return Registration.model_validate_json(msg.payload)
        finally:
            client.close()

    def diagnose(self) -> str:
        logs = [f"--- {n}\n{p.log_text()[-3000:]}" for n, p in self.sites.items()]
        return "\n".join([f"--- serve\n{self.coord.log_text()[-3000:]}", *logs])


def _registered(db: Path, sites: list[str]) -> bool:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("SELECT site FROM sites WHERE registration IS NOT NULL")
            return set(sites) <= {r[0] for r in rows}
        finally:
            conn.close()
    except sqlite3.Error:
        return False


@pytest.fixture(scope="module")
def stack(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from site_node.training.tasks import get_task

    tmp = tmp_path_factory.mktemp("deploy-real")
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    db = tmp / "c.db"
    generate_keypair(tmp / "serve.key", tmp / "serve.pub")
    code_hash = scan(None).tasks[TASK].code_hash
    task = get_task(TASK)
    put_model(db, "m1", TASK, code_hash, task.initial_weights(seed=1))
    put_model(db, "m2", TASK, code_hash, task.initial_weights(seed=2))
    coord = Coordinator(db, broker.port, prefix, ("--signing-key", str(tmp / "serve.key")))
    coord.start().wait_ready(90)
    sites = {}
    for name, approval in (("east", "auto"), ("west", "manual")):
        settings = site_settings(
            tmp, broker.port, prefix, site_id=name, rate_hz=5.0,
            coordinator_public_key_file=str(tmp / "serve.pub"),
            training={"allow": [f"{TASK}@{code_hash}"], "approval": approval},
        )  # fmt: skip
        sites[name] = SiteProc(tmp / name, settings).start()
    s = Stack(db, prefix, coord, sites, broker.port)
    try:
        wait_for(lambda: _registered(db, list(sites)), 90, "both sites registered")
        yield s
    finally:
        for proc in sites.values():
            proc.kill()
        coord.kill()


def _deploy(s: Stack, *args: str) -> dict[str, Any]:
    out = s.fedmq("deploy", *args, "--json")
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{s.diagnose()}"
    return dict(json.loads(out.stdout))


def test_deploy_replace_roll_back_and_restart(stack: Stack) -> None:
    reg = stack.registration("east")
    assert reg.tasks == () and [t.name for t in reg.deploy_tasks] == [TASK]

    first = _deploy(stack, "m1", "--sites", "east", "--rule", "rul < 30", "--cadence", "2",
                    "--wait", str(WAIT_S))  # fmt: skip
    [final] = first["final"]
    assert (final["site"], final["state"], final["model_version"]) == ("east", "active", "m1")
    dep1 = first["deployments"][0]["deployment_id"]
    assert stack.where()["east"]["active"]["model_version"] == "m1"

    second = _deploy(stack, "m2", "--sites", "east", "--wait", str(WAIT_S))
    assert [f["state"] for f in second["final"]] == ["active"]
    row = stack.where()["east"]
    assert row["active"]["model_version"] == "m2"
    wait_for(lambda: ("m1", "replaced") in stack.history("east"), 60, "m1 replaced")

    back = _deploy(stack, "--rollback", "--sites", "east", "--wait", str(WAIT_S))
    assert [(f["state"], f["model_version"]) for f in back["final"]] == [("active", "m1")]
    assert back["deployments"][0]["rollback"] is True
    assert back["deployments"][0]["deployment_id"] != dep1
    assert stack.where()["east"]["active"]["model_version"] == "m1"
    listed = json.loads(stack.sites["east"].cli("deployments", "--json").stdout)
    assert [(d["model_version"], d["state"], d["rollback"]) for d in listed] == [
        ("m1", "active", True), ("m2", "replaced", False), ("m1", "replaced", False),
    ]  # fmt: skip
    weights = sorted((stack.sites["east"].data_dir / "deployments").glob("*.npz"))
    assert len(weights) == 2  # m1's file is the rollback's too

    # Killed and started again: its new session's heartbeats say it scores with m1 again.
    site = stack.sites["east"]
    session = stack.registration("east").session
    beats = TestClient(stack.port).connect().subscribe(Topics(stack.prefix).heartbeat("east"))
    try:
        site.kill()
        site.start()
        beat = beats.expect(lambda m: _beat(m.payload, session), timeout=WAIT_S)
    finally:
        beats.close()
    assert json.loads(beat.payload)["model_version"] == "m1"
    # The registration is re-announced once the model is active again (the announce at
    # connect may come before the scoring process has loaded it).
    wait_for(lambda: stack.registration("east").model_version == "m1", 60, "registration m1")
    assert stack.where()["east"]["active"]["model_version"] == "m1"


def _beat(payload: bytes, old_session: int) -> bool:
    """A heartbeat of a later session than ``old_session`` from a site scoring again."""
    beat = json.loads(payload)
    return bool(beat["session"] > old_session and beat.get("scoring_state") == "scoring")


def test_manual_site_waits_for_approval(stack: Stack) -> None:
    out = _deploy(stack, "m2", "--sites", "west")
    dep = out["deployments"][0]["deployment_id"]
    wait_for(lambda: stack.where().get("west", {}).get("latest", {}).get("state")
             == "pending_approval", 60, "west pending approval")  # fmt: skip
    assert stack.registration("west").model_version is None
    approved = stack.sites["west"].cli("approve", dep)
    assert approved.returncode == 0 and approved.stdout.strip() == f"approved {dep}"
    wait_for(lambda: (stack.where()["west"].get("active") or {}).get("model_version") == "m2",
             WAIT_S, f"west active with m2\n{stack.diagnose()}")  # fmt: skip
    assert stack.registration("west").model_version == "m2"
