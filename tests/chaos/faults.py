"""Inject one fault, restore, and time how long until data flows end to end again.

Recovered means: every site has an ack from the coordinator for a message it produced
after the restore (its outbox's ``last_acked`` passed the ``last_seq`` it had then). A
process that dies without being killed is noted, restarted, and the run goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from schemas import now_ms
from tests.chaos.cluster import KEEPALIVE_S, Cluster, fill_disk, writer_child
from tests.chaos.monitor import HeartbeatMonitor

__all__ = ["FaultResult", "Injector"]

log = logging.getLogger(__name__)


@dataclass
class FaultResult:
    """One fault: ``recover_s`` None means it did not recover within the deadline."""

    kind: str
    detail: str
    recover_s: float | None
    reconnect_s: float | None = None
    notes: list[str] = field(default_factory=list)


class Injector:
    """The faults of a run, applied to ``cluster``; ``rows()`` sizes a restarted site's file."""

    def __init__(
        self,
        cluster: Cluster,
        rng: random.Random,
        rows: Callable[[], int],
        recover_timeout_s: float = 60.0,
        monitor: HeartbeatMonitor | None = None,
    ) -> None:
        self.cluster = cluster
        self.monitor = monitor
        self.rng = rng
        self.rows = rows
        self.timeout = recover_timeout_s

    # -- the faults ----------------------------------------------------------------------

    def site(self, index: int) -> FaultResult:
        site = self.cluster.sites[index]
        site.kill()
        time.sleep(self.rng.uniform(0.0, 1.0))
        site.start(self.rows())
        return self.recover("site", site.site_id)

    def coordinator(self) -> FaultResult:
        pids = self.cluster.kill_coordinator()
        time.sleep(self.rng.uniform(0.0, 1.0))
        self.cluster.start_coordinator()
        return self.recover("coordinator", f"{len(pids)} processes")

    def writer(self) -> FaultResult:
        proc = self.cluster.coordinator.proc
        pid = writer_child(proc.pid) if proc is not None else None
        if pid is None:
            return FaultResult("writer", "no writer process found", None, notes=["skipped"])
        os.kill(pid, 9)
        return self.recover("writer", f"pid {pid}")

    def broker(self) -> FaultResult:
        down_ms = now_ms()
        self.cluster.broker.kill()
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.cluster.broker.start()
        return self.recover("broker", "kill -9", down_ms=down_ms, up_ms=now_ms())

    def mixed(self) -> FaultResult:
        kinds = self.rng.sample(
            ["site", "coordinator", "writer", "broker"], self.rng.choice([1, 2])
        )
        if "coordinator" in kinds and "writer" in kinds:
            kinds.remove("writer")
        c = self.cluster
        down_ms, detail = now_ms(), []
        victim = self.rng.randrange(len(c.sites))
        if "writer" in kinds:
            proc = c.coordinator.proc
            pid = writer_child(proc.pid) if proc is not None else None
            if pid is not None:
                os.kill(pid, 9)
                detail.append("writer")
        if "site" in kinds:
            c.sites[victim].kill()
            detail.append(c.sites[victim].site_id)
        if "coordinator" in kinds:
            c.kill_coordinator()
            detail.append("coordinator")
        if "broker" in kinds:
            c.broker.kill()
            detail.append("broker")
        time.sleep(self.rng.uniform(0.2, 1.5))
        up_ms = None
        if "broker" in kinds:
            c.broker.start()
            up_ms = now_ms()
        if "coordinator" in kinds:
            c.start_coordinator()
        if "site" in kinds:
            c.sites[victim].start(self.rows())
        return self.recover("mixed", "+".join(detail), down_ms=down_ms, up_ms=up_ms)

    def stall(self) -> FaultResult:
        proxy = self.cluster.proxy
        assert proxy is not None, "the stall needs a cluster built with a proxy"
        hold = 3 * KEEPALIVE_S
        down_ms = now_ms()
        proxy.stall()
        time.sleep(hold)
        proxy.resume()
        res = self.recover(
            "stall", f"{hold} s, keepalive {KEEPALIVE_S} s", down_ms, now_ms(), sites=[0]
        )
        return res

    def disk_full(self, index: int, hold_s: float) -> FaultResult:
        """Fill the site's file system; the coordinator is paused meanwhile (SIGSTOP), so
        the outbox must grow: with acks flowing, SQLite reuses its pages and never needs a
        new block. Held ``hold_s`` after the site announces the error, then freed."""
        c = self.cluster
        site = c.sites[index]
        pid = site.proc.pid if site.proc is not None else None
        filler = site.data_dir / "filler"
        paused = c.pause_coordinator()
        t_fill = time.monotonic()
        written = fill_disk(filler)
        notes = [f"filled {written >> 20} MiB", "coordinator paused while full"]
        hit = None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and site.alive() and hit is None:
            if self._announced_error(site.site_id, t_fill):
                hit = time.monotonic() - t_fill
            time.sleep(0.1)
        notes.append(
            "no outbox error announced" if hit is None else f"outbox error announced {hit:.1f} s in"
        )
        deadline = time.monotonic() + hold_s
        while time.monotonic() < deadline and site.alive():
            time.sleep(0.1)
        if not site.alive():
            code = site.proc.proc.returncode if site.proc and site.proc.proc else None
            notes.append(f"site exited (code {code}) on the full disk")
        with contextlib.suppress(OSError):
            filler.unlink()
        c.resume_coordinator(paused)
        if not site.alive():
            site.runs[-1].ended = "died on the full disk"
            site.start(self.rows())
        res = self.recover("disk_full", f"{site.site_id}, {hold_s:.0f} s full")
        res.notes[:0] = notes
        same = site.alive() and site.proc is not None and site.proc.pid == pid
        res.notes.append("survived without a restart" if same else "site restarted")
        return res

    def _announced_error(self, site: str, since: float) -> bool:
        if self.monitor is None:
            return False
        return any(b.outbox_error and b.at >= since for b in self.monitor.beats(site))

    # -- recovery ------------------------------------------------------------------------

    def recover(
        self,
        kind: str,
        detail: str,
        down_ms: int | None = None,
        up_ms: int | None = None,
        sites: list[int] | None = None,
    ) -> FaultResult:
        c = self.cluster
        start = time.monotonic()
        result = FaultResult(kind, detail, None)
        baseline = [s.stats().last_seq for s in c.sites]
        watch = range(len(c.sites)) if sites is None else sites
        deadline = start + self.timeout
        while time.monotonic() < deadline:
            self._supervise(result)
            if up_ms is not None and down_ms is not None and result.reconnect_s is None:
                states = [c.sites[i].state() for i in watch]
                if all(st.connected and st.connected_since_ms >= down_ms for st in states):
                    last = max(st.connected_since_ms for st in states)
                    result.reconnect_s = max(0.0, (last - up_ms) / 1000)
            acked = all(s.stats().last_acked > b for s, b in zip(c.sites, baseline, strict=True))
            reconnected = up_ms is None or down_ms is None or result.reconnect_s is not None
            if acked and reconnected:
                result.recover_s = time.monotonic() - start
                return result
            time.sleep(0.05)
        result.notes.append(f"not recovered within {self.timeout:.0f} s")
        log.warning("%s (%s): not recovered within %.0f s", kind, detail, self.timeout)
        # Carry on from a known state: the coordinator is the usual suspect.
        c.kill_coordinator()
        c.start_coordinator()
        return result

    def _supervise(self, result: FaultResult) -> None:
        """Restart a process that died without being killed (and say so)."""
        c = self.cluster
        proc = c.coordinator.proc
        if proc is not None and proc.poll() is not None:
            result.notes.append(f"coordinator exited with code {proc.returncode}; restarted")
            c.kill_coordinator()
            c.start_coordinator()
        if not c.broker.running:
            result.notes.append("broker exited; restarted")
            c.broker.start()
        for site in c.sites:
            if site.proc is not None and not site.alive():
                code = site.proc.proc.returncode if site.proc.proc else None
                result.notes.append(f"{site.site_id} exited with code {code}; restarted")
                site.runs[-1].ended = f"exited {code}"
                site.start(self.rows())
