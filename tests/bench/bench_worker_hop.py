"""What the training worker process adds to a warm job: the supervisor hop, measured alone.

Command (not collected by pytest)::

    .venv/bin/python -m tests.bench.bench_worker_hop [--jobs 12] [--gap 1.5] [--epochs 1]

One datasite (cmapss-rul on 3 FD001 engines, auto approval, pre-approved slots), the same
sequence of 1-epoch jobs run twice: through :class:`WorkerSupervisor` (a worker process,
operations and reports pickled over its socket pair, as a site runs them now) and through
the :class:`Runner` on a thread of this process (as the site ran them before the worker
process). Per job: submit -> Started, Started -> Finished minus the job's own
``train_time_s``, and their sum, the job's overhead outside training; the first job of
each variant (it opens the datasite) is left out of the medians.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from site_node.training.jobs.config import TrainingSettings
from site_node.training.jobs.runner import Runner
from site_node.training.worker import WorkerSupervisor
from site_node.training.worker.protocol import (
    Cancelled,
    DatasiteReady,
    Failed,
    Finished,
    Run,
    Started,
)
from tests.helpers.data import TRAIN_FD001

TASK = "cmapss-rul"
EPOCHS = [1]


def _jobs(
    submit: Any, reports: queue.Queue[object], n: int, label: str, gap: float
) -> list[tuple[float, float]]:
    """Run ``n`` jobs one after the other; (before start, after training) overheads in s."""
    weights: bytes | None = None
    out = []
    for i in range(n):
        job = f"{label}-{i}-{os.urandom(3).hex()}"
        t0 = time.perf_counter()
        submit(Run(job, TASK, weights, {"epochs": EPOCHS[0], "round": i, "seed": 0}))
        started = finished = None
        while finished is None:
            msg = reports.get(timeout=600)
            now = time.perf_counter()
            if isinstance(msg, Started) and msg.job_id == job:
                started = now
            elif isinstance(msg, Finished) and msg.job_id == job:
                assert started is not None
                finished = now
                weights = msg.weights
                out.append((started - t0, finished - started - msg.train_time_s))
            elif isinstance(msg, (Failed, Cancelled)) and msg.job_id == job:
                raise SystemExit(f"{label}: job {job}: {msg}")
        # Between rounds the runner prepares the next slot: --gap is the time a round's
        # aggregation gives it (the slowest site of a round gets ~0.1 s).
        time.sleep(gap)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gap", type=float, default=1.5, help="s between a result and the next job")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    EPOCHS[0] = args.epochs
    tmp = Path(tempfile.mkdtemp(prefix="bench-worker-hop-"))
    training = TrainingSettings.model_validate(
        {
            "allow": [TASK],
            "datasets": [
                {
                    "name": "fd",
                    "task": TASK,
                    "paths": [str(TRAIN_FD001)],
                    "params": {"units": [1, 2, 3]},
                }
            ],
            "worker_idle_s": 600,
            "nice": 0,
            "threads": args.threads,
        }
    )
    results: dict[str, list[tuple[float, float]]] = {}

    reports: queue.Queue[object] = queue.Queue()
    sup = WorkerSupervisor(tmp, "hop", training, reports.put)
    sup.start()
    while not isinstance(reports.get(timeout=600), DatasiteReady):
        pass
    results["worker process"] = _jobs(sup.submit, reports, args.jobs, "proc", args.gap)
    sup.stop()

    reports = queue.Queue()
    runner = Runner(tmp, "hop", training, reports.put, threads=args.threads)
    n = iter(range(1, 10**9))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while not isinstance(reports.get(timeout=600), DatasiteReady):
        pass
    results["in-process runner"] = _jobs(
        lambda op: runner.submit(next(n), op), reports, args.jobs, "thread", args.gap
    )
    runner.stop()
    thread.join(120)
    sys.stdout = sys.__stdout__  # the runner's syft calls capture stdout while they run

    print(f"machine: {os.cpu_count()} cores, load avg {os.getloadavg()}")
    print("variant             submit->started_s  after_training_s  overhead_s (median, jobs 2..N)")
    for label, rows in results.items():
        warm = rows[1:]
        pre = statistics.median(r[0] for r in warm)
        post = statistics.median(r[1] for r in warm)
        total = statistics.median(r[0] + r[1] for r in warm)
        print(f"{label:18s}  {pre:17.4f}  {post:16.4f}  {total:10.4f}")
        print("    per job: " + " ".join(f"{a + b:.3f}" for a, b in warm))


if __name__ == "__main__":
    main()
