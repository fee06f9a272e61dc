"""The datasets a site hosts in its datasite, as fedmq records them (no syft needed).

``<data_dir>/syft/datasets.json`` maps each hosted dataset's name to its task, row count,
columns, source paths and load parameters; `fedmq-site data list` reads it while the
daemon runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HostedDataset", "hosted_entry", "load_registry", "read_hosted", "save_registry"]


@dataclass(frozen=True)
class HostedDataset:
    name: str
    task: str
    rows: int
    columns: tuple[str, ...]
    paths: tuple[str, ...]


def load_registry(state_dir: Path) -> dict[str, dict[str, Any]]:
    """The raw registry under a datasite's state folder (empty before the first dataset)."""
    path = state_dir / "datasets.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_registry(state_dir: Path, registry: Mapping[str, Mapping[str, Any]]) -> None:
    (state_dir / "datasets.json").write_text(json.dumps(registry, indent=1))


def hosted_entry(name: str, entry: Mapping[str, Any]) -> HostedDataset:
    return HostedDataset(
        name=name,
        task=str(entry["task"]),
        rows=int(entry["rows"]),
        columns=tuple(entry["columns"]),
        paths=tuple(entry["paths"]),
    )


def read_hosted(data_dir: Path | str) -> list[HostedDataset]:
    """Datasets fedmq hosted in the datasite under ``data_dir``, from its local registry."""
    registry = load_registry(Path(data_dir) / "syft")
    return [hosted_entry(name, entry) for name, entry in sorted(registry.items())]
