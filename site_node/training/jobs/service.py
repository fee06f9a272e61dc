"""The job controller: the site side of federated training, plugged into the daemon.

Command handlers (on the daemon loop) only enqueue. The controller thread owns the job
store; it applies the site's policy, waits for chunked weights, asks for the operator's
decision in manual mode (polled from the store, written by ``fedmq-site approve/reject``),
hands jobs to the training worker process (:mod:`site_node.training.worker`: this daemon
never imports torch, syft or pandas) and reports every state change durably. The
registration advertises the datasets the datasite hosts, read from its record on disk
(:mod:`site_node.training.hosted`) when every configured dataset is there; otherwise the
worker starts at boot to host them. Wire behaviour, per job (``P/site/{id}/job/{job}``):

- ``status`` accepted -> running (progress 0, then at most every ``progress_interval_s``)
  -> done, after a ``result`` (JobResult, then ResultChunk x N on the same topic);
- manual approval: accepted -> pending_approval -> (approve) running ... done, or
  (reject) rejected "rejected by site operator: <reason>";
- rejected "<why>": policy (task not allowed, code hash mismatch, no dataset) or a refused
  command ("command refused: unsigned | bad signature | expired N s ago | replayed cmd_id X");
- failed "<why>": weights incomplete or unverifiable, the task failed, "site restarted",
  the worker died ("training worker killed by SIGKILL ...") or grew past its memory limit
  ("memory limit N MB reached");
- cancelled "cancelled by coordinator[: reason]".
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from schemas import CancelCommand, Command, DatasetSummary, TaskOffer, TrainChunk, TrainCommand
from site_node.training.hosted import read_hosted
from site_node.training.jobs import policy
from site_node.training.jobs.chunks import ChunkBuffer
from site_node.training.jobs.config import TrainingSettings
from site_node.training.jobs.reporter import JobRef, JobReporter
from site_node.training.jobs.store import TERMINAL_STATES, JobRecord, JobStore
from site_node.training.worker import WorkerDown, WorkerSupervisor
from site_node.training.worker.protocol import (
    Cancelled,
    DatasiteDown,
    DatasiteReady,
    Deny,
    Failed,
    Finished,
    Prepare,
    Progress,
    Run,
    Started,
)

if TYPE_CHECKING:
    from site_node.daemon import SiteDaemon

__all__ = ["JobService", "install"]

log = logging.getLogger(__name__)

_TICK_S = 0.5


@dataclass(frozen=True)
class _Refused:
    cmd: Command
    why: str


@dataclass
class _Waiting:
    cmd: TrainCommand
    deadline: float


def install(daemon: SiteDaemon) -> JobService:
    """Daemon extension entry point (``site_node.training.jobs.service:install``)."""
    if daemon.settings.training is None:
        raise ValueError("site_node.training.jobs needs a [training] table in the site config")
    service = JobService(daemon, daemon.settings.training)
    service.start()
    return service


class JobService:
    """See the module docstring."""

    def __init__(self, daemon: SiteDaemon, training: TrainingSettings) -> None:
        self._d = daemon
        self._t = training
        policy.use_tasks_dir(training)  # before the worker starts: it inherits it
        self._q: queue.Queue[object] = queue.Queue()
        self._report = JobReporter(daemon, training.chunk_bytes)
        log_cfg = daemon.settings.log
        self._runner = WorkerSupervisor(
            daemon.settings.data_dir, daemon.site_id, training, self._q.put,
            log_cfg.file, log_cfg.format, log_cfg.verbose,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._main, name="site-jobs", daemon=True)
        self._stop = threading.Event()
        # Owned by the controller thread:
        self._chunks = ChunkBuffer(training.max_buffered_bytes)
        self._waiting: dict[str, _Waiting] = {}
        self._last_progress: dict[str, float] = {}
        self._cancel_why: dict[str, str] = {}
        self._refusals: deque[float] = deque()
        # Read by the daemon loop (replaced whole, never mutated):
        self._hosted: tuple[tuple[str, str, int], ...] | None = None
        self._running = 0

    # -- daemon side (daemon loop thread) -------------------------------------------

    def start(self) -> None:
        d = self._d
        d.register_command("train", lambda m, _r: self._q.put(m))
        d.register_command("cancel", lambda m, _r: self._q.put(m))
        d.register_command("train_chunk", lambda m, _r: self._q.put(m))
        d.register_refusal(self._on_refused)
        d.set_tasks_provider(self._tasks)
        d.set_registration_extra(self._registration_extra)
        d.set_jobs_running(lambda: self._running)
        d.set_heartbeat_extra(self._heartbeat_extra)
        d.on_stop(self.stop)
        self._hosted = self._hosted_on_disk()
        self._thread.start()
        if self._hosted is None:
            self._runner.start()  # host the datasets and learn their rows

    def _hosted_on_disk(self) -> tuple[tuple[str, str, int], ...] | None:
        """The configured datasets as the datasite recorded them, if it hosts them all."""
        try:
            hosted = {h.name: h for h in read_hosted(self._d.settings.data_dir)}
        except (OSError, ValueError, KeyError) as exc:
            log.warning("hosted datasets record unreadable: %s", exc)
            return None
        out = []
        for ds in self._t.datasets:
            h = hosted.get(ds.name)
            if h is None or h.task != ds.task:
                return None
            out.append((h.name, h.task, h.rows))
        return tuple(out)

    def _heartbeat_extra(self) -> dict[str, Any]:
        return {"worker_state": self._runner.state(), "worker_rss_mb": self._runner.rss_mb()}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._runner.stop(timeout=5.0)

    def _on_refused(self, cmd: BaseModel, _raw: bytes, why: str) -> None:
        if isinstance(cmd, (TrainCommand, CancelCommand)):
            self._q.put(_Refused(cmd, why))

    def _tasks(self) -> tuple[TaskOffer, ...]:
        hosted = {task for _n, task, _r in self._hosted or ()}
        offers = policy.advertised(self._t)  # pinned hashes (docs/tasks.md)
        return tuple(offers[n] for n in self._t.allow if n in hosted and n in offers)

    def _registration_extra(self) -> dict[str, Any]:
        return {
            "datasets": tuple(
                DatasetSummary(name=n, rows=r, description=f"{t} private rows")
                for n, t, r in self._hosted or ()
            ),
            "approval_mode": self._t.approval,
        }

    # -- controller thread --------------------------------------------------------------

    def _main(self) -> None:
        self._store = JobStore(self._d.settings.jobs_path)
        try:
            for job in self._store.fail_interrupted("site restarted"):
                log.warning("job %s was %s when the site stopped: failed", job.job_id, job.state)
                self._report.status(_ref(job), "failed", reason="site restarted")
            self._running = self._store.count("running")
            next_tick = 0.0
            while not self._stop.is_set():
                try:
                    item: object | None = self._q.get(timeout=_TICK_S)
                except queue.Empty:
                    item = None
                if item is not None:
                    try:
                        self._handle(item)
                    except Exception:
                        log.exception("job controller failed on %s", type(item).__name__)
                if time.monotonic() >= next_tick:
                    self._tick()
                    next_tick = time.monotonic() + _TICK_S
        finally:
            self._store.close()

    def _handle(self, item: object) -> None:
        if isinstance(item, TrainCommand):
            self._on_train(item)
        elif isinstance(item, TrainChunk):
            self._on_chunk(item)
        elif isinstance(item, CancelCommand):
            self._on_cancel(item)
        elif isinstance(item, _Refused):
            self._on_refusal(item)
        elif isinstance(item, DatasiteReady):
            self._set_hosted(item.datasets)
        elif isinstance(item, DatasiteDown):
            self._set_hosted(())
        elif isinstance(item, WorkerDown):
            if self._hosted is None:  # it died before it could host anything
                self._set_hosted(())
        else:
            self._on_worker(item)

    def _set_hosted(self, hosted: tuple[tuple[str, str, int], ...]) -> None:
        if hosted != self._hosted:
            self._hosted = hosted
            self._d.call_soon(self._d.announce)

    def _tick(self) -> None:
        now = time.monotonic()
        for job_id, w in list(self._waiting.items()):
            if now >= w.deadline and w.cmd.weights is not None:
                missing = self._chunks.missing(job_id, w.cmd.weights)
                self._finish(
                    _ref(w.cmd),
                    "failed",
                    f"weights incomplete: {len(missing)} of {w.cmd.weights.chunks} chunks "
                    f"missing after {self._t.chunk_timeout_s:g} s",
                )
        for job in self._store.decisions():
            if job.decision == "approve":
                log.info("operator approved job %s", job.job_id)
                self._store.set_state(job.job_id, "accepted")
                self._queue_run(job, self._store.weights(job.job_id))
            else:
                why = f"rejected by site operator: {job.decision_reason or 'no reason given'}"
                log.info("operator rejected job %s", job.job_id)
                self._finish(_ref(job), "rejected", why)
                self._runner.submit(Deny(job.job_id, why))

    # -- commands ----------------------------------------------------------------------

    def _on_train(self, cmd: TrainCommand) -> None:
        known = self._store.get(cmd.job_id)
        if known is not None:
            log.info("job %s already known (%s): not run again", cmd.job_id, known.state)
            self._report.status(_ref(known), known.state, reason=known.reason)
            return
        hosted = None if self._hosted is None else {t for _n, t, _r in self._hosted}
        why = policy.refusal(cmd, self._t, hosted)
        ref = _ref(cmd)
        if why is not None:
            log.warning("job %s rejected by policy: %s", cmd.job_id, why)
            self._store.add(cmd.job_id, cmd.run_id, cmd.round, cmd.task, "rejected",
                            _command_json(cmd), why)  # fmt: skip
            self._report.status(ref, "rejected", reason=why)
            return
        self._store.add(cmd.job_id, cmd.run_id, cmd.round, cmd.task, "accepted",
                        _command_json(cmd))  # fmt: skip
        self._report.status(ref, "accepted")
        if cmd.weights is None or cmd.weights.data is not None:
            try:
                weights = None if cmd.weights is None else cmd.weights.inline_bytes()
            except ValueError as exc:
                self._finish(ref, "failed", f"weights failed verification: {exc}")
                return
            self._weights_ready(cmd, weights)
            return
        self._waiting[cmd.job_id] = _Waiting(cmd, time.monotonic() + self._t.chunk_timeout_s)
        self._try_chunks(cmd.job_id)

    def _on_chunk(self, chunk: TrainChunk) -> None:
        self._chunks.add(chunk)
        if chunk.job_id in self._waiting:
            self._try_chunks(chunk.job_id)

    def _try_chunks(self, job_id: str) -> None:
        w = self._waiting[job_id]
        assert w.cmd.weights is not None
        try:
            raw = self._chunks.try_assemble(job_id, w.cmd.weights)
        except ValueError as exc:
            self._finish(_ref(w.cmd), "failed", f"weights failed verification: {exc}")
            return
        if raw is not None:
            del self._waiting[job_id]
            self._weights_ready(w.cmd, raw)

    def _weights_ready(self, cmd: TrainCommand, weights: bytes | None) -> None:
        hp = policy.hyperparams_for(cmd)
        if self._t.approval == "manual":
            self._store.set_weights(cmd.job_id, weights)
            self._store.set_state(cmd.job_id, "pending_approval")
            self._report.status(_ref(cmd), "pending_approval")
            self._runner.submit(Prepare(cmd.job_id, cmd.task, weights, hp))
            return
        job = self._store.get(cmd.job_id)
        assert job is not None
        self._queue_run(job, weights)

    def _queue_run(self, job: JobRecord, weights: bytes | None) -> None:
        cmd = TrainCommand.model_validate_json(job.command)
        self._runner.submit(Run(job.job_id, job.task, weights, policy.hyperparams_for(cmd)))

    def _on_cancel(self, cmd: CancelCommand) -> None:
        job = self._store.get(cmd.job_id)
        if job is None or job.state in TERMINAL_STATES:
            log.info("cancel for job %s ignored: %s", cmd.job_id, job.state if job else "unknown")
            return
        why = "cancelled by coordinator" + (f": {cmd.reason}" if cmd.reason else "")
        self._runner.cancel(cmd.job_id)  # a queued run is skipped, a running one stops
        if job.state == "running":
            log.info("cancelling running job %s", cmd.job_id)
            self._cancel_why[cmd.job_id] = why
            return  # the worker stops at its next progress report, then reports Cancelled
        self._waiting.pop(cmd.job_id, None)
        self._chunks.discard(cmd.job_id)
        self._finish(_ref(job), "cancelled", why)
        if job.state == "pending_approval":
            self._runner.submit(Deny(job.job_id, why))

    def _on_refusal(self, item: _Refused) -> None:
        cmd, job_id = item.cmd, str(getattr(item.cmd, "job_id", ""))
        now = time.monotonic()
        while self._refusals and now - self._refusals[0] > 60:
            self._refusals.popleft()
        if len(self._refusals) >= self._t.max_refusal_reports_per_min:
            log.warning("refusal for job %s not reported (rate limit)", job_id)
            return
        self._refusals.append(now)
        why = f"command refused: {item.why}"
        known = self._store.get(job_id)
        if known is not None:
            # Never overwrite a real job's state with a forged or replayed command's refusal.
            self._report.status(_ref(known), known.state, reason=why)
        elif isinstance(cmd, TrainCommand):
            self._report.status(_ref(cmd), "rejected", reason=why)
        else:
            self._report.status(JobRef(job_id), "rejected", reason=why)

    # -- worker reports -----------------------------------------------------------------

    def _on_worker(self, item: object) -> None:
        job_id = str(getattr(item, "job_id", ""))
        job = self._store.get(job_id)
        if job is None or job.state in TERMINAL_STATES:
            log.debug("worker report %s for job %s ignored", type(item).__name__, job_id)
            return
        ref = _ref(job)
        if isinstance(item, Started):
            self._store.set_state(job_id, "running")
            self._running = self._store.count("running")
            self._last_progress[job_id] = time.monotonic()
            self._report.status(ref, "running", progress=0.0)
        elif isinstance(item, Progress):
            last = self._last_progress.get(job_id, 0.0)
            if item.fraction < 1.0 and time.monotonic() - last >= self._t.progress_interval_s:
                self._last_progress[job_id] = time.monotonic()
                self._report.status(ref, "running", progress=max(0.0, min(1.0, item.fraction)))
        elif isinstance(item, Finished):
            n = self._report.result(
                ref, item.weights, item.n_samples, item.metrics, item.train_time_s
            )
            log.info("job %s done: %d samples, %d chunk(s)", job_id, item.n_samples, n)
            self._finish(ref, "done", None, progress=1.0)
        elif isinstance(item, Cancelled):
            why = self._cancel_why.pop(job_id, "cancelled by coordinator")
            self._finish(ref, "cancelled", why)
        elif isinstance(item, Failed):
            log.warning("job %s failed: %s", job_id, item.reason)
            self._finish(ref, "failed", item.reason)

    def _finish(
        self, ref: JobRef, state: str, reason: str | None, progress: float | None = None
    ) -> None:
        job = self._store.get(ref.job_id)
        if job is not None and job.state in TERMINAL_STATES:
            return  # e.g. the worker's late report on a job cancelled while queued
        self._store.set_state(ref.job_id, state, reason)
        self._waiting.pop(ref.job_id, None)
        self._last_progress.pop(ref.job_id, None)
        self._cancel_why.pop(ref.job_id, None)
        self._running = self._store.count("running")
        self._report.status(ref, state, progress=progress, reason=reason)


def _ref(job: TrainCommand | JobRecord) -> JobRef:
    return JobRef(job.job_id, job.run_id, job.round, job.task)


def _command_json(cmd: TrainCommand) -> str:
    # Weights are kept separately (set_weights); the command without them is small.
    return cmd.model_copy(update={"weights": None}).model_dump_json()
