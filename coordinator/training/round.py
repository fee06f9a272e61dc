"""Closing a round: quorum check, aggregation of the vetted results, metrics, model version.

Only results that passed ``coordinator.training.vet`` count; they are aggregated with the
run's ``aggregate`` (FedAvg weighted by the capped sample counts, or a robust median or
trimmed mean). FedProx aggregates like FedAvg: its proximal term is applied by the sites
during local training (the command's ``strategy`` and ``mu``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from coordinator.store.training import TrainDb, now_ms
from coordinator.training.events import RoundClosed, TrainSpec
from coordinator.training.inbox import JobTrack

__all__ = ["close_round", "describe_missing", "weighted_metrics"]

log = logging.getLogger(__name__)


def _samples(job: JobTrack) -> int:
    """The sample count a result weighs with: as vetted (capped), else as reported."""
    if job.samples is not None:
        return job.samples
    return job.result.n_samples if job.result is not None else 0


def weighted_metrics(results: list[JobTrack]) -> dict[str, float]:
    """Sample-weighted mean of the metrics every result reports."""
    reported = [(j.result, _samples(j)) for j in results if j.result is not None]
    total = sum(n for _, n in reported)
    if not reported or total <= 0:
        return {}
    names = set.intersection(*(set(r.metrics) for r, _ in reported))
    return {k: sum(r.metrics[k] * n for r, n in reported) / total for k in sorted(names)}


def describe_missing(jobs: Mapping[str, JobTrack]) -> str:
    """``b: rejected (reason); c: no answer (pending_approval)`` for jobs without a result."""
    parts = []
    for site, job in sorted(jobs.items()):
        if job.ok:
            continue
        row = job.row()
        if job.answered:
            parts.append(f"{site}: {row['state']} ({row['reason'] or 'no reason given'})")
        else:
            parts.append(f"{site}: no answer ({job.state})")
    return "; ".join(parts)


def close_round(
    db: TrainDb,
    spec: TrainSpec,
    run_id: str,
    rnd: int,
    jobs: Mapping[str, JobTrack],
    started: float,
    started_at: int,
) -> RoundClosed:
    """Aggregate (or fail) the round, store the model version and the round's row."""
    results = [j for j in jobs.values() if j.ok]
    times = [j.result.train_time_s for j in results if j.result is not None]
    job_time_max = max(times) if times else None
    common = {"n_results": len(results), "job_time_max_s": job_time_max}
    if len(results) < spec.min_sites:
        reason = (
            f"quorum missed: {len(results)} of {len(jobs)} selected sites returned a result "
            f"(need --min-sites {spec.min_sites})"
        )
        missing = describe_missing(jobs)
        reason += f"; {missing}" if missing else ""
        wall = time.monotonic() - started
        db.put_round(
            run_id, rnd, state="failed", closed_at=now_ms(), reason=reason, wall_s=wall, **common
        )
        log.warning("run %s round %d failed: %s", run_id, rnd, reason)
        return RoundClosed(run_id, rnd, "failed", len(results), reason=reason, wall_s=wall,
                           job_time_max_s=job_time_max)  # fmt: skip

    from coordinator.training.aggregate import AggregationError, aggregate, dump_npz
    from schemas import sha256_hex

    try:
        unvetted = sorted(j.site for j in results if j.arrays is None)
        if unvetted:
            raise AggregationError(f"results of {', '.join(unvetted)} were not vetted")
        models = [(j.arrays or {}, _samples(j)) for j in results]
        weights = dump_npz(aggregate(spec.aggregate, models, spec.trim))
    except (AggregationError, ValueError, MemoryError) as exc:
        reason = f"aggregation failed: {exc}"
        wall = time.monotonic() - started
        db.put_round(
            run_id, rnd, state="failed", closed_at=now_ms(), reason=reason, wall_s=wall, **common
        )
        log.warning("run %s round %d failed: %s", run_id, rnd, reason)
        return RoundClosed(run_id, rnd, "failed", len(results), reason=reason, wall_s=wall,
                           job_time_max_s=job_time_max)  # fmt: skip
    finally:
        for job in jobs.values():
            job.arrays = None  # aggregated or not, the round is over
    metrics = weighted_metrics(results)
    model_id = f"{run_id}-r{rnd}"
    n_samples = sum(_samples(j) for j in results)
    db.put_model(
        {
            "model_id": model_id, "run_id": run_id, "round": rnd, "task": spec.task,
            "created_at": now_ms(), "sha256": sha256_hex(weights), "size": len(weights),
            "n_sites": len(results), "n_samples": n_samples, "metrics": metrics,
            "test_rmse": None, "weights": weights,
        }
    )  # fmt: skip
    missing = describe_missing(jobs)
    wall = time.monotonic() - started
    db.put_round(
        run_id, rnd, state="aggregated", closed_at=now_ms(), reason=missing, model_id=model_id,
        metrics=metrics, wall_s=wall, **common,
    )  # fmt: skip
    log.info("run %s round %d: %d results, %s", run_id, rnd, len(results), metrics)
    return RoundClosed(
        run_id, rnd, "aggregated", len(results), metrics, None, model_id, missing, wall,
        job_time_max,
    )  # fmt: skip
