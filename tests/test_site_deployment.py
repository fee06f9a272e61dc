"""The site's deployment controller (site_node/deployment) with a fake daemon and a fake
scoring engine: policy, rules, weights (inline, chunked, tampered, incomplete), approval,
activation, replacement, pruning, refusals and restart. Real SQLite files and weights files
in a temporary data dir; the real-process tests are in test_site_deployment_e2e.py.
"""

from __future__ import annotations

import base64
import os
import stat
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel

from schemas import (
    DeployChunk,
    DeployCommand,
    DeploymentStatus,
    Topics,
    TrainCommand,
    make_blob,
    now_ms,
)
from site_node.deployment.policy import refusal
from site_node.deployment.service import DeploymentService, Scoring
from site_node.deployment.store import DeploymentStore, deployments_dir
from site_node.training.jobs import policy as job_policy
from site_node.training.jobs.config import TrainingSettings
from site_node.training.tasks import scan
from tests.helpers.wait import wait_for

TASK = "cmapss-rul"
CODE_HASH = scan(None).tasks[TASK].code_hash
OTHER_TASK = "ai4i-failure"


@dataclass(frozen=True)
class FakeModel:
    """The fields of site_node.scoring.model.ActiveModel (the contract)."""

    deployment_id: str
    model_version: str
    task: str
    code_hash: str
    weights_path: Path
    cadence_s: float
    rules: tuple[str, ...]
    devices: tuple[str, ...]


class FakeScorer:
    def __init__(self) -> None:
        self.models: list[FakeModel] = []
        self.fail_with: Exception | None = None
        self.closed = 0
        self.weights_seen: list[bytes] = []

    def activate(self, model: Any) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.weights_seen.append(Path(model.weights_path).read_bytes())
        self.models.append(model)

    def deactivate(self) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


def fake_parse_rules(texts: Sequence[str]) -> list[str]:
    for text in texts:
        if "<" not in text and ">" not in text:
            raise ValueError(f"rule {text!r}: expected NAME < NUMBER or NAME > NUMBER")
    return list(texts)


class FakeDaemon:
    """What the deployment service uses of a SiteDaemon."""

    def __init__(self, data_dir: Path, devices: Sequence[str] = ("press", "pump")) -> None:
        self.settings = SimpleNamespace(
            data_dir=data_dir, devices=[SimpleNamespace(name=d) for d in devices]
        )
        self.site_id = "site-a"
        self.session = 1
        self.topics = Topics("test/fedmq/v1")
        self.sources = [SimpleNamespace(device=d) for d in devices]
        self.bus = SimpleNamespace(connected=False)
        self.handlers: dict[str, Callable[[BaseModel, bytes], None]] = {}
        self.refusals: list[tuple[tuple[str, ...], Callable[..., None]]] = []
        self.reg_extras: list[Callable[[], dict[str, Any]]] = []
        self.hb_extras: list[Callable[[], dict[str, Any]]] = []
        self.stops: list[Callable[[], None]] = []
        self.calls: list[Callable[[], None]] = []
        self.sent: list[DeploymentStatus] = []
        self.topics_sent: set[str] = set()
        self._lock = threading.Lock()

    def register_command(self, name: str, handler: Callable[[BaseModel, bytes], None]) -> None:
        self.handlers[name] = handler

    def register_refusal(self, handler: Callable[..., None], kinds: Sequence[str] = ()) -> None:
        self.refusals.append((tuple(kinds), handler))

    def set_registration_extra(self, extra: Callable[[], dict[str, Any]]) -> None:
        self.reg_extras.append(extra)

    def set_heartbeat_extra(self, extra: Callable[[], dict[str, Any]]) -> None:
        self.hb_extras.append(extra)

    def on_stop(self, fn: Callable[[], None]) -> None:
        self.stops.append(fn)

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.calls.append(fn)

    def send_durable(self, kind: str, topic: str, make: Callable[[int], BaseModel]) -> Future[int]:
        assert kind == "deployment"
        with self._lock:
            seq = len(self.sent) + 1
            msg = make(seq)
            assert isinstance(msg, DeploymentStatus)
            self.sent.append(DeploymentStatus.model_validate_json(msg.model_dump_json()))
            self.topics_sent.add(topic)
        fut: Future[int] = Future()
        fut.set_result(seq)
        return fut

    # -- test helpers ------------------------------------------------------------------

    def deploy(self, cmd: DeployCommand, chunks: Sequence[DeployChunk] = ()) -> None:
        self.handlers["deploy"](cmd, b"")
        for chunk in chunks:
            self.handlers["deploy_chunk"](chunk, b"")

    def refuse(self, cmd: DeployCommand, why: str) -> None:
        for kinds, handler in self.refusals:
            if not kinds or cmd.kind in kinds:
                handler(cmd, b"", why)

    def states(self, deployment_id: str) -> list[str]:
        with self._lock:
            return [s.state for s in self.sent if s.deployment_id == deployment_id]

    def last(self, deployment_id: str) -> DeploymentStatus:
        with self._lock:
            return [s for s in self.sent if s.deployment_id == deployment_id][-1]

    def wait_state(self, deployment_id: str, state: str, timeout: float = 30.0) -> DeploymentStatus:
        wait_for(lambda: state in self.states(deployment_id), timeout, f"{deployment_id} {state}")
        with self._lock:
            return [s for s in self.sent if s.deployment_id == deployment_id and s.state == state][
                -1
            ]

    def heartbeat_extra(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for extra in self.hb_extras:
            out.update(extra())
        return out


def training(approval: str = "auto", **kw: Any) -> TrainingSettings:
    return TrainingSettings.model_validate(
        {"allow": [TASK], "approval": approval, "chunk_timeout_s": 1.0, **kw}
    )


def weights(version: str, size: int = 300) -> bytes:
    return (f"npz of {version} ".encode() * (size // 10 + 1))[:size]


def command(
    version: str = "v1",
    raw: bytes | None = None,
    chunk_bytes: int = 1 << 20,
    **fields: Any,
) -> tuple[DeployCommand, list[DeployChunk]]:
    raw = weights(version) if raw is None else raw
    blob, parts = make_blob(raw, chunk_bytes)
    cmd = DeployCommand(
        site="site-a", session=1, cmd_id=uuid.uuid4().hex, expires_at=now_ms() + 60_000,
        deployment_id=fields.pop("deployment_id", f"dep-{version}-{uuid.uuid4().hex[:6]}"),
        model_version=version, task=fields.pop("task", TASK),
        code_hash=fields.pop("code_hash", CODE_HASH), weights=blob, **fields,
    )  # fmt: skip
    chunks = [
        DeployChunk(site="site-a", session=1, job_id=cmd.deployment_id, index=i,
                    total=len(parts), sha256=blob.sha256, data=part)
        for i, part in enumerate(parts)
    ]  # fmt: skip
    return cmd, chunks


@dataclass
class Site:
    daemon: FakeDaemon
    scorer: FakeScorer
    service: DeploymentService
    store_dir: Path

    def stop(self) -> None:
        for fn in self.daemon.stops:
            fn()


@pytest.fixture
def make_site(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    sites: list[Site] = []

    def make(
        approval: str = "auto",
        scorer: FakeScorer | None = None,
        keep_replaced: int = 3,
        devices: Sequence[str] = ("press", "pump"),
        allow: Sequence[str] = (TASK,),
    ) -> Site:
        daemon = FakeDaemon(tmp_path / "data", devices)
        scorer = scorer or FakeScorer()
        service = DeploymentService(
            daemon,  # type: ignore[arg-type]
            training(approval, allow=list(allow)),
            Scoring(scorer, FakeModel, fake_parse_rules),
            keep_replaced=keep_replaced,
        )
        service.start()
        assert service.booted.wait(30)
        site = Site(daemon, scorer, service, deployments_dir(tmp_path / "data"))
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.stop()


# -- auto approval, activation, replacement -------------------------------------------


def test_auto_deploy_stores_weights_and_activates(make_site: Callable[..., Site]) -> None:
    site = make_site()
    d = site.daemon
    assert set(d.handlers) == {"deploy", "deploy_chunk"}
    assert d.heartbeat_extra() == {"model_version": None}
    cmd, _ = command("v1", cadence_s=5.0, rules=("rul < 30",), devices=("press",))
    d.deploy(cmd)
    active = d.wait_state(cmd.deployment_id, "active")
    assert d.states(cmd.deployment_id) == ["accepted", "active"]
    assert d.topics_sent == {d.topics.deployment("site-a")}
    assert active.model_version == "v1" and active.previous_version == ""
    assert active.task == TASK and active.code_hash == CODE_HASH
    assert (active.cadence_s, active.rules, active.devices) == (5.0, ("rul < 30",), ("press",))
    # The scoring engine got the contract's ActiveModel with the verified weights on disk.
    [model] = site.scorer.models
    assert model == FakeModel(
        cmd.deployment_id, "v1", TASK, CODE_HASH,
        site.store_dir / f"{cmd.weights.sha256}.npz", 5.0, ("rul < 30",), ("press",),
    )  # fmt: skip
    assert site.scorer.weights_seen == [weights("v1")]
    mode = stat.S_IMODE(os.stat(model.weights_path).st_mode)
    assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(os.stat(site.store_dir / "deployments.db").st_mode) == 0o600
    assert d.heartbeat_extra() == {"model_version": "v1"}
    reg = d.reg_extras[0]()
    assert reg["model_version"] == "v1"
    assert [(t.name, t.code_hash) for t in reg["deploy_tasks"]] == [(TASK, CODE_HASH)]
    assert d.calls, "the registration is re-announced with the new model_version"


def test_a_new_version_replaces_the_active_one_and_old_weights_are_pruned(
    make_site: Callable[..., Site],
) -> None:
    site = make_site(keep_replaced=2)
    d = site.daemon
    ids = []
    for n in range(1, 6):
        cmd, _ = command(f"v{n}")
        d.deploy(cmd)
        d.wait_state(cmd.deployment_id, "active")
        ids.append(cmd.deployment_id)
    for n in range(1, 5):
        replaced = d.last(ids[n - 1])
        assert replaced.state == "replaced" and f"replaced by {ids[n]}" in replaced.reason
    assert d.wait_state(ids[4], "active").previous_version == "v4"
    assert [s.state for s in d.sent if s.state == "active"] == ["active"] * 5
    # The active one and the 2 most recently replaced keep their weights files.
    kept = sorted(p.name for p in site.store_dir.glob("*.npz"))
    want = sorted(f"{make_blob(weights(f'v{n}'))[0].sha256}.npz" for n in (3, 4, 5))
    assert kept == want
    store = DeploymentStore(site.store_dir)
    try:
        active = store.active()
        assert active is not None and active.deployment_id == ids[4]
        assert [store.get(i).state for i in ids] == ["replaced"] * 4 + ["active"]  # type: ignore[union-attr]
    finally:
        store.close()


def test_a_known_deployment_id_is_reported_again_not_run_again(
    make_site: Callable[..., Site],
) -> None:
    site = make_site()
    d = site.daemon
    cmd, _ = command("v1")
    d.deploy(cmd)
    d.wait_state(cmd.deployment_id, "active")
    again = cmd.model_copy(update={"cmd_id": uuid.uuid4().hex})
    d.deploy(again)
    wait_for(lambda: d.states(cmd.deployment_id) == ["accepted", "active", "active"], 10)
    assert len(site.scorer.models) == 1


# -- policy and rules ---------------------------------------------------------------------


def test_policy_refusals_are_rejected_with_the_training_texts(
    make_site: Callable[..., Site],
) -> None:
    site = make_site()
    d = site.daemon
    cases = {
        "not-allowed": command(task=OTHER_TASK, code_hash=scan(None).tasks[OTHER_TASK].code_hash),
        "wrong-hash": command(code_hash="0" * 64),
        "bad-device": command(devices=("press", "kiln")),
        "bad-rule": command(rules=("rul < 30", "temperature is high")),
    }
    for cmd, _ in cases.values():
        d.deploy(cmd)
    why = {name: d.wait_state(cmd.deployment_id, "rejected").reason
           for name, (cmd, _) in cases.items()}  # fmt: skip
    assert why["not-allowed"] == f"task {OTHER_TASK} is not in this site's allow-list"
    assert why["wrong-hash"] == (
        f"code hash mismatch for {TASK}: this site runs {CODE_HASH}, the command asks {'0' * 64}"
    )
    assert why["bad-device"] == "unknown device(s) kiln: this site streams press, pump"
    assert why["bad-rule"] == "rule 'temperature is high': expected NAME < NUMBER or NAME > NUMBER"
    for cmd, _ in cases.values():
        assert d.states(cmd.deployment_id) == ["rejected"]
    assert site.scorer.models == [] and list(site.store_dir.glob("*.npz")) == []


@pytest.mark.parametrize(
    ("task", "code_hash"),
    [(OTHER_TASK, scan(None).tasks[OTHER_TASK].code_hash), (TASK, "e" * 64)],
)
def test_refusal_texts_equal_the_training_jobs(task: str, code_hash: str) -> None:
    t = training()
    cmd, _ = command(task=task, code_hash=code_hash)
    train = TrainCommand(
        site="s", session=1, cmd_id="c", expires_at=now_ms() + 1000, job_id="j", run_id="r",
        round=0, task=task, code_hash=code_hash,
    )  # fmt: skip
    assert refusal(cmd, t, {"press"}) == job_policy.refusal(train, t, None)


def test_unknown_devices_pass_when_a_source_still_finds_devices() -> None:
    cmd, _ = command(devices=("unit-7",))
    assert refusal(cmd, training(), {"unit-1"}, more_devices_possible=True) is None
    assert refusal(cmd, training(), {"unit-1"}) is not None


# -- weights --------------------------------------------------------------------------------


def test_chunked_weights_before_and_after_their_command(make_site: Callable[..., Site]) -> None:
    site = make_site()
    d = site.daemon
    cmd, chunks = command("v1", raw=weights("v1", 5000), chunk_bytes=1024)
    assert len(chunks) == 5
    d.handlers["deploy_chunk"](chunks[4], b"")  # one before its command
    d.deploy(cmd, chunks[:4])
    d.wait_state(cmd.deployment_id, "active")
    assert site.scorer.weights_seen == [weights("v1", 5000)]


def test_weights_failing_their_sha256_fail_the_deployment(make_site: Callable[..., Site]) -> None:
    site = make_site()
    d = site.daemon
    cmd, chunks = command("v1", raw=weights("v1", 3000), chunk_bytes=1024)
    bad = base64.b64encode(b"x" * 1024).decode()
    chunks[1] = chunks[1].model_copy(update={"data": bad})
    d.deploy(cmd, chunks)
    failed = d.wait_state(cmd.deployment_id, "failed")
    assert failed.reason.startswith("weights fail their sha256"), failed.reason
    assert cmd.weights.sha256 in failed.reason
    # Inline weights whose bytes do not match their digest.
    blob, _ = make_blob(weights("v2"))
    tampered = blob.model_copy(update={"data": base64.b64encode(weights("v3")).decode()})
    cmd2, _ = command("v2")
    cmd2 = cmd2.model_copy(update={"weights": tampered})
    d.deploy(cmd2)
    assert d.wait_state(cmd2.deployment_id, "failed").reason.startswith("weights fail their sha256")
    assert site.scorer.models == [] and list(site.store_dir.glob("*.npz")) == []


def test_missing_chunks_fail_after_the_chunk_timeout(make_site: Callable[..., Site]) -> None:
    site = make_site()
    d = site.daemon
    cmd, chunks = command("v1", raw=weights("v1", 3000), chunk_bytes=1024)
    d.deploy(cmd, chunks[:1])
    failed = d.wait_state(cmd.deployment_id, "failed", timeout=30)
    assert failed.reason == "weights incomplete: 2 of 3 chunks missing after 1 s"
    assert d.states(cmd.deployment_id) == ["accepted", "failed"]
    # Late chunks change nothing.
    for chunk in chunks[1:]:
        d.handlers["deploy_chunk"](chunk, b"")
    d.deploy(cmd.model_copy(update={"cmd_id": uuid.uuid4().hex}))
    wait_for(lambda: d.states(cmd.deployment_id)[-1:] == ["failed"]
             and len(d.states(cmd.deployment_id)) == 3, 10)  # fmt: skip
    assert site.scorer.models == []


# -- activation failure ---------------------------------------------------------------------


def test_activation_failure_fails_and_keeps_the_active_one(make_site: Callable[..., Site]) -> None:
    scorer = FakeScorer()
    site = make_site(scorer=scorer)
    d = site.daemon
    good, _ = command("v1")
    d.deploy(good)
    d.wait_state(good.deployment_id, "active")
    scorer.fail_with = ValueError("task cmapss-rul: weights have no array conv1.weight")
    bad, _ = command("v2")
    d.deploy(bad)
    failed = d.wait_state(bad.deployment_id, "failed")
    assert failed.reason == "activation failed: task cmapss-rul: weights have no array conv1.weight"
    assert d.states(good.deployment_id) == ["accepted", "active"]
    assert d.heartbeat_extra() == {"model_version": "v1"}


# -- manual approval -------------------------------------------------------------------------


def test_manual_approval_waits_for_the_operator(make_site: Callable[..., Site]) -> None:
    site = make_site("manual")
    d = site.daemon
    yes, _ = command("v1")
    no, _ = command("v2")
    d.deploy(yes)
    d.deploy(no)
    d.wait_state(yes.deployment_id, "pending_approval")
    d.wait_state(no.deployment_id, "pending_approval")
    assert site.scorer.models == []
    cli = DeploymentStore(site.store_dir, create=False)  # what fedmq-site approve opens
    try:
        cli.decide(yes.deployment_id, "approve")
        cli.decide(no.deployment_id, "reject", "not during the audit")
    finally:
        cli.close()
    active = d.wait_state(yes.deployment_id, "active")
    rejected = d.wait_state(no.deployment_id, "rejected")
    assert active.model_version == "v1"
    assert rejected.reason == "rejected by site operator: not during the audit"
    assert d.states(yes.deployment_id) == ["accepted", "pending_approval", "active"]
    assert [m.model_version for m in site.scorer.models] == ["v1"]


# -- refused commands ------------------------------------------------------------------------


def test_refused_commands_are_reported_without_touching_known_ones(
    make_site: Callable[..., Site],
) -> None:
    site = make_site()
    d = site.daemon
    assert [k for k, _h in d.refusals] == [("deploy",)]
    live, _ = command("v1")
    d.deploy(live)
    d.wait_state(live.deployment_id, "active")
    forged, _ = command("v9")
    d.refuse(forged, "expired 300 s ago")
    d.refuse(live, "replayed cmd_id abc")
    rejected = d.wait_state(forged.deployment_id, "rejected")
    assert rejected.reason == "command refused: expired 300 s ago"
    wait_for(lambda: len(d.states(live.deployment_id)) == 3, 10)
    replay = d.last(live.deployment_id)
    assert (replay.state, replay.reason) == ("active", "command refused: replayed cmd_id abc")
    assert [m.model_version for m in site.scorer.models] == ["v1"]


# -- restart ---------------------------------------------------------------------------------


def test_restart_reactivates_the_active_one_and_fails_half_received_ones(
    make_site: Callable[..., Site],
) -> None:
    first = make_site("manual")
    d = first.daemon
    active, _ = command("v1")
    d.deploy(active)
    d.wait_state(active.deployment_id, "pending_approval")
    store = DeploymentStore(first.store_dir)
    store.decide(active.deployment_id, "approve")
    before = d.wait_state(active.deployment_id, "active")
    pending, _ = command("v2")
    half, chunks = command("v3", raw=weights("v3", 3000), chunk_bytes=1024)
    d.deploy(pending)
    d.deploy(half, chunks[:1])
    d.wait_state(pending.deployment_id, "pending_approval")
    d.wait_state(half.deployment_id, "accepted")
    first.stop()
    assert first.scorer.closed == 1

    second = make_site("manual")
    d2 = second.daemon
    again = d2.wait_state(active.deployment_id, "active")
    assert (again.since, again.reason) == (before.since, "re-activated at site start")
    assert [m.model_version for m in second.scorer.models] == ["v1"]
    assert d2.heartbeat_extra() == {"model_version": "v1"}
    assert d2.wait_state(half.deployment_id, "failed").reason == "site restarted"
    assert pending.deployment_id not in {s.deployment_id for s in d2.sent}
    # The pending one survived with its weights: approving it now activates it.
    store.decide(pending.deployment_id, "approve")
    assert d2.wait_state(pending.deployment_id, "active").previous_version == "v1"
    assert d2.wait_state(active.deployment_id, "replaced").reason.startswith("replaced by")
    store.close()


def test_restart_with_corrupt_weights_fails_instead_of_scoring(
    make_site: Callable[..., Site],
) -> None:
    first = make_site()
    cmd, _ = command("v1")
    first.daemon.deploy(cmd)
    first.daemon.wait_state(cmd.deployment_id, "active")
    first.stop()
    path = first.store_dir / f"{cmd.weights.sha256}.npz"
    path.write_bytes(b"bit rot")
    second = make_site()
    failed = second.daemon.wait_state(cmd.deployment_id, "failed")
    assert failed.reason == "weights file missing or corrupt at site start"
    assert second.scorer.models == []
    assert second.daemon.heartbeat_extra() == {"model_version": None}


def test_store_decide_refuses_what_is_not_pending(tmp_path: Path) -> None:
    from site_node.deployment.store import DeploymentStoreError, UnknownDeploymentError

    store = DeploymentStore(tmp_path / "deployments")
    store.add("d1", "v1", TASK, CODE_HASH, "active", "{}")
    store.add("d2", "v2", TASK, CODE_HASH, "pending_approval", "{}")
    with pytest.raises(DeploymentStoreError, match="d1 is active, not pending approval"):
        store.decide("d1", "approve")
    store.decide("d2", "reject", "no")
    with pytest.raises(DeploymentStoreError, match="already decided"):
        store.decide("d2", "approve")
    with pytest.raises(UnknownDeploymentError, match="nope"):
        store.decide("nope", "approve")
    store.close()


def test_site_cli_approves_rejects_and_lists_deployments(tmp_path: Path) -> None:
    """``fedmq-site approve|reject|deployments`` as real subprocesses on a real store: a
    deployment id is found after the job ids, with the same one-line errors."""
    import json
    import subprocess

    from fedmq_runtime.cli import EXIT
    from site_node.training.jobs.store import JobStore
    from tests.helpers.site_proc import SITE_BIN, to_toml

    data = tmp_path / "d"
    cfg = tmp_path / "site.toml"
    cfg.write_text(to_toml({"site_id": "s", "data_dir": str(data)}))

    def site(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SITE_BIN), *args, "--config", str(cfg)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    empty = site("deployments")
    assert empty.returncode == 0 and empty.stdout.strip() == "no deployments", empty.stderr
    missing = site("approve", "dep-1")
    assert missing.returncode == EXIT["not_found"] and "dep-1" in missing.stderr
    store = DeploymentStore(deployments_dir(data))
    cmd, _ = command("v7", rules=("rul < 30",))
    store.add("dep-1", "v7", TASK, CODE_HASH, "pending_approval", cmd.model_dump_json())
    store.add("dep-2", "v8", TASK, CODE_HASH, "pending_approval", cmd.model_dump_json())
    store.add("dep-3", "v6", TASK, CODE_HASH, "active", cmd.model_dump_json())
    jobs = JobStore(data / "jobs.db")  # a site with jobs too: ids are looked up in both
    jobs.add("job-1", "r", 1, TASK, "pending_approval", "{}")
    jobs.close()

    ok = site("approve", "dep-1")
    assert ok.returncode == 0 and ok.stdout.strip() == "approved dep-1", ok.stderr
    ok = site("reject", "dep-2", "--reason", "not during the audit")
    assert ok.returncode == 0 and ok.stdout.strip() == "rejected dep-2", ok.stderr
    ok = site("approve", "job-1")
    assert ok.returncode == 0 and ok.stdout.strip() == "approved job-1", ok.stderr
    decided = {r.deployment_id: (r.decision, r.decision_reason) for r in store.decisions()}
    assert decided == {"dep-1": ("approve", ""), "dep-2": ("reject", "not during the audit")}
    for args, code, words in (
        (("approve", "dep-1"), EXIT["usage"], "already decided"),
        (("approve", "dep-3"), EXIT["usage"], "dep-3 is active, not pending approval"),
        (("approve", "nope"), EXIT["not_found"], "unknown job or deployment 'nope'"),
    ):
        out = site(*args)
        assert out.returncode == code and words in out.stderr, (args, out.stderr)
        assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    listed = json.loads(site("deployments", "--json").stdout)
    assert [(d["deployment"], d["state"], d["model_version"]) for d in listed] == [
        ("dep-3", "active", "v6"), ("dep-2", "pending_approval", "v8"),
        ("dep-1", "pending_approval", "v7"),
    ]  # fmt: skip
    assert listed[0]["rules"] == ["rul < 30"] and listed[0]["cadence_s"] == 10.0
    table = site("deployments").stdout
    assert table.startswith("DEPLOYMENT") and "dep-3" in table and "active" in table
    store.close()


def test_daemon_reports_refusals_by_kind_and_merges_extras(tmp_path: Path) -> None:
    """The daemon's hooks several extensions share: refusal handlers per command kind (or
    every kind), registration and heartbeat fields merged from every provider."""
    from coordinator.admin.signing import generate_keypair
    from site_node.command_guard import CommandGuard
    from site_node.daemon import SiteDaemon, _merged
    from site_node.settings import SiteSettings

    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    settings = SiteSettings.model_validate(
        {"site_id": "site-a", "data_dir": tmp_path / "d", "mqtt": {"prefix": "t/fedmq/v1"},
         "coordinator_public_key_file": tmp_path / "k.pub"}
    )  # fmt: skip
    d = SiteDaemon(settings)
    seen: list[tuple[str, str, str]] = []
    d.register_refusal(
        lambda c, _r, why: seen.append(("deploy", getattr(c, "kind", ""), why)), kinds=("deploy",)
    )
    d.register_refusal(lambda c, _r, why: seen.append(("any", getattr(c, "kind", ""), why)))
    d.guard = CommandGuard(settings.commands_path, d._key, 30.0, prefix="t/fedmq/v1")
    try:
        cmd, _ = command("v1")
        train = TrainCommand(
            site="site-a", session=1, cmd_id="c2", expires_at=now_ms() + 60_000, job_id="j",
            run_id="r", round=0, task=TASK, code_hash=CODE_HASH,
        )  # fmt: skip
        d._on_command(cmd, b"")
        d._on_command(train, b"")
    finally:
        d.guard.close()
    assert seen == [
        ("deploy", "deploy", "unsigned"), ("any", "deploy", "unsigned"),
        ("any", "train", "unsigned"),
    ]  # fmt: skip

    def broken() -> dict[str, Any]:
        raise RuntimeError("provider bug")

    d.set_registration_extra(lambda: {"approval_mode": "manual"})
    d.set_registration_extra(broken)
    d.set_registration_extra(lambda: {"model_version": "v1"})
    assert _merged(d._registration_extras) == {"approval_mode": "manual", "model_version": "v1"}
    d.set_heartbeat_extra(lambda: {"worker_state": "stopped"})
    d.set_heartbeat_extra(lambda: {"model_version": None, "scoring_state": "off"})
    assert _merged(d._heartbeat_extras) == {
        "worker_state": "stopped", "model_version": None, "scoring_state": "off",
    }  # fmt: skip


def test_restart_applies_the_changed_policy_to_the_active_and_approved_ones(
    make_site: Callable[..., Site],
) -> None:
    first = make_site("manual")
    d = first.daemon
    store = DeploymentStore(first.store_dir)
    active, _ = command("v1", devices=("press",))
    d.deploy(active)
    d.wait_state(active.deployment_id, "pending_approval")
    store.decide(active.deployment_id, "approve")
    d.wait_state(active.deployment_id, "active")
    pending, _ = command("v2")
    d.deploy(pending)
    d.wait_state(pending.deployment_id, "pending_approval")
    first.stop()

    # The operator took cmapss-rul off the allow-list while the site was down.
    second = make_site("manual", allow=(OTHER_TASK,))
    d2 = second.daemon
    failed = d2.wait_state(active.deployment_id, "failed")
    assert failed.reason == (
        f"no longer allowed at site start: task {TASK} is not in this site's allow-list"
    )
    assert second.scorer.models == [] and d2.heartbeat_extra() == {"model_version": None}
    store.decide(pending.deployment_id, "approve")
    rejected = d2.wait_state(pending.deployment_id, "rejected")
    assert rejected.reason == f"task {TASK} is not in this site's allow-list"
    assert second.scorer.models == []
    store.close()


def test_restart_fails_the_active_one_when_its_device_is_gone(
    make_site: Callable[..., Site],
) -> None:
    first = make_site()
    cmd, _ = command("v1", devices=("press",))
    first.daemon.deploy(cmd)
    first.daemon.wait_state(cmd.deployment_id, "active")
    first.stop()
    second = make_site(devices=("pump",))
    failed = second.daemon.wait_state(cmd.deployment_id, "failed")
    assert failed.reason == (
        "no longer allowed at site start: unknown device(s) press: this site streams pump"
    )
    assert second.scorer.models == []
