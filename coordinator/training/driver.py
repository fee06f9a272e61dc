"""Federated training runs: rounds of signed train commands, quorum, deadline, FedAvg.

The round driver runs inside ``fedmq serve`` (``coordinator.training.service`` starts one
thread per run)::

    result = run_training(link, spec, run_id)
    result = resume_training(link, run_id)

``link`` is what the daemon lends a run: its settings, its bus (commands go out on the
daemon's one MQTT client, signed with its key) and the run's feed, which the writer thread
fills right after each commit with the job messages it stored (never polled from the
database). Round 1 sends no weights (``weights=None``): every site builds the task's
initial model from the same seed. Later rounds send the previous round's model.

Every result is vetted as it arrives (``coordinator.training.vet``): a bad one is excluded
from its round with a reason and the round goes on with the others. A run that ends for
any reason, an error in the driver included, is stored as failed with that reason; a run
the daemon leaves when it stops (``link.halt``) stays "running" and is resumed at the next
start: its open round restarts, the jobs already sent for it are cancelled and never
aggregated.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coordinator.store.training import TrainDb, TrainDbError, now_ms
from coordinator.training.events import (
    EvaluationClosed,
    EvaluationStarted,
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
from coordinator.training.round import close_round, record_evaluation
from coordinator.training.select import choose_hash, offers, registered_rows
from coordinator.training.send import CommandSender, load_key
from coordinator.training.strategy import site_strategy
from coordinator.training.vet import exclude_minority, vet_result
from coordinator.training.weights_check import ArraySpec, read_signature

__all__ = ["RESUME_REJOIN_S", "Link", "new_run_id", "resume_training", "run_training"]

RESUME_REJOIN_S = 30.0
"""After a resume, how long the first round waits for every run site to be live again
(it starts as soon as all are; ``--rejoin-wait`` raises it)."""

log = logging.getLogger(__name__)


@dataclass
class Link:
    """What the daemon lends one run.

    ``feed`` receives lists of stored job messages (dicts with site, kind, job_id, payload)
    right after the writer committed them; ``stop`` cancels the run (stored as failed,
    "interrupted"); ``halt`` means the daemon is stopping: the run is left as it is.
    """

    settings: Any
    bus: Any
    session: int = 0
    feed: queue.SimpleQueue[list[dict[str, Any]]] = field(default_factory=queue.SimpleQueue)
    stop: threading.Event = field(default_factory=threading.Event)
    halt: threading.Event = field(default_factory=threading.Event)


def new_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def _open_db(settings: Any) -> TrainDb:
    import sqlite3

    try:
        return TrainDb(settings.db)
    except sqlite3.DatabaseError as exc:
        raise TrainError(f"{settings.db} is not a fedmq database ({exc})", "error") from None
    except TrainDbError as exc:  # PostgreSQL unreachable, or the postgres extra missing
        raise TrainError(str(exc), "error") from None


def run_training(
    link: Link, spec: TrainSpec, run_id: str, progress: Progress | None = None
) -> RunResult:
    """Start run ``run_id`` and drive it to its end; raise TrainError if it cannot start."""
    if spec.sites is not None and spec.min_sites > len(spec.sites):
        raise TrainError(f"--min-sites {spec.min_sites} > {len(spec.sites)} sites given", "usage")
    key = load_key(link.settings.signing_key_file)
    db = _open_db(link.settings)
    try:
        sites, code_hash, note = _select(db, spec, link)
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
                "last_rowid": 0,
            }
        )
        try:
            runner = _Runner(link, db, key, spec, run_id, code_hash, sites, progress)
        except BaseException as exc:
            _mark_failed(db, run_id, exc)
            raise
        return runner.run(1, None, note)
    finally:
        db.close()


def resume_training(link: Link, run_id: str, progress: Progress | None = None) -> RunResult:
    """Continue ``run_id`` after its last aggregated round (an open round restarts)."""
    key = load_key(link.settings.signing_key_file)
    db = _open_db(link.settings)
    try:
        run = db.run(run_id)
        if run is None:
            raise TrainError(f"no run {run_id!r} (see `fedmq runs`)", "not_found")
        if run["state"] == "done":
            raise TrainError(f"run {run_id} is already done", "usage")
        spec = TrainSpec.from_json(json.loads(run["spec"]))
        done = [r for r in db.rounds(run_id) if r["state"] == "aggregated"]
        start = done[-1]["round"] + 1 if done else 1
        model_id = done[-1]["model_id"] if done else None
        weights = db.model_weights(model_id) if model_id else None
        db.update_run(run_id, state="running", reason="", finished_at=None)
        try:
            runner = _Runner(
                link, db, key, spec, run_id, run["code_hash"],
                tuple(json.loads(run["sites"])), progress,
            )  # fmt: skip
            runner.adopt(db.jobs(run_id), start)
        except BaseException as exc:
            _mark_failed(db, run_id, exc)
            raise
        return runner.run(start, weights, "", resumed=True, model_id=model_id)
    finally:
        db.close()


def _error_reason(exc: BaseException) -> str:
    if isinstance(exc, TrainError):
        return str(exc)
    return f"error in the round driver: {type(exc).__name__}: {exc}"[:500]


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


def _wait(link: Link, seconds: float) -> bool:
    """Sleep up to ``seconds``; True if the run was cancelled; raise _Halted on shutdown."""
    if link.halt.is_set():
        raise _Halted
    return link.stop.wait(seconds)


def _select(db: TrainDb, spec: TrainSpec, link: Link) -> tuple[Any, str, str]:
    """Wait (up to ``wait_sites_s``) for enough live sites advertising the task."""
    deadline = time.monotonic() + spec.wait_sites_s
    while True:
        found = offers(db.conn, spec.task, spec.sites)
        enough = len(found) >= (len(spec.sites) if spec.sites else spec.min_sites)
        if enough or time.monotonic() >= deadline or _wait(link, 0.5):
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
        link: Link,
        db: TrainDb,
        key: Any,
        spec: TrainSpec,
        run_id: str,
        code_hash: str,
        sites: tuple[str, ...],
        progress: Progress | None,
    ) -> None:
        self.link, self.db, self.key, self.spec = link, db, key, spec
        self.run_id, self.code_hash, self.sites = run_id, code_hash, sites
        self.emit: Callable[[Any], None] = progress or (lambda event: None)
        self.inbox = TrainInbox()
        self.stragglers: set[str] = set()  # jobs unanswered when their round closed
        self.round = 0
        self._rejoin_grace_s = 0.0  # set by a resume: see _participants
        self.expected: dict[str, ArraySpec] | None = None  # the round's model's arrays
        self.sender = CommandSender(link.bus, key, link.session)
        self._abandon: list[JobTrack] = []

    def adopt(self, jobs: list[dict[str, Any]], start: int) -> None:
        """Resume: track the run's jobs and fold in every message stored for them (the feed
        was registered before, so nothing committed meanwhile is missed; a message seen
        twice changes nothing); the jobs of the restarted round are abandoned."""
        for row in jobs:
            job = JobTrack(row["job_id"], self.run_id, row["round"], row["site"])
            job.evaluate_only = row["round"] > self.spec.rounds  # the final evaluation
            job.state, job.late = row["state"], bool(row["late"])
            job.status_seq = row["status_seq"] or 0
            if row["state"] == "excluded":  # vetted before the restart: keep its reason
                job.state, job.excluded, job.vetted = "done", row["reason"] or "excluded", True
            self.inbox.track(job)
            self.stragglers.add(job.job_id)
        self.inbox.apply(self.db.job_messages([j["job_id"] for j in jobs]))
        self._abandon = [j for j in self.inbox.jobs.values() if j.round >= start]

    def run(
        self,
        start: int,
        weights: bytes | None,
        note: str,
        resumed: bool = False,
        model_id: str | None = None,
    ) -> RunResult:
        """Rounds ``start``..``rounds`` from ``weights`` (model ``model_id``), then the
        final evaluation if the spec asks for it."""
        spec = self.spec
        closed: list[RoundClosed] = []
        if resumed:
            self._rejoin_grace_s = RESUME_REJOIN_S
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
            for job in self._abandon:
                if job.state not in ("done", "failed", "rejected", "cancelled"):
                    self.sender.cancel(job.site, job.job_id, "round restarted")
                    job.state, job.reason = (
                        "abandoned",
                        "round restarted after a coordinator restart",
                    )
                job.late = True  # a restarted round's old jobs are never aggregated
                self.db.put_job(job.row())
            for rnd in range(start, spec.rounds + 1):
                result = self._round(rnd, weights)
                closed.append(result)
                if result.state != "aggregated":
                    return self._finish("failed", result.reason, model_id, closed)
                model_id = result.model_id
                assert model_id is not None
                weights = self.db.model_weights(model_id)
            if spec.final_eval and weights is not None and model_id is not None:
                self._final_evaluation(spec.rounds + 1, model_id, weights)
            return self._finish("done", "", model_id, closed)
        except _Interrupted:
            return self._finish("failed", "interrupted", None, closed, interrupted=True)
        except _Halted:  # the daemon stops: the run stays "running", resumed at next start
            log.info("run %s: left running for the next start", self.run_id)
            return RunResult(self.run_id, "running", "coordinator stopping", None, tuple(closed))
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
        self.db.update_run(self.run_id, state=state, reason=reason, finished_at=now_ms())
        self.emit(RunFinished(self.run_id, state, reason, model_id))
        return RunResult(self.run_id, state, reason, model_id, tuple(closed), interrupted)

    def _participants(self, rnd: int) -> list[str]:
        """Run sites live now with the run's code hash (waiting ``rejoin_wait_s`` for all)."""
        if rnd == 1:
            return list(self.sites)
        # Right after a restart of the daemon the sites' queued heartbeats are not read yet:
        # they look stale for a moment although they never went away.
        wait_s, self._rejoin_grace_s = max(self.spec.rejoin_wait_s, self._rejoin_grace_s), 0.0
        deadline = time.monotonic() + wait_s
        while True:
            found = offers(self.db.conn, self.spec.task, self.sites)
            live = [o.site for o in found if o.code_hash == self.code_hash]
            if len(live) == len(self.sites) or time.monotonic() >= deadline:
                return live
            if _wait(self.link, 0.5):
                raise _Interrupted

    def _round(self, rnd: int, weights: bytes | None) -> RoundClosed:
        spec, started = self.spec, time.monotonic()
        sites = self._participants(rnd)
        started_at = now_ms()
        self.round = rnd
        self.expected = None if weights is None else read_signature(weights, sys.maxsize)
        jobs: dict[str, JobTrack] = {}
        hp = {**spec.hyperparams(), "round": rnd - 1}  # the task's lr schedule is 0-based
        with self.db.transaction():  # the round and its jobs: one commit, before sending
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
                site_strategy(spec.strategy),
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
        self._collect(rnd, jobs, started, started_at, spec.min_sites)
        sent_id = f"{self.run_id}-r{rnd - 1}" if weights is not None else None
        excluded = exclude_minority(list(jobs.values())) if self.expected is None else []
        with self.db.transaction():  # jobs, evaluation, model and round row: one commit
            for job in excluded:
                self.db.put_job(job.row())
            closed = close_round(
                self.db, spec, self.run_id, rnd, jobs, started, started_at, weights, sent_id
            )
        for job in excluded:
            self._announce(job)
        if closed.state == "failed":  # the run stops: nothing left to run for it
            for job in jobs.values():
                if not job.answered:
                    self.sender.cancel(job.site, job.job_id, "round failed: quorum missed")
        self.emit(closed)
        return closed

    def _collect(
        self,
        rnd: int,
        jobs: dict[str, JobTrack],
        started: float,
        started_at: int,
        quorum: int,
    ) -> None:
        """Take job messages until every job answered, the deadline, or until fewer than
        ``quorum`` results are still possible; unanswered jobs become stragglers."""
        deadline = started + self.spec.round_timeout_s
        while True:
            ok = sum(j.ok for j in jobs.values())
            waiting = sum(not j.answered for j in jobs.values())
            left = deadline - time.monotonic()
            if waiting == 0 or ok + waiting < quorum or left <= 0:
                break
            if self.link.halt.is_set():
                raise _Halted
            if self.link.stop.is_set():
                self._interrupt(rnd, jobs, started, started_at)
            self._take(min(left, 0.2))
        for job in jobs.values():
            if not job.answered:
                self.stragglers.add(job.job_id)

    def _final_evaluation(self, rnd: int, model_id: str, weights: bytes) -> None:
        """After the last round: every live run site scores the final model on its
        held-out split (evaluate-only jobs, numbered round ``rounds + 1``). Stored with
        the model's other evaluations; it never changes how the run ended."""
        spec, started = self.spec, time.monotonic()
        sites = self._participants(rnd)
        started_at = now_ms()
        self.round = rnd
        self.expected = None
        jobs: dict[str, JobTrack] = {}
        with self.db.transaction():
            for site in sites:
                job_id = f"{self.run_id[4:]}-e{rnd}-{site}-{uuid.uuid4().hex[:6]}"
                jobs[site] = job = JobTrack(job_id, self.run_id, rnd, site, evaluate_only=True)
                self.inbox.track(job)
                self.db.put_job({**job.row(), "created_at": started_at})
        for site, job in jobs.items():
            self.sender.train(
                site, job.job_id, self.run_id, rnd, spec.task, self.code_hash,
                site_strategy(spec.strategy), {"round": rnd - 1}, weights,
                ttl_s=max(spec.round_timeout_s, 60.0), evaluate_only=True,
            )  # fmt: skip
        self.sender.flush()
        self.emit(
            EvaluationStarted(
                self.run_id, rnd, model_id, tuple(sites),
                {s: j.job_id for s, j in jobs.items()}, spec.round_timeout_s,
            )
        )  # fmt: skip
        self._collect(rnd, jobs, started, started_at, 0)
        for job in jobs.values():
            if not job.answered:
                self.sender.cancel(job.site, job.job_id, "final evaluation closed")
        from schemas import sha256_hex

        evaluation = record_evaluation(
            self.db, spec, self.run_id, rnd, model_id, sha256_hex(weights), jobs, final=True
        )
        self.emit(
            EvaluationClosed(
                self.run_id, rnd, model_id, sum(j.ok for j in jobs.values()), evaluation,
                time.monotonic() - started,
            )
        )  # fmt: skip

    def _take(self, timeout: float) -> None:
        """Wait up to ``timeout`` for job messages from the feed; apply all that came."""
        try:
            rows = self.link.feed.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return
        while True:
            try:
                rows = rows + self.link.feed.get_nowait()
            except queue.Empty:
                break
        changed = []
        with self.db.transaction():  # everything that came: one commit
            for job in self.inbox.apply(rows):
                if job.job_id in self.stragglers:
                    job.late = True
                if not job.late and job.round == self.round:
                    rows_max = registered_rows(self.db.conn, job.site, self.spec.task)
                    vet_result(job, self.expected, self.spec, rows_max)
                self.db.put_job(job.row())
                changed.append(job)
        for job in changed:
            self._announce(job)

    def _announce(self, job: JobTrack) -> None:
        """A job's stored state to the run's listeners (after its commit)."""
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
        if rnd <= self.spec.rounds:  # the final evaluation has no round row
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


class _Halted(Exception):
    """The daemon is stopping."""
