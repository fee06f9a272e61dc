"""The site's job store: one SQLite file (WAL) shared by the daemon and the site CLI.

The daemon's job controller thread owns its connection and writes job states; the CLI
(``fedmq-site jobs / approve / reject``) opens its own short-lived connection and writes
only an operator *decision* on a job that is ``pending_approval``; the controller polls
for decisions and acts on them. Weights of a pending job are kept here, so a job awaiting
approval survives a site restart.

Errors::

    JobStoreError
      +-- UnknownJobError
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import now_ms

__all__ = [
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "JobRecord",
    "JobStore",
    "JobStoreError",
    "UnknownJobError",
]

TERMINAL_STATES = frozenset({"done", "failed", "rejected", "cancelled"})
# States in which a job is still in flight inside a running daemon (lost on a restart).
ACTIVE_STATES = frozenset({"accepted", "running"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    task TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    received_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    command TEXT NOT NULL,
    weights BLOB,
    decision TEXT,
    decision_reason TEXT
)
"""


class JobStoreError(RuntimeError):
    """A job store operation is not possible (the message says why)."""


class UnknownJobError(JobStoreError):
    """No job with that id at this site."""


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    run_id: str
    round: int
    task: str
    state: str
    reason: str | None
    received_ms: int
    updated_ms: int
    command: str
    decision: str | None
    decision_reason: str | None

    def as_dict(self) -> dict[str, Any]:
        """The record for ``--json`` output (without the command payload)."""
        return {
            "job": self.job_id,
            "run": self.run_id,
            "round": self.round,
            "task": self.task,
            "state": self.state,
            "received_ms": self.received_ms,
            "updated_ms": self.updated_ms,
            "reason": self.reason,
        }


_COLUMNS = (
    "job_id, run_id, round, task, state, reason, received_ms, updated_ms, command, "
    "decision, decision_reason"
)


class JobStore:
    """Jobs of one site; use from one thread per instance."""

    def __init__(self, path: Path, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise UnknownJobError(f"no jobs at this site yet ({self.path} does not exist)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- daemon side -----------------------------------------------------------------

    def add(
        self,
        job_id: str,
        run_id: str,
        round_: int,
        task: str,
        state: str,
        command: str,
        reason: str | None = None,
    ) -> None:
        """Insert a new job; JobStoreError if the id exists."""
        now = now_ms()
        try:
            self._db.execute(
                f"INSERT INTO jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                (job_id, run_id, round_, task, state, reason, now, now, command),
            )
        except sqlite3.IntegrityError:
            raise JobStoreError(f"job {job_id} exists") from None

    def set_state(self, job_id: str, state: str, reason: str | None = None) -> None:
        self._db.execute(
            "UPDATE jobs SET state = ?, reason = ?, updated_ms = ? WHERE job_id = ?",
            (state, reason, now_ms(), job_id),
        )
        if state in TERMINAL_STATES:  # weights are only needed until the job ran
            self._db.execute("UPDATE jobs SET weights = NULL WHERE job_id = ?", (job_id,))

    def set_weights(self, job_id: str, weights: bytes | None) -> None:
        self._db.execute("UPDATE jobs SET weights = ? WHERE job_id = ?", (weights, job_id))

    def weights(self, job_id: str) -> bytes | None:
        row = self._db.execute("SELECT weights FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def decisions(self) -> list[JobRecord]:
        """Pending jobs on which the operator has decided."""
        return self._select("WHERE state = 'pending_approval' AND decision IS NOT NULL")

    def fail_interrupted(self, reason: str) -> list[JobRecord]:
        """Mark jobs that were in flight when the site stopped as failed; return them."""
        marks = ",".join("?" * len(ACTIVE_STATES))
        lost = self._select(f"WHERE state IN ({marks})", *sorted(ACTIVE_STATES))
        for job in lost:
            self.set_state(job.job_id, "failed", reason)
        return lost

    def count(self, state: str) -> int:
        row = self._db.execute("SELECT count(*) FROM jobs WHERE state = ?", (state,)).fetchone()
        return int(row[0])

    # -- both sides ------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._select("WHERE job_id = ?", job_id)
        return rows[0] if rows else None

    def recent(self, limit: int = 200) -> list[JobRecord]:
        """Newest first."""
        return self._select("ORDER BY received_ms DESC, rowid DESC LIMIT ?", limit)

    # -- CLI side --------------------------------------------------------------------

    def decide(self, job_id: str, decision: str, reason: str = "") -> JobRecord:
        """Record the operator's ``approve``/``reject`` for a pending job.

        Raises:
            UnknownJobError: no such job.
            JobStoreError: the job is not pending approval (or was decided already).
        """
        if decision not in ("approve", "reject"):
            raise ValueError(f"decision must be approve or reject, not {decision!r}")
        cur = self._db.execute(
            "UPDATE jobs SET decision = ?, decision_reason = ?, updated_ms = ? "
            "WHERE job_id = ? AND state = 'pending_approval' AND decision IS NULL",
            (decision, reason, now_ms(), job_id),
        )
        job = self.get(job_id)
        if job is None:
            raise UnknownJobError(f"unknown job {job_id!r}")
        if cur.rowcount == 0:
            if job.state == "pending_approval":
                raise JobStoreError(f"job {job_id} is already decided ({job.decision})")
            raise JobStoreError(f"job {job_id} is {job.state}, not pending approval")
        return job

    def _select(self, where: str, *args: Any) -> list[JobRecord]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs {where}", args).fetchall()
        return [JobRecord(*row) for row in rows]
