"""Vetting a result before it counts towards a round: weights, metrics, sample count.

One bad site must not poison or crash a run. A result whose weights fail
:func:`coordinator.training.weights_check.check_weights` (names, shapes, dtypes against the
round's global model; bounded size; finite values), whose metrics are not finite or
whose sample count exceeds what the site registered is **excluded** from the round with
a reason (stored on the job, shown by ``fedmq jobs``/``fedmq run``); the round goes on
with the other results. In a first round there is no global model yet: the arrays most
results agree on are the reference (:func:`exclude_minority`).

A result's federated evaluation (the site's scores of the global model it was sent) is
vetted on its own (:func:`vet_evaluation`): its sample count is capped like the training
count, and it is bounded in size and values; excluding it never excludes the training
result, nor the other way round.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coordinator.training.events import TrainSpec
from coordinator.training.inbox import JobTrack
from coordinator.training.weights_check import ArraySpec, WeightsRejected, check_weights
from coordinator.training.weights_check import describe_mismatch as _diff

__all__ = [
    "EVAL_MAX_METRICS",
    "EVAL_REASON_MAX",
    "SiteEval",
    "exclude_minority",
    "vet_evaluation",
    "vet_result",
]

EVAL_MAX_METRICS = 32
"""A site's evaluation with more metrics (values and missing) than this is excluded."""
EVAL_REASON_MAX = 200
"""Reasons a site gives for a missing metric are cut to this many characters."""
_METRIC_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
# Metrics whose range is known whatever the task: a value outside it is a site's error
# (or a lie) and is stored as missing instead of moving the weighted mean.
_UNIT_RANGE = frozenset({"auc", "roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy"})
_NON_NEGATIVE = frozenset({"rmse", "mae", "mse", "loss"})
_ABS_MAX = 1e12


@dataclass
class SiteEval:
    """What one site's job says about the global model it was sent, after vetting.

    ``values``/``missing`` (metric -> number / reason); ``error``: why the site's whole
    evaluation is missing (it reported none, it failed, or it was excluded); ``n_samples``:
    the held-out samples it scored, capped like a training result (None: not reported).
    """

    site: str
    job_id: str
    values: dict[str, float] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    n_samples: int | None = None
    error: str | None = None

    def rows(self) -> list[dict[str, Any]]:
        """Rows for ``TrainDb.put_evaluation`` (metric ``*`` for a whole-site reason)."""
        base = {"site": self.site, "job_id": self.job_id, "n_samples": self.n_samples}
        if self.error is not None:
            return [{**base, "metric": "*", "value": None, "missing": self.error}]
        out = [{**base, "metric": k, "value": v, "missing": None} for k, v in self.values.items()]
        out += [{**base, "metric": k, "value": None, "missing": r} for k, r in self.missing.items()]
        return sorted(out, key=lambda r: r["metric"])


def vet_evaluation(
    job: JobTrack,
    expected_sha256: str | None,
    spec: TrainSpec,
    registered_rows: int | None,
) -> SiteEval:
    """The site's evaluation of the global model its job was sent (``expected_sha256``),
    bounded so that one bad site cannot poison the federated numbers.

    Excluded as a whole (``error``): an evaluation of another model, more than
    :data:`EVAL_MAX_METRICS` metrics, a malformed metric name, more held-out samples than
    the site registered rows, or values without samples. Per metric: a non-finite value, or
    one outside the known range of a well-known metric (AUC, F1, ... in [0, 1]; RMSE, MAE,
    loss >= 0; any |value| <= 1e12), is stored as missing with the reason. Reasons are cut
    to :data:`EVAL_REASON_MAX` characters.
    """
    out = SiteEval(job.site, job.job_id)
    r = job.result
    if r is None:
        out.error = f"no result ({job.row()['state']})"
        return out
    if r.global_sha256 is None and r.global_error is None:
        out.error = "the site reported no evaluation (it may predate federated evaluation)"
        return out
    if r.global_sha256 != expected_sha256:
        got = (r.global_sha256 or "none")[:12]
        out.error = (
            f"excluded: evaluated another model (sha256 {got}, sent {str(expected_sha256)[:12]})"
        )
        return out
    if r.global_error is not None:
        out.error = f"evaluation failed at the site: {r.global_error[:EVAL_REASON_MAX]}"
        return out
    names = set(r.global_metrics) | set(r.global_missing)
    if len(names) > EVAL_MAX_METRICS:
        out.error = f"excluded: {len(names)} metrics (at most {EVAL_MAX_METRICS})"
        return out
    bad = sorted(n for n in names if not _METRIC_NAME.fullmatch(n))
    if bad:
        out.error = f"excluded: malformed metric name {bad[0][:40]!r}"
        return out
    n = r.global_n_samples
    if n is not None:
        if registered_rows is not None and n > registered_rows:
            out.error = (
                f"excluded: n_samples {n} exceeds the {registered_rows} rows the site "
                f"registered for {spec.task}"
            )
            return out
        if n == 0 and r.global_metrics:
            out.error = "excluded: metrics reported on 0 held-out samples"
            return out
        n = min(n, spec.max_samples)
    out.n_samples = n
    for name, reason in r.global_missing.items():
        out.missing[name] = reason[:EVAL_REASON_MAX] or "no reason given"
    for name, value in r.global_metrics.items():
        why = _out_of_range(name, value)
        if why is None:
            out.values[name] = float(value)
            out.missing.pop(name, None)
        else:
            out.missing[name] = why
    return out


def _out_of_range(name: str, value: float) -> str | None:
    if not math.isfinite(value):
        return f"excluded: non-finite value {value}"
    if abs(value) > _ABS_MAX:
        return f"excluded: value {value:.3g} out of range"
    if name.lower() in _UNIT_RANGE and not 0 <= value <= 1:
        return f"excluded: value {value:.6g} outside [0, 1]"
    if name.lower() in _NON_NEGATIVE and value < 0:
        return f"excluded: negative value {value:.6g}"
    return None


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
