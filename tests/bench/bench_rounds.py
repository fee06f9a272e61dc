"""Round overhead of ``fedmq train`` with 4 real sites (syft) on cmapss-rul.

Command (not collected by pytest)::

    .venv/bin/python -m tests.bench.bench_rounds --rounds 5 --units 6 --epochs 1
    git worktree add /tmp/base <commit before the training worker process>
    .venv/bin/python -m tests.bench.bench_rounds --rounds 6 --baseline /tmp/base

With ``--baseline`` the same federation runs twice, first with this checkout's code, then
the old one's (sites, serve and ``fedmq train`` alike): round overheads side by side. This
checkout's sites stop their training workers when idle (``--idle`` s) and the bench waits
for that before the run, so round 1 starts them cold (the cold start of the first job)
and rounds 2..N find them warm. RSS over time: the site daemons' and their workers'
resident memory, sampled every second.

Starts a Mosquitto, ``fedmq serve`` and 4 ``fedmq-site run`` processes (each with
``--units`` FD001 engines), then ``fedmq train --json`` through serve's control API. Per
round: overhead = round wall time (commands sent -> model stored) minus the slowest site's
job time as the site reports it (train_time_s).
Target: <= 0.5 s. Also prints wall minus the slowest site's running->done span (from the
``received_at`` of its statuses), which leaves out the site's syft submission time.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from coordinator.admin.signing import generate_keypair
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import FEDMQ, REPO, Coordinator, wait_until
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


class CheckoutSite(SiteProc):
    """A site daemon running the code of ``checkout`` (this repository or an old worktree)."""

    def __init__(self, workdir: Path, settings: dict[str, Any], checkout: Path) -> None:
        super().__init__(workdir, settings, suite_nice=False)
        self.checkout = checkout

    def start(self) -> CheckoutSite:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMQ_")}
        env["PYTHONPATH"] = str(self.checkout)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from site_node.cli import main; main()", "run",
                 "--config", str(self.config)],
                stdout=log, stderr=log, env=env, cwd=self.workdir,
            )  # fmt: skip
        return self


class RssSampler:
    """RSS of each site daemon and of everything under it (its training worker), every 1 s."""

    def __init__(self, sites: list[CheckoutSite]) -> None:
        self.sites = sites
        self.t0 = time.monotonic()
        self.rows: list[tuple[float, str, float, float]] = []  # (t, phase, daemon, worker)
        self.phase = "boot"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            daemon = worker = 0.0
            for site in self.sites:
                try:
                    proc = psutil.Process(site.pid)
                    daemon += proc.memory_info().rss
                    worker += sum(c.memory_info().rss for c in proc.children(recursive=True))
                except psutil.Error:
                    continue
            n = max(1, len(self.sites))
            mb = 1024 * 1024 * n
            self.rows.append((time.monotonic() - self.t0, self.phase, daemon / mb, worker / mb))

    def table(self, every_s: float = 10.0) -> list[str]:
        out = ["    t_s  phase        daemon_MB  worker_MB   (mean per site)"]
        last = -every_s
        for t, phase, daemon, worker in self.rows:
            if t - last >= every_s:
                out.append(f"{t:7.0f}  {phase:11s}  {daemon:9.1f}  {worker:9.1f}")
                last = t
        return out


def _phases(db: Path, run_id: str) -> list[tuple[float, float, float]]:
    """Per warm round (2..N), where its overhead went, for its slowest job (s): start =
    round created -> the job's "running" (serve's commit, signing, the command's trip,
    the site's checks); site = the job's running -> done at the site minus its train time
    (the worker hop, syft, the result's trip into the outbox); close = the round's last
    result received -> model stored (aggregation and the round's writes)."""
    conn = sqlite3.connect(db)
    out = []
    rounds = conn.execute(
        "SELECT round, started_at FROM rounds WHERE run_id = ? AND round > 1 ORDER BY round",
        (run_id,),
    ).fetchall()
    for rnd, started in rounds:
        slow = conn.execute(
            "SELECT job_id, train_time_s FROM train_jobs WHERE run_id = ? AND round = ? "
            "ORDER BY train_time_s DESC LIMIT 1",
            (run_id, rnd),
        ).fetchone()
        model = conn.execute(
            "SELECT created_at FROM models WHERE run_id = ? AND round = ?", (run_id, rnd)
        ).fetchone()
        last = conn.execute(
            "SELECT max(m.received_at) FROM messages m JOIN train_jobs j ON m.job_id = j.job_id "
            "WHERE j.run_id = ? AND j.round = ? AND m.kind IN ('job_result', 'result_chunk')",
            (run_id, rnd),
        ).fetchone()
        if slow is None or model is None or last[0] is None or slow[1] is None:
            continue
        ts = {
            json.loads(p)["state"]: t
            for p, t in conn.execute(
                "SELECT payload, ts FROM messages WHERE job_id = ? AND kind = 'job_status'",
                (slow[0],),
            )
        }
        if "running" not in ts or "done" not in ts:
            continue
        out.append(
            (
                (ts["running"] - started) / 1000,
                (ts["done"] - ts["running"]) / 1000 - slow[1],
                (model[0] - last[0]) / 1000,
            )
        )
    conn.close()
    return out


@dataclass
class Outcome:
    label: str
    overheads: list[float]
    first_wall_s: float
    first_job_s: float
    wait_stopped_s: float | None
    rss: list[str]
    lines: list[str]
    phases: list[tuple[float, float, float]]


def run_variant(
    label: str, checkout: Path, args: argparse.Namespace, tmp: Path, broker: Broker, worker: bool
) -> Outcome:
    """Serve (this repository) and 4 sites running ``checkout``'s code; ``args.rounds``."""
    prefix = f"bench-{label.split()[0]}/fedmq/v1"
    work = tmp / label.split()[0]
    work.mkdir()
    generate_keypair(work / "coord.key", work / "coord.pub")
    db = work / "coord.db"
    # serve and fedmq train run the same checkout's code as the sites (wire-compatible).
    serve = Coordinator(db, broker.port, prefix, ("--signing-key", str(work / "coord.key")),
                        cwd=checkout)  # fmt: skip
    serve.start().wait_ready(60)
    sites: list[CheckoutSite] = []
    sampler = RssSampler(sites)
    lines: list[str] = []
    try:
        for i, site in enumerate("abcd"):
            units = list(range(1 + i * args.units, 1 + (i + 1) * args.units))
            training: dict[str, Any] = {"allow": [TASK], "datasets": [{"name": f"fd-{site}",
                "task": TASK, "paths": [str(TRAIN)], "params": {"units": units}}]}  # fmt: skip
            if worker:
                training["worker_idle_s"] = args.idle
                training["threads"] = args.threads
                training["nice"] = args.nice
            cfg = site_settings(
                work, broker.port, prefix, site_id=site, devices=[], training=training,
                coordinator_public_key_file=str(work / "coord.pub"),
            )  # fmt: skip
            sites.append(CheckoutSite(work / site, cfg, checkout).start())
        sampler.start()

        def ready() -> bool:
            out = subprocess.run([*FEDMQ, "sites", "--db", str(db), "--json"],
                                 capture_output=True, text=True, cwd=checkout)  # fmt: skip
            if out.returncode != 0:
                return False
            got = json.loads(out.stdout)
            rows = {r["site"]: r for r in (got["sites"] if isinstance(got, dict) else got)}
            return all(TASK in rows.get(s, {}).get("tasks", ()) for s in "abcd")

        wait_until(ready, 600, "4 sites with the task", step=1.0)
        waited = None
        if worker:
            # The workers hosted the datasets at boot; wait until they stopped (idle), so
            # the first round starts them cold.
            sampler.phase = "idle"
            t0 = time.monotonic()

            def stopped() -> bool:
                return all(not psutil.Process(s.pid).children() for s in sites)

            wait_until(stopped, 600, "workers stopped", step=0.5)
            waited = time.monotonic() - t0
            time.sleep(5.0)  # a few idle RSS samples
        sampler.phase = "training"
        t0 = time.monotonic()
        out = subprocess.run(
            [*FEDMQ, "train", "--task", TASK, "--db", str(db), "--rounds", str(args.rounds),
             "--min-sites", "4", "--round-timeout", "900", "--epochs", str(args.epochs),
             "--json"], capture_output=True, text=True, timeout=3600, cwd=checkout,
        )  # fmt: skip
        total = time.monotonic() - t0
        sampler.phase = "after"
        events = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
        rounds = [e for e in events if e["event"] == "round_closed"]
        if out.returncode != 0 or not rounds:
            raise SystemExit(f"{label}: fedmq train failed: {out.stderr[-2000:]}")
        run_id = rounds[0]["run_id"]
        time.sleep(min(args.idle + 10, 60) if worker else 10)
        spans = _spans(db, run_id)
        lines.append(f"{label}: run {run_id} in {total:.1f} s, {args.units} engines/site")
        lines.append("round  wall_s  job_max_s  overhead_s  running->done_s  overhead2_s")
        over = []
        for r in rounds:
            job = r["job_time_max_s"] or 0.0
            span = spans.get(r["round"], 0.0)
            over.append(r["wall_s"] - job)
            lines.append(f"{r['round']:5d}  {r['wall_s']:6.2f}  {job:9.2f}  "
                         f"{r['wall_s'] - job:10.2f}  {span:15.2f}  "
                         f"{r['wall_s'] - span:11.2f}")  # fmt: skip
        return Outcome(label, over, rounds[0]["wall_s"], rounds[0]["job_time_max_s"] or 0.0,
                       waited, sampler.table(), lines, _phases(db, run_id))  # fmt: skip
    finally:
        sampler.stop()
        for proc in sites:
            proc.kill()
        serve.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--units", type=int, default=6, help="FD001 engines per site")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument(
        "--nice",
        type=int,
        default=10,
        help="[training] nice of this checkout's workers (0: as before them)",
    )
    ap.add_argument(
        "--idle",
        type=float,
        default=60.0,
        help="[training] worker_idle_s of this checkout's sites: longer than a\n"
        "fast site waits for a round's slowest, or its worker stops between rounds",
    )
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1,
        help="[training] threads of this checkout's sites (default: every core, as torch\n"
        "took before the worker process; with fewer, 4 sites' workers share the same cores)",
    )  # fmt: skip
    ap.add_argument(
        "--baseline", type=Path, metavar="CHECKOUT",
        help="also run the sites from another checkout, side by side (e.g. `git worktree add "
        "/tmp/base <commit>`; a checkout from before the training worker process)",
    )  # fmt: skip
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-rounds-"))
    broker = Broker(tmp)
    broker.start()
    outcomes = []
    try:
        outcomes.append(run_variant("current", REPO, args, tmp, broker, worker=True))
        if args.baseline is not None:
            base = args.baseline.resolve()
            rev = subprocess.run(["git", "-C", str(base), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip()  # fmt: skip
            outcomes.append(run_variant(f"baseline {rev}", base, args, tmp, broker, worker=False))
    finally:
        broker.kill()
    print(f"machine: {os.cpu_count()} cores, load avg {os.getloadavg()}")
    for o in outcomes:
        print()
        print("\n".join(o.lines))
        print(f"RSS over time, {o.label}:")
        print("\n".join(o.rss))
    print()
    print("variant            round1_overhead_s  warm_median_overhead_s (rounds 2..N)")
    for o in outcomes:
        warm = statistics.median(o.overheads[1:]) if len(o.overheads) > 1 else float("nan")
        print(f"{o.label:18s} {o.overheads[0]:17.2f}  {warm:22.2f}")
    print()
    print("where the warm overhead goes (medians over rounds 2..N, slowest job; s):")
    print("variant            start (created->running)  site (running->done - train)  "
          "close (last result->model)")  # fmt: skip
    for o in outcomes:
        if o.phases:
            a, b, c = (statistics.median(p[i] for p in o.phases) for i in range(3))
            print(f"{o.label:18s} {a:24.3f}  {b:28.3f}  {c:26.3f}")
    if len(outcomes) == 2:
        cur, base = (statistics.median(o.overheads[1:]) for o in outcomes)
        print(f"warm overhead ratio current/baseline: {cur / base:.2f} (target <= 1.10)")
        cold = outcomes[0].overheads[0] - base
        print(f"cold start of the first job (current round 1 overhead - baseline warm "
              f"overhead): {cold:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
