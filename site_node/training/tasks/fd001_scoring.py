"""The score of a ``cmapss-rul`` model on the standard NASA C-MAPSS FD001 test set.

The last 30-cycle window of each of the 100 test engines (``test_FD001.txt``) against
their true RUL (``RUL_FD001.txt``, capped at 125), scaled with the task's own constants and
run through the task's own model: the test-set score is computed where the model code
lives. ``fedmq-site task evaluate`` prints it for a model file, and ``fedmq demo`` shows it
per round. Data: Saxena et al., PHM08 (NASA); shipped in ``site_node/data/cmapss_fd001/``.

This module is not part of the task's code hash (it never runs on a site's private data).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_DATA_DIR", "fd001_test_metrics", "fd001_test_set", "score"]

# The copy shipped in the package (package data; attribution in its README.md).
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "cmapss_fd001"


def fd001_test_set(data_dir: Path | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(last scaled window of each test engine, true RUL capped at 125), in unit order.

    An engine shorter than the window is padded with its first cycle.
    """
    from site_node.training.tasks.cmapss_rul import (
        COLUMNS,
        RUL_CAP,
        SENSOR_MAX,
        SENSOR_MIN,
        SENSORS,
        WINDOW,
    )

    folder = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    rows = np.loadtxt(folder / "test_FD001.txt", dtype=np.float64)
    truth = np.minimum(np.loadtxt(folder / "RUL_FD001.txt", dtype=np.float64).ravel(), RUL_CAP)
    columns = [COLUMNS.index(name) for name in SENSORS]
    xs = []
    for unit in np.unique(rows[:, 0]):
        run = rows[rows[:, 0] == unit]
        run = run[np.argsort(run[:, 1])][:, columns]
        if len(run) < WINDOW:
            run = np.vstack([np.repeat(run[:1], WINDOW - len(run), axis=0), run])
        xs.append((run[-WINDOW:] - SENSOR_MIN) / (SENSOR_MAX - SENSOR_MIN))
    if len(xs) != len(truth):
        raise ValueError(f"{len(xs)} test engines but {len(truth)} RUL values")
    return np.stack(xs).astype(np.float32), truth


# Parsed test sets by (folder, file mtimes): parsing costs 0.25-0.5 s on a loaded machine,
# and a process that scores several models (a benchmark) reads the same files each time.
_SETS: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}
_LOCK = threading.Lock()


def _cached_test_set(data_dir: Path | str | None) -> tuple[np.ndarray, np.ndarray]:
    folder = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    key = (
        str(folder.resolve()),
        (folder / "test_FD001.txt").stat().st_mtime_ns,
        (folder / "RUL_FD001.txt").stat().st_mtime_ns,
    )
    with _LOCK:
        hit = _SETS.get(key)
    if hit is None:
        hit = fd001_test_set(folder)
        with _LOCK:
            _SETS.clear()  # keep only the latest data set
            _SETS[key] = hit
    return hit


def fd001_test_metrics(weights: bytes, data_dir: Path | str | None = None) -> dict[str, float]:
    """``rmse`` (cycles) and ``n`` (engines) of npz ``weights`` on the FD001 test set.

    Raises:
        OSError: the test files are missing or unreadable.
        ValueError: the files disagree, or the weights do not fit the task's model.
    """
    import torch

    from site_node.training.tasks.cmapss_rul import RulCnn
    from site_node.training.tasks.common import load_weights

    x, truth = _cached_test_set(data_dir)
    model = RulCnn()
    load_weights(model, weights)  # ValueError on a key, shape or dtype mismatch
    model.eval()
    # One thread: 100 windows take milliseconds, while torch's default pool (one thread per
    # core) spin-waits against a site's training on a shared machine. Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            pred = model(torch.from_numpy(x.copy())).double().numpy()
    finally:
        torch.set_num_threads(threads)
    return {"rmse": float(np.sqrt(np.mean((pred - truth) ** 2))), "n": float(len(x))}


def score(weights: bytes) -> dict[str, float]:
    """The task's test-set metrics on the shipped data (``Task.score_test_set``)."""
    return fd001_test_metrics(weights)
