"""Vetting a result before it counts towards a round: weights, metrics, sample count.

One bad site must not poison or crash a run. A result whose weights fail
:func:`coordinator.training.weights_check.check_weights` (names, shapes, dtypes against the
round's global model; bounded size; finite values), whose metrics are not finite or
whose sample count exceeds what the site registered is **excluded** from the round with
a reason (stored on the job, shown by ``fedmq jobs``/``fedmq run``); the round goes on
with the other results. In a first round there is no global model yet: the arrays most
results agree on are the reference (:func:`exclude_minority`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

from coordinator.training.events import TrainSpec
from coordinator.training.inbox import JobTrack
from coordinator.training.weights_check import ArraySpec, WeightsRejected, check_weights
from coordinator.training.weights_check import describe_mismatch as _diff

__all__ = ["exclude_minority", "vet_result"]

log = logging.getLogger(__name__)


def _exclude(job: JobTrack, reason: str) -> None:
    job.excluded, job.arrays = reason, None
    log.warning("run %s round %d: result of %s (job %s) excluded: %s",
                job.run_id, job.round, job.site, job.job_id, reason)  # fmt: skip


def vet_result(
    job: JobTrack,
    expected: Mapping[str, ArraySpec] | None,
    spec: TrainSpec,
    registered_rows: int | None,
) -> None:
    """Check a job's result once its weights are in; exclude it with a reason if bad.

    ``registered_rows``: the most rows the site registered for the task (None: unknown).
    """
    if job.vetted or job.weights is None or job.result is None:
        return
    job.vetted = True
    result = job.result
    bad = sorted(k for k, v in result.metrics.items() if not math.isfinite(v))
    if bad:
        _exclude(job, f"non-finite metrics {bad[:5]}")
        return
    n = result.n_samples
    if n <= 0:
        _exclude(job, "result reports no training samples")
        return
    if registered_rows is not None and n > registered_rows:
        _exclude(
            job,
            f"n_samples {n} exceeds the {registered_rows} rows the site registered for {spec.task}",
        )
        return
    job.samples = n
    if registered_rows is None and n > spec.max_samples:
        job.samples = spec.max_samples
        job.note = (
            f"n_samples {n} clipped to {spec.max_samples} (the site registered no dataset rows)"
        )
        log.warning("run %s round %d: %s: %s", job.run_id, job.round, job.site, job.note)
    try:
        job.signature, job.arrays = check_weights(job.weights, expected, spec.max_weights_bytes)
    except WeightsRejected as exc:
        _exclude(job, str(exc))
    except MemoryError:  # bounded above; a last line of defence all the same
        _exclude(job, "weights too large to load")


def exclude_minority(jobs: Sequence[JobTrack]) -> list[JobTrack]:
    """Exclude the vetted results whose arrays differ from those most results share.

    Ties go to the signature of the earliest result in ``jobs`` order. Returns the jobs
    it excluded.
    """
    kept = [j for j in jobs if j.ok and j.signature is not None]
    if len(kept) < 2:
        return []
    groups: dict[tuple[tuple[str, ArraySpec], ...], list[JobTrack]] = {}
    for job in kept:
        assert job.signature is not None
        groups.setdefault(tuple(sorted(job.signature.items())), []).append(job)
    if len(groups) == 1:
        return []
    ref_key = max(groups, key=lambda k: len(groups[k]))  # max keeps the first on ties
    ref = dict(ref_key)
    out = []
    for key, members in groups.items():
        if key == ref_key:
            continue
        for job in members:
            assert job.signature is not None
            _exclude(
                job,
                f"weights differ from the {len(groups[ref_key])} result(s) the round "
                f"agrees on: {_diff(job.signature, ref)}",
            )
            out.append(job)
    return out
