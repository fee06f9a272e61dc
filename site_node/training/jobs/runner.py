"""The training worker: one thread that owns the site's syft datasite and runs jobs.

It opens the datasite and hosts the configured datasets first (importing syft takes
5-25 s; the daemon's MQTT lifecycle does not wait for it), then works through its queue
one operation at a time: submit a job's code request (manual approval), approve and run
one, or deny one. With auto approval it keeps one pre-approved syft slot per task ready
(prepared while idle) so that an accepted job starts at once. It reports back through
``report`` (the job controller's queue); it never touches the job store. syft and torch are
imported here, on this thread, only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from site_node.training.jobs.config import TrainingSettings

__all__ = [
    "Cancelled",
    "DatasiteDown",
    "DatasiteReady",
    "Deny",
    "Failed",
    "Finished",
    "Prepare",
    "Progress",
    "Run",
    "Runner",
    "Started",
]

log = logging.getLogger(__name__)


# -- operations (controller -> runner) --------------------------------------------------


@dataclass(frozen=True)
class Prepare:
    """Submit the job's code request so it waits in the datasite for the operator."""

    job_id: str
    task: str
    weights: bytes | None
    hyperparams: dict[str, Any]


@dataclass(frozen=True)
class Run(Prepare):
    """Submit if needed, approve as the site admin, run; ``cancel`` stops it."""

    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Deny:
    job_id: str
    reason: str


# -- reports (runner -> controller) -----------------------------------------------------


@dataclass(frozen=True)
class DatasiteReady:
    datasets: tuple[tuple[str, str, int], ...]  # (name, task, rows) of hosted datasets


@dataclass(frozen=True)
class DatasiteDown:
    reason: str


@dataclass(frozen=True)
class Started:
    job_id: str


@dataclass(frozen=True)
class Progress:
    job_id: str
    fraction: float


@dataclass(frozen=True)
class Finished:
    job_id: str
    weights: bytes
    n_samples: int
    metrics: dict[str, float]
    train_time_s: float


@dataclass(frozen=True)
class Failed:
    job_id: str
    reason: str


@dataclass(frozen=True)
class Cancelled:
    job_id: str


class _CancelledError(Exception):
    """Raised from the progress callback to stop a cancelled job's training loop."""


Report = Callable[[object], None]


class Runner:
    """See the module docstring. ``start()``, ``submit(op)``, ``stop()``."""

    def __init__(
        self, data_dir: Path, site_id: str, training: TrainingSettings, report: Report
    ) -> None:
        self._data_dir = data_dir
        self._site_id = site_id
        self._training = training
        self._report = report
        self._q: queue.Queue[Prepare | Deny | None] = queue.Queue()
        self._thread = threading.Thread(target=self._main, name="site-trainer", daemon=True)
        self._site: Any = None
        self._down: str | None = None
        self._slot_tasks: list[str] = []
        self._slots: dict[str, str] = {}  # task -> its free pre-approved slot

    def start(self) -> None:
        self._thread.start()

    def submit(self, op: Prepare | Deny) -> None:
        self._q.put(op)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current operation (a running job is not waited for)."""
        self._q.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("training worker still busy at shutdown; leaving it")

    # -- worker thread --------------------------------------------------------------

    def _main(self) -> None:
        self._open()
        while True:
            try:
                # Idle with a slot missing: prepare it now, between jobs.
                op = self._q.get_nowait() if self._slot_wanted() else self._q.get()
            except queue.Empty:
                self._prepare_slot()
                continue
            if op is None:
                break
            try:
                self._do(op)
            except Exception as exc:  # one bad job must not stop the worker
                log.exception("training operation %s failed", type(op).__name__)
                if not isinstance(op, Deny):
                    self._report(Failed(op.job_id, f"{type(exc).__name__}: {exc}"[:400]))
        if self._site is not None:
            self._site.close()

    # -- pre-approved slots (auto approval) ----------------------------------------------

    def _slot_wanted(self) -> str | None:
        """A task that should have a pre-approved slot and has none (auto approval)."""
        for task in self._slot_tasks:
            if task not in self._slots:
                return task
        return None

    def _prepare_slot(self) -> None:
        task = self._slot_wanted()
        if task is None:
            return
        t0 = time.perf_counter()
        try:
            self._slots[task] = self._site.prepare_slot(task, self._dataset(task))
        except Exception as exc:
            # Jobs then submit and approve their own requests, as in manual mode.
            log.warning("no pre-approved slot for %s: %s: %s", task, type(exc).__name__, exc)
            self._slot_tasks.remove(task)
            return
        log.debug("slot for %s prepared in %.3f s", task, time.perf_counter() - t0)

    def _open(self) -> None:
        t0 = time.perf_counter()
        try:
            from site_node.training.datasite import Datasite

            site = Datasite.open(self._data_dir, self._site_id)
        except Exception as exc:
            self._down = f"datasite unavailable: {type(exc).__name__}: {exc}"[:400]
            log.error("%s", self._down)
            self._report(DatasiteDown(self._down))
            return
        hosted = []
        for ds in self._training.datasets:
            try:
                h = site.host_dataset(ds.name, ds.task, ds.paths, ds.params)
                hosted.append((h.name, h.task, h.rows))
            except Exception as exc:
                log.error("cannot host dataset %s: %s: %s", ds.name, type(exc).__name__, exc)
        self._site = site
        if self._training.approval == "auto":
            self._slot_tasks = [t for _, t, _ in hosted if t in self._training.allow]
            for task in self._slot_tasks:
                slot = site.free_slot(task, self._dataset(task))
                if slot is not None:  # prepared before a restart and never used
                    self._slots[task] = slot
        log.info(
            "datasite ready in %.1f s hosting %s", time.perf_counter() - t0, [h[0] for h in hosted]
        )
        self._report(DatasiteReady(tuple(hosted)))

    def _do(self, op: Prepare | Deny) -> None:
        if isinstance(op, Deny):
            if self._site is not None and self._submitted(op.job_id):
                self._site.reject(op.job_id, op.reason)
            return
        if self._site is None:
            self._report(Failed(op.job_id, self._down or "datasite unavailable"))
            return
        if isinstance(op, Run) and op.cancel.is_set():
            self._report(Cancelled(op.job_id))  # cancelled while queued
            return
        fresh = not self._submitted(op.job_id)
        slot = self._slots.pop(op.task, None) if fresh and isinstance(op, Run) else None
        if fresh:
            args = (op.job_id, op.task, op.weights, op.hyperparams, self._dataset(op.task))
            if slot is not None:
                self._site.bind_slot(slot, *args)
            else:
                self._site.submit_job(*args)
        if isinstance(op, Run):
            approve: bool | None = None  # ask: approved by the operator or before a restart
            if slot is not None:
                approve = False  # slots are approved when prepared
            elif fresh:
                approve = True  # submitted just now: pending
            self._run(op, approve)

    def _run(self, op: Run, approve: bool | None) -> None:
        site = self._site
        t0 = time.perf_counter()
        if approve or (approve is None and site.job_state(op.job_id) == "pending"):
            site.approve(op.job_id)
        log.debug("job %s approval step took %.3f s", op.job_id, time.perf_counter() - t0)
        self._report(Started(op.job_id))

        def progress(fraction: float) -> None:
            if op.cancel.is_set():
                raise _CancelledError("cancelled")
            self._report(Progress(op.job_id, float(fraction)))

        t0 = time.perf_counter()
        try:
            weights, n, metrics = site.run(op.job_id, progress)
        except Exception as exc:
            if op.cancel.is_set():
                self._report(Cancelled(op.job_id))
            else:
                self._report(Failed(op.job_id, str(exc)[:400]))
            return
        if op.cancel.is_set():
            self._report(Cancelled(op.job_id))
            return
        self._report(Finished(op.job_id, weights, n, metrics, time.perf_counter() - t0))

    def _submitted(self, job_id: str) -> bool:
        return bool(self._site.has_job(job_id))

    def _dataset(self, task: str) -> str:
        cfg = self._training.dataset_for(task)
        if cfg is None:
            raise RuntimeError(f"no dataset configured for task {task}")
        return cfg.name
