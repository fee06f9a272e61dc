"""One chaos run: start the cluster, apply the faults in bounded loops, drain, account."""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tests.chaos.accounting import SiteFacts, integrity, tally_site
from tests.chaos.cluster import ChaosSite, Cluster
from tests.chaos.faults import FaultResult, Injector
from tests.chaos.monitor import HeartbeatMonitor
from tests.chaos.report import Report

__all__ = ["KINDS", "Options", "quick", "run"]

log = logging.getLogger(__name__)

KINDS = ("site", "coordinator", "broker", "mixed")


@dataclass(frozen=True)
class Options:
    sites: int = 3
    rate: float = 1000.0  # rows (samples) per second per site
    kills: int = 20  # per kind
    proxy_stall: bool = False
    disk_full: bool = False
    disk_hold_s: float = 10.0
    seed: int = 1
    recover_timeout_s: float = 60.0
    max_minutes: float = 40.0  # the fault loops stop here; the drain and report follow
    workdir: Path | None = None
    final_s: float = 3.0  # length of every site's final, finite replay


def quick(opts: Options) -> Options:
    """The short version for CI: two sites, two faults of each kind."""
    return replace(opts, sites=2, rate=200.0, kills=2, recover_timeout_s=30.0, disk_hold_s=4.0)


def run(opts: Options) -> Report:
    """Run every fault of ``opts`` and return the report; every process is gone after."""
    started = time.monotonic()
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="fedmq-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # About 15 s per fault at worst: the bound sizes the replay files (rewritten at each
    # site restart) and stops the loops if faults take far longer than they should.
    planned = opts.kills * len(KINDS) + opts.proxy_stall + opts.disk_full
    deadline = started + min(opts.max_minutes * 60, 120 + 15 * planned)
    rng = random.Random(opts.seed)

    def rows() -> int:
        return int(opts.rate * (max(0.0, deadline - time.monotonic()) + 180))

    disk_site = opts.sites - 1 if opts.disk_full else None
    cluster = Cluster(workdir, opts.sites, opts.rate, opts.proxy_stall, disk_site)
    monitor: HeartbeatMonitor | None = None
    notes: list[str] = []
    faults: list[FaultResult] = []
    try:
        cluster.start(rows())
        monitor = HeartbeatMonitor(cluster.broker.port, cluster.prefix).start()
        inject = Injector(cluster, rng, rows, opts.recover_timeout_s, monitor)
        first = inject.recover("start", "first data acked")
        if first.recover_s is None:
            raise RuntimeError("no data flowed after the start: " + "; ".join(first.notes))
        for kind in KINDS:
            for i in range(opts.kills):
                if time.monotonic() > deadline:
                    notes.append(f"time box of {opts.max_minutes} min reached during {kind}")
                    break
                faults.append(_one(inject, kind, i, opts.sites))
                _progress(faults[-1], len(faults))
                time.sleep(rng.uniform(0.2, 1.0))
        if opts.proxy_stall:
            faults.append(inject.stall())
            _progress(faults[-1], len(faults))
        if opts.disk_full and disk_site is not None:
            faults.append(inject.disk_full(disk_site, opts.disk_hold_s))
            _progress(faults[-1], len(faults))
        finals = _final_runs(cluster, opts, notes)
        for site in cluster.sites:
            if site.alive() and site.terminate() != 0:
                notes.append(f"{site.site_id}: SIGTERM exit code {site.runs[-1].ended}")
        coordinator_exit = cluster.coordinator.stop(60)
        if monitor is not None:
            monitor.stop()
        cluster.broker.stop()
        facts = [_facts(site, finals[site.site_id], monitor) for site in cluster.sites]
        tallies = [tally_site(cluster.db, f) for f in facts]
        checks = {"coordinator.db": integrity(cluster.db)}
        for site in cluster.sites:
            checks[f"{site.site_id}/outbox.db"] = integrity(site.data_dir / "outbox.db")
        errors = {s.site_id: monitor.outbox_errors(s.site_id) for s in cluster.sites}
        return Report(
            options={k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
            code=_code_version(),
            sites=tallies,
            faults=faults,
            integrity=checks,
            coordinator_exit=coordinator_exit,
            coordinator_starts=cluster.coordinator_starts,
            outbox_errors={k: v for k, v in errors.items() if v},
            notes=notes,
            wall_s=time.monotonic() - started,
            workdir=str(workdir),
        )
    finally:
        if monitor is not None:
            with contextlib.suppress(Exception):
                monitor.stop()
        cluster.close()


def _code_version() -> str:
    """The commit the run tested, ``-dirty`` when tracked files had uncommitted changes."""
    repo = Path(__file__).resolve().parents[2]
    git = ["git", "-C", str(repo)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _one(inject: Injector, kind: str, i: int, n_sites: int) -> FaultResult:
    if kind == "site":
        return inject.site(i % n_sites)
    if kind == "coordinator":
        # Every other one kills only the writer child: the coordinator must cope.
        return inject.coordinator() if i % 2 == 0 else inject.writer()
    if kind == "broker":
        return inject.broker()
    return inject.mixed()


def _progress(res: FaultResult, n: int) -> None:
    rec = "NOT RECOVERED" if res.recover_s is None else f"recovered in {res.recover_s:.2f} s"
    extra = "" if res.reconnect_s is None else f", reconnected in {res.reconnect_s:.2f} s"
    log.info("fault %d %s (%s): %s%s %s", n, res.kind, res.detail, rec, extra, res.notes or "")


def _final_runs(cluster: Cluster, opts: Options, notes: list[str]) -> dict[str, tuple[int, int]]:
    """Stop every site cleanly, replay a finite file to its end, wait until all is acked."""
    rows = max(200, int(opts.rate * opts.final_s))
    finals = {}
    for site in cluster.sites:
        if site.alive():
            code = site.terminate()
            if code != 0:
                notes.append(f"{site.site_id}: SIGTERM before the final run exited {code}")
        finals[site.site_id] = (site.start(rows).number, rows)
    _wait(lambda: all(s.finished_replay() for s in cluster.sites), opts.final_s + 60, "replays")
    until = time.monotonic() + opts.recover_timeout_s * 2
    while time.monotonic() < until:
        stats = [s.stats() for s in cluster.sites]
        if all(st.last_seq and st.last_acked >= st.last_seq for st in stats):
            break
        time.sleep(0.1)
    else:
        notes.append("final drain: not every site fully acked within the deadline")
    return finals


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def _facts(site: ChaosSite, final: tuple[int, int], monitor: HeartbeatMonitor | None) -> SiteFacts:
    gaps: tuple[tuple[int, int], ...] = ()
    with contextlib.suppress(sqlite3.Error):
        conn = sqlite3.connect(f"file:{site.data_dir / 'outbox.db'}?mode=ro", uri=True)
        try:
            gaps = tuple((int(a), int(b)) for a, b in conn.execute("SELECT first, last FROM gaps"))
        finally:
            conn.close()
    return SiteFacts(
        site=site.site_id,
        last_seq=site.stats().last_seq,
        final_run=final[0],
        final_rows=final[1],
        final_finished=site.runs[final[0] - 1].ended.startswith("SIGTERM"),
        samples_dropped=monitor.samples_dropped(site.site_id) if monitor else 0,
        outbox_gaps=gaps,
    )
