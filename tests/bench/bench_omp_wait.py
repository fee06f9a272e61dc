"""OpenMP's wait policy with several training processes sharing the cores.

Command (not collected by pytest)::

    .venv/bin/python -m tests.bench.bench_omp_wait [--procs 4] [--jobs 3] [--threads 2]

Starts ``--procs`` processes at once, each running the cmapss-rul task's own ``train``
(6 FD001 engines, 1 epoch; no syft, no MQTT) ``--jobs`` times after a warm-up, with the
training worker's thread environment (``OMP_NUM_THREADS`` etc. = ``--threads``), first
with ``OMP_WAIT_POLICY=ACTIVE``-like spinning (the policy unset, as before the worker set
it), then ``PASSIVE`` (what the worker sets). Prints wall and CPU seconds per job, per
policy: spinning threads burn the CPU the other processes need.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_CHILD = """
import os, sys, time
from pathlib import Path
from site_node.training.tasks import cmapss_rul as t
from tests.helpers.data import TRAIN_FD001
units = {"units": [1, 2, 3, 4, 5, 6]}
data = t.load_dataset(t.read_table([str(TRAIN_FD001)], units), units)
w = t.initial_weights()
def job():
    t0, c0 = time.perf_counter(), time.process_time()
    t.train(w, data, {"epochs": 1}, None)
    return time.perf_counter() - t0, time.process_time() - c0
job()  # warm-up
go = Path(sys.argv[1])
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.01)
for _ in range(int(sys.argv[2])):
    wall, cpu = job()
    print(f"{wall:.4f} {cpu:.4f}", flush=True)
"""


def run(policy: str | None, args: argparse.Namespace) -> list[tuple[float, float]]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(args.threads)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(go), str(args.jobs)],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(args.procs)
        ]
        while len(list(Path(tmp).glob("ready-*"))) < args.procs:
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a training process failed to start")
            time.sleep(0.1)
        go.touch()
        out = []
        for p in procs:
            stdout, _ = p.communicate(timeout=1800)
            out += [tuple(map(float, line.split())) for line in stdout.splitlines() if line]
    return out  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--procs", type=int, default=4, help="training processes at once")
    ap.add_argument("--jobs", type=int, default=3, help="timed jobs per process")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS etc.")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load avg {os.getloadavg()}")
    print(f"{args.procs} processes x {args.jobs} jobs, {args.threads} thread(s) each")
    print("OMP_WAIT_POLICY   wall_s/job (median)  cpu_s/job (median)")
    for policy in (None, "PASSIVE"):
        res = run(policy, args)
        wall = statistics.median(r[0] for r in res)
        cpu = statistics.median(r[1] for r in res)
        print(f"{policy or 'unset':16s}  {wall:19.3f}  {cpu:18.3f}")


if __name__ == "__main__":
    main()
