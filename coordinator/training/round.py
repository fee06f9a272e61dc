"""Closing a round: quorum check, aggregation of the vetted results, the server strategy,
the federated evaluation of the global model, metrics, model version.

Only results that passed ``coordinator.training.vet`` count; they are aggregated with the
run's ``aggregate`` (FedAvg weighted by the capped sample counts, or a robust median or
trimmed mean), then the run's ``strategy`` makes the next global model of it
(:func:`next_global`: the aggregate itself for FedAvg and FedProx, whose proximal term the
sites apply during local training; a FedAdam/FedYogi server step otherwise).

Federated evaluation: every job of round ``r > 1`` was sent model ``r - 1`` and scored it
on its site's held-out split before training; the final evaluation round (evaluate-only
jobs) scores the last model. :func:`record_evaluation` vets each site's scores, stores
them per site and metric, and the sample-weighted value per metric with its coverage
(:func:`federated_summary`: "auc 0.91 over 3 of 4 sites"); a site that could not compute
a metric (one class only) is stored as missing with its reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from coordinator.store.training import TrainDb, now_ms
from coordinator.training.events import RoundClosed, TrainSpec
from coordinator.training.inbox import JobTrack
from coordinator.training.select import registered_rows
from coordinator.training.vet import SiteEval, vet_evaluation

__all__ = [
    "close_round",
    "describe_missing",
    "federated_summary",
    "next_global",
    "record_evaluation",
    "weighted_metrics",
]

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
    sent: bytes | None = None,
    sent_model_id: str | None = None,
) -> RoundClosed:
    """Aggregate (or fail) the round, store the model version and the round's row.

    ``sent``: the global model the round's jobs started from (None in round 1), known as
    ``sent_model_id``; the sites' evaluations of it are recorded either way.
    """
    evaluation = None
    if sent is not None and sent_model_id is not None:
        evaluation = record_evaluation(db, spec, run_id, rnd, sent_model_id, _sha256(sent), jobs)
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
                           job_time_max_s=job_time_max, evaluation=evaluation)  # fmt: skip

    from coordinator.training.aggregate import AggregationError, aggregate, dump_npz
    from schemas import sha256_hex

    try:
        unvetted = sorted(j.site for j in results if j.arrays is None)
        if unvetted:
            raise AggregationError(f"results of {', '.join(unvetted)} were not vetted")
        models = [(j.arrays or {}, _samples(j)) for j in results]
        combined = aggregate(spec.aggregate, models, spec.trim)
        weights = dump_npz(next_global(db, spec, run_id, rnd, sent, combined))
    except (AggregationError, ValueError, MemoryError) as exc:
        reason = f"aggregation failed: {exc}"
        wall = time.monotonic() - started
        db.put_round(
            run_id, rnd, state="failed", closed_at=now_ms(), reason=reason, wall_s=wall, **common
        )
        log.warning("run %s round %d failed: %s", run_id, rnd, reason)
        return RoundClosed(run_id, rnd, "failed", len(results), reason=reason, wall_s=wall,
                           job_time_max_s=job_time_max, evaluation=evaluation)  # fmt: skip
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
        job_time_max, evaluation,
    )  # fmt: skip


def _sha256(raw: bytes) -> str:
    import hashlib

    return hashlib.sha256(raw).hexdigest()


def next_global(
    db: TrainDb,
    spec: TrainSpec,
    run_id: str,
    rnd: int,
    current: bytes | None,
    combined: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The global model after round ``rnd`` from its aggregate ``combined``.

    FedAvg and FedProx: the aggregate. FedAdam/FedYogi: a server step from ``current``
    (the model the round's sites started from) with the moments stored after round
    ``rnd - 1``, whose new state is stored for round ``rnd`` before the round is marked
    aggregated (a resumed run continues with it). Round 1 (no ``current``): the aggregate.
    """
    from coordinator.training.aggregate import load_npz
    from coordinator.training.strategy import ADAPTIVE, ServerOpt

    if spec.strategy not in ADAPTIVE or current is None:
        return combined
    kind = spec.strategy  # fedadam | fedyogi
    raw = db.strategy_state(run_id, rnd - 1)
    if raw is not None:
        opt = ServerOpt.load(raw, kind)  # type: ignore[arg-type]
    else:
        opt = ServerOpt(kind, spec.server_lr, spec.beta1, spec.beta2, spec.tau)  # type: ignore[arg-type]
    out = opt.step(load_npz(current), combined)
    db.put_strategy_state(run_id, rnd, kind, opt.dump())
    return out


def _site_eval(job: JobTrack, expected: str, spec: TrainSpec, db: TrainDb) -> SiteEval:
    if job.result is None:
        state = job.row()["state"]
        why = job.row()["reason"]
        return SiteEval(
            job.site, job.job_id, error=f"no result ({state}{': ' + why if why else ''})"[:200]
        )
    rows_max = registered_rows(db.conn, job.site, spec.task)
    return vet_evaluation(job, expected, spec, rows_max)


def federated_summary(evals: Iterable[SiteEval], asked: int | None = None) -> list[dict[str, Any]]:
    """Per metric: the value weighted by held-out samples over the sites that computed it,
    with its coverage (``sites`` of ``of_sites``) and every other site's reason.

    Weighted by samples when each covering site said how many it scored (``weighting``
    "samples"), else the plain mean over those sites ("sites"). ``of_sites`` is ``asked``
    (the sites the round asked), by default the sites given.
    """
    evals = list(evals)
    of = len(evals) if asked is None else asked
    names = sorted({k for e in evals for k in (*e.values, *e.missing)})
    out = []
    for name in names:
        covering = [(e.values[name], e.n_samples) for e in evals if name in e.values]
        missing = {}
        for e in evals:
            if name in e.values:
                continue
            missing[e.site] = e.error or e.missing.get(name) or "not reported by the site"
        value, n_total, weighting = None, None, None
        if covering:
            counts = [n for _, n in covering]
            if all(n is not None for n in counts) and sum(n or 0 for n in counts) > 0:
                n_total = sum(n or 0 for n in counts)
                value = sum(v * (n or 0) for v, n in covering) / n_total
                weighting = "samples"
            else:
                value = sum(v for v, _ in covering) / len(covering)
                weighting = "sites"
        out.append(
            {
                "metric": name, "value": value, "sites": len(covering), "of_sites": of,
                "n_samples": n_total, "weighting": weighting, "missing": missing,
            }
        )  # fmt: skip
    return out


def record_evaluation(
    db: TrainDb,
    spec: TrainSpec,
    run_id: str,
    rnd: int,
    model_id: str,
    expected_sha256: str,
    jobs: Mapping[str, JobTrack],
    final: bool = False,
) -> dict[str, Any]:
    """Vet, store and summarise the sites' evaluations of ``model_id`` made by the jobs of
    round ``rnd``; returns the summary the round's event carries::

        {"model_id", "round", "final", "asked",
         "metrics": {name: {"value", "sites", "of_sites", "n_samples", "weighting",
                            "missing": {site: reason}}},
         "sites": {site: {"n_samples", "values", "missing", "error"}}}
    """
    evals = []
    for job in jobs.values():
        job.evaluation = _site_eval(job, expected_sha256, spec, db)
        evals.append(job.evaluation)
    summary = federated_summary(evals)
    db.put_evaluation(
        run_id, model_id, rnd,
        [row for e in evals for row in e.rows()],
        summary, final=final,
    )  # fmt: skip
    for row in summary:
        log.info(
            "run %s: %s %s = %s over %d of %d sites", run_id, model_id, row["metric"],
            row["value"], row["sites"], row["of_sites"],
        )  # fmt: skip
    return {
        "model_id": model_id,
        "round": rnd,
        "final": final,
        "asked": len(evals),
        "metrics": {row["metric"]: {k: v for k, v in row.items() if k != "metric"}
                    for row in summary},
        "sites": {
            e.site: {"n_samples": e.n_samples, "values": e.values, "missing": e.missing,
                     "error": e.error}
            for e in sorted(evals, key=lambda e: e.site)
        },
    }  # fmt: skip
