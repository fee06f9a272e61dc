"""The job runner inside the training worker process: owns the syft datasite, runs jobs.

It opens the datasite and hosts the configured datasets first (importing syft takes
5-25 s), then works through its queue on the worker's main thread: submit a job's code
request (manual approval), approve and run one, or deny one. A job runs on a thread of
its own; up to ``[training] max_concurrent_jobs`` run at once (the main thread takes no
further operation while that many run). Every syft call holds
:data:`~site_node.training.job_body.SYFT_LOCK`; a job's task code (load, evaluate, train)
runs with it released, so concurrent jobs train in parallel while syft's bookkeeping
stays serial. With auto approval it keeps one pre-approved syft slot per task ready
(prepared while idle) so that an accepted job starts at once (a second concurrent job of
the same task submits and approves its own request). It reports back through ``report``
(the pipe to the daemon's supervisor); it never touches the job store. syft and torch are
imported here, in the worker process, only.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from site_node.history.export import dataset_source
from site_node.training.job_body import SYFT_LOCK
from site_node.training.jobs.config import TrainingSettings
from site_node.training.worker.protocol import (
    Cancelled,
    DatasiteDown,
    DatasiteReady,
    Deny,
    Failed,
    Finished,
    OpDone,
    Prepare,
    Progress,
    Run,
    Started,
)

__all__ = ["Runner"]

log = logging.getLogger(__name__)

# Progress reports cross a pipe: at most this often (the controller rate-limits further).
_PROGRESS_EVERY_S = 0.25


_WAKE = object()


class _CancelledError(Exception):
    """Raised from the progress callback to stop a cancelled job's training loop."""


Report = Callable[[object], None]


class Runner:
    """See the module docstring. ``submit(n, op)`` and ``cancel`` from any thread; ``run()``
    works on the calling thread until ``stop()``."""

    def __init__(
        self,
        data_dir: Path,
        site_id: str,
        training: TrainingSettings,
        report: Report,
        threads: int | None = None,
    ) -> None:
        self._threads = threads
        self._data_dir = data_dir
        self._site_id = site_id
        self._training = training
        self._report = report
        # (n, op); None: stop; _WAKE: a job ended (time to prepare a slot, if one is missing)
        self._q: queue.Queue[tuple[int, Prepare | Deny] | object | None] = queue.Queue()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._site: Any = None
        self._hosted: tuple[tuple[str, str, int], ...] = ()
        self._down: str | None = None
        self._slot_tasks: list[str] = []
        self._slots: dict[str, str] = {}  # task -> its free pre-approved slot
        self._max_jobs = max(1, training.max_concurrent_jobs)
        # syft's calls run inside contextlib.redirect_stdout (datasite_accounts.quiet),
        # which swaps the process-wide sys.stdout: two such calls that overlap (jobs on
        # their threads) can end out of order and leave a capture buffer in place.
        self._stdout = sys.stdout
        self._jobs = threading.Condition()
        self._running = 0  # job threads alive (under self._jobs)

    def submit(self, n: int, op: Prepare | Deny) -> None:
        """Queue the ``n``-th operation; :class:`OpDone` ``n`` is reported once it is done."""
        self._q.put((n, op))

    def cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancelled.add(job_id)

    def _is_cancelled(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._cancelled

    def stop(self) -> None:
        """Make :meth:`run` return after the current operation."""
        self._q.put(None)

    # -- the worker's main thread ------------------------------------------------------

    def run(self) -> None:
        with SYFT_LOCK:
            self._open()
        while True:
            if self._prepare_while_full():
                continue
            with self._jobs:  # at most max_concurrent_jobs at once: take no more ops
                self._jobs.wait_for(lambda: self._running < self._max_jobs)
                idle = self._running == 0
            if idle and sys.stdout is not self._stdout:
                sys.stdout = self._stdout  # no syft call is under way: put stdout back
            try:
                # Idle with a slot missing: prepare it now, between jobs.
                wanted = idle and self._slot_wanted()
                item = self._q.get_nowait() if wanted else self._q.get()
            except queue.Empty:
                with SYFT_LOCK:
                    self._prepare_slot()
                continue
            if item is None:
                break
            if item is _WAKE or not isinstance(item, tuple):
                continue
            n, op = item
            if isinstance(op, Run) and self._site is not None:
                with self._jobs:
                    self._running += 1
                threading.Thread(
                    target=self._job, args=(n, op), name=f"job-{op.job_id}", daemon=True
                ).start()
                continue
            self._op(n, op)
        with self._jobs:
            self._jobs.wait_for(lambda: self._running == 0)
        if self._site is not None:
            with SYFT_LOCK:
                self._site.close()

    def _job(self, n: int, op: Run) -> None:
        try:
            self._op(n, op)
        finally:
            with self._jobs:
                self._running -= 1
                self._jobs.notify_all()
            if self._max_jobs > 1:
                self._q.put(_WAKE)  # the main thread may wait in get() with a slot missing

    def _op(self, n: int, op: Prepare | Deny) -> None:
        try:
            self._do(op)
        except Exception as exc:  # one bad job must not stop the worker
            log.exception("training operation %s failed", type(op).__name__)
            if not isinstance(op, Deny):
                self._report(Failed(op.job_id, f"{type(exc).__name__}: {exc}"[:400]))
        self._report(OpDone(n))

    def _prepare_while_full(self) -> bool:
        """Jobs fill every place and a slot is missing: prepare it now, while they train
        (their own code runs outside SYFT_LOCK), rather than after the job, when the next
        round's job would wait for it (a round's slowest site got its next command ~0.1 s
        after its result, its slot 0.2-0.4 s later). True if it prepared one."""
        with self._jobs:
            if self._running < self._max_jobs or self._slot_wanted() is None:
                return False
        with SYFT_LOCK:
            self._prepare_slot()
        return True

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
            if self._threads is not None:
                import torch  # syft imported it already

                torch.set_num_threads(self._threads)
        except Exception as exc:
            self._down = f"datasite unavailable: {type(exc).__name__}: {exc}"[:400]
            log.error("%s", self._down)
            self._report(DatasiteDown(self._down))
            return
        hosted = []
        for ds in self._training.datasets:
            try:
                # A history dataset is exported first (site_node/history/export.py).
                paths, params = dataset_source(
                    ds.name, ds.paths, ds.history, ds.params, self._data_dir
                )
                h = site.host_dataset(ds.name, ds.task, paths, params)
                hosted.append((h.name, h.task, h.rows))
            except Exception as exc:
                log.error("cannot host dataset %s: %s: %s", ds.name, type(exc).__name__, exc)
        self._site = site
        self._hosted = tuple(hosted)
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
            with SYFT_LOCK:
                if self._site is not None and self._submitted(op.job_id):
                    self._site.reject(op.job_id, op.reason)
            return
        if self._site is None:
            self._report(Failed(op.job_id, self._down or "datasite unavailable"))
            return
        if isinstance(op, Run) and self._is_cancelled(op.job_id):
            self._report(Cancelled(op.job_id))  # cancelled while queued
            return
        with SYFT_LOCK:
            fresh = not self._submitted(op.job_id)
            slot = self._slots.pop(op.task, None) if fresh and isinstance(op, Run) else None
            if fresh:
                self._refresh_history(op.task)
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
        with SYFT_LOCK:
            if approve or (approve is None and site.job_state(op.job_id) == "pending"):
                site.approve(op.job_id)
        log.debug("job %s approval step took %.3f s", op.job_id, time.perf_counter() - t0)
        self._report(Started(op.job_id))

        last = 0.0

        def progress(fraction: float) -> None:
            nonlocal last
            if self._is_cancelled(op.job_id):
                raise _CancelledError("cancelled")
            now = time.monotonic()
            if now - last >= _PROGRESS_EVERY_S:
                last = now
                self._report(Progress(op.job_id, float(fraction)))

        t0 = time.perf_counter()
        try:
            with SYFT_LOCK:  # released while the task's own code runs (job_body)
                weights, n, metrics = site.run(op.job_id, progress)
        except Exception as exc:
            if self._is_cancelled(op.job_id):
                self._report(Cancelled(op.job_id))
            else:
                self._report(Failed(op.job_id, str(exc)[:400]))
            return
        if self._is_cancelled(op.job_id):
            self._report(Cancelled(op.job_id))
            return
        self._report(Finished(op.job_id, weights, n, metrics, time.perf_counter() - t0))

    def _submitted(self, job_id: str) -> bool:
        return bool(self._site.has_job(job_id))

    def _refresh_history(self, task: str) -> None:
        """A history dataset: export it again for this job; report its new row count."""
        cfg = self._training.dataset_for(task)
        if cfg is None or cfg.history is None:
            return
        from site_node.training.history_dataset import refresh_history_dataset

        rows = refresh_history_dataset(
            self._site.state_dir, cfg, self._data_dir, self._training.tasks_dir
        )
        hosted = tuple((n, t, rows if n == cfg.name else r) for n, t, r in self._hosted)
        if hosted != self._hosted:
            self._hosted = hosted
            self._report(DatasiteReady(hosted))

    def _dataset(self, task: str) -> str:
        cfg = self._training.dataset_for(task)
        if cfg is None:
            raise RuntimeError(f"no dataset configured for task {task}")
        return cfg.name
