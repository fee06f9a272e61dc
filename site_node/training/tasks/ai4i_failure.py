"""Task ``ai4i-failure``: machine-failure classifier on AI4I 2020 (Matzka 2020, CC BY 4.0).

Inputs are the machine type and the five process readings plus three physics-derived
features (power, temperature difference, tool strain). The failure-mode columns
TWF, HDF, PWF, OSF and RNF define the label, so they are dropped when the site's table is
read and never reach the datasite or the model; UDI and Product ID are identifiers, also
dropped. Loss is class-weighted binary cross-entropy (failures are 3.4% of rows).
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
    "DEFAULTS",
    "FEATURES",
    "LABEL",
    "LEAKY_COLUMNS",
    "METRICS",
    "NAME",
    "OUTPUTS",
    "PRIMARY_METRIC",
    "TABLE_COLUMNS",
    "VERSION",
    "WINDOW",
    "Ai4iData",
    "FailureMlp",
    "evaluate",
    "features",
    "initial_weights",
    "load_dataset",
    "predict",
    "read_table",
    "train",
]

NAME = "ai4i-failure"
VERSION = "1.0"
# Every metric evaluate reports -> which is better; the one learning curves show.
METRICS = {"loss": "min", "f1": "max", "auc": "max", "pr_auc": "max"}
PRIMARY_METRIC = "auc"
# What predict returns -> unit (a probability).
OUTPUTS = {"p_fail": ""}
# predict scores the latest sample alone.
WINDOW = 1

LABEL = "Machine failure"
LEAKY_COLUMNS = ("TWF", "HDF", "PWF", "OSF", "RNF", "UDI", "Product ID")
_READINGS = {  # column: (min, max) over the whole AI4I 2020 file, fixed for all parties
    "Air temperature [K]": (295.3, 304.5),
    "Process temperature [K]": (305.7, 313.8),
    "Rotational speed [rpm]": (1168.0, 2886.0),
    "Torque [Nm]": (3.8, 76.6),
    "Tool wear [min]": (0.0, 253.0),
}
TABLE_COLUMNS = ("Type", *_READINGS, LABEL)
TYPES = ("L", "M", "H")
FEATURES = (*(f"type_{t}" for t in TYPES), *_READINGS, "power", "temp_diff", "strain")

DEFAULTS: dict[str, Any] = {**BASE_DEFAULTS, "epochs": 20, "lr": 3e-3, "batch_size": 128}


class FailureMlp(nn.Module):
    """A small MLP; outputs the failure logit."""

    def __init__(self, n_features: int = len(FEATURES)) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


@dataclass(frozen=True)
class Ai4iData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def read_table(paths: Any, params: Mapping[str, Any]) -> Any:
    """The site's rows, only ``TABLE_COLUMNS`` (never the leaking failure modes).

    ``params``: ``types`` (e.g. ["L"]) and/or ``udi_range`` [first, last] select rows.
    """
    import pandas as pd

    path = Path(paths[0] if isinstance(paths, list | tuple) else paths)
    table = pd.read_csv(path, encoding="utf-8-sig")
    if "types" in params:
        table = table[table["Type"].isin(list(params["types"]))]
    if "udi_range" in params:
        first, last = (int(v) for v in params["udi_range"])
        table = table[(table["UDI"] >= first) & (table["UDI"] <= last)]
    return table[list(TABLE_COLUMNS)].reset_index(drop=True)


def features(table: Any) -> np.ndarray:
    """Scaled model inputs, built only from ``Type`` and the five readings."""
    cols = [np.asarray(table["Type"] == t, np.float64) for t in TYPES]
    raw = {name: np.asarray(table[name], np.float64) for name in _READINGS}
    cols += [(raw[n] - lo) / (hi - lo) for n, (lo, hi) in _READINGS.items()]
    omega = raw["Rotational speed [rpm]"] * 2 * np.pi / 60
    cols.append(raw["Torque [Nm]"] * omega / 10_000.0)  # power, W / 10k
    cols.append((raw["Process temperature [K]"] - raw["Air temperature [K]"] - 7.0) / 6.0)
    cols.append(raw["Tool wear [min]"] * raw["Torque [Nm]"] / 15_000.0)  # overstrain
    return np.stack(cols, axis=1).astype(np.float32)


def load_dataset(source: Any, params: Mapping[str, Any]) -> Ai4iData:
    """Features and labels, split at random into train and validation rows.

    ``params``: row selection as in ``read_table``, ``val_fraction`` (0.2), ``split_seed``.
    """
    table = source if hasattr(source, "columns") else read_table(source, params)
    x = features(table)
    y = np.asarray(table[LABEL], np.float32)
    order = np.random.default_rng(int(params.get("split_seed", 0))).permutation(len(y))
    n_val = round(len(y) * float(params.get("val_fraction", 0.2)))
    val, tr = order[:n_val], order[n_val:]
    return Ai4iData(x[tr], y[tr], x[val], y[val])


def _model(weights: bytes | None, seed: int = 0) -> FailureMlp:
    return make_model(FailureMlp, weights, seed)  # type: ignore[no-any-return]


def initial_weights(seed: int = 0) -> bytes:
    return _save(_model(None, seed))


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by ranks (Mann-Whitney U), ties averaged; nan with a single class."""
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _metrics(model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {}
    logits = model_outputs(model, x)
    yd = y.astype(np.float64)
    prob = 1 / (1 + np.exp(-logits))
    eps = 1e-7
    loss = -np.mean(yd * np.log(prob + eps) + (1 - yd) * np.log(1 - prob + eps))
    hit = prob >= 0.5
    tp, fp, fn = (hit & (yd == 1)).sum(), (hit & (yd == 0)).sum(), (~hit & (yd == 1)).sum()
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"loss": float(loss), "f1": float(f1), "auc": _auc(yd, logits)}


def train(
    global_weights: bytes | None,
    data: Ai4iData,
    hyperparams: Mapping[str, Any],
    progress: Callable[[float], None] | None = None,
) -> tuple[bytes, int, dict[str, float]]:
    """Class-weighted local training, then loss/F1/AUC on the validation rows."""
    hp = merge_hyperparams(DEFAULTS, hyperparams)
    if len(data.x_train) == 0:
        raise ValueError("no training rows")
    pos = float(data.y_train.sum())
    weight = torch.tensor((len(data.y_train) - pos) / max(pos, 1.0))
    bce = nn.BCEWithLogitsLoss(pos_weight=weight)
    model = _model(global_weights, hp["seed"])
    train_loss = fit(model, bce, data.x_train, data.y_train, hp, progress)
    metrics = {"train_loss": train_loss, **_metrics(model, data.x_val, data.y_val)}
    return _save(model), len(data.x_train), metrics


def _average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """PR AUC as average precision: the mean precision at the rank of each positive."""
    order = np.argsort(-score, kind="mergesort")
    hits = y[order] == 1
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def evaluate(weights: bytes, data: Ai4iData) -> dict[str, float | str]:
    """Loss, F1 (threshold 0.5), ROC AUC (``auc``) and PR AUC on the validation rows.

    A metric that cannot be computed there is a string saying why (task contract), e.g.
    ROC AUC of a split with one class only; never NaN and never left out.
    """
    n = len(data.x_val)
    if n == 0:
        return {k: "empty validation split" for k in ("loss", "f1", "auc", "pr_auc")}
    logits = model_outputs(_model(weights), data.x_val)
    y = data.y_val.astype(np.float64)
    prob = 1 / (1 + np.exp(-logits))
    eps = 1e-7
    out: dict[str, float | str] = {
        "loss": float(-np.mean(y * np.log(prob + eps) + (1 - y) * np.log(1 - prob + eps)))
    }
    pos = int(y.sum())
    hit = prob >= 0.5
    tp, fp, fn = (hit & (y == 1)).sum(), (hit & (y == 0)).sum(), (~hit & (y == 1)).sum()
    if tp + fp + fn:
        out["f1"] = float(2 * tp / (2 * tp + fp + fn))
    else:
        out["f1"] = f"no positives in the validation split and none predicted (0 of {n})"
    if pos in (0, n):
        out["auc"] = f"one class only in the validation split ({pos} positives of {n})"
    else:
        out["auc"] = _auc(y, logits)
    if pos == 0:
        out["pr_auc"] = f"no positives in the validation split (0 of {n})"
    else:
        out["pr_auc"] = _average_precision(y, logits)
    return out


def predict(
    weights: bytes, window: list[dict[str, float]], params: Mapping[str, Any]
) -> dict[str, float]:
    """Probability of a machine failure at the latest of a machine's live samples.

    Each sample maps the five AI4I reading names (``"Air temperature [K]"``, ...) to
    values; ``params["type"]`` is the machine's product quality, L, M or H (not a
    reading). Raises ValueError for an empty window, a missing reading or a bad type.
    """
    if len(window) < WINDOW:
        raise ValueError("ai4i-failure needs at least one sample")
    kind = params.get("type")
    if kind not in TYPES:
        raise ValueError(f"params['type'] must be the machine type, one of {TYPES}, not {kind!r}")
    last = window[-1]
    missing = [name for name in _READINGS if name not in last]
    if missing:
        raise ValueError(f"reading(s) {missing} missing from the sample")
    import pandas as pd

    row = pd.DataFrame([{"Type": kind, **{n: float(last[n]) for n in _READINGS}}])
    logit = float(model_outputs(scoring_model(_model, weights), features(row))[0])
    return {"p_fail": float(1 / (1 + np.exp(-logit)))}
