"""The training loop every task shares: seeding, AdamW and its lr schedule, FedProx.

Part of every task's code hash. Imports torch: load it only from a task module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from site_node.training.weights_io import npz_to_state_dict, state_dict_to_npz

__all__ = [
    "BASE_DEFAULTS",
    "fit",
    "load_weights",
    "make_model",
    "merge_hyperparams",
    "predict",
    "save_weights",
    "seeded",
]

BASE_DEFAULTS: dict[str, Any] = {
    "epochs": 1,
    "lr": 1e-3,
    "batch_size": 64,
    "seed": 0,
    "strategy": "fedavg",
    "mu": 0.01,
    # Decoupled (AdamW) weight decay; 0 is plain Adam.
    "weight_decay": 0.0,
    # The learning rate of epoch e of this job is lr * lr_decay ** (round * epochs + e), so
    # a coordinator passing the 0-based round number decays it over the whole run, and a
    # centralized run with round 0 follows the same schedule epoch for epoch.
    "lr_decay": 1.0,
    "round": 0,
}


def merge_hyperparams(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overridden by ``given``; raise ValueError on unknown keys or bad values."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown}; known: {sorted(defaults)}")
    hp = {**defaults, **given}
    hp["epochs"], hp["batch_size"], hp["seed"] = (
        int(hp["epochs"]),
        int(hp["batch_size"]),
        int(hp["seed"]),
    )
    hp["lr"], hp["mu"] = float(hp["lr"]), float(hp["mu"])
    hp["weight_decay"], hp["lr_decay"] = float(hp["weight_decay"]), float(hp["lr_decay"])
    hp["round"] = int(hp["round"])
    if hp["epochs"] < 1 or hp["batch_size"] < 1 or hp["lr"] <= 0 or hp["mu"] < 0:
        raise ValueError("epochs, batch_size and lr must be positive, mu non-negative")
    if hp["weight_decay"] < 0 or not 0 < hp["lr_decay"] <= 1 or hp["round"] < 0:
        raise ValueError("weight_decay must be >= 0, lr_decay in (0, 1], round >= 0")
    if hp["strategy"] not in ("fedavg", "fedprox"):
        raise ValueError(f"strategy must be fedavg or fedprox, not {hp['strategy']!r}")
    return hp


def seeded(seed: int) -> torch.Generator:
    """Seed torch's global RNG (model init, dropout); return a generator for shuffling."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def save_weights(model: nn.Module) -> bytes:
    return state_dict_to_npz(model.state_dict())


def load_weights(model: nn.Module, raw: bytes) -> None:
    """Load npz weights; key, shape or dtype mismatches raise ValueError."""
    state = npz_to_state_dict(raw)
    own = model.state_dict()
    if set(state) != set(own):
        raise ValueError(f"weights keys differ from the model: {sorted(set(state) ^ set(own))}")
    for key, value in state.items():
        if value.shape != own[key].shape or value.dtype != own[key].dtype:
            raise ValueError(
                f"weights {key!r}: {tuple(value.shape)} {value.dtype} expected "
                f"{tuple(own[key].shape)} {own[key].dtype}"
            )
    model.load_state_dict(state)


def make_model(factory: Callable[[], nn.Module], weights: bytes | None, seed: int = 0) -> Any:
    """A model from ``factory`` seeded with ``seed``, then loaded with ``weights`` if given."""
    seeded(seed)
    model = factory()
    if weights is not None:
        load_weights(model, weights)
    return model


_SCORING_MODELS: dict[Callable[..., Any], tuple[bytes, Any]] = {}


def scoring_model(build: Callable[[bytes], Any], weights: bytes) -> Any:
    """``build(weights)``, kept for the next call with the same weights (one per builder).

    A deployed model is scored every few seconds with the same weights: rebuilding it each
    time cost ~4 ms of CPU per window (cmapss-rul), the forward pass well under 1 ms. The
    model must be used read-only (``predict`` puts it in eval mode under no_grad).
    """
    hit = _SCORING_MODELS.get(build)
    if hit is not None and (hit[0] is weights or hit[0] == weights):
        return hit[1]
    model = build(weights)
    _SCORING_MODELS[build] = (weights, model)
    return model


def fit(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: np.ndarray,
    y: np.ndarray,
    hp: Mapping[str, Any],
    progress: Callable[[float], None] | None = None,
) -> float:
    """Train ``model`` in place from its current weights; returns the last epoch's loss.

    The learning rate follows ``lr * lr_decay ** (round * epochs + epoch)`` (AdamW with
    ``weight_decay``). With ``strategy == "fedprox"`` the loss gets
    ``mu/2 * ||w - w_start||^2``, where ``w_start`` are the weights training started from
    (the global model).
    """
    gen = seeded(int(hp["seed"]))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    anchor = (
        [p.detach().clone() for p in model.parameters()] if hp["strategy"] == "fedprox" else None
    )
    opt = torch.optim.AdamW(
        model.parameters(), lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"])
    )
    n, bs, epochs = len(xt), int(hp["batch_size"]), int(hp["epochs"])
    steps = max(1, -(-n // bs)) * epochs
    step, last = 0, float("nan")
    model.train()
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = float(hp["lr"]) * float(hp["lr_decay"]) ** (hp["round"] * epochs + epoch)
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            total += float(loss.detach()) * len(idx)
            if anchor is not None:
                prox = sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
                loss = loss + 0.5 * float(hp["mu"]) * prox
            loss.backward()
            opt.step()
            step += 1
            if progress is not None and step % 20 == 0:
                progress(step / steps)
        last = total / max(n, 1)
    if progress is not None:
        progress(1.0)
    model.eval()
    return last


def predict(model: nn.Module, x: np.ndarray, batch: int = 2048) -> np.ndarray:
    """Model outputs for ``x`` in evaluation mode, as a float64 array."""
    model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            outs.append(model(torch.from_numpy(x[start : start + batch])).double().numpy())
    return np.concatenate(outs) if outs else np.zeros(0)
