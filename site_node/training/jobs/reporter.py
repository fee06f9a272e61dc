"""Job statuses and results as durable messages through the daemon's outbox.

Every message goes through ``daemon.send_durable`` (committed to the outbox before it is
published; job rows are never dropped by the overflow policy). A result is sent as one
``JobResult`` followed by its ``ResultChunk`` messages on the same topic when the weights
exceed the chunk size; the ``done`` status follows them, so its seq is higher than theirs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from schemas import JobResult, JobStatus, ResultChunk, make_blob
from site_node.training.job_body import EVAL_KEY, eval_fields

if TYPE_CHECKING:
    from site_node.daemon import SiteDaemon

__all__ = ["JobRef", "JobReporter", "finite_metrics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRef:
    """What every job message repeats from the train command."""

    job_id: str
    run_id: str = ""
    round: int = 0
    task: str | None = None


def finite_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics without NaN/inf (JSON cannot carry them and the schemas refuse them)."""
    out = {}
    for name, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(name)] = number
        else:
            log.info("dropping non-finite metric %s=%r", name, value)
    return out


class JobReporter:
    """Builds and sends job messages for one daemon (any thread)."""

    def __init__(self, daemon: SiteDaemon, chunk_bytes: int) -> None:
        self._d = daemon
        self._chunk = chunk_bytes

    def _fields(self, job: JobRef, seq: int) -> dict[str, Any]:
        d = self._d
        return {
            "site": d.site_id,
            "session": d.session,
            "seq": seq,
            "job_id": job.job_id,
            "run_id": job.run_id,
            "round": job.round,
            "task": job.task,
        }

    def status(
        self, job: JobRef, state: str, progress: float | None = None, reason: str | None = None
    ) -> None:
        d = self._d
        if reason is not None:
            reason = reason[:500]
        d.send_durable(
            "job_status",
            d.topics.job_status(d.site_id, job.job_id),
            lambda seq: JobStatus(
                **self._fields(job, seq),
                state=state,  # type: ignore[arg-type]
                progress=progress,
                reason=reason,
            ),
        )

    def result(
        self,
        job: JobRef,
        weights: bytes,
        n_samples: int,
        metrics: Mapping[str, float],
        train_time_s: float,
    ) -> int:
        """Send the result and its chunks; returns the number of chunks."""
        d = self._d
        topic = d.topics.job_result(d.site_id, job.job_id)
        # An evaluate-only job returns no weights; the global model's scores ride in the
        # metrics under EVAL_KEY and go out as the result's global_* fields.
        blob, parts = make_blob(weights, max_inline=self._chunk) if weights else (None, [])
        extra = eval_fields(dict(metrics).get(EVAL_KEY))
        clean = finite_metrics({k: v for k, v in metrics.items() if k != EVAL_KEY})
        d.send_durable(
            "job_result",
            topic,
            lambda seq: JobResult(
                **self._fields(job, seq),
                n_samples=n_samples,
                metrics=clean,
                weights=blob,
                train_time_s=max(0.0, round(train_time_s, 3)),
                **extra,
            ),
        )
        for index, data in enumerate(parts):
            assert blob is not None
            d.send_durable(
                "result_chunk",
                topic,
                lambda seq, i=index, part=data: ResultChunk(  # type: ignore[misc]
                    site=d.site_id,
                    session=d.session,
                    seq=seq,
                    job_id=job.job_id,
                    index=i,
                    total=len(parts),
                    sha256=blob.sha256,
                    data=part,
                ),
            )
        return len(parts)
