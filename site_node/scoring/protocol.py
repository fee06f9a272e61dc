"""What the daemon's scorer and the scoring process say to each other.

Small frozen dataclasses pickled over the socket pair between the two local processes,
with the training worker's :class:`~site_node.training.worker.protocol.Channel`. The
daemon builds every request itself from its own readings (nothing received from the
network is pickled or unpickled); each request gets exactly one reply, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Hello",
    "Load",
    "LoadFailed",
    "Loaded",
    "Score",
    "Scored",
    "Stop",
    "WindowResult",
]


@dataclass(frozen=True)
class Hello:
    """Sent first: where tasks come from and how the process runs."""

    tasks_dir: Path | None
    nice: int
    threads: int
    log_file: Path | None
    log_format: str
    verbose: bool


@dataclass(frozen=True)
class Load:
    """Load ``task`` (its files must hash to ``code_hash``) and the weights at ``weights_path``."""

    task: str
    code_hash: str
    weights_path: Path


@dataclass(frozen=True)
class Loaded:
    """The task is loaded: ``WINDOW`` and ``OUTPUTS`` (name -> unit) of its contract."""

    window: int
    outputs: dict[str, str]
    load_s: float


@dataclass(frozen=True)
class LoadFailed:
    reason: str


@dataclass(frozen=True)
class Score:
    """Score each ``(device, window)``: a window is a list of rows, oldest first, each a
    dict sensor -> value."""

    items: tuple[tuple[str, list[dict[str, float]]], ...]


@dataclass(frozen=True)
class WindowResult:
    """One window's outputs (name -> value), or why there are none (``error``)."""

    device: str
    outputs: dict[str, float] | None
    error: str | None
    ms: float  # wall time of this window's predict


@dataclass(frozen=True)
class Scored:
    results: tuple[WindowResult, ...]
    cpu_s: float  # the process's CPU time spent on this request


@dataclass(frozen=True)
class Stop:
    """Exit now."""
