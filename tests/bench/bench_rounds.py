"""Round overhead of ``fedmq train`` with 4 real sites (syft) on cmapss-rul.

Command (not collected by pytest)::

    .venv/bin/python -m tests.bench.bench_rounds --rounds 5 --units 6 --epochs 1

Starts a Mosquitto, ``fedmq serve`` and 4 ``fedmq-site run`` processes (each with
``--units`` FD001 engines), then runs ``coordinator.training.driver.run_training`` in this
process. Per round: overhead = round wall time (commands sent -> model stored, FD001 test
RMSE included) minus the slowest site's job time as the site reports it (train_time_s).
Target: <= 0.5 s. Also prints wall minus the slowest site's running->done span (from the
``received_at`` of its statuses), which leaves out the site's syft submission time.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from coordinator.admin.signing import generate_keypair
from coordinator.settings import CoordinatorSettings
from coordinator.training.driver import run_training
from coordinator.training.events import TrainSpec
from fedmq_runtime.settings import MqttSettings
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import REPO, Coordinator, sites_json, wait_until
from tests.helpers.site_proc import SiteProc, site_settings

TRAIN = REPO.parent / "shared" / "data" / "cmapss_fd001" / "train_FD001.txt"
TASK = "cmapss-rul"


def _spans(db: Path, run_id: str) -> dict[int, float]:
    """Per round, the slowest running->done span (s) of its jobs from serve's timestamps."""
    conn = sqlite3.connect(db)
    out: dict[int, float] = {}
    jobs = conn.execute("SELECT job_id, round FROM train_jobs WHERE run_id = ?", (run_id,))
    for job_id, rnd in jobs.fetchall():
        rows = conn.execute(
            "SELECT payload, received_at FROM messages WHERE job_id = ? AND kind = 'job_status'",
            (job_id,),
        ).fetchall()
        times = {json.loads(p)["state"]: t for p, t in reversed(rows)}
        if "running" in times and "done" in times:
            out[rnd] = max(out.get(rnd, 0.0), (times["done"] - times["running"]) / 1000)
    conn.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--units", type=int, default=6, help="FD001 engines per site")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-rounds-"))
    broker = Broker(tmp)
    broker.start()
    prefix = "bench/fedmq/v1"
    generate_keypair(tmp / "coord.key", tmp / "coord.pub")
    db = tmp / "coord.db"
    serve = Coordinator(db, broker.port, prefix).start().wait_ready(60)
    sites = []
    try:
        for i, site in enumerate("abcd"):
            units = list(range(1 + i * args.units, 1 + (i + 1) * args.units))
            training = {"allow": [TASK], "datasets": [{"name": f"fd-{site}", "task": TASK,
                        "paths": [str(TRAIN)], "params": {"units": units}}]}  # fmt: skip
            cfg = site_settings(
                tmp, broker.port, prefix, site_id=site, devices=[], training=training,
                coordinator_public_key_file=str(tmp / "coord.pub"),
            )  # fmt: skip
            sites.append(SiteProc(tmp / site, cfg).start())

        def ready() -> bool:
            rows = sites_json(db)
            return all(TASK in rows.get(s, {}).get("tasks", ()) for s in "abcd")

        wait_until(ready, 300, "4 sites with the task", step=1.0)
        settings = CoordinatorSettings(
            mqtt=MqttSettings(port=broker.port, prefix=prefix), db=db,
            signing_key_file=tmp / "coord.key",
        )  # fmt: skip
        spec = TrainSpec(TASK, rounds=args.rounds, min_sites=4, round_timeout_s=600,
                         epochs=args.epochs)  # fmt: skip
        t0 = time.monotonic()
        result = run_training(settings, spec)
        total = time.monotonic() - t0
        spans = _spans(db, result.run_id)
        print(f"run {result.run_id}: {result.state} in {total:.1f} s, {args.units} engines/site")
        print("round  wall_s  job_max_s  overhead_s  running->done_s  overhead2_s  test_rmse")
        over, over2 = [], []
        for r in result.rounds:
            job = r.job_time_max_s or 0.0
            span = spans.get(r.round, 0.0)
            over.append(r.wall_s - job)
            over2.append(r.wall_s - span)
            rmse = r.test_rmse if r.test_rmse is not None else float("nan")
            print(f"{r.round:5d}  {r.wall_s:6.2f}  {job:9.2f}  {r.wall_s - job:10.2f}  "
                  f"{span:15.2f}  {r.wall_s - span:11.2f}  {rmse:9.2f}")  # fmt: skip
        print(f"median overhead {statistics.median(over):.2f} s (target <= 0.5 s); "
              f"vs running->done {statistics.median(over2):.2f} s")  # fmt: skip
    finally:
        for proc in sites:
            proc.kill()
        serve.kill()
        broker.kill()


if __name__ == "__main__":
    main()
