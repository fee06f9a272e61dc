"""Training job progress and results, published by a site through its outbox."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from schemas.commands import TrainCommand
from schemas.envelope import INT63_MAX, DurableEnvelope, Id, Level
from schemas.weights import ChunkFields, WeightsBlob

__all__ = ["EVAL_MAX_METRICS", "JOB_STATES", "JobResult", "JobState", "JobStatus", "ResultChunk"]

EVAL_MAX_METRICS = 64
"""At most this many federated-evaluation metrics (values plus missing) in one result."""

_MetricName = Annotated[str, Field(min_length=1, max_length=128)]
_Reason = Annotated[str, Field(max_length=500)]

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
    # Federated evaluation: the global model this job received (sha256 of its weights),
    # scored on the site's held-out split before local training (or instead of it, in an
    # evaluate-only job, which returns no weights). A metric that cannot be computed
    # there is in ``global_missing`` with the reason; ``global_error`` when the
    # evaluation failed as a whole. All absent when the job evaluated nothing (no global
    # model in a run's first round, or a site that predates federated evaluation).
    global_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    global_n_samples: int | None = Field(default=None, ge=0, le=INT63_MAX)
    global_metrics: dict[_MetricName, float] = Field(default={}, max_length=EVAL_MAX_METRICS)
    global_missing: dict[_MetricName, _Reason] = Field(default={}, max_length=EVAL_MAX_METRICS)
    global_error: str | None = Field(default=None, max_length=500)


class ResultChunk(DurableEnvelope, ChunkFields):
    """One chunk of a large result's weights (same topic as the result)."""

    kind: Literal["result_chunk"] = "result_chunk"
