"""Site-side training end to end: real Mosquitto, real ``fedmq-site`` processes with syft.

Two site processes share the module (syft starts in 10-30 s): ``auto`` (approval auto)
and ``manual``. A test-side coordinator signs commands with ``coordinator.admin.signing`` and
reads the sites' durable job messages back through the acker (which acks them).
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.admin.signing import generate_keypair
from schemas import CancelCommand, Registration, Topics, encode
from site_node.training.job_files import func_name
from site_node.training.tasks import get_task
from tests.helpers.acker import Acker
from tests.helpers.broker import Broker
from tests.helpers.data import TRAIN_FD001
from tests.helpers.mqtt import TestClient, wait_for
from tests.helpers.site_proc import SiteProc, site_settings
from tests.helpers.train_coord import TestCoordinator

TRAIN = TRAIN_FD001
TASK = "cmapss-rul"
pytestmark = [
    pytest.mark.train,
    pytest.mark.slow,
]


@dataclass
class Federation:
    prefix: str
    coord: TestCoordinator
    sites: dict[str, SiteProc]
    registrations: dict[str, Registration]
    code_hash: str
    start_weights: bytes


def _registrations_with_tasks(
    client: TestClient, topics: Topics, sites: list[str]
) -> dict[str, Registration]:
    got: dict[str, Registration] = {}

    def ready() -> bool:
        for msg in client.collect(timeout=0.2):
            parsed = topics.parse(msg.topic)
            if parsed.site in sites and msg.payload:
                reg = Registration.model_validate_json(msg.payload)
                if reg.tasks:
                    got[reg.site] = reg
        return set(got) == set(sites)

    wait_for(ready, 150, f"registrations with tasks from {sites}")
    return got


@pytest.fixture(scope="module")
def fed(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    tmp = tmp_path_factory.mktemp("training")
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    generate_keypair(tmp / "coord.key", tmp / "coord.pub")
    training = {
        "allow": [TASK],
        "datasets": [
            {"name": "fd001-part", "task": TASK, "paths": [str(TRAIN)],
             "params": {"units": [1, 2, 3]}}
        ],
    }  # fmt: skip
    sites = {}
    for site_id, approval in (("auto", "auto"), ("manual", "manual")):
        settings = site_settings(
            tmp, broker.port, prefix, site_id=site_id, devices=[],
            coordinator_public_key_file=str(tmp / "coord.pub"),
            training={**training, "approval": approval, "chunk_timeout_s": 5.0},
        )  # fmt: skip
        sites[site_id] = SiteProc(tmp / site_id, settings).start()
    topics = Topics(prefix)
    watcher = TestClient(broker.port).connect()
    watcher.subscribe(f"{prefix}/site/+/registration")
    acker = Acker(broker.port, prefix, tmp / "acker.db").start()
    client = TestClient(broker.port).connect()
    try:
        regs = _registrations_with_tasks(watcher, topics, list(sites))
        task = get_task(TASK)
        yield Federation(
            prefix, TestCoordinator(client, acker, prefix, tmp / "coord.key"), sites, regs,
            task.code_hash, task.initial_weights(),
        )  # fmt: skip
    finally:
        for proc in sites.values():
            proc.kill()
        watcher.close()
        client.close()
        acker.stop()


def _jobs(proc: SiteProc) -> dict[str, dict]:
    out = proc.cli("jobs", "--json")
    assert out.returncode == 0, out.stderr
    return {j["job"]: j for j in json.loads(out.stdout)}


def _submitted_to_datasite(proc: SiteProc, job_id: str) -> bool:
    # Datasite.submit_job keeps every job's code and spec under syft/jobs/<func_name>.
    return (proc.data_dir / "syft" / "jobs" / func_name(job_id)).exists()


def test_registration_advertises_task_datasets_and_approval_mode(fed: Federation) -> None:
    auto, manual = fed.registrations["auto"], fed.registrations["manual"]
    assert [(t.name, t.code_hash) for t in auto.tasks] == [(TASK, fed.code_hash)]
    assert [d.name for d in auto.datasets] == ["fd001-part"] and auto.datasets[0].rows > 500
    assert (auto.approval_mode, manual.approval_mode) == ("auto", "manual")
    out = fed.sites["auto"].cli("data", "list", "--json")
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    assert row["hosted"] and row["rows"] == auto.datasets[0].rows and row["task"] == TASK


def test_auto_job_returns_chunked_verified_weights_and_a_replay_runs_nothing(
    fed: Federation,
) -> None:
    import numpy as np

    c = fed.coord
    raw = c.train(
        "auto", "auto-1", fed.code_hash, weights=fed.start_weights,
        hyperparams={"epochs": 1, "mu": 0.1}, strategy="fedprox", round=3,
    )  # fmt: skip
    job = c.wait_state("auto", "auto-1", "done", timeout=120)
    assert job.states[:2] == ["accepted", "running"] and job.states[-1] == "done"
    assert set(job.states) == {"accepted", "running", "done"}
    assert all(s.round == 3 and s.run_id == "run-1" and s.task == TASK for s in job.statuses)
    [result] = job.results
    assert result.n_samples > 0 and result.train_time_s > 0
    assert "rmse" in result.metrics and result.metrics["rmse"] > 0
    # 290 kB of weights > 256 KiB: they come back in chunks, after the result, before done.
    assert result.weights is not None and result.weights.chunks == len(job.chunks) >= 2
    assert max(ch.seq for ch in job.chunks) < job.statuses[-1].seq
    weights = job.weights()  # reassembled and sha256-verified
    with (
        np.load(io.BytesIO(weights), allow_pickle=False) as trained,
        np.load(io.BytesIO(fed.start_weights), allow_pickle=False) as start,
    ):
        assert set(trained.files) == set(start.files)
        assert any(not np.array_equal(trained[k], start[k]) for k in start.files)

    # The very same signed bytes again: refused as a replay, reported, nothing runs twice.
    c.publish("auto", "train", raw)
    wait_for(
        lambda: any("replayed" in (s.reason or "") for s in c.job("auto", "auto-1").statuses),
        20, "replay refusal",
    )  # fmt: skip
    time.sleep(1.0)
    after = c.job("auto", "auto-1")
    assert len(after.results) == 1 and after.states.count("running") == job.states.count("running")
    assert after.statuses[-1].state == "done"  # the refusal does not change the job's state
    assert _jobs(fed.sites["auto"])["auto-1"]["state"] == "done"


def test_policy_refusals_have_reasons_and_nothing_runs(fed: Federation) -> None:
    c = fed.coord
    c.train("auto", "not-allowed", get_task("ai4i-failure").code_hash, task="ai4i-failure")
    c.train("auto", "wrong-hash", "0" * 64)
    c.train("auto", "unknown-hp", fed.code_hash, hyperparams={"nonsense": 1})
    for job_id, reason in (("not-allowed", "allow-list"), ("wrong-hash", "code hash mismatch")):
        view = c.wait_state("auto", job_id, "rejected", timeout=30)
        assert view.states == ["rejected"] and reason in (view.statuses[0].reason or "")
        assert view.results == [] and not _submitted_to_datasite(fed.sites["auto"], job_id)
    bad = c.wait_state("auto", "unknown-hp", "failed", timeout=90)
    assert "nonsense" in (bad.statuses[-1].reason or "") and bad.results == []
    listed = _jobs(fed.sites["auto"])
    assert (
        listed["not-allowed"]["state"] == "rejected"
        and "allow-list" in listed["not-allowed"]["reason"]
    )


def test_unsigned_forged_and_expired_commands_are_refused_and_reported(
    fed: Federation, tmp_path: Path
) -> None:
    c = fed.coord
    generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    from coordinator.admin.signing import load_private_key, sign

    unsigned, _ = c.train_command("auto", "unsigned-1", fed.code_hash)
    forged, _ = c.train_command("auto", "forged-1", fed.code_hash)
    expired, _ = c.train_command("auto", "expired-1", fed.code_hash, expires_in_s=-300)
    c.publish("auto", "train", encode(unsigned))
    c.publish(
        "auto",
        "train",
        encode(sign(forged, load_private_key(tmp_path / "other.key"), c.topics.prefix)),
    )
    c.publish("auto", "train", encode(c.signed(expired)))
    cases = (("unsigned-1", "unsigned"), ("forged-1", "bad signature"), ("expired-1", "expired"))
    for job_id, why in cases:
        view = c.wait_state("auto", job_id, "rejected", timeout=20)
        assert view.states == ["rejected"], view.states
        assert view.statuses[0].reason == f"command refused: {why}" or (
            why == "expired"
            and (view.statuses[0].reason or "").startswith("command refused: expired")
        )
        assert view.results == [] and not _submitted_to_datasite(fed.sites["auto"], job_id)
    assert not set(_jobs(fed.sites["auto"])) & {j for j, _ in cases}


def test_missing_or_tampered_weight_chunks_fail_the_job_with_a_reason(fed: Federation) -> None:
    c = fed.coord
    cmd, chunks = c.train_command("auto", "lost-chunk", fed.code_hash, weights=fed.start_weights)
    c.publish("auto", "train", encode(c.signed(cmd)))
    c.publish("auto", "train", encode(chunks[0]))  # the second chunk never comes
    cmd2, chunks2 = c.train_command("auto", "bad-chunk", fed.code_hash, weights=fed.start_weights)
    c.publish("auto", "train", encode(c.signed(cmd2)))
    for chunk in (chunks2[0], chunks2[1].model_copy(update={"data": chunks2[0].data})):
        c.publish("auto", "train", encode(chunk))
    bad = c.wait_state("auto", "bad-chunk", "failed", timeout=20)
    assert bad.states == ["accepted", "failed"]
    assert (bad.statuses[-1].reason or "").startswith("weights failed verification")
    lost = c.wait_state("auto", "lost-chunk", "failed", timeout=30)
    assert lost.statuses[-1].reason == "weights incomplete: 1 of 2 chunks missing after 5 s"
    assert lost.results == [] and not _submitted_to_datasite(fed.sites["auto"], "lost-chunk")

    # An unsigned cancel for a finished job is refused and reported without touching its state.
    cancel, _ = c.train_command("auto", "bad-chunk", fed.code_hash)
    forged = CancelCommand(
        site="auto", session=1, cmd_id=cancel.cmd_id, expires_at=cancel.expires_at,
        job_id="bad-chunk",
    )  # fmt: skip
    c.publish("auto", "cancel", encode(forged))
    wait_for(lambda: len(c.job("auto", "bad-chunk").statuses) == 3, 10, "cancel refusal")
    last = c.job("auto", "bad-chunk").statuses[-1]
    assert (last.state, last.reason) == ("failed", "command refused: unsigned")


def test_cancel_stops_a_running_job(fed: Federation) -> None:
    c = fed.coord
    c.train("auto", "long-1", fed.code_hash, hyperparams={"epochs": 300, "batch_size": 8})

    def progressed() -> bool:
        running = [s for s in c.job("auto", "long-1").statuses if s.state == "running"]
        return any((s.progress or 0) > 0 for s in running)

    wait_for(progressed, 90, "progress of the long job")
    c.cancel("auto", "long-1", "operator asked")
    view = c.wait_state("auto", "long-1", "cancelled", timeout=30)
    assert view.statuses[-1].reason == "cancelled by coordinator: operator asked"
    assert view.results == []
    running = [s for s in view.statuses if s.state == "running"]
    # Progress is rate limited (2 s): far fewer statuses than training steps.
    assert len(running) < 30
    assert _jobs(fed.sites["auto"])["long-1"]["state"] == "cancelled"


def test_manual_approval_reject_and_a_restart(fed: Federation) -> None:
    c, proc = fed.coord, fed.sites["manual"]
    c.train("manual", "m-1", fed.code_hash, weights=fed.start_weights)
    c.train("manual", "m-2", fed.code_hash)
    for job_id in ("m-1", "m-2"):
        view = c.wait_state("manual", job_id, "pending_approval", timeout=30)
        assert view.states == ["accepted", "pending_approval"]
    wait_for(lambda: _jobs(proc).get("m-2", {}).get("state") == "pending_approval", 10, "jobs")
    time.sleep(1.0)
    assert c.job("manual", "m-1").states == ["accepted", "pending_approval"]  # still waiting

    out = proc.cli("approve", "m-1")
    assert out.returncode == 0, out.stderr
    done = c.wait_state("manual", "m-1", "done", timeout=120)
    assert done.states[-2:] == ["running", "done"] and done.results[0].n_samples > 0
    done.weights()

    out = proc.cli("reject", "m-2", "--reason", "line down for maintenance")
    assert out.returncode == 0, out.stderr
    rejected = c.wait_state("manual", "m-2", "rejected", timeout=20)
    assert rejected.statuses[-1].reason == "rejected by site operator: line down for maintenance"
    assert rejected.results == []

    unknown = proc.cli("approve", "no-such-job")
    assert unknown.returncode == 3 and unknown.stderr.count("\n") == 1
    again = proc.cli("approve", "m-1")
    assert again.returncode == 2 and "not pending" in again.stderr

    # A pending job survives a restart; one running when the site dies fails with a reason.
    c.train("manual", "m-3", fed.code_hash)
    c.train("manual", "m-4", fed.code_hash, hyperparams={"epochs": 300, "batch_size": 8})
    c.wait_state("manual", "m-4", "pending_approval", timeout=30)
    assert proc.cli("approve", "m-4").returncode == 0
    c.wait_state("manual", "m-4", "running", timeout=60)
    proc.kill()
    proc.start()
    c.wait_state("manual", "m-4", "failed", timeout=60)
    assert c.job("manual", "m-4").statuses[-1].reason == "site restarted"
    assert _jobs(proc)["m-3"]["state"] == "pending_approval"
    wait_for(lambda: proc.cli("approve", "m-3").returncode == 0, 10, "approve after restart")
    restarted = c.wait_state("manual", "m-3", "done", timeout=150)
    assert len(restarted.results) == 1
