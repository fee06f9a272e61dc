"""The coordinator's RMSE of a ``cmapss-rul`` model on the standard FD001 test set.

Last 30-cycle window of each of the 100 test engines against ``RUL_FD001.txt`` (capped
at 125). The coordinator may not import ``site_node``, so the model and the scaling
constants are a copy of ``site_node/training/tasks/cmapss_rul.py``; ``tests/test_tasks_parity.py``
keeps the two identical. Data: NASA C-MAPSS (Saxena et al., PHM08).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.training.aggregate import load_npz

__all__ = ["DEFAULT_DATA_DIR", "build_model", "fd001_test_rmse", "fd001_test_set"]

# The copy shipped in the package (package data; attribution in its README.md).
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "cmapss_fd001"

RUL_CAP = 125.0
WINDOW = 30
# Column indexes (unit, cycle, 3 settings, s1..s21) of s2 s3 s4 s7 s8 s9 s11 s12 s13 s14 s15
# s17 s20 s21, and their min/max over train_FD001.txt: the same as the site task.
SENSOR_COLUMNS = [6, 7, 8, 11, 12, 13, 15, 16, 17, 18, 19, 21, 24, 25]
SENSOR_MIN = np.array([641.21, 1571.04, 1382.25, 549.85, 2387.9, 9021.73, 46.85, 518.69,
                       2387.88, 8099.94, 8.3249, 388.0, 38.14, 22.8942])  # fmt: skip
SENSOR_MAX = np.array([644.53, 1616.91, 1441.49, 556.06, 2388.56, 9244.59, 48.53, 523.38,
                       2388.56, 8293.72, 8.5848, 400.0, 39.43, 23.6184])  # fmt: skip


def build_model() -> Any:
    """The ``cmapss-rul`` 1D-CNN (torch imported here, only when evaluating)."""
    import torch
    from torch import nn

    class RulCnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv1d(len(SENSOR_COLUMNS), 32, 5, padding=2),
                nn.ReLU(),
                nn.Conv1d(32, 32, 5, padding=2),
                nn.ReLU(),
                nn.Conv1d(32, 32, 3, padding=1),
                nn.ReLU(),
            )
            self.head = nn.Sequential(
                nn.Flatten(), nn.Linear(32 * WINDOW, 64), nn.ReLU(), nn.Linear(64, 1)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rul = self.head(self.conv(x.transpose(1, 2))).squeeze(-1) * RUL_CAP
            return rul if self.training else rul.clamp(0.0, RUL_CAP)

    return RulCnn()


def fd001_test_set(data_dir: Path | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(last scaled window of each test engine, true RUL capped at 125), in unit order."""
    folder = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    rows = np.loadtxt(folder / "test_FD001.txt", dtype=np.float64)
    truth = np.minimum(np.loadtxt(folder / "RUL_FD001.txt", dtype=np.float64).ravel(), RUL_CAP)
    xs = []
    for unit in np.unique(rows[:, 0]):
        run = rows[rows[:, 0] == unit]
        run = run[np.argsort(run[:, 1])][:, SENSOR_COLUMNS]
        if len(run) < WINDOW:  # pad short runs with their first cycle
            run = np.vstack([np.repeat(run[:1], WINDOW - len(run), axis=0), run])
        xs.append((run[-WINDOW:] - SENSOR_MIN) / (SENSOR_MAX - SENSOR_MIN))
    if len(xs) != len(truth):
        raise ValueError(f"{len(xs)} test engines but {len(truth)} RUL values")
    return np.stack(xs).astype(np.float32), truth


# Parsed test sets by (folder, file mtimes): every round evaluates on the same files, and
# parsing them costs 0.25-0.5 s on the loaded 2-core machine.
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
            _SETS.clear()  # one data set per coordinator: keep only the latest
            _SETS[key] = hit
    return hit


def fd001_test_rmse(weights: bytes, data_dir: Path | str | None = None) -> dict[str, float]:
    """RMSE (cycles) and engine count of npz ``weights`` on the FD001 test set."""
    import torch

    x, truth = _cached_test_set(data_dir)
    model = build_model()
    state = {k: torch.from_numpy(v.copy()) for k, v in load_npz(weights).items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    # One thread: 100 windows take milliseconds, while torch's default pool (one thread per
    # core) spin-waits against the sites' training and measured 0.9-4 s per forward pass on
    # the shared 2-core machine. The process-wide setting is restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            pred = model(torch.from_numpy(x.copy())).double().numpy()
    finally:
        torch.set_num_threads(threads)
    return {"rmse": float(np.sqrt(np.mean((pred - truth) ** 2))), "n_engines": float(len(x))}
