"""A run survives kill -9 of ``fedmq serve`` in the middle of a round: started again (no
other command), the daemon resumes the run by itself and finishes it, every result
counted once; the ``fedmq train`` that submitted it follows it across the restart.

Real Mosquitto, real ``fedmq serve`` subprocess, fake training sites (no syft)."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.admin.signing import generate_keypair
from coordinator.training.aggregate import dump_npz, load_npz
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import FEDMQ, REPO, Coordinator, fedmq, sites_json, wait_until
from tests.helpers.db import query
from tests.helpers.fake_trainer import FakeTrainer

TASK, CODE_HASH = "toy", "c" * 64


def _delta(delta: float) -> Any:
    def answer(_rnd: int, glob: dict[str, np.ndarray] | None) -> tuple[bytes, int]:
        base = glob if glob is not None else {"w": np.zeros((4, 3), np.float32)}
        return dump_npz({k: v + np.float32(delta) for k, v in base.items()}), 100

    return answer


def test_kill_9_mid_round_then_start_again_finishes_the_run_counting_each_result_once(
    broker: Broker, tmp_path: Path
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    db = tmp_path / "c.db"
    serve = Coordinator(db, broker.port, prefix, ("--signing-key", str(tmp_path / "k.key")))
    serve.start().wait_ready(60)
    # Each site sends its result at once and "done" 2 s later: a round lasts >= 2 s.
    sites = [
        FakeTrainer(broker.port, prefix, f"r{i}-{uuid.uuid4().hex[:4]}", TASK, CODE_HASH,
                    _delta(float(i + 1)), rows=1000, done_delay_s=2.0).start()
        for i in range(3)
    ]  # fmt: skip
    ids = [s.site for s in sites]
    train = None
    try:
        wait_until(lambda: all(sites_json(db).get(s, {}).get("state") == "online" for s in ids),
                   30, "sites online", step=0.3)  # fmt: skip
        train = subprocess.Popen(
            [*FEDMQ, "train", "--task", TASK, "--rounds", "3", "--min-sites", "3",
             "--round-timeout", "60", "--wait-sites", "20", "--rejoin-wait", "30",
             "--db", str(db), "--json"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lines: list[dict[str, Any]] = []
        reader = threading.Thread(
            target=lambda: lines.extend(
                json.loads(x) for x in train.stdout or [] if x.startswith("{")
            )
        )
        reader.start()
        # Mid-round: round 2 open, and at least one of its results already stored.
        wait_until(
            lambda: query(
                db,
                "SELECT 1 FROM messages m JOIN train_jobs j ON m.job_id = j.job_id "
                "WHERE j.round = 2 AND m.kind = 'job_result'",
            )
            and query(db, "SELECT 1 FROM rounds WHERE round = 2 AND state = 'open'"),
            60, "round 2 open with a result stored",
        )  # fmt: skip
        serve.kill()  # kill -9
        (run_id,) = query(db, "SELECT run_id FROM runs")[0]
        assert query(db, "SELECT state FROM runs") == [("running",)]
        serve.start().wait_ready(60)  # the same command again, nothing else
        assert train.wait(180) == 0, (train.stderr.read() if train.stderr else "")[-3000:]
        reader.join(10)
    finally:
        if train is not None and train.poll() is None:
            train.kill()
        for s in sites:
            s.stop()
        log = serve.log_text()
        serve.kill()
    assert f"run {run_id} was running when the coordinator stopped: resuming it" in log
    run = json.loads(fedmq("run", run_id, "--db", str(db), "--json").stdout)
    assert run["state"] == "done", run
    assert [(r["round"], r["state"], r["n_results"]) for r in run["rounds"]] == [
        (1, "aggregated", 3), (2, "aggregated", 3), (3, "aggregated", 3),
    ]  # fmt: skip
    # Each round's model counts each site's result once: 100 samples x 3 sites...
    assert [n for (n,) in query(db, "SELECT n_samples FROM models ORDER BY round")] == [300] * 3
    # ... and moves the model by exactly the mean delta (1 + 2 + 3) / 3 = 2 per round.
    out = tmp_path / "m.npz"
    fedmq("models", "export", f"{run_id}-r3", "--out", str(out), "--db", str(db))
    np.testing.assert_allclose(load_npz(out.read_bytes())["w"], np.full((4, 3), 6.0), rtol=1e-6)
    jobs = query(db, "SELECT round, site, state, late FROM train_jobs WHERE run_id = ?", run_id)
    for rnd in (1, 2, 3):
        counted = sorted(site for r, site, state, late in jobs if r == rnd and not late)
        assert counted == sorted(ids), (rnd, jobs)
        assert all(state == "done" for r, _s, state, late in jobs if r == rnd and not late)
    # The killed round's first jobs were sent again as new jobs; the old ones never count.
    assert sorted(site for r, site, _st, late in jobs if r == 2 and late) == sorted(ids)
    # The follower saw the resumed run through to its end.
    assert any(e["event"] == "run_started" and e.get("resumed_at_round") == 2 for e in lines)
    assert lines[-1]["event"] == "run_finished" and lines[-1]["state"] == "done"
