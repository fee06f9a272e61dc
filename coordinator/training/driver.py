"""Federated training runs: rounds of signed train commands, quorum, deadline, FedAvg.

Library entry points (``fedmq train`` and ``fedmq demo`` call them)::

    result = run_training(settings, TrainSpec(task="cmapss-rul", rounds=5, min_sites=3))
    result = resume_training(settings, run_id)

``fedmq serve`` must run on the same database: it stores (and acks) the job statuses and
results sites send; this process polls them from ``messages`` and publishes commands on
its own MQTT connection. Round 1 sends no weights (``weights=None``): every site builds
the task's initial model from the same seed. Later rounds send the previous round's model.

Every result is vetted as it arrives (``coordinator.training.vet``): a bad one is excluded
from its round with a reason and the round goes on with the others. A run that ends for
any reason, an error in this process included, is stored as failed with that reason.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from coordinator.store.training import TrainDb, now_ms
from coordinator.training.events import (
    JobUpdate,
    Progress,
    RoundClosed,
    RoundStarted,
    RunFinished,
    RunResult,
    RunStarted,
    TrainError,
    TrainSpec,
)
from coordinator.training.inbox import JobTrack, TrainInbox
from coordinator.training.round import close_round
from coordinator.training.select import choose_hash, offers, registered_rows
from coordinator.training.send import CommandSender, load_key
from coordinator.training.vet import exclude_minority, vet_result
from coordinator.training.weights_check import ArraySpec, read_signature

__all__ = ["resume_training", "run_training"]

log = logging.getLogger(__name__)


def _open_db(settings: Any) -> TrainDb:
    import sqlite3

    from coordinator.store.read import coordinator_info

    if not settings.db.is_file():
        raise TrainError(
            f"no database at {settings.db}: start the coordinator with "
            f"`fedmq serve --db {settings.db}`",
            "not_found",
        )
    try:
        db = TrainDb(settings.db)
    except sqlite3.DatabaseError as exc:
        raise TrainError(f"{settings.db} is not a fedmq database ({exc})", "error") from None
    if not coordinator_info(db.conn)["running"]:
        db.close()
        raise TrainError(
            f"`fedmq serve` is not running on {settings.db}: it stores the sites' results",
            "failed",
        )
    return db


def run_training(
    settings: Any,
    spec: TrainSpec,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> RunResult:
    """Start a new run and drive it to its end; raise TrainError if it cannot start."""
    if spec.sites is not None and spec.min_sites > len(spec.sites):
        raise TrainError(f"--min-sites {spec.min_sites} > {len(spec.sites)} sites given", "usage")
    key = load_key(settings.signing_key_file)
    db = _open_db(settings)
    stop = stop or threading.Event()
    try:
        sites, code_hash, note = _select(db, spec, stop)
        run_id = time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
        db.put_run(
            {
                "run_id": run_id,
                "task": spec.task,
                "code_hash": code_hash,
                "strategy": spec.strategy,
                "aggregate": spec.aggregate,
                "rounds": spec.rounds,
                "min_sites": spec.min_sites,
                "round_timeout_s": spec.round_timeout_s,
                "sites": list(sites),
                "hyperparams": spec.hyperparams(),
                "spec": spec.to_json(),
                "state": "running",
                "reason": "",
                "created_at": now_ms(),
                "finished_at": None,
                "last_rowid": db.max_rowid(),
            }
        )
        try:
            runner = _Runner(settings, db, key, spec, run_id, code_hash, sites, progress, stop)
        except BaseException as exc:
            _mark_failed(db, run_id, exc)
            raise
        return runner.run(1, None, note)
    finally:
        db.close()


def resume_training(
    settings: Any,
    run_id: str,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> RunResult:
    """Continue ``run_id`` after its last aggregated round (an open round restarts)."""
    key = load_key(settings.signing_key_file)
    db = _open_db(settings)
    try:
        run = db.run(run_id)
        if run is None:
            raise TrainError(f"no run {run_id!r} in {settings.db} (see `fedmq runs`)", "not_found")
        if run["state"] == "done":
            raise TrainError(f"run {run_id} is already done", "usage")
        import json

        spec = TrainSpec.from_json(json.loads(run["spec"]))
        done = [r for r in db.rounds(run_id) if r["state"] == "aggregated"]
        start = done[-1]["round"] + 1 if done else 1
        weights = db.model_weights(done[-1]["model_id"]) if done else None
        db.update_run(run_id, state="running", reason="", finished_at=None)
        try:
            runner = _Runner(
                settings,
                db,
                key,
                spec,
                run_id,
                run["code_hash"],
                tuple(json.loads(run["sites"])),
                progress,
                stop or threading.Event(),
            )
            runner.adopt(db.jobs(run_id), start, int(run["last_rowid"] or 0))
        except BaseException as exc:
            _mark_failed(db, run_id, exc)
            raise
        return runner.run(start, weights, "", resumed=True)
    finally:
        db.close()


def _error_reason(exc: BaseException) -> str:
    if isinstance(exc, TrainError):
        return str(exc)
    return f"error in the train process: {type(exc).__name__}: {exc}"[:500]


def _mark_failed(db: TrainDb, run_id: str, exc: BaseException) -> None:
    """Store the run (and its open round) as failed with the error; never raises."""
    reason = _error_reason(exc)
    try:
        for row in db.rounds(run_id):
            if row["state"] == "open":
                db.put_round(run_id, row["round"], state="failed", closed_at=now_ms(),
                             reason=reason)  # fmt: skip
        db.update_run(run_id, state="failed", reason=reason, finished_at=now_ms())
    except Exception:
        log.exception("run %s: could not store its failure (%s)", run_id, reason)


def _select(db: TrainDb, spec: TrainSpec, stop: threading.Event) -> tuple[Any, str, str]:
    """Wait (up to ``wait_sites_s``) for enough live sites advertising the task."""
    deadline = time.monotonic() + spec.wait_sites_s
    while True:
        found = offers(db.conn, spec.task, spec.sites)
        enough = len(found) >= (len(spec.sites) if spec.sites else spec.min_sites)
        if enough or time.monotonic() >= deadline or stop.wait(0.5):
            break
    if len(found) < spec.min_sites:
        names = ", ".join(o.site for o in found) or "none"
        raise TrainError(
            f"only {len(found)} live site(s) advertise {spec.task} ({names}); need "
            f"--min-sites {spec.min_sites} (waited {spec.wait_sites_s:g} s)",
            "failed",
        )
    code_hash, note = choose_hash(found)
    sites = tuple(o.site for o in found if o.code_hash == code_hash)
    if len(sites) < spec.min_sites:
        raise TrainError(f"{note}; fewer than --min-sites {spec.min_sites} remain", "failed")
    if note:
        log.warning("%s", note)
    return sites, code_hash, note


class _Runner:
    """Drives the rounds of one run in this thread (owns ``db``)."""

    def __init__(
        self,
        settings: Any,
        db: TrainDb,
        key: Any,
        spec: TrainSpec,
        run_id: str,
        code_hash: str,
        sites: tuple[str, ...],
        progress: Progress | None,
        stop: threading.Event,
    ) -> None:
        self.settings, self.db, self.key, self.spec = settings, db, key, spec
        self.run_id, self.code_hash, self.sites = run_id, code_hash, sites
        self.emit: Callable[[Any], None] = progress or (lambda event: None)
        self.stop = stop
        self.inbox = TrainInbox()
        self.stragglers: set[str] = set()  # jobs unanswered when their round closed
        self.rowid = db.max_rowid()
        self.round = 0
        self.expected: dict[str, ArraySpec] | None = None  # the round's model's arrays
        self.sender = CommandSender(
            settings.mqtt, key, f"{settings.client_id}-train-{run_id[-12:]}"
        )

    def adopt(self, jobs: list[dict[str, Any]], start: int, rowid: int) -> None:
        """Resume: track the run's unfinished jobs; those of restarted rounds are abandoned."""
        top = self.db.max_rowid()
        for row in jobs:
            job = JobTrack(row["job_id"], self.run_id, row["round"], row["site"])
            job.state, job.late = row["state"], bool(row["late"])
            job.status_seq = row["status_seq"] or 0
            if row["state"] == "excluded":  # vetted before the restart: keep its reason
                job.state, job.excluded, job.vetted = "done", row["reason"] or "excluded", True
            self.inbox.track(job)
            self.stragglers.add(job.job_id)
        self.inbox.apply(self.db.job_messages([j["job_id"] for j in jobs]))
        self.rowid = max(rowid, top)
        self._abandon = [j for j in self.inbox.jobs.values() if j.round >= start]

    def run(self, start: int, weights: bytes | None, note: str, resumed: bool = False) -> RunResult:
        spec = self.spec
        if spec.task == "cmapss-rul":
            import torch  # noqa: F401  (seconds to import: not inside the first round)
        closed: list[RoundClosed] = []
        try:
            self.sender.start()
            self.emit(
                RunStarted(
                    self.run_id,
                    spec.task,
                    self.code_hash,
                    spec.rounds,
                    self.sites,
                    start if resumed else None,
                    note,
                )
            )
            for job in getattr(self, "_abandon", []):
                if job.state not in ("done", "failed", "rejected", "cancelled"):
                    self.sender.cancel(job.site, job.job_id, "round restarted by --resume")
                    job.state, job.reason = (
                        "abandoned",
                        "round restarted after a coordinator restart",
                    )
                job.late = True  # a restarted round's old jobs are never aggregated
                self.db.put_job(job.row())
            model_id = None
            for rnd in range(start, spec.rounds + 1):
                result = self._round(rnd, weights)
                closed.append(result)
                if result.state != "aggregated":
                    return self._finish("failed", result.reason, model_id, closed)
                model_id = result.model_id
                assert model_id is not None
                weights = self.db.model_weights(model_id)
            return self._finish("done", "", model_id, closed)
        except _Interrupted:
            return self._finish("failed", "interrupted", None, closed, interrupted=True)
        except Exception as exc:
            log.exception("run %s failed", self.run_id)
            _mark_failed(self.db, self.run_id, exc)
            reason = _error_reason(exc)
            self.emit(RunFinished(self.run_id, "failed", reason, None))
            if isinstance(exc, TrainError):
                raise
            return RunResult(self.run_id, "failed", reason, None, tuple(closed))
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: stored, then on
            _mark_failed(self.db, self.run_id, exc)
            raise
        finally:
            self.sender.stop()

    def _finish(
        self,
        state: str,
        reason: str,
        model_id: str | None,
        closed: list[RoundClosed],
        interrupted: bool = False,
    ) -> RunResult:
        self.db.update_run(
            self.run_id, state=state, reason=reason, finished_at=now_ms(), last_rowid=self.rowid
        )
        self.emit(RunFinished(self.run_id, state, reason, model_id))
        return RunResult(self.run_id, state, reason, model_id, tuple(closed), interrupted)

    def _participants(self, rnd: int) -> list[str]:
        """Run sites live now with the run's code hash (waiting ``rejoin_wait_s`` for all)."""
        if rnd == 1:
            return list(self.sites)
        deadline = time.monotonic() + self.spec.rejoin_wait_s
        while True:
            found = offers(self.db.conn, self.spec.task, self.sites)
            live = [o.site for o in found if o.code_hash == self.code_hash]
            if len(live) == len(self.sites) or time.monotonic() >= deadline:
                return live
            if self.stop.wait(0.5):
                raise _Interrupted

    def _round(self, rnd: int, weights: bytes | None) -> RoundClosed:
        spec, started = self.spec, time.monotonic()
        sites = self._participants(rnd)
        started_at = now_ms()
        self.round = rnd
        self.expected = None if weights is None else read_signature(weights, sys.maxsize)
        jobs: dict[str, JobTrack] = {}
        hp = {**spec.hyperparams(), "round": rnd - 1}  # the task's lr schedule is 0-based
        for site in sites:
            job_id = f"{self.run_id[4:]}-r{rnd}-{site}-{uuid.uuid4().hex[:6]}"
            jobs[site] = job = JobTrack(job_id, self.run_id, rnd, site)
            self.inbox.track(job)
            self.db.put_job({**job.row(), "created_at": started_at})
        self.db.put_round(
            self.run_id,
            rnd,
            state="open",
            started_at=started_at,
            closed_at=None,
            selected=sites,
            n_results=0,
            reason="",
            model_id=None,
            metrics=None,
            test_rmse=None,
            job_time_max_s=None,
            wall_s=None,
        )
        for site, job in jobs.items():
            self.sender.train(
                site,
                job.job_id,
                self.run_id,
                rnd,
                spec.task,
                self.code_hash,
                spec.strategy,
                hp,
                weights,
                ttl_s=max(spec.round_timeout_s, 60.0),
            )
        self.sender.flush()
        self.emit(
            RoundStarted(
                self.run_id,
                rnd,
                tuple(sites),
                {s: j.job_id for s, j in jobs.items()},
                spec.round_timeout_s,
            )
        )
        deadline = started + spec.round_timeout_s
        while True:
            self._poll()
            ok = sum(j.ok for j in jobs.values())
            waiting = sum(not j.answered for j in jobs.values())
            if waiting == 0 or ok + waiting < spec.min_sites or time.monotonic() >= deadline:
                break
            if self.stop.wait(spec.poll_s):
                self._interrupt(rnd, jobs, started, started_at)
        for job in jobs.values():
            if not job.answered:
                self.stragglers.add(job.job_id)
        if self.expected is None:
            for job in exclude_minority(list(jobs.values())):
                self._store(job)
        closed = close_round(self.db, spec, self.run_id, rnd, jobs, started, started_at)
        if closed.state == "failed":  # the run stops: nothing left to run for it
            for job in jobs.values():
                if not job.answered:
                    self.sender.cancel(job.site, job.job_id, "round failed: quorum missed")
        self.db.update_run(self.run_id, last_rowid=self.rowid)
        self.emit(closed)
        return closed

    def _poll(self) -> None:
        rows = self.db.messages_after(self.rowid)
        if not rows:
            return
        self.rowid = rows[-1]["rowid"]
        for job in self.inbox.apply(rows):
            if job.job_id in self.stragglers:
                job.late = True
            if not job.late and job.round == self.round:
                rows_max = registered_rows(self.db.conn, job.site, self.spec.task)
                vet_result(job, self.expected, self.spec, rows_max)
            self._store(job)

    def _store(self, job: JobTrack) -> None:
        self.db.put_job(job.row())
        row = job.row()
        self.emit(
            JobUpdate(
                self.run_id, job.round, job.site, job.job_id, row["state"], job.progress,
                row["reason"], job.late,
            )
        )  # fmt: skip

    def _interrupt(
        self, rnd: int, jobs: dict[str, JobTrack], started: float, started_at: int
    ) -> None:
        """Ctrl-C: cancel this round's unfinished jobs, fail the round, stop the run."""
        for job in jobs.values():
            if not job.answered:
                self.sender.cancel(job.site, job.job_id, "run interrupted")
                self.stragglers.add(job.job_id)
        self.sender.flush(5.0)
        self.db.put_round(
            self.run_id,
            rnd,
            state="failed",
            closed_at=now_ms(),
            reason="interrupted",
            wall_s=time.monotonic() - started,
        )
        raise _Interrupted


class _Interrupted(Exception):
    pass
