"""Job statuses, results and result chunks of a run's jobs, read back from ``messages``.

``fedmq serve`` stores (and acks) every durable job message; the train process polls the
new rows and folds them into one :class:`JobTrack` per job. Result weights are reassembled
from their chunks and verified (size and sha256) before a job counts as a result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas import JobResult, JobStatus, ResultChunk, assemble

__all__ = ["FINAL_STATES", "JobTrack", "TrainInbox", "result_weights"]

log = logging.getLogger(__name__)

FINAL_STATES = frozenset({"done", "failed", "rejected", "cancelled"})


def result_weights(result: JobResult, chunks: Iterable[ResultChunk]) -> bytes:
    """The result's weights, inline or reassembled from chunks, verified; ValueError if not."""
    blob = result.weights
    if blob is None:
        raise ValueError("result carries no weights")
    inline = blob.inline_bytes()
    return inline if inline is not None else assemble(blob, chunks)


@dataclass
class JobTrack:
    """What the train process knows about one job it sent."""

    job_id: str
    run_id: str
    round: int
    site: str
    state: str = "sent"
    progress: float | None = None
    reason: str | None = None
    status_seq: int = 0
    result: JobResult | None = None
    chunks: dict[int, ResultChunk] = field(default_factory=dict)
    weights: bytes | None = None
    weights_error: str | None = None
    late: bool = False
    # Set by the round's vetting (coordinator.training.vet) once the weights are in:
    vetted: bool = False
    excluded: str | None = None  # why the result is left out of the round
    note: str | None = None  # accepted with a flag, e.g. a clipped sample count
    samples: int | None = None  # the sample count aggregation uses (clipped)
    arrays: dict[str, Any] | None = field(default=None, repr=False)  # loaded, until aggregated
    signature: dict[str, Any] | None = field(default=None, repr=False)
    # An evaluate-only job (the final evaluation round): no weights are expected back.
    evaluate_only: bool = False
    # The site's vetted evaluation of the global model (coordinator.training.vet).
    evaluation: Any = None

    @property
    def ok(self) -> bool:
        """Done, with verified weights, not excluded: counts towards the round's quorum.
        An evaluate-only job is ok once done with its result."""
        if self.evaluate_only:
            return self.state == "done" and self.result is not None and self.excluded is None
        return self.state == "done" and self.weights is not None and self.excluded is None

    @property
    def answered(self) -> bool:
        """Nothing more to wait for from this job."""
        if self.weights_error is not None or self.excluded is not None:
            return True
        return self.ok or (self.state in FINAL_STATES and self.state != "done")

    def row(self) -> dict[str, Any]:
        r = self.result
        reason = self.reason
        state = self.state
        if self.weights_error is not None:
            reason = f"result weights failed verification: {self.weights_error}"
            state = "failed"
        elif self.excluded is not None:
            reason, state = self.excluded, "excluded"
        elif self.note is not None:
            reason = self.note
        return {
            "job_id": self.job_id,
            "run_id": self.run_id,
            "round": self.round,
            "site": self.site,
            "state": state,
            "progress": self.progress,
            "reason": reason,
            "n_samples": r.n_samples if r is not None else None,
            "metrics": dict(r.metrics) if r is not None else None,
            "train_time_s": r.train_time_s if r is not None else None,
            "late": int(self.late),
            "status_seq": self.status_seq,
        }


class TrainInbox:
    """Folds stored job messages into the tracks of known jobs; ignores other jobs."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobTrack] = {}

    def track(self, job: JobTrack) -> None:
        self.jobs[job.job_id] = job

    def apply(self, rows: Iterable[Any]) -> list[JobTrack]:
        """Apply ``messages`` rows (site, kind, job_id, payload); return changed jobs."""
        changed: dict[str, JobTrack] = {}
        for row in rows:
            job = self.jobs.get(row["job_id"])
            if job is None or row["site"] != job.site or row["payload"] is None:
                continue
            try:
                if self._apply(job, row["kind"], row["payload"]):
                    changed[job.job_id] = job
            except ValueError as exc:  # pydantic ValidationError is a ValueError
                log.warning("job %s: unreadable %s: %s", job.job_id, row["kind"], exc)
        return list(changed.values())

    def _apply(self, job: JobTrack, kind: str, payload: str) -> bool:
        if kind == "job_status":
            status = JobStatus.model_validate_json(payload)
            if status.seq <= job.status_seq:
                return False
            job.status_seq = status.seq
            job.state, job.progress = status.state, status.progress
            job.reason = status.reason
        elif kind == "job_result":
            job.result = JobResult.model_validate_json(payload)
        elif kind == "result_chunk":
            chunk = ResultChunk.model_validate_json(payload)
            job.chunks[chunk.index] = chunk
        else:
            return False
        self._try_weights(job)
        return True

    @staticmethod
    def _try_weights(job: JobTrack) -> None:
        result = job.result
        if result is None or job.weights is not None or job.weights_error is not None:
            return
        if job.evaluate_only:
            return  # weights an evaluate-only job sends anyway are not used
        blob = result.weights
        if blob is None:
            if job.state == "done":
                job.weights_error = "result carries no weights"
            return
        if blob.data is None and len(job.chunks) < blob.chunks:
            return  # more chunks to come
        try:
            job.weights = result_weights(result, job.chunks.values())
        except ValueError as exc:
            job.weights_error = str(exc)
            log.warning("job %s at %s: %s", job.job_id, job.site, exc)
