"""Coordinator-side training end to end: real Mosquitto (message_size_limit 1 MB), a real
``fedmq serve``, four real ``fedmq-site run`` processes with syft (a, b, c auto; d manual)
and ``fedmq train`` / ``fedmq runs|run|jobs|models`` as subprocesses.

The sites are shared by the module (syft starts in 15-45 s each on this machine).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator.admin.signing import generate_keypair
from site_node.training.job_files import func_name
from tests.helpers.broker import DEV_CONF, Broker
from tests.helpers.coord_proc import FEDMQ, REPO, Coordinator, fedmq, sites_json, wait_until
from tests.helpers.data import TRAIN_FD001
from tests.helpers.site_proc import SiteProc, site_settings

TRAIN = TRAIN_FD001
TASK = "cmapss-rul"
pytestmark = [
    pytest.mark.train,
    pytest.mark.slow,
]
UNITS = {"a": [1, 2, 3], "b": [4, 5, 6], "c": [7, 8, 9], "d": [10, 11, 12]}


@dataclass
class Fed:
    broker: Broker
    prefix: str
    db: Path
    key: Path
    serve: Coordinator
    sites: dict[str, SiteProc]
    tmp: Path

    def args(self) -> list[str]:
        return ["--db", str(self.db)]  # serve drives the run; train finds its API there

    def train(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        # --resume takes the stored run's settings (and refuses run flags such as --epochs).
        epochs = () if "--resume" in args else ("--epochs", "1")
        return fedmq("train", *args, *self.args(), "--json", *epochs, timeout=timeout,
                     check=False)  # fmt: skip

    def train_bg(self, *args: str) -> subprocess.Popen[str]:
        log = (self.tmp / f"train-{uuid.uuid4().hex[:6]}.log").open("w")
        return subprocess.Popen(
            [*FEDMQ, "train", *args, *self.args(), "--json", "--epochs", "1"],
            stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO,
        )  # fmt: skip

    def read(self, *args: str) -> Any:
        return json.loads(fedmq(*args, "--db", str(self.db), "--json").stdout)


def _limited_broker(workdir: Path) -> Broker:
    text = DEV_CONF.read_text().replace("listener 1883 127.0.0.1", "listener {port} 127.0.0.1")
    assert "message_size_limit 0" in text
    b = Broker(
        workdir, config_text=text.replace("message_size_limit 0", "message_size_limit 1048576")
    )
    b.start()
    return b


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    tmp = tmp_path_factory.mktemp("trainrun")
    broker = _limited_broker(tmp)
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    generate_keypair(tmp / "coord.key", tmp / "coord.pub")
    db = tmp / "coord.db"
    serve = Coordinator(db, broker.port, prefix, ("--signing-key", str(tmp / "coord.key")))
    sites: dict[str, SiteProc] = {}
    try:
        serve.start().wait_ready(60)
        for site_id, units in UNITS.items():
            training = {
                "allow": [TASK], "approval": "manual" if site_id == "d" else "auto",
                "datasets": [{"name": f"fd001-{site_id}", "task": TASK, "paths": [str(TRAIN)],
                              "params": {"units": units}}],
            }  # fmt: skip
            settings = site_settings(
                tmp, broker.port, prefix, site_id=site_id, devices=[], training=training,
                coordinator_public_key_file=str(tmp / "coord.pub"),
            )  # fmt: skip
            sites[site_id] = SiteProc(tmp / site_id, settings).start()
        fed = Fed(broker, prefix, db, tmp / "coord.key", serve, sites, tmp)
        _wait_tasks(fed, list(UNITS))
        yield fed
    finally:
        for proc in sites.values():
            proc.kill()
        serve.kill()
        broker.kill()


def _wait_tasks(fed: Fed, ids: list[str], timeout: float = 180) -> None:
    def ready() -> bool:
        rows = sites_json(fed.db)
        return all(
            rows.get(s, {}).get("state") == "online" and TASK in rows[s]["tasks"] for s in ids
        )

    wait_until(ready, timeout, f"sites {ids} online with {TASK}", step=1.0)


def _events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _jobs(fed: Fed, run_id: str) -> list[dict[str, Any]]:
    return fed.read("jobs", "--run", run_id)  # type: ignore[no-any-return]


def test_three_sites_two_rounds_store_models_and_test_rmse(fed: Fed, tmp_path: Path) -> None:
    import numpy as np

    proc = fed.train("--task", TASK, "--rounds", "2", "--min-sites", "3", "--sites", "a,b,c",
                     "--round-timeout", "150")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = _events(proc.stdout)
    run_id = events[0]["run_id"]
    assert events[0]["event"] == "run_started" and events[-1]["state"] == "done"
    run = fed.read("run", run_id)
    assert [r["state"] for r in run["rounds"]] == ["aggregated", "aggregated"]
    for r in run["rounds"]:
        assert r["n_results"] == 3 and sorted(r["selected"]) == ["a", "b", "c"]
        assert r["test_rmse"] is None and r["metrics"]["rmse"] > 0  # sites score, not serve
        assert r["wall_s"] >= r["job_time_max_s"] > 0
    models = fed.read("models", "--run", run_id)
    assert sorted(m["round"] for m in models) == [1, 2]
    assert all(m["n_sites"] == 3 and m["n_samples"] > 0 for m in models)
    out = tmp_path / "m.npz"
    fedmq("models", "export", f"{run_id}-r2", "--out", str(out), "--db", str(fed.db))
    raw = out.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == next(m for m in models if m["round"] == 2)["sha256"]
    with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
        assert len(arrays.files) > 4
    jobs = _jobs(fed, run_id)
    assert len(jobs) == 6 and all(j["state"] == "done" and j["late"] == 0 for j in jobs)
    assert {j["round"] for j in jobs} == {1, 2}
    # Auto approval: a site prepares a pre-approved syft slot while idle after a job, so
    # round 2's jobs ran in slots, not in requests submitted and approved on arrival.
    for j in (j for j in jobs if j["round"] == 2):
        job_dir = fed.sites[j["site"]].data_dir / "syft" / "jobs" / func_name(j["job_id"])
        assert (job_dir / "slot").read_text().startswith("fedmq_slot_")
    listed = fed.read("runs")
    assert any(r["run_id"] == run_id and r["aggregated"] == 2 for r in listed)


def test_manual_approval_waits_shows_pending_and_runs_when_approved(fed: Fed) -> None:
    proc = fed.train_bg("--task", TASK, "--rounds", "1", "--min-sites", "1", "--sites", "d",
                        "--round-timeout", "200")  # fmt: skip
    lines: list[str] = []  # the run's --json events as they come

    def read_events() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read_events, daemon=True)
    reader.start()
    try:

        def pending() -> Any:
            rows = [j for j in fed.read("jobs", "--state", "pending_approval") if j["site"] == "d"]
            return rows[0] if rows else None

        def seen_pending() -> bool:
            return any(
                e["event"] == "job" and e["site"] == "d" and e["state"] == "pending_approval"
                for e in _events("".join(lines))
            )

        job = wait_until(pending, 60, "job pending at d", step=0.5)
        assert job["summary"] == "pending approval at site d"
        text = fedmq("jobs", "--db", str(fed.db)).stdout
        assert "pending approval at site d" in text
        # The run itself has seen the job wait for the operator, and goes on waiting.
        wait_until(seen_pending, 60, "the run reporting d's job pending", step=0.2)
        assert proc.poll() is None
        approve = fed.sites["d"].cli("approve", job["job_id"])
        assert approve.returncode == 0, approve.stderr
        proc.wait(timeout=200)
        reader.join(30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    events = _events("".join(lines))
    kinds = [(e["event"], e.get("state")) for e in events]
    # Waited, then ran: the round closed only after d's job went from pending to done.
    assert kinds.index(("job", "pending_approval")) < kinds.index(("job", "done"))
    assert kinds.index(("job", "done")) < kinds.index(("round_closed", "aggregated"))
    run_id = events[0]["run_id"]
    [row] = _jobs(fed, run_id)
    assert row["state"] == "done" and row["n_samples"] > 0


def test_quorum_missed_fails_the_round_with_a_reason_and_exit_5(fed: Fed) -> None:
    proc = fed.train("--task", TASK, "--rounds", "2", "--min-sites", "2", "--sites", "a,d",
                     "--round-timeout", "25")  # fmt: skip
    assert proc.returncode == 5, proc.stderr[-2000:]
    run_id = _events(proc.stdout)[0]["run_id"]
    run = fed.read("run", run_id)
    assert run["state"] == "failed" and [r["state"] for r in run["rounds"]] == ["failed"]
    reason = run["rounds"][0]["reason"]
    assert (
        reason.startswith("quorum missed: 1 of 2") and "d: no answer (pending_approval)" in reason
    )
    assert run["reason"] == reason
    # The failed run cancels the job still waiting at d.
    wait_until(
        lambda: [j["state"] for j in _jobs(fed, run_id) if j["site"] == "d"] == ["cancelled"],
        30, "d's job cancelled",
    )  # fmt: skip


def test_site_killed_mid_round_quorum_at_deadline_then_its_late_result(fed: Fed) -> None:
    d = fed.sites["d"]
    # Round 1 closes at its deadline (d never answers it); the deadline also has to cover
    # round 2, where a, b, c train while d runs its late round-1 job (~40 s each here).
    proc = fed.train_bg("--task", TASK, "--rounds", "2", "--min-sites", "3",
                        "--round-timeout", "90", "--rejoin-wait", "150")  # fmt: skip
    try:

        def job_of(rnd: int, run_id: str | None = None) -> Any:
            rows = fed.read("jobs", "--state", "pending_approval")
            rows = [j for j in rows if j["site"] == "d" and j["round"] == rnd]
            return rows[-1] if rows and (run_id is None or rows[-1]["run_id"] == run_id) else None

        def state_of(job_id: str) -> dict[str, Any]:
            return next(j for j in _jobs(fed, run_id) if j["job_id"] == job_id)

        first = wait_until(lambda: job_of(1), 60, "d's round-1 job pending", step=0.5)
        run_id = first["run_id"]
        d.kill()  # mid-round: a, b, c are training
        d.start()
        wait_until(
            lambda: [r["state"] for r in fed.read("run", run_id)["rounds"]][:1] == ["aggregated"],
            150, "round 1 aggregated at the deadline", step=1.0,
        )  # fmt: skip
        r1 = fed.read("run", run_id)["rounds"][0]
        assert r1["n_results"] == 3 and "d: no answer (pending_approval)" in r1["reason"]
        # d is back with its pending job (kept across the restart); round 2 waited for it.
        second = wait_until(lambda: job_of(2, run_id), 150, "d's round-2 job pending", step=1.0)
        assert d.cli("approve", first["job_id"]).returncode == 0
        # ~40 s of training on an idle machine; at load ~10 (two CPU burners beside the
        # suite) it once took over 120 s.
        try:
            wait_until(lambda: state_of(first["job_id"])["state"] == "done", 360,
                       "late result of d's round-1 job", step=1.0)  # fmt: skip
        except AssertionError as exc:
            tail = "\n".join(d.log_text().splitlines()[-60:])
            job = state_of(first["job_id"])
            raise AssertionError(f"{exc}\njob: {job}\nd's log:\n{tail}") from None
        late = state_of(first["job_id"])
        assert late["late"] == 1 and late["n_samples"] > 0
        assert d.cli("reject", second["job_id"], "--reason", "enough for today").returncode == 0
        _out, _ = proc.communicate(timeout=360)
    finally:
        proc.kill()
    assert proc.returncode == 0
    run = fed.read("run", run_id)
    assert [r["n_results"] for r in run["rounds"]] == [3, 3]  # the late result is not counted
    assert "d: rejected (rejected by site operator: enough for today)" in run["rounds"][1]["reason"]
    models = {m["round"]: m for m in fed.read("models", "--run", run_id)}
    assert models[1]["n_sites"] == 3 and models[2]["n_sites"] == 3


def test_coordinator_killed_mid_run_then_started_again_finishes_by_itself(fed: Fed) -> None:
    proc = fed.train_bg("--task", TASK, "--rounds", "2", "--min-sites", "3", "--sites", "a,b,c",
                        "--round-timeout", "150")  # fmt: skip
    assert proc.stdout is not None
    try:
        run_id = json.loads(proc.stdout.readline())["run_id"]

        def in_round_2() -> bool:
            rounds = fed.read("run", run_id)["rounds"]
            return len(rounds) == 2 and rounds[1]["state"] == "open"

        wait_until(in_round_2, 150, "round 2 open", step=0.5)
        old = {j["job_id"] for j in _jobs(fed, run_id) if j["round"] == 2}
        fed.serve.kill()  # kill -9 of the daemon that drives the run
        assert fed.read("run", run_id)["state"] == "running"
        fed.serve.start().wait_ready(60)  # and nothing else: it resumes the run
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0  # the follower rode out the restart
    events = _events(out)
    assert any(e["event"] == "run_started" and e["resumed_at_round"] == 2 for e in events)
    run = fed.read("run", run_id)
    assert run["state"] == "done"
    assert [r["state"] for r in run["rounds"]] == ["aggregated", "aggregated"]
    assert [r["n_results"] for r in run["rounds"]] == [3, 3]
    round2 = [j for j in _jobs(fed, run_id) if j["round"] == 2]
    new = {j["job_id"] for j in round2 if j["job_id"] not in old}
    assert len(new) == 3 and all(j["state"] == "done" for j in round2 if j["job_id"] in new)
    assert all(
        j["state"] in ("abandoned", "cancelled", "done") for j in round2 if j["job_id"] in old
    )
    assert len(fed.read("models", "--run", run_id)) == 2


def test_a_10mb_model_crosses_the_1mb_broker_both_ways_verified(fed: Fed) -> None:
    import numpy as np

    from coordinator.admin.signing import load_private_key
    from coordinator.bus import Bus, BusOptions
    from coordinator.store.training import TrainDb
    from coordinator.training.aggregate import dump_npz
    from coordinator.training.inbox import JobTrack, TrainInbox
    from coordinator.training.send import CommandSender
    from fedmq_runtime.settings import MqttSettings
    from schemas import JobResult, ResultChunk, Topics, encode, make_blob
    from site_node.training.tasks import get_task
    from tests.helpers.mqtt import TestClient

    task = get_task(TASK)
    with np.load(io.BytesIO(task.initial_weights()), allow_pickle=False) as start:
        arrays = {k: start[k] for k in start.files}
    pad = np.random.default_rng(0).standard_normal(1_310_720)  # 10 MiB of float64
    big = dump_npz({**arrays, "pad": pad})
    assert len(big) > 10_000_000

    # Coordinator -> site: the sender the round driver uses splits it into 256 KiB
    # TrainChunks; the site reassembles and verifies it, then its model refuses the extra array.
    bus = Bus(
        MqttSettings(port=fed.broker.port, prefix=fed.prefix),
        queue.SimpleQueue(),
        BusOptions("big", 0, session_expiry_s=0, announce=False),
    )
    bus.start()
    sender = CommandSender(bus, load_private_key(fed.key))
    sender.start()
    down = f"big-down-{uuid.uuid4().hex[:6]}"
    sender.train("a", down, "run-big", 0, TASK, task.code_hash, "fedavg", {}, big, ttl_s=120)
    sender.stop()
    bus.stop()

    def site_verdict() -> Any:
        rows = [j for j in fed.read("jobs") if j["job_id"] == down and j["state"] == "failed"]
        return rows[0] if rows else None

    verdict = wait_until(site_verdict, 120, "the site's verdict on 10 MB weights", step=1.0)
    assert "weights keys differ from the model: ['pad']" in verdict["reason"], verdict

    # Site -> coordinator: a result in 40 chunks through `fedmq serve`, reassembled and
    # verified by the round driver's inbox; the same bytes in one message never arrive.
    topics, up = Topics(fed.prefix), f"big-up-{uuid.uuid4().hex[:6]}"
    blob, parts = make_blob(big)
    client = TestClient(fed.broker.port).connect()
    try:
        site: dict[str, Any] = {"site": "bigsite", "session": 1, "job_id": up}
        msgs: list[Any] = [JobResult(**site, seq=1, n_samples=7, weights=blob)]
        msgs += [
            ResultChunk(**site, seq=i + 2, index=i, total=len(parts), sha256=blob.sha256, data=p)
            for i, p in enumerate(parts)
        ]
        for msg in msgs:
            client.publish(topics.job_result("bigsite", up), encode(msg))
        inline = make_blob(big, max_inline=len(big))[0]
        whole = JobResult(**site, seq=len(msgs) + 1, n_samples=7, weights=inline)
        with contextlib.suppress(RuntimeError, ValueError):  # the broker may drop us for it
            client.publish(topics.job_result("bigsite", up), encode(whole))
    finally:
        client.close()
    db = TrainDb(fed.db)
    try:
        wait_until(lambda: len(db.job_messages([up])) >= len(parts) + 1, 60, "stored chunks")
        time.sleep(1.0)
        rows = db.job_messages([up])
        assert len(rows) == len(parts) + 1 and len(parts) >= 40  # the 13 MB one: dropped
        inbox = TrainInbox()
        inbox.track(job := JobTrack(up, "run-big", 1, "bigsite"))
        inbox.apply(rows)
        assert job.weights == big and job.weights_error is None
    finally:
        db.close()
