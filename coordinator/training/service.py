"""The daemon's training runs: one round-driver thread per run, fed in memory.

``fedmq serve`` owns a :class:`TrainService`. The writer thread calls
:meth:`TrainService.on_job_messages` right after each commit with the job messages it
stored; each run's driver thread gets them on its feed. Runs are submitted (and cancelled)
through the control API; their events are kept in memory for clients that follow them
(``GET /api/runs/{id}/events``). At start, every run the database holds as "running" (the
daemon was killed, or stopped, in the middle of it) is resumed by itself.

Each driver thread opens its own connection for the training tables (runs, rounds,
train_jobs, models): on SQLite a second writer in the same WAL database, with short
transactions and a busy timeout, next to the writer thread that owns everything else; on
PostgreSQL (``--db postgresql://...``) one more client of the server
(``coordinator.store.training.TrainDb`` speaks both).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from coordinator.store import DurableRow
from coordinator.training.driver import Link, new_run_id, resume_training, run_training
from coordinator.training.events import RunResult, TrainError, TrainSpec

__all__ = ["RunHandle", "TrainService"]

log = logging.getLogger(__name__)


@dataclass
class RunHandle:
    """One run driven by this daemon: its link, its events so far and how it ended."""

    run_id: str
    link: Link
    events: list[dict[str, Any]] = field(default_factory=list)
    result: RunResult | None = None
    error: tuple[str, str] | None = None  # (message, EXIT code name)
    thread: threading.Thread | None = None

    def emit(self, event: Any) -> None:
        self.events.append(event.to_json())

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None

    def outcome(self) -> dict[str, Any] | None:
        """How it ended, as the control API reports it (None while it runs)."""
        if self.error is not None:
            return {"error": self.error[0], "code": self.error[1]}
        if self.result is None:
            return None
        r = self.result
        return {
            "state": r.state,
            "reason": r.reason,
            "model_id": r.model_id,
            "interrupted": r.interrupted,
            "exit_code": r.exit_code,
        }


class TrainService:
    """Starts, resumes, cancels and follows the daemon's runs."""

    def __init__(self, settings: Any, bus: Any, session: int) -> None:
        self.settings, self.bus, self.session = settings, bus, session
        self.runs: dict[str, RunHandle] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()

    # Fed by the writer thread ---------------------------------------------------------

    def on_job_messages(self, rows: Sequence[DurableRow]) -> None:
        """Called on the writer thread after its commit: hand the rows to every live run."""
        batch = [
            {"site": r.site, "kind": r.kind, "job_id": r.job_id, "payload": r.payload} for r in rows
        ]
        with self._lock:
            handles = [h for h in self.runs.values() if not h.finished]
        for handle in handles:
            handle.link.feed.put(batch)

    # Runs -------------------------------------------------------------------------------

    def submit(self, spec: TrainSpec) -> RunHandle:
        """Start a new run on its own thread; its id is known at once."""
        return self._start(new_run_id(), lambda h: run_training(h.link, spec, h.run_id, h.emit))

    def resume(self, run_id: str) -> RunHandle:
        """Continue a stored run that is not done (a no-op if this daemon drives it)."""
        with self._lock:
            handle = self.runs.get(run_id)
            if handle is not None and not handle.finished:
                return handle
        return self._start(run_id, lambda h: resume_training(h.link, h.run_id, h.emit))

    def resume_all(self) -> list[str]:
        """At start: resume every run left "running"; returns their ids."""
        from coordinator.store.training import TrainDb

        db = TrainDb(self.settings.db)
        try:
            ids = db.running_runs()
        finally:
            db.close()
        for run_id in ids:
            log.info("run %s was running when the coordinator stopped: resuming it", run_id)
            self.resume(run_id)
        return ids

    def cancel(self, run_id: str) -> bool:
        with self._lock:
            handle = self.runs.get(run_id)
        if handle is None or handle.finished:
            return False
        handle.link.stop.set()
        return True

    def get(self, run_id: str) -> RunHandle | None:
        with self._lock:
            return self.runs.get(run_id)

    def stop(self, timeout: float = 10.0) -> None:
        """Daemon shutdown: runs stop where they are and stay "running" in the store."""
        self._halt.set()
        with self._lock:
            handles = list(self.runs.values())
        for handle in handles:
            handle.link.halt.set()
        for handle in handles:
            if handle.thread is not None:
                handle.thread.join(timeout)

    def _start(self, run_id: str, body: Any) -> RunHandle:
        link = Link(self.settings, self.bus, self.session, halt=self._halt)
        handle = RunHandle(run_id, link)
        with self._lock:
            self.runs[run_id] = handle  # registered (fed) before the run reads anything
        handle.thread = threading.Thread(
            target=self._drive, args=(handle, body), name=f"round-driver-{run_id[-4:]}",
            daemon=True,
        )  # fmt: skip
        handle.thread.start()
        return handle

    def _drive(self, handle: RunHandle, body: Any) -> None:
        try:
            handle.result = body(handle)
        except TrainError as exc:
            log.warning("run %s: %s", handle.run_id, exc)
            handle.error = (str(exc), exc.code)
        except BaseException as exc:  # _Halted before the run existed, or a bug
            if handle.link.halt.is_set():
                handle.error = ("coordinator stopping", "error")
            else:
                log.exception("run %s: round driver failed", handle.run_id)
                handle.error = (f"round driver failed: {type(exc).__name__}: {exc}", "error")
