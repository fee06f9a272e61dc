"""History datasets in the datasite: a fresh export for every job, and its row count.

A dataset declared with ``history = {devices = [..], since_days = N}`` is hosted like a
file dataset, from an export of the site's history (:func:`site_node.history.export.
dataset_source`). The history grows while the site runs, so before each job the worker
exports it again (:func:`refresh_history_dataset`): the job body reads that export (its
load parameter :data:`~site_node.history.export.HISTORY_EXPORT_PARAM`) instead of the
rows hosted when the dataset was first seen, and the recorded row count is updated, so
the registration (which bounds a result's ``n_samples`` at the coordinator) says how
many rows the job trained on.
"""

from __future__ import annotations

from pathlib import Path

from site_node.history.export import HISTORY_EXPORT_PARAM, dataset_source
from site_node.training.hosted import load_registry, save_registry
from site_node.training.jobs.config import DatasetConfig

__all__ = ["refresh_history_dataset"]


def refresh_history_dataset(
    state_dir: Path, cfg: DatasetConfig, data_dir: Path, tasks_dir: Path | None = None
) -> int:
    """Export ``cfg``'s history again and record its rows (as the task reads them) in
    the datasite's dataset record under ``state_dir``; returns the row count."""
    from site_node.training.tasks import get_task

    paths, params = dataset_source(cfg.name, cfg.paths, cfg.history, cfg.params, data_dir)
    params.pop(HISTORY_EXPORT_PARAM, None)
    rows = len(get_task(cfg.task, tasks_dir).read_table(paths, params))
    registry = load_registry(state_dir)
    if cfg.name in registry:
        registry[cfg.name] = {**registry[cfg.name], "rows": rows}
        save_registry(state_dir, registry)
    return rows
