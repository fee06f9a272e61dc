"""The processes of one chaos run: a Mosquitto, ``fedmq serve`` and N ``fedmq-site run``.

Every site replays a generated counter CSV: the value of row ``i`` of the site's run ``r``
(its ``r``-th process) is ``r * RUN_STRIDE + i``, so each stored sample says which process
read it and which row it was. :meth:`Cluster.close` kills everything it started.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from site_node.outbox import OutboxStats, read_stats
from site_node.state import RuntimeState, SiteState
from tests.chaos.proxy import StallProxy
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator
from tests.helpers.site_proc import SiteProc

__all__ = ["RUN_STRIDE", "ChaosSite", "Cluster", "SiteRun", "kill_tree"]

log = logging.getLogger(__name__)

RUN_STRIDE = 10_000_000
"""Rows per run that values can encode: 2.7 h at 1,000 rows/s."""
KEEPALIVE_S = 5


@dataclass
class SiteRun:
    """One process of a site: its number, pid, rows in its file and how it ended."""

    number: int
    pid: int
    rows: int
    started: float
    ended: str = ""


@dataclass
class ChaosSite:
    """One ``fedmq-site run`` (restartable), its data dir and its counter file."""

    site_id: str
    workdir: Path
    broker_port: int
    prefix: str
    rate: float
    runs: list[SiteRun] = field(default_factory=list)
    proc: SiteProc | None = None
    _log_from: int = 0

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def csv(self) -> Path:
        return self.workdir / "counter.csv"

    def settings(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id,
            "data_dir": str(self.data_dir),
            "name": "chaos site",
            "heartbeat_interval_s": 1.0,
            "batch_max_samples": 100,
            "batch_max_wait_s": 0.2,
            "mqtt": {
                "host": "127.0.0.1",
                "port": self.broker_port,
                "prefix": self.prefix,
                "keepalive": KEEPALIVE_S,
            },
            "devices": [
                {
                    "name": "counter",
                    "source": "file",
                    "path": str(self.csv),
                    "format": "csv",
                    "columns": [{"name": "n", "unit": "count"}],
                    "rate_hz": self.rate,
                }
            ],
        }

    def start(self, rows: int) -> SiteRun:
        """A new process replaying a fresh file of ``rows`` rows for the next run number."""
        assert not self.alive(), f"{self.site_id} is already running"
        number = len(self.runs) + 1
        base = number * RUN_STRIDE
        self.csv.write_text("".join(f"{base + i}\n" for i in range(rows)))
        log_path = self.workdir / "site.log"
        self._log_from = log_path.stat().st_size if log_path.exists() else 0
        self.proc = SiteProc(self.workdir, self.settings()).start()
        run = SiteRun(number, self.proc.pid, rows, time.monotonic())
        self.runs.append(run)
        return run

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def kill(self) -> None:
        if self.proc is not None and self.alive():
            self.proc.kill()
            self.runs[-1].ended = "kill -9"

    def terminate(self) -> int:
        assert self.proc is not None
        code = self.proc.terminate(30)
        self.runs[-1].ended = f"SIGTERM -> {code}"
        return code

    def stats(self) -> OutboxStats:
        try:
            return read_stats(self.data_dir / "outbox.db")
        except Exception:  # a file mid-creation or the disk full: try again later
            return OutboxStats()

    def state(self) -> RuntimeState:
        return SiteState.read(self.data_dir / "state.json")

    def log_text(self) -> str:
        """What the current run logged."""
        return self.proc.log_text()[self._log_from :] if self.proc is not None else ""

    def finished_replay(self) -> bool:
        return f"replay of {self.csv} finished" in self.log_text()


def kill_tree(pid: int) -> list[int]:
    """kill -9 ``pid`` and every process under it; returns the pids killed."""
    try:
        parent = psutil.Process(pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return [p.pid for p in procs]


def writer_child(pid: int) -> int | None:
    """The coordinator's writer process (a multiprocessing spawn child), if it has one."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                cmd = " ".join(child.cmdline())
                if "spawn_main" in cmd and "resource_tracker" not in cmd:
                    return child.pid
    return None


class Cluster:
    """Starts and tracks every process of a run; :meth:`close` ends them all."""

    def __init__(
        self,
        workdir: Path,
        n_sites: int,
        rate: float,
        proxy_site: bool = False,
        tmpfs_site: int | None = None,
        tmpfs_size: str = "24m",
    ) -> None:
        self.workdir = workdir
        self.prefix = f"chaos-{uuid.uuid4().hex[:8]}/fedmq/v1"
        broker_dir = workdir / "broker"
        broker_dir.mkdir(parents=True, exist_ok=True)
        self.broker = Broker(broker_dir)
        self.proxy = StallProxy(self.broker.port) if proxy_site else None
        self.db = workdir / "coordinator.db"
        self.coordinator = Coordinator(self.db, self.broker.port, self.prefix)
        self.coordinator_starts = 0
        self.sites: list[ChaosSite] = []
        self.mounts: list[Path] = []
        for i in range(n_sites):
            port = self.proxy.port if self.proxy is not None and i == 0 else self.broker.port
            site = ChaosSite(f"site-{i}", workdir / f"site-{i}", port, self.prefix, rate)
            site.data_dir.mkdir(parents=True, exist_ok=True)
            if tmpfs_site == i:
                self._mount_tmpfs(site.data_dir, tmpfs_size)
            self.sites.append(site)

    def _mount_tmpfs(self, path: Path, size: str) -> None:
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"cannot mount a tmpfs for the disk-full fault: {done.stderr}")
        self.mounts.append(path)

    def start(self, rows: int) -> None:
        self.broker.start()
        if self.proxy is not None:
            self.proxy.start()
        self.start_coordinator()
        self.coordinator.wait_ready(60)
        for site in self.sites:
            site.start(rows)

    def start_coordinator(self) -> None:
        self.coordinator.proc = None
        self.coordinator.start()
        self.coordinator_starts += 1

    def kill_coordinator(self) -> list[int]:
        proc = self.coordinator.proc
        if proc is None or proc.poll() is not None:
            return []
        pids = kill_tree(proc.pid)
        proc.wait(10)
        return pids

    def pause_coordinator(self) -> list[psutil.Process]:
        """SIGSTOP the coordinator and its children; returns them for :meth:`resume_coordinator`."""
        proc = self.coordinator.proc
        if proc is None or proc.poll() is not None:
            return []
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.suspend()
        return procs

    def resume_coordinator(self, procs: list[psutil.Process]) -> None:
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.resume()

    def close(self) -> None:
        """Kill every process this run started, unmount its tmpfs (idempotent)."""
        for site in self.sites:
            with contextlib.suppress(Exception):
                site.kill()
        with contextlib.suppress(Exception):
            self.kill_coordinator()  # SIGKILL ends a stopped process too
        with contextlib.suppress(Exception):
            self.broker.kill()
        if self.proxy is not None:
            self.proxy.close()
        for path in self.mounts:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        self.mounts.clear()


def fill_disk(path: Path) -> int:
    """Write ``path`` until the file system is full; returns the bytes written."""
    written = 0
    block = b"\0" * (1 << 20)
    with path.open("wb", buffering=0) as out:
        while len(block) >= 512:
            try:
                out.write(block)
                written += len(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                block = block[: len(block) // 2]
    with contextlib.suppress(OSError):
        os.sync()
    return written
