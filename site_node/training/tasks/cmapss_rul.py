"""Task ``cmapss-rul``: remaining useful life on NASA C-MAPSS FD001 with a 1D-CNN.

RUL is capped at 125 cycles, inputs are 30-cycle windows of the 14 informative sensors,
min-max scaled with fixed constants taken from the whole FD001 training set, so every
site scales identically without seeing anyone else's data (and ``fd001_scoring.py`` scores
a model on the FD001 test set with the same model and constants). Data: Saxena et al.,
PHM08 (NASA).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from site_node.training.tasks.common import (
    BASE_DEFAULTS,
    fit,
    make_model,
    merge_hyperparams,
    scoring_model,
)
from site_node.training.tasks.common import predict as model_outputs
from site_node.training.tasks.common import save_weights as _save

__all__ = [
    "COLUMNS",
    "DEFAULTS",
    "METRICS",
    "NAME",
    "OUTPUTS",
    "PRIMARY_METRIC",
    "RUL_CAP",
    "SENSORS",
    "VERSION",
    "WINDOW",
    "CmapssData",
    "RulCnn",
    "evaluate",
    "initial_weights",
    "load_dataset",
    "predict",
    "read_table",
    "train",
    "windows",
]

NAME = "cmapss-rul"
VERSION = "1.0"
# Every metric evaluate reports -> which is better; the one learning curves show.
METRICS = {"loss": "min", "rmse": "min", "mae": "min"}
PRIMARY_METRIC = "rmse"
# What predict returns -> unit.
OUTPUTS = {"rul": "cycles"}

RUL_CAP = 125.0
WINDOW = 30
COLUMNS = ["unit", "cycle", "op1", "op2", "op3", *(f"s{i}" for i in range(1, 22))]
# s1, s5, s6, s10, s16, s18, s19 are (near) constant in FD001 and carry no signal.
SENSORS = ["s2", "s3", "s4", "s7", "s8", "s9", "s11", "s12", "s13", "s14", "s15", "s17",
           "s20", "s21"]  # fmt: skip
# min and max of each sensor over all of train_FD001.txt (fixed so all parties agree).
SENSOR_MIN = np.array([641.21, 1571.04, 1382.25, 549.85, 2387.9, 9021.73, 46.85, 518.69,
                       2387.88, 8099.94, 8.3249, 388.0, 38.14, 22.8942])  # fmt: skip
SENSOR_MAX = np.array([644.53, 1616.91, 1441.49, 556.06, 2388.56, 9244.59, 48.53, 523.38,
                       2388.56, 8293.72, 8.5848, 400.0, 39.43, 23.6184])  # fmt: skip

# Tuned with tests/bench/bench_quality.py (4 sites x 25 engines, 20 rounds): small batches
# and an lr decaying 5% per epoch over the run (the coordinator passes the round) beat
# dropout, weight decay, wider kernels and [-1, 1] scaling there.
DEFAULTS: dict[str, Any] = {
    **BASE_DEFAULTS,
    "epochs": 2,
    "lr": 1e-3,
    "batch_size": 64,
    "lr_decay": 0.95,
}


class RulCnn(nn.Module):
    """1D-CNN over (batch, WINDOW, sensors) windows; outputs RUL in cycles (clipped in eval)."""

    def __init__(self, n_features: int = len(SENSORS), window: int = WINDOW) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(n_features, 32, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(32, 32, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(32, 32, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * window, 64), nn.ReLU(), nn.Linear(64, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rul = self.head(self.conv(x.transpose(1, 2))).squeeze(-1) * RUL_CAP
        # Labels lie in [0, RUL_CAP]: clip predictions to that range when evaluating, but
        # not in training, where a clipped over-prediction would get no gradient.
        return rul if self.training else rul.clamp(0.0, RUL_CAP)


@dataclass(frozen=True)
class CmapssData:
    """Windows and capped RUL targets of a site's training and validation engines."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    train_units: tuple[int, ...]
    val_units: tuple[int, ...]


def read_table(paths: Any, params: Mapping[str, Any]) -> Any:
    """Rows of a C-MAPSS file as a DataFrame, only ``params["units"]`` if given.

    A CSV with a header line, such as a site's history export of a ``preset = "cmapss"``
    file device (timestamp, ts_ms, device, then the sensors), is read by column name: it
    needs unit, cycle and the model's sensors (absent operating settings stay empty).
    """
    import pandas as pd

    path = Path(paths[0] if isinstance(paths, list | tuple) else paths)
    with path.open(encoding="utf-8", errors="replace") as fh:
        header = fh.readline()[:1].isalpha()
    if header:
        raw = pd.read_csv(path)
        missing = [c for c in ("unit", "cycle", *SENSORS) if c not in raw.columns]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}; columns: {list(raw.columns)}")
        table = raw.reindex(columns=COLUMNS).dropna(subset=["unit", "cycle", *SENSORS])
    else:
        table = pd.DataFrame(np.loadtxt(path, dtype=np.float64), columns=COLUMNS)
    units = params.get("units")
    if units is not None:
        table = table[table["unit"].isin([int(u) for u in units])]
    return table.reset_index(drop=True)


def windows(table: Any, last_only: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(windows, capped RUL at each window's end, unit of each window) of a run table.

    RUL here assumes each engine runs to failure (training data); for test engines use
    ``last_only`` and take the true RUL from RUL_FD001.txt instead.
    """
    xs, ys, us = [], [], []
    for unit, rows in table.groupby("unit", sort=True):
        rows = rows.sort_values("cycle")
        feats = (rows[SENSORS].to_numpy(np.float64) - SENSOR_MIN) / (SENSOR_MAX - SENSOR_MIN)
        if len(feats) < WINDOW:
            continue
        rul = np.minimum(len(feats) - np.arange(1, len(feats) + 1), RUL_CAP)
        starts = [len(feats) - WINDOW] if last_only else range(len(feats) - WINDOW + 1)
        for s in starts:
            xs.append(feats[s : s + WINDOW])
            ys.append(rul[s + WINDOW - 1])
            us.append(int(unit))
    if not xs:
        return np.zeros((0, WINDOW, len(SENSORS)), np.float32), np.zeros(0, np.float32), np.zeros(0)
    return np.stack(xs).astype(np.float32), np.array(ys, np.float32), np.array(us)


def load_dataset(source: Any, params: Mapping[str, Any]) -> CmapssData:
    """Windows from a table (or a file path), split by engine into train and validation.

    ``params``: ``units`` (engines to keep), ``val_fraction`` (default 0.2 of the engines,
    at least one when there are two or more; 0 keeps every engine for training and leaves
    the validation split empty), ``split_seed`` (default 0).
    """
    table = source if hasattr(source, "groupby") else read_table(source, params)
    if "units" in params:
        table = table[table["unit"].isin([int(u) for u in params["units"]])]
    units = sorted(int(u) for u in table["unit"].unique())
    rng = np.random.default_rng(int(params.get("split_seed", 0)))
    fraction = float(params.get("val_fraction", 0.2))
    n_val = round(len(units) * fraction)
    n_val = min(max(n_val, 1), len(units) - 1) if len(units) >= 2 and fraction > 0 else 0
    val_units = sorted(int(u) for u in rng.permutation(units)[:n_val])
    train_units = [u for u in units if u not in val_units]
    x_tr, y_tr, _ = windows(table[table["unit"].isin(train_units)])
    x_va, y_va, _ = windows(table[table["unit"].isin(val_units)])
    return CmapssData(x_tr, y_tr, x_va, y_va, tuple(train_units), tuple(val_units))


def _loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Scaled to [0, 1] so the loss is O(1) whatever the cap.
    return torch.mean(((pred - target) / RUL_CAP) ** 2)


def _model(weights: bytes | None, seed: int = 0) -> RulCnn:
    return make_model(RulCnn, weights, seed)  # type: ignore[no-any-return]


def initial_weights(seed: int = 0) -> bytes:
    return _save(_model(None, seed))


def _metrics(model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {}
    pred = model_outputs(model, x)
    err: np.ndarray = pred - y.astype(np.float64)
    return {"loss": float(np.mean((err / RUL_CAP) ** 2)), "rmse": float(np.sqrt(np.mean(err**2)))}


def train(
    global_weights: bytes | None,
    data: CmapssData,
    hyperparams: Mapping[str, Any],
    progress: Callable[[float], None] | None = None,
) -> tuple[bytes, int, dict[str, float]]:
    """Local training from the global model, then metrics on the validation engines."""
    hp = merge_hyperparams(DEFAULTS, hyperparams)
    if len(data.x_train) == 0:
        raise ValueError("no training windows (engines shorter than the window?)")
    model = _model(global_weights, hp["seed"])
    train_loss = fit(model, _loss, data.x_train, data.y_train, hp, progress)
    metrics = {"train_loss": train_loss, **_metrics(model, data.x_val, data.y_val)}
    return _save(model), len(data.x_train), metrics


def evaluate(weights: bytes, data: CmapssData) -> dict[str, float | str]:
    """Loss, RMSE and MAE (cycles) of ``weights`` on the validation engines.

    Without validation windows (one engine, or ``val_fraction`` 0) each metric is a string
    saying why (task contract), never left out.
    """
    if len(data.x_val) == 0:
        why = f"no validation windows ({len(data.val_units)} validation engines)"
        return {"loss": why, "rmse": why, "mae": why}
    pred = model_outputs(_model(weights), data.x_val)
    err: np.ndarray = pred - data.y_val.astype(np.float64)
    return {
        "loss": float(np.mean((err / RUL_CAP) ** 2)),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
    }


def predict(
    weights: bytes, window: list[dict[str, float]], params: Mapping[str, Any]
) -> dict[str, float]:
    """RUL in cycles after the last of an engine's live samples (oldest first).

    Uses the last ``WINDOW`` samples, each ``{"s2": ..., "s3": ...}`` (the C-MAPSS sensor
    names a replayed device publishes; other keys are ignored), scaled with the same fixed
    constants as training. Raises ValueError for a short window or a missing sensor.
    """
    if len(window) < WINDOW:
        raise ValueError(f"cmapss-rul needs the last {WINDOW} samples, got {len(window)}")
    rows = window[-WINDOW:]
    missing = sorted({s for s in SENSORS for r in rows if s not in r})
    if missing:
        raise ValueError(f"sensor(s) {missing} missing from the window (needs {SENSORS})")
    raw = np.array([[float(r[s]) for s in SENSORS] for r in rows], np.float64)
    x = ((raw - SENSOR_MIN) / (SENSOR_MAX - SENSOR_MIN)).astype(np.float32)[None]
    return {"rul": float(model_outputs(scoring_model(_model, weights), x)[0])}
