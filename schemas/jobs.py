"""Training job progress and results, published by a site through its outbox."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from schemas.commands import TrainCommand
from schemas.envelope import INT63_MAX, DurableEnvelope, Id, Level
from schemas.weights import ChunkFields, WeightsBlob

__all__ = ["JOB_STATES", "JobResult", "JobState", "JobStatus", "ResultChunk"]

JobState = Literal[
    "accepted", "pending_approval", "running", "done", "failed", "rejected", "cancelled"
]
JOB_STATES: tuple[str, ...] = JobState.__args__  # type: ignore[attr-defined]


class _JobFields(DurableEnvelope):
    job_id: Id
    run_id: str = Field(default="", max_length=128)
    round: int = Field(default=0, ge=0, le=INT63_MAX)
    task: Level | None = None

    @classmethod
    def for_command(cls, cmd: TrainCommand, **fields: Any) -> Any:
        """Build a reply to ``cmd``: ids, run and round come from the request."""
        base = {"job_id": cmd.job_id, "run_id": cmd.run_id, "round": cmd.round, "task": cmd.task}
        return cls(**{**base, **fields})


class JobStatus(_JobFields):
    """A job's state; ``reason`` says why it was rejected, failed or cancelled."""

    kind: Literal["job_status"] = "job_status"
    state: JobState
    progress: float | None = Field(default=None, ge=0, le=1)
    reason: str | None = Field(default=None, max_length=500)


class JobResult(_JobFields):
    """Metrics and the locally trained weights; ``weights.chunks`` chunks follow."""

    kind: Literal["job_result"] = "job_result"
    n_samples: int = Field(ge=0, le=INT63_MAX)
    metrics: dict[str, float] = {}
    weights: WeightsBlob | None = None
    train_time_s: float = Field(default=0.0, ge=0)


class ResultChunk(DurableEnvelope, ChunkFields):
    """One chunk of a large result's weights (same topic as the result)."""

    kind: Literal["result_chunk"] = "result_chunk"
