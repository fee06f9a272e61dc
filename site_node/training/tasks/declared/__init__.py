"""Declared (no-code) tasks for tabular and time-series data, from a TOML file.

``DeclaredTask.from_toml(path)`` validates the declaration (pydantic, unknown keys refused)
and returns an object implementing the task contract. Importing this package loads neither
torch, pandas nor numpy. Two complete declarations ship in ``examples/``.
"""

from pathlib import Path as _Path

from site_node.training.tasks.declared.spec import DataError, SpecError, TaskSpec, load_spec
from site_node.training.tasks.declared.task import ENGINE_FILES, DeclaredTask

# The shipped declarations (AI4I 2020, C-MAPSS FD001).
EXAMPLES_DIR = _Path(__file__).resolve().parent / "examples"

__all__ = [
    "ENGINE_FILES",
    "EXAMPLES_DIR",
    "DataError",
    "DeclaredTask",
    "SpecError",
    "TaskSpec",
    "load_spec",
]
