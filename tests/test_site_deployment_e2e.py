"""Deployments at real sites: real Mosquitto, real ``fedmq-site run`` processes with
``[training]`` and a pinned coordinator key; the test plays the coordinator (Ed25519-signed
``cmd/deploy`` and its chunks) and reads the sites' durable ``DeploymentStatus`` messages
back through the acker (which acks them, as the coordinator does), plus their heartbeats
and retained registrations.

Two sites share the module: ``auto`` and ``manual`` (approval). The weights are the
cmapss-rul task's real initial weights (~290 kB: chunked), so activation loads them in
the site's scoring process.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from coordinator.admin.signing import generate_keypair, load_private_key, sign
from schemas import (
    DeployChunk,
    DeployCommand,
    DeploymentStatus,
    Registration,
    Topics,
    encode,
    make_blob,
    now_ms,
)
from site_node.training.tasks import scan
from tests.helpers.acker import Acker
from tests.helpers.broker import Broker
from tests.helpers.mqtt import TestClient
from tests.helpers.site_proc import SiteProc, site_settings
from tests.helpers.wait import wait_for

TASK = "cmapss-rul"
pytestmark = [pytest.mark.slow, pytest.mark.train]
ACTIVATE_S = 180.0  # the scoring process's first start imports torch (on a loaded machine)


@dataclass
class Fleet:
    prefix: str
    topics: Topics
    client: TestClient
    acker: Acker
    key: Any
    sites: dict[str, SiteProc]
    code_hash: str
    weights: bytes

    def command(
        self,
        site: str,
        version: str,
        weights: bytes | None = None,
        expires_in_s: float = 120.0,
        chunk_bytes: int = 64 * 1024,
        **fields: Any,
    ) -> tuple[DeployCommand, list[DeployChunk]]:
        raw = self.weights if weights is None else weights
        blob, parts = make_blob(raw, chunk_bytes)
        cmd = DeployCommand(
            site=site, session=1, cmd_id=uuid.uuid4().hex,
            expires_at=now_ms() + int(expires_in_s * 1000),
            deployment_id=fields.pop("deployment_id", f"dep-{uuid.uuid4().hex[:10]}"),
            model_version=version, task=fields.pop("task", TASK),
            code_hash=fields.pop("code_hash", self.code_hash), weights=blob, **fields,
        )  # fmt: skip
        chunks = [
            DeployChunk(site=site, session=1, job_id=cmd.deployment_id, index=i,
                        total=len(parts), sha256=blob.sha256, data=part)
            for i, part in enumerate(parts)
        ]  # fmt: skip
        return cmd, chunks

    def publish(
        self, site: str, cmd: DeployCommand, chunks: list[DeployChunk], signed: bool = True
    ) -> None:
        payload = encode(sign(cmd, self.key, self.prefix)) if signed else encode(cmd)
        self.client.publish(self.topics.cmd(site, "deploy"), payload)
        for chunk in chunks:
            self.client.publish(self.topics.cmd(site, "deploy"), encode(chunk))

    def deploy(self, site: str, version: str, **kw: Any) -> DeployCommand:
        cmd, chunks = self.command(site, version, **kw)
        self.publish(site, cmd, chunks)
        return cmd

    def statuses(self, site: str, deployment_id: str) -> list[DeploymentStatus]:
        return [
            DeploymentStatus.model_validate(row.payload)
            for row in self.acker.stored(site)
            if row.kind == "deployment" and row.payload.get("deployment_id") == deployment_id
        ]

    def states(self, site: str, deployment_id: str) -> list[str]:
        return [s.state for s in self.statuses(site, deployment_id)]

    def wait_state(
        self, site: str, deployment_id: str, state: str, timeout: float = 60.0
    ) -> DeploymentStatus:
        def seen() -> DeploymentStatus | None:
            got = [s for s in self.statuses(site, deployment_id) if s.state == state]
            return got[-1] if got else None

        try:
            status = wait_for(seen, timeout, f"{site} {deployment_id} {state}")
            assert status is not None
            return status
        except AssertionError:
            log = self.sites[site].log_text()[-4000:]
            raise AssertionError(
                f"{site} {deployment_id}: {self.states(site, deployment_id)}; log:\n{log}"
            ) from None

    def heartbeat_version(self, site: str, version: str | None, timeout: float = 30.0) -> None:
        start = len(self.acker.heartbeats)
        wait_for(
            lambda: any(
                h.get("site") == site and h.get("model_version") == version
                for h in self.acker.heartbeats[start:]
            ),
            timeout,
            f"{site} heartbeat with model_version {version}",
        )

    def registration(self, site: str) -> Registration:
        watcher = TestClient(self.client.port).connect()
        try:
            watcher.subscribe(self.topics.registration(site))
            msg = watcher.expect(lambda m: m.retain and bool(m.payload), timeout=10)
            return Registration.model_validate_json(msg.payload)
        finally:
            watcher.close()


@pytest.fixture(scope="module")
def fleet(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("deploy")
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    generate_keypair(tmp / "coord.key", tmp / "coord.pub")
    code_hash = scan(None).tasks[TASK].code_hash
    sites = {}
    for site_id in ("auto", "manual"):
        settings = site_settings(
            tmp, broker.port, prefix, site_id=site_id, rate_hz=5.0,
            coordinator_public_key_file=str(tmp / "coord.pub"),
            training={"allow": [f"{TASK}@{code_hash}"], "approval": site_id,
                      "chunk_timeout_s": 120.0},
        )  # fmt: skip
        sites[site_id] = SiteProc(tmp / site_id, settings).start()
    acker = Acker(broker.port, prefix, tmp / "acker.db").start()
    client = TestClient(broker.port).connect()
    from site_node.training.tasks import get_task

    fleet = Fleet(
        prefix, Topics(prefix), client, acker, load_private_key(tmp / "coord.key"), sites,
        code_hash, get_task(TASK).initial_weights(),
    )  # fmt: skip
    try:
        for site_id in sites:
            fleet.heartbeat_version(site_id, None, timeout=60)
        yield fleet
    finally:
        for proc in sites.values():
            proc.kill()
        client.close()
        acker.stop()


def test_auto_deploy_activates_and_restart_comes_back_with_it(fleet: Fleet) -> None:
    assert len(fleet.weights) > 64 * 1024  # travels in chunks
    cmd = fleet.deploy("auto", "v1", cadence_s=2.0, rules=("rul < 30",))
    active = fleet.wait_state("auto", cmd.deployment_id, "active", ACTIVATE_S)
    assert fleet.states("auto", cmd.deployment_id) == ["accepted", "active"]
    assert (active.model_version, active.task, active.code_hash) == ("v1", TASK, fleet.code_hash)
    assert active.rules == ("rul < 30",) and active.cadence_s == 2.0
    fleet.heartbeat_version("auto", "v1")
    reg = fleet.registration("auto")
    assert reg.model_version == "v1" and reg.tasks == ()  # no dataset: nothing to train
    assert [(t.name, t.code_hash) for t in reg.deploy_tasks] == [(TASK, fleet.code_hash)]
    on_disk = fleet.sites["auto"].data_dir / "deployments" / f"{cmd.weights.sha256}.npz"
    assert on_disk.read_bytes() == fleet.weights

    # v2 replaces v1: v2 names v1 as its previous version, v1 is reported replaced.
    cmd2 = fleet.deploy("auto", "v2", cadence_s=2.0)
    active2 = fleet.wait_state("auto", cmd2.deployment_id, "active", ACTIVATE_S)
    assert active2.previous_version == "v1"
    replaced = fleet.wait_state("auto", cmd.deployment_id, "replaced")
    assert replaced.reason == f"replaced by {cmd2.deployment_id}"

    # Killed (no clean stop) mid-deployment, v3's chunks not all in, and started again:
    # it comes back scoring with v2; v3 failed (its chunks were in memory only).
    cmd3, chunks3 = fleet.command("auto", "v3")
    fleet.publish("auto", cmd3, chunks3[:1])
    fleet.wait_state("auto", cmd3.deployment_id, "accepted")
    site = fleet.sites["auto"]
    site.kill()
    before = len(fleet.statuses("auto", cmd2.deployment_id))
    site.start()
    wait_for(lambda: len(fleet.statuses("auto", cmd2.deployment_id)) > before, ACTIVATE_S,
             "a status after the restart")  # fmt: skip
    again = fleet.statuses("auto", cmd2.deployment_id)[-1]
    assert (again.state, again.reason) == ("active", "re-activated at site start")
    assert again.since == active2.since
    assert fleet.wait_state("auto", cmd3.deployment_id, "failed").reason == "site restarted"
    fleet.heartbeat_version("auto", "v2")
    start = len(fleet.acker.heartbeats)
    wait_for(lambda: any(h.get("site") == "auto" and h.get("scoring_state") == "scoring"
                         for h in fleet.acker.heartbeats[start:]), 60, "scoring again")  # fmt: skip
    assert fleet.registration("auto").model_version == "v2"


def test_refused_and_failed_deploys_say_why(fleet: Fleet) -> None:
    ai4i = scan(None).tasks["ai4i-failure"].code_hash
    unsigned, unsigned_chunks = fleet.command("auto", "u1")
    fleet.publish("auto", unsigned, unsigned_chunks, signed=False)
    expired = fleet.deploy("auto", "e1", expires_in_s=-600)
    not_allowed = fleet.deploy("auto", "n1", task="ai4i-failure", code_hash=ai4i)
    wrong_hash = fleet.deploy("auto", "h1", code_hash="0" * 64)
    bad_rule = fleet.deploy("auto", "r1", rules=("rul is low",))
    bad_device = fleet.deploy("auto", "d1", devices=("kiln",))
    cmd, chunks = fleet.command("auto", "s1")
    chunks[1] = chunks[1].model_copy(update={"data": base64.b64encode(b"x" * 65536).decode()})
    fleet.publish("auto", cmd, chunks)

    def reason(c: DeployCommand, state: str) -> str:
        return fleet.wait_state("auto", c.deployment_id, state).reason

    assert reason(unsigned, "rejected") == "command refused: unsigned"
    assert reason(expired, "rejected").startswith("command refused: expired")
    assert reason(not_allowed, "rejected") == "task ai4i-failure is not in this site's allow-list"
    assert reason(wrong_hash, "rejected") == (
        f"code hash mismatch for {TASK}: this site runs {fleet.code_hash}, "
        f"the command asks {'0' * 64}"
    )
    assert "rul is low" in reason(bad_rule, "rejected")
    assert reason(bad_device, "rejected") == "unknown device(s) kiln: this site streams counter"
    assert reason(cmd, "failed").startswith("weights fail their sha256")
    for c in (unsigned, expired, not_allowed, wrong_hash, bad_rule, bad_device):
        assert fleet.states("auto", c.deployment_id) == ["rejected"]
    assert fleet.states("auto", cmd.deployment_id) == ["accepted", "failed"]


def test_manual_approval_waits_for_the_operator(fleet: Fleet) -> None:
    site = fleet.sites["manual"]
    yes = fleet.deploy("manual", "m1", cadence_s=2.0)
    no = fleet.deploy("manual", "m2")
    fleet.wait_state("manual", yes.deployment_id, "pending_approval")
    fleet.wait_state("manual", no.deployment_id, "pending_approval")
    fleet.heartbeat_version("manual", None)  # nothing scores while it waits

    out = site.cli("reject", no.deployment_id, "--reason", "not during the audit")
    assert out.returncode == 0 and out.stdout.strip() == f"rejected {no.deployment_id}", out
    rejected = fleet.wait_state("manual", no.deployment_id, "rejected")
    assert rejected.reason == "rejected by site operator: not during the audit"

    out = site.cli("approve", yes.deployment_id)
    assert out.returncode == 0 and out.stdout.strip() == f"approved {yes.deployment_id}", out
    fleet.wait_state("manual", yes.deployment_id, "active", ACTIVATE_S)
    assert fleet.states("manual", yes.deployment_id) == ["accepted", "pending_approval", "active"]
    fleet.heartbeat_version("manual", "m1")

    again = site.cli("approve", yes.deployment_id)
    assert again.returncode == 2 and "is active, not pending approval" in again.stderr
    unknown = site.cli("approve", "dep-nope")
    assert unknown.returncode == 3 and "dep-nope" in unknown.stderr
