"""The task registry: names, versions and code hashes, computed without importing torch.

A task's ``code_hash`` is the sha256 over the bytes of its recipe module followed by the
shared training loop (``common.py``), the code that actually runs on the site's data; a
site allow-lists that hash, so any edit to either file changes it.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["TASKS", "Task", "UnknownTaskError", "get_task"]

_HERE = Path(__file__).resolve().parent
_SHARED = ("common.py",)

TrainResult = tuple[bytes, int, dict[str, float]]


class UnknownTaskError(KeyError):
    """No task of that name is shipped with this site."""


@dataclass(frozen=True)
class Task:
    """One recipe; its functions load ``site_node.training.tasks.<module>`` on first call."""

    name: str
    version: str
    module: str
    files: tuple[str, ...] = field(default=())
    # Module scoring a model on the task's public test set (not part of the code hash: it
    # never touches a site's private data); "" when the task has none.
    test_scoring: str = ""

    @cached_property
    def code_hash(self) -> str:
        digest = hashlib.sha256()
        for name in (f"{self.module}.py", *self.files):
            digest.update((_HERE / name).read_bytes())
        return digest.hexdigest()

    @property
    def impl(self) -> ModuleType:
        return importlib.import_module(f"site_node.training.tasks.{self.module}")

    @property
    def defaults(self) -> Mapping[str, Any]:
        """Default hyperparameters (``epochs``, ``lr``, ``batch_size``, ``seed``, ...)."""
        return dict(self.impl.DEFAULTS)

    def read_table(self, paths: Any, params: Mapping[str, Any] | None = None) -> Any:
        """The site's private rows (a pandas DataFrame) from its configured files."""
        return self.impl.read_table(paths, params or {})

    def load_dataset(self, source: Any, params: Mapping[str, Any] | None = None) -> Any:
        """Training and validation data from a table (or the files) of private rows."""
        return self.impl.load_dataset(source, params or {})

    def train(
        self,
        global_weights: bytes | None,
        data: Any,
        hyperparams: Mapping[str, Any] | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> TrainResult:
        """Train locally from ``global_weights``; returns (npz weights, n_samples, metrics)."""
        return self.impl.train(global_weights, data, dict(hyperparams or {}), progress)

    def evaluate(self, weights: bytes, data: Any) -> dict[str, float]:
        """Metrics of ``weights`` on the local validation split."""
        return self.impl.evaluate(weights, data)

    @property
    def has_test_set(self) -> bool:
        return bool(self.test_scoring)

    def score_test_set(self, weights: bytes) -> dict[str, float]:
        """Metrics of ``weights`` on the task's shipped public test set (``rmse``, ``n``, ...).

        Raises:
            LookupError: the task ships no test set.
            OSError, ValueError: missing test files, or weights that do not fit the model.
        """
        if not self.test_scoring:
            raise LookupError(f"task {self.name!r} ships no test set")
        module = importlib.import_module(f"site_node.training.tasks.{self.test_scoring}")
        return dict(module.score(weights))

    def initial_weights(self, seed: int = 0) -> bytes:
        """Freshly initialised model weights (npz), the same for a given seed."""
        return self.impl.initial_weights(seed)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            name="cmapss-rul",
            version="1.0",
            module="cmapss_rul",
            files=_SHARED,
            test_scoring="fd001_scoring",
        ),
        Task(name="ai4i-failure", version="1.0", module="ai4i_failure", files=_SHARED),
    )
}


def get_task(name: str) -> Task:
    """The task called ``name``; raises UnknownTaskError."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None
