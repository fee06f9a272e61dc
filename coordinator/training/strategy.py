"""Server-side strategies: what the coordinator does with a round's aggregate.

A run's ``strategy`` is chosen per run (``fedmq train --strategy``):

- ``fedavg``: the new global model is the round's aggregate (``--aggregate``: the
  sample-weighted mean, or a robust median / trimmed mean).
- ``fedprox``: the same on the server; the sites add the proximal term
  ``mu/2 * ||w - w_global||^2`` to their local loss (the command's ``strategy`` and ``mu``).
- ``fedadam`` / ``fedyogi`` (Reddi et al., "Adaptive Federated Optimization", ICLR 2021):
  the aggregate's difference to the global model the sites started from is a
  pseudo-gradient ``delta``; the server keeps per-coordinate moments and moves the model
  ``x += server_lr * m / (sqrt(v) + tau)`` with ``m = beta1 m + (1 - beta1) delta`` and

  - Adam: ``v = beta2 v + (1 - beta2) delta^2``
  - Yogi: ``v = v - (1 - beta2) delta^2 sign(v - delta^2)`` (v grows more slowly)

  A run's first round has no global model on the server (every site builds the task's
  initial weights from the same seed), so its aggregate becomes model 1 as is and the
  optimizer starts with round 2. Integer arrays (counters) take the aggregate.

The optimizer's state (``m``, ``v`` per float array and the step count) is an npz blob the
round driver stores with each aggregated round (``TrainDb.put_strategy_state``), so a run
resumed after a restart continues with the moments it had. numpy only.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "ADAPTIVE",
    "STRATEGIES",
    "ServerOpt",
    "Strategy",
    "site_strategy",
    "validate_options",
]

Strategy = Literal["fedavg", "fedprox", "fedadam", "fedyogi"]
STRATEGIES: tuple[str, ...] = Strategy.__args__  # type: ignore[attr-defined]
ADAPTIVE = frozenset({"fedadam", "fedyogi"})


def site_strategy(strategy: str) -> str:
    """What the sites are told to do locally: only FedProx changes their training."""
    return "fedprox" if strategy == "fedprox" else "fedavg"


def validate_options(
    strategy: str, server_lr: float, beta1: float, beta2: float, tau: float
) -> None:
    """Raise ValueError for a strategy or server-optimizer setting that cannot work."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    for name, value in (("server_lr", server_lr), ("tau", tau)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, not {value!r}")
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if not (math.isfinite(value) and 0 <= value < 1):
            raise ValueError(f"{name} must be in [0, 1), not {value!r}")


@dataclass
class ServerOpt:
    """FedAdam / FedYogi on named arrays; ``m``/``v`` appear on the first step."""

    kind: Literal["fedadam", "fedyogi"] = "fedadam"
    lr: float = 0.003
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    steps: int = 0

    def __post_init__(self) -> None:
        validate_options(self.kind, self.lr, self.beta1, self.beta2, self.tau)
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(
        self, current: Mapping[str, np.ndarray], aggregate: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The next global model from ``current`` and the round's ``aggregate`` of it.

        Raises ValueError when the two hold different arrays (names, shapes, dtypes).
        """
        if set(current) != set(aggregate):
            raise ValueError(f"aggregate arrays differ: {sorted(set(current) ^ set(aggregate))}")
        out: dict[str, np.ndarray] = {}
        for name, agg in aggregate.items():
            cur = current[name]
            if cur.shape != agg.shape or cur.dtype != agg.dtype:
                raise ValueError(
                    f"array {name!r}: {agg.shape} {agg.dtype} vs {cur.shape} {cur.dtype}"
                )
            if agg.dtype.kind != "f":
                out[name] = np.array(agg, copy=True)
                continue
            x = cur.astype(np.float64)
            delta = agg.astype(np.float64) - x
            m = self.m.get(name)
            v = self.v.get(name)
            if m is None or m.shape != delta.shape or v is None:
                m, v = np.zeros_like(delta), np.zeros_like(delta)
            m = self.beta1 * m + (1 - self.beta1) * delta
            d2 = delta * delta
            if self.kind == "fedadam":
                v = self.beta2 * v + (1 - self.beta2) * d2
            else:
                v = v - (1 - self.beta2) * d2 * np.sign(v - d2)
            self.m[name], self.v[name] = m, v
            out[name] = (x + self.lr * m / (np.sqrt(v) + self.tau)).astype(agg.dtype)
        self.steps += 1
        return out

    # Persistence ----------------------------------------------------------------------

    def dump(self) -> bytes:
        """The state as an npz (no pickle): moments, step count and settings."""
        arrays: dict[str, np.ndarray] = {
            "__steps__": np.array(self.steps, np.int64),
            "__hyper__": np.array([self.lr, self.beta1, self.beta2, self.tau], np.float64),
        }
        for name in self.m:
            arrays[f"m/{name}"] = self.m[name]
            arrays[f"v/{name}"] = self.v[name]
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def load(
        cls,
        raw: bytes,
        kind: Literal["fedadam", "fedyogi"],
    ) -> ServerOpt:
        """The optimizer a :meth:`dump` saved (its own settings); ValueError if unreadable."""
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:
            raise ValueError(f"strategy state unreadable: {exc}") from exc
        try:
            lr, beta1, beta2, tau = (float(x) for x in arrays.pop("__hyper__"))
            steps = int(arrays.pop("__steps__"))
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"strategy state incomplete: {exc}") from exc
        opt = cls(kind, lr, beta1, beta2, tau, steps)
        for key, arr in arrays.items():
            part, _, name = key.partition("/")
            if part == "m":
                opt.m[name] = arr.astype(np.float64)
            elif part == "v":
                opt.v[name] = arr.astype(np.float64)
        if set(opt.m) != set(opt.v):
            raise ValueError("strategy state has unmatched moments")
        return opt
