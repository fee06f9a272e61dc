"""What runs inside a job's syft code request, on the site's private data.

Every job's syft function is two lines that import :func:`execute_job` from here and call
it with the job's spec (or, for a pre-approved slot, :func:`execute_slot` with the slot's
folder, where the site writes the spec of the job that takes the slot); keeping the body
in one small module makes what an approving admin actually runs easy to read.

Federated evaluation: a job that receives a global model first scores it with the task's
``evaluate`` on the site's held-out split, before local training; an evaluate-only job
(hyperparameter ``evaluate_only``, set from the signed command) only scores it. The scores
travel back inside the result's ``metrics`` under :data:`EVAL_KEY` (the runner passes
``metrics`` through unchanged) and the reporter turns them into the result's ``global_*``
fields (:func:`eval_fields`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from site_node.history.export import HISTORY_EXPORT_PARAM

__all__ = [
    "EVAL_KEY",
    "PROGRESS",
    "SYFT_LOCK",
    "eval_fields",
    "execute_job",
    "execute_slot",
    "mock_like",
]

log = logging.getLogger(__name__)

# job id -> progress callback, set by Datasite.run for the job it is running.
PROGRESS: dict[str, Callable[[float], None]] = {}


class _SyftLock:
    """Held by the training worker around every syft call (one thread in syft at a time);
    a job's own code (the task's load, evaluate and train) runs with it released, so with
    ``[training] max_concurrent_jobs`` > 1 several jobs train at once while syft's own
    bookkeeping (requests, approvals, results) stays serial."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __enter__(self) -> _SyftLock:
        self._lock.acquire()
        self._owner = threading.get_ident()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._owner = None
        self._lock.release()

    @contextmanager
    def released(self) -> Iterator[None]:
        """Release the lock for the body if this thread holds it (else: a no-op)."""
        me = threading.get_ident()
        if self._owner != me:
            yield
            return
        self._owner = None
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()
            self._owner = me


SYFT_LOCK = _SyftLock()

EVAL_KEY = "__global_eval__"
"""Key of the global model's evaluation inside a job's returned ``metrics``."""

_EVAL_MAX = 64  # metrics (values and reasons) kept per evaluation; schemas.EVAL_MAX_METRICS
_NAME_MAX = 128
_REASON_MAX = 300


def execute_job(spec_json: str, data: Any) -> dict[str, Any]:
    """Body of every job's syft function: runs the task on the private asset's data.

    Failures come back as ``{"error": ...}``: syft hides exceptions from the data
    scientist, and the site must report why a job failed.
    """
    try:
        # The asset's data may load from syft's blob store: under the lock. The task's
        # own code then runs without it (jobs train concurrently, see SYFT_LOCK).
        table = data.syft_action_data if hasattr(data, "syft_action_data") else data
        with SYFT_LOCK.released():
            return _execute_job(spec_json, table)
    except Exception as exc:
        # syft runs the body on the mock asset as well (the mock half of its result twin),
        # where random rows may legitimately fail; the caller reports real failures.
        log.warning("job body failed in the datasite: %s: %s", type(exc).__name__, exc)
        log.debug("job body traceback", exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}"[:400]}


def execute_slot(slot_dir: str, data: Any) -> dict[str, Any]:
    """Body of a pre-approved slot's syft function: the job bound to the slot runs.

    The site binds a job by writing its spec to ``<slot_dir>/spec.json`` (only after the
    job passed the site's checks); an unbound slot runs nothing.
    """
    spec = Path(slot_dir) / "spec.json"
    if not spec.is_file():
        return {"error": f"slot {Path(slot_dir).name} has no job bound to it"}
    return execute_job(spec.read_text(), data)


def _execute_job(spec_json: str, data: Any) -> dict[str, Any]:
    from site_node.training.tasks import get_task

    spec = json.loads(spec_json)
    task = get_task(spec["task"], tasks_dir=spec.get("tasks_dir"))
    if task.code_hash != spec["code_hash"]:
        raise RuntimeError(f"task {spec['task']} code changed since the job was submitted")
    weights = None
    if spec["weights_file"]:
        weights = Path(spec["weights_file"]).read_bytes()
        if hashlib.sha256(weights).hexdigest() != spec["weights_sha256"]:
            raise RuntimeError("global weights file does not match the submitted sha256")
    hyperparams = dict(spec["hyperparams"])
    evaluate_only = bool(hyperparams.pop("evaluate_only", False))
    if evaluate_only and weights is None:
        raise RuntimeError("an evaluate-only job needs the global model's weights")
    table = data.syft_action_data if hasattr(data, "syft_action_data") else data
    load_params = dict(spec["load_params"])
    export = load_params.pop(HISTORY_EXPORT_PARAM, None)
    if export is not None:
        # A history dataset: the rows the site exported for this job, fresher than the
        # asset hosted when the dataset was first seen (site_node/training/history_dataset.py).
        table = task.read_table([export], load_params)
    dataset = task.load_dataset(table, load_params)
    evaluation = None if weights is None else _evaluate(task, weights, dataset)
    if evaluate_only:
        assert evaluation is not None
        return {"weights": b"", "n_samples": 0, "metrics": {EVAL_KEY: evaluation}}
    weights_out, n, metrics = task.train(
        weights, dataset, hyperparams, PROGRESS.get(spec["job_id"])
    )
    scores: dict[str, Any] = dict(metrics)
    if evaluation is not None:
        scores[EVAL_KEY] = evaluation
    return {"weights": weights_out, "n_samples": n, "metrics": scores}


def _evaluate(task: Any, weights: bytes, dataset: Any) -> dict[str, Any]:
    """The global model's scores on the held-out split, as :func:`eval_fields` reads them.

    A failing ``evaluate`` does not fail the job (its training still counts): the error
    is reported instead of the scores.
    """
    out: dict[str, Any] = {"sha256": hashlib.sha256(weights).hexdigest()}
    out["n_samples"] = _held_out_size(dataset)
    try:
        scores = task.evaluate(weights, dataset)
    except Exception as exc:
        log.warning("evaluating the global model failed: %s: %s", type(exc).__name__, exc)
        out["error"] = f"evaluate failed: {type(exc).__name__}: {exc}"[:_REASON_MAX]
        return out
    if not isinstance(scores, Mapping):
        out["error"] = f"evaluate returned {type(scores).__name__}, not a mapping"
        return out
    out["metrics"], out["missing"] = _split_scores(scores)
    return out


def _held_out_size(dataset: Any) -> int | None:
    """How many held-out samples ``evaluate`` scores: the dataset's ``n_val`` if it says,
    else the length of its ``y_val`` or ``x_val`` (None when it has neither)."""
    n = getattr(dataset, "n_val", None)
    if n is None:
        for name in ("y_val", "x_val"):
            part = getattr(dataset, name, None)
            if part is not None and hasattr(part, "__len__"):
                n = len(part)
                break
    try:
        return None if n is None else max(int(n), 0)
    except (TypeError, ValueError):
        return None


def _split_scores(scores: Mapping[Any, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """Numbers and reasons, bounded; a non-finite or non-numeric value becomes a reason."""
    values: dict[str, float] = {}
    missing: dict[str, str] = {}
    for key in sorted(scores, key=str)[:_EVAL_MAX]:
        name, value = str(key)[:_NAME_MAX], scores[key]
        if not name:
            continue
        if isinstance(value, str):
            missing[name] = value[:_REASON_MAX] or "no reason given"
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            missing[name] = f"not a number ({type(value).__name__})"
            continue
        if math.isfinite(number):
            values[name] = number
        else:
            missing[name] = f"not a finite number ({number})"
    return values, missing


def eval_fields(evaluation: Any) -> dict[str, Any]:
    """The ``global_*`` fields of a JobResult from a job's :data:`EVAL_KEY` entry (nothing
    if it evaluated nothing); defensive, as the entry crossed the datasite."""
    if not isinstance(evaluation, Mapping) or not isinstance(evaluation.get("sha256"), str):
        return {}
    out: dict[str, Any] = {"global_sha256": evaluation["sha256"]}
    n = evaluation.get("n_samples")
    if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
        out["global_n_samples"] = n
    if evaluation.get("error"):
        out["global_error"] = str(evaluation["error"])[:500]
        return out
    metrics = evaluation.get("metrics")
    missing = evaluation.get("missing")
    scores: dict[Any, Any] = {}
    scores.update(missing if isinstance(missing, Mapping) else {})
    scores.update(metrics if isinstance(metrics, Mapping) else {})
    out["global_metrics"], out["global_missing"] = _split_scores(scores)
    return out


def mock_like(table: Any) -> Any:
    """Same columns, dtypes and row count; values drawn uniformly within each column's range
    (categories sampled from the column's own), so no private row is copied."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    cols = {}
    for name in table.columns:
        col = table[name]
        if col.dtype.kind in "biuf" and len(col):
            lo, hi = float(col.min()), float(col.max())
            values = rng.uniform(lo, hi, len(col))
            cols[name] = (np.rint(values) if col.dtype.kind in "biu" else values).astype(col.dtype)
        else:
            cats = col.unique() if len(col) else np.array([], dtype=object)
            cols[name] = rng.choice(cats, len(col)) if len(cats) else col.to_numpy()
    return pd.DataFrame(cols, columns=table.columns)
