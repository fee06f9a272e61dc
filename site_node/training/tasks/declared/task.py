"""``DeclaredTask``: a whole training task built from a TOML declaration, no code.

Building one (``DeclaredTask.from_toml``) imports only pydantic and the standard library;
numpy, pandas and torch load when data is read or a model is built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from site_node.training.tasks.declared.spec import (
    METRIC_DIRECTIONS,
    TaskSpec,
    base_defaults,
    load_spec,
)

if TYPE_CHECKING:
    import numpy as np

    from site_node.training.tasks.declared.frames import DeclaredData

__all__ = ["ENGINE_FILES", "DeclaredTask"]

_ENGINE_DIR = Path(__file__).resolve().parent
# The code a declared task runs: this engine and the shared training loop (in code_hash).
ENGINE_FILES: tuple[Path, ...] = (
    *sorted(_ENGINE_DIR.glob("*.py")),
    _ENGINE_DIR.parent / "common.py",
)


class DeclaredTask:
    """A task implementing the task contract from a validated :class:`TaskSpec`.

    Attributes follow the contract: ``NAME``, ``VERSION``, ``DEFAULTS``, ``METRICS``,
    ``PRIMARY_METRIC``, ``OUTPUTS``, ``WINDOW``; ``files`` are the TOML file and the
    engine's source files (what the registry hashes).
    """

    def __init__(self, spec: TaskSpec, path: Path | None = None) -> None:
        self.spec = spec
        self.path = path
        tgt = spec.target
        self.NAME = spec.task.name
        self.VERSION = spec.task.version
        self.DESCRIPTION = spec.task.description
        self.DEFAULTS: dict[str, Any] = {**base_defaults(), **spec.defaults}
        directions = METRIC_DIRECTIONS[tgt.objective]
        self.METRICS: dict[str, str] = {
            "loss": "min",
            **{m: directions[m] for m in spec.metric_names},
        }
        self.PRIMARY_METRIC: str = spec.metrics.primary or spec.metric_names[0]
        if tgt.objective == "multiclass":
            self.OUTPUTS: dict[str, str] = {f"p_{c}": "" for c in tgt.classes}
        else:
            unit = tgt.unit if tgt.objective == "regression" else ""
            self.OUTPUTS = {spec.output_name: unit}
        self.WINDOW: int = spec.window.length
        self.files: tuple[Path, ...] = (
            (path.resolve(), *ENGINE_FILES) if path is not None else ENGINE_FILES
        )
        self._cached: tuple[str, Any] | None = None

    @classmethod
    def from_toml(cls, path: Path | str) -> DeclaredTask:
        """Read and validate ``path``; raises SpecError naming the file and the key."""
        return cls(load_spec(path), Path(path))

    def __repr__(self) -> str:
        return f"DeclaredTask({self.NAME!r}, {self.VERSION!r}, {self.path})"

    # -- data ----------------------------------------------------------------------------

    def read_table(self, paths: Any, params: Mapping[str, Any] | None = None) -> Any:
        """The site's private rows (pandas DataFrame) from its files.

        ``params``: ``entities`` (ids to keep), ``val_fraction`` (overrides split.fraction).
        """
        from site_node.training.tasks.declared.frames import read_table

        return read_table(self.spec, paths, dict(params or {}))

    def load_dataset(
        self, table_or_paths: Any, params: Mapping[str, Any] | None = None
    ) -> DeclaredData:
        """Samples split into training and validation (by entity hash or by time)."""
        from site_node.training.tasks.declared.frames import load_dataset

        params = dict(params or {})
        table = table_or_paths
        if not hasattr(table_or_paths, "columns"):
            table = self.read_table(table_or_paths, params)
        return load_dataset(self.spec, table, params)

    # -- model ---------------------------------------------------------------------------

    def _model(self, weights: bytes | None, seed: int = 0) -> Any:
        from site_node.training.tasks.common import make_model
        from site_node.training.tasks.declared.models import DeclaredModel

        return make_model(lambda: DeclaredModel(self.spec), weights, seed)

    def initial_weights(self, seed: int = 0) -> bytes:
        """Freshly initialised weights (npz of named arrays), the same for a given seed."""
        from site_node.training.tasks.common import save_weights

        return save_weights(self._model(None, seed))

    def _loss(self, y_train: np.ndarray) -> Callable[[Any, Any], Any]:
        import torch
        from torch import nn

        tgt = self.spec.target
        if tgt.objective == "regression":
            scale = tgt.output_scale
            # On the error scaled to O(1), as cmapss-rul computes it.
            if tgt.loss == "mse":
                return lambda pred, y: torch.mean(((pred - y) / scale) ** 2)
            if tgt.loss == "mae":
                return lambda pred, y: torch.mean(torch.abs(pred - y) / scale)
            return lambda pred, y: nn.functional.smooth_l1_loss(
                (pred - y) / scale, torch.zeros_like(y)
            )
        cw = tgt.class_weight
        if tgt.objective == "binary":
            pos = float(y_train.sum())
            if cw == "balanced":
                pw: torch.Tensor | None = torch.tensor((len(y_train) - pos) / max(pos, 1.0))
            elif cw == "none":
                pw = None
            else:
                pw = torch.tensor(float(cw))  # type: ignore[arg-type]
            return nn.BCEWithLogitsLoss(pos_weight=pw)
        k = len(tgt.classes)
        if cw == "balanced":
            import numpy as np

            counts = np.bincount(y_train.astype(np.int64), minlength=k).astype(np.float64)
            w: torch.Tensor | None = torch.tensor(
                len(y_train) / (k * np.maximum(counts, 1.0)), dtype=torch.float32
            )
        elif cw == "none":
            w = None
        else:
            w = torch.tensor(list(cw), dtype=torch.float32)  # type: ignore[arg-type]
        return nn.CrossEntropyLoss(weight=w)

    def train(
        self,
        global_weights: bytes | None,
        data: DeclaredData,
        hyperparams: Mapping[str, Any] | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> tuple[bytes, int, dict[str, float]]:
        """Local training from ``global_weights``; returns (weights, samples, metrics).

        The metrics are ``train_loss`` and the validation metrics that could be computed
        (``evaluate`` gives the reasons for the others).
        """
        from site_node.training.tasks.common import fit, merge_hyperparams, save_weights

        hp = merge_hyperparams(self.DEFAULTS, dict(hyperparams or {}))
        if len(data.x_train) == 0:
            raise ValueError(
                f"no training samples (entities shorter than the window of {self.WINDOW}, "
                "no labelled rows, or every entity in the validation split?)"
            )
        model = self._model(global_weights, hp["seed"])
        train_loss = fit(model, self._loss(data.y_train), data.x_train, data.y_train, hp, progress)
        scores = self._scores(model, data)
        floats = {k: float(v) for k, v in scores.items() if isinstance(v, float)}
        return save_weights(model), len(data.x_train), {"train_loss": train_loss, **floats}

    def evaluate(self, weights: bytes, data: DeclaredData) -> dict[str, float | str]:
        """Every metric of ``METRICS`` on the validation split; a reason string for each
        one that cannot be computed (one class only, an empty split)."""
        return self._scores(self._model(weights), data)

    def _scores(self, model: Any, data: DeclaredData) -> dict[str, float | str]:
        import numpy as np

        from site_node.training.tasks.common import predict
        from site_node.training.tasks.declared import metrics as m

        spec, tgt = self.spec, self.spec.target
        names = spec.metric_names
        n = len(data.x_val)
        if n == 0:
            why = "validation split is empty (0 samples)"
            return {k: why for k in self.METRICS}
        out = predict(model, data.x_val)
        y = data.y_val
        eps = 1e-7
        if tgt.objective == "regression":
            scale = tgt.output_scale
            loss = float(np.mean(((out - y) / scale) ** 2))
            return {"loss": loss, **m.regression_metrics(out, y, names)}
        if tgt.objective == "binary":
            prob = 1 / (1 + np.exp(-out))
            yd = y.astype(np.float64)
            loss = -float(np.mean(yd * np.log(prob + eps) + (1 - yd) * np.log(1 - prob + eps)))
            return {"loss": loss, **m.binary_metrics(prob, yd, names, spec.metrics.threshold)}
        z = out - out.max(axis=1, keepdims=True)
        prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = -float(np.mean(np.log(prob[np.arange(n), y] + eps)))
        return {"loss": loss, **m.multiclass_metrics(prob, y, names, tgt.classes)}

    def predict(
        self,
        weights: bytes,
        window: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, float]:
        """``OUTPUTS`` for one device's live samples, oldest first (the last ``WINDOW``).

        Raises:
            ValueError: too few samples, a sensor missing, or a value that is not finite.
        """
        import numpy as np

        from site_node.training.tasks.common import predict
        from site_node.training.tasks.declared.frames import sample_window

        x = sample_window(self.spec, window, dict(params or {}))
        digest = hashlib.sha256(weights).hexdigest()
        if self._cached is None or self._cached[0] != digest:
            self._cached = (digest, self._model(weights))
        out = predict(self._cached[1], x)[0]
        tgt = self.spec.target
        if tgt.objective == "regression":
            return {self.spec.output_name: float(out)}
        if tgt.objective == "binary":
            return {self.spec.output_name: float(1 / (1 + np.exp(-out)))}
        z = np.exp(out - out.max())
        return {f"p_{c}": float(p) for c, p in zip(tgt.classes, z / z.sum(), strict=True)}
