"""What runs inside a job's syft code request, on the site's private data.

Every job's syft function is two lines that import :func:`execute_job` from here and call
it with the job's spec (or, for a pre-approved slot, :func:`execute_slot` with the slot's
folder, where the site writes the spec of the job that takes the slot); keeping the body
in one small module makes what an approving admin actually runs easy to read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["PROGRESS", "execute_job", "execute_slot", "mock_like"]

log = logging.getLogger(__name__)

# job id -> progress callback, set by Datasite.run for the job it is running.
PROGRESS: dict[str, Callable[[float], None]] = {}


def execute_job(spec_json: str, data: Any) -> dict[str, Any]:
    """Body of every job's syft function: runs the task on the private asset's data.

    Failures come back as ``{"error": ...}``: syft hides exceptions from the data
    scientist, and the site must report why a job failed.
    """
    try:
        return _execute_job(spec_json, data)
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
    table = data.syft_action_data if hasattr(data, "syft_action_data") else data
    dataset = task.load_dataset(table, spec["load_params"])
    weights_out, n, metrics = task.train(
        weights, dataset, spec["hyperparams"], PROGRESS.get(spec["job_id"])
    )
    return {"weights": weights_out, "n_samples": n, "metrics": metrics}


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
