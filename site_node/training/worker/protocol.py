"""What the job controller and the training worker process say to each other.

Operations go from the daemon to the worker, reports come back; both are small frozen
dataclasses pickled over the pipe between these two local processes (nothing received
from the network is ever unpickled: the controller builds every operation itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "Cancel",
    "Cancelled",
    "DatasiteDown",
    "DatasiteReady",
    "Deny",
    "Failed",
    "Finished",
    "Op",
    "OpDone",
    "Prepare",
    "Progress",
    "Report",
    "Run",
    "Started",
    "Stop",
]


# -- operations (controller -> worker) --------------------------------------------------


@dataclass(frozen=True)
class Prepare:
    """Submit the job's code request so it waits in the datasite for the operator."""

    job_id: str
    task: str
    weights: bytes | None
    hyperparams: dict[str, Any]


@dataclass(frozen=True)
class Run(Prepare):
    """Submit if needed, approve as the site admin, run (stopped by a :class:`Cancel`)."""


@dataclass(frozen=True)
class Deny:
    job_id: str
    reason: str


@dataclass(frozen=True)
class Cancel:
    """Stop the job at its next progress report, or skip it if it is still queued."""

    job_id: str


@dataclass(frozen=True)
class Stop:
    """Finish the current operation, close the datasite and exit."""


Op = Prepare | Deny | Cancel | Stop


# -- reports (worker -> controller) ------------------------------------------------------


@dataclass(frozen=True)
class DatasiteReady:
    datasets: tuple[tuple[str, str, int], ...]  # (name, task, rows) of hosted datasets


@dataclass(frozen=True)
class DatasiteDown:
    reason: str


@dataclass(frozen=True)
class Started:
    job_id: str


@dataclass(frozen=True)
class Progress:
    job_id: str
    fraction: float


@dataclass(frozen=True)
class Finished:
    job_id: str
    weights: bytes
    n_samples: int
    metrics: dict[str, float]
    train_time_s: float


@dataclass(frozen=True)
class Failed:
    job_id: str
    reason: str


@dataclass(frozen=True)
class Cancelled:
    job_id: str


@dataclass(frozen=True)
class OpDone:
    """The worker is through with the ``n``-th operation it received (counted from 1)."""

    n: int


Report = DatasiteReady | DatasiteDown | Started | Progress | Finished | Failed | Cancelled
