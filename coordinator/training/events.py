"""What a training run is asked to do (:class:`TrainSpec`), what it reports while it runs
(small typed events for progress displays) and how it ended (:class:`RunResult`).

Exceptions::

    TrainError            a run cannot start or go on; ``code`` names an ``EXIT`` entry
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

__all__ = [
    "EvaluationClosed",
    "EvaluationStarted",
    "JobUpdate",
    "RoundClosed",
    "RoundStarted",
    "RunFinished",
    "RunResult",
    "RunStarted",
    "TrainError",
    "TrainEvent",
    "TrainSpec",
    "event_from_json",
]


class TrainError(Exception):
    """A run cannot start or go on; ``code`` is a key of ``coordinator.cli.EXIT``."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class TrainSpec:
    """A run: task, rounds, quorum, deadline, sites and the hyperparameters sent to sites.

    ``epochs``/``lr``/``batch_size``/``mu`` left None use the task's defaults at the site.
    ``wait_sites_s``: how long to wait at the start for enough live sites advertising the
    task. ``rejoin_wait_s``: before each later round, how long to wait for run sites that
    are not live (e.g. restarting) before going on with the live ones.

    ``strategy`` (``coordinator.training.strategy``): ``fedavg``; ``fedprox`` (the sites
    add a proximal term, ``mu``); ``fedadam``/``fedyogi``, a server optimizer over the
    round's aggregate with ``server_lr``, ``beta1``, ``beta2``, ``tau``. ``final_eval``:
    after the last round, every run site scores the final model (evaluate-only jobs).

    ``aggregate``: how results are combined (``coordinator.training.aggregate``); ``trim`` is the
    fraction a trimmed mean drops at each end. A result's weights may declare at most
    ``max_weights_bytes`` of arrays. Its sample count is capped by the dataset rows the
    site registered (a result claiming more is excluded); a site that registered none is
    clipped to ``max_samples`` and flagged.
    """

    task: str
    rounds: int = 5
    min_sites: int = 3
    round_timeout_s: float = 300.0
    sites: tuple[str, ...] | None = None
    strategy: Literal["fedavg", "fedprox", "fedadam", "fedyogi"] = "fedavg"
    mu: float | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    wait_sites_s: float = 60.0
    rejoin_wait_s: float = 0.0
    eval_data_dir: Path | None = None
    poll_s: float = 0.1
    aggregate: Literal["fedavg", "median", "trimmed-mean"] = "fedavg"
    trim: float = 0.2
    max_samples: int = 10_000_000
    max_weights_bytes: int = 256 * 1024 * 1024
    server_lr: float = 0.003
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    final_eval: bool = False

    def validate(self) -> None:
        """Raise ValueError for settings no run can use (the control API's 400)."""
        from coordinator.training.strategy import validate_options

        if not self.task or self.rounds < 1 or self.min_sites < 1:
            raise ValueError("task, rounds >= 1 and min_sites >= 1 are required")
        if self.aggregate not in ("fedavg", "median", "trimmed-mean"):
            raise ValueError(f"unknown aggregate {self.aggregate!r}")
        validate_options(self.strategy, self.server_lr, self.beta1, self.beta2, self.tau)

    def hyperparams(self) -> dict[str, float | int]:
        """The hyperparameters every job of the run gets (``round`` is added per round)."""
        hp: dict[str, float | int] = {}
        for name in ("epochs", "lr", "batch_size", "mu"):
            value = getattr(self, name)
            if value is not None:
                hp[name] = value
        return hp

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["sites"] = list(self.sites) if self.sites is not None else None
        out["eval_data_dir"] = str(self.eval_data_dir) if self.eval_data_dir else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("sites") is not None:
            values["sites"] = tuple(values["sites"])
        if values.get("eval_data_dir"):
            values["eval_data_dir"] = Path(values["eval_data_dir"])
        return cls(**values)


class _Event:
    kind: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, **dataclasses.asdict(self)}  # type: ignore[call-overload]


@dataclass(frozen=True)
class RunStarted(_Event):
    kind: ClassVar[str] = "run_started"
    run_id: str
    task: str
    code_hash: str
    rounds: int
    sites: tuple[str, ...]
    resumed_at_round: int | None = None
    note: str = ""


@dataclass(frozen=True)
class RoundStarted(_Event):
    kind: ClassVar[str] = "round_started"
    run_id: str
    round: int
    sites: tuple[str, ...]
    jobs: dict[str, str]  # site -> job id
    deadline_s: float


@dataclass(frozen=True)
class JobUpdate(_Event):
    kind: ClassVar[str] = "job"
    run_id: str
    round: int
    site: str
    job_id: str
    state: str
    progress: float | None = None
    reason: str | None = None
    late: bool = False


@dataclass(frozen=True)
class RoundClosed(_Event):
    kind: ClassVar[str] = "round_closed"
    run_id: str
    round: int
    state: str  # aggregated | failed
    n_results: int
    metrics: dict[str, float] = field(default_factory=dict)
    test_rmse: float | None = None
    model_id: str | None = None
    reason: str = ""
    wall_s: float = 0.0
    job_time_max_s: float | None = None
    # The sites' federated evaluation of the model this round's jobs were sent (the
    # previous round's), see coordinator.training.round.record_evaluation; None in round 1.
    evaluation: dict[str, Any] | None = None


@dataclass(frozen=True)
class EvaluationStarted(_Event):
    """The final evaluation round: every run site scores the final model (no training)."""

    kind: ClassVar[str] = "evaluation_started"
    run_id: str
    round: int
    model_id: str
    sites: tuple[str, ...]
    jobs: dict[str, str]  # site -> job id
    deadline_s: float


@dataclass(frozen=True)
class EvaluationClosed(_Event):
    """The final evaluation's result: ``evaluation`` as in :class:`RoundClosed`."""

    kind: ClassVar[str] = "evaluation_closed"
    run_id: str
    round: int
    model_id: str
    n_results: int
    evaluation: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


@dataclass(frozen=True)
class RunFinished(_Event):
    kind: ClassVar[str] = "run_finished"
    run_id: str
    state: str  # done | failed
    reason: str = ""
    model_id: str | None = None


TrainEvent = (
    RunStarted
    | RoundStarted
    | JobUpdate
    | RoundClosed
    | EvaluationStarted
    | EvaluationClosed
    | RunFinished
)
Progress = Callable[[TrainEvent], None]

_KINDS: dict[str, type[_Event]] = {
    c.kind: c
    for c in (
        RunStarted, RoundStarted, JobUpdate, RoundClosed, EvaluationStarted, EvaluationClosed,
        RunFinished,
    )
}  # fmt: skip


def event_from_json(data: dict[str, Any]) -> TrainEvent | None:
    """The event a ``to_json()`` dict came from (None for an unknown kind: a newer daemon)."""
    cls = _KINDS.get(str(data.get("event")))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in data.items() if k in names}
    if isinstance(values.get("sites"), list):
        values["sites"] = tuple(values["sites"])
    return cls(**values)  # type: ignore[return-value]


@dataclass(frozen=True)
class RunResult:
    """How a run ended; ``exit_code``: 0 done, 5 failed, 130 interrupted."""

    run_id: str
    state: str
    reason: str = ""
    model_id: str | None = None
    rounds: tuple[RoundClosed, ...] = ()
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.state == "done" else 5
