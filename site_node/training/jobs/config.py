"""Typed ``[training]`` table of a site's TOML: what the site runs, on which data, how.

Example::

    [training]
    tasks_dir = "/srv/fedmq/tasks"      # *.py, package folders, *.toml (docs/tasks.md)
    allow = [
        "cmapss-rul",                                   # this site's code of it at start
        {task = "press-fail", hash = "5f0c...64 hex"},  # exactly this code
        "pump-rul@9ab1...64 hex",                       # the same, as one string
    ]
    approval = "manual"

    [[training.datasets]]
    name = "fd001-west"
    task = "cmapss-rul"
    paths = ["/data/cmapss/train_FD001.txt"]
    params = {units = [1, 2, 3]}

Pydantic only: parsing the table never imports torch or syft.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from site_node.history.config import HistorySelection

__all__ = ["DatasetConfig", "TrainingSettings", "allow_entry"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")
_ALLOW_FORMS = (
    'each training.allow entry is "name", "name@<sha256 hex>" or {task = "name", '
    'hash = "<sha256 hex>"}'
)

_strict = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(BaseModel):
    """One private dataset: the task's table read from ``paths`` with ``params``, or from
    the site's own telemetry history (``history = {devices = [..], since_days = N}``: the
    selection is exported to one CSV that the task reads, see site_node/history/export.py).
    """

    model_config = _strict

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")
    task: str = Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")
    paths: list[str] = []
    history: HistorySelection | None = None
    params: dict[str, Any] = {}

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if bool(self.paths) == (self.history is not None):
            raise ValueError(
                f"dataset {self.name}: give either paths = [..] or history = {{devices = [..]}}"
            )
        return self


class TrainingSettings(BaseModel):
    """Policy and data of a training site (the ``[training]`` table)."""

    model_config = _strict

    # Folder of the site's own tasks: *.py files, package folders and *.toml declared
    # tasks (docs/tasks.md); relative to the working directory; stored absolute.
    tasks_dir: Path | None = None
    # Task names this site runs. An entry with a hash pins that exact code; a plain name
    # pins the code the site finds at start (an edit while it runs is refused until the
    # site restarts). Pinned hashes move to ``pins`` (name -> hash) when the table is read.
    allow: list[str] = []
    pins: dict[str, str] = {}
    approval: Literal["auto", "manual"] = "auto"
    datasets: list[DatasetConfig] = []
    # Weights above this many bytes travel in ResultChunk messages.
    chunk_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    # How long a train command waits for its missing TrainChunks before it fails.
    chunk_timeout_s: float = Field(default=60.0, gt=0, le=24 * 3600)
    # Chunks buffered for commands not seen yet (a flood of unsigned chunks is bounded).
    max_buffered_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    # Jobs the training worker runs at once (each on its own thread in the one worker
    # process that owns the datasite; syft's own calls stay serial, the tasks' training
    # runs in parallel). memory_limit_mb and threads are the worker's, shared by its jobs.
    max_concurrent_jobs: int = Field(default=1, ge=1, le=64)
    # The training worker process (site_node.training.worker): stopped after this many
    # seconds without work, so its memory returns to the machine; a job whose worker
    # grows past memory_limit_mb fails ("memory limit N MB reached"; None: half the RAM,
    # at most 2048); its nice level and torch/OpenMP threads (None: half the cores).
    worker_idle_s: float = Field(default=180.0, gt=0, le=7 * 24 * 3600)
    memory_limit_mb: int | None = Field(default=None, ge=128, le=10_000_000)
    nice: int = Field(default=10, ge=0, le=19)
    threads: int | None = Field(default=None, ge=1, le=1024)
    # "running" statuses carry progress at most this often.
    progress_interval_s: float = Field(default=2.0, gt=0)
    # Refusal reports (unsigned, forged, expired, replayed commands) per minute; more are
    # only logged, so a flood of bad commands cannot fill the never-dropped job rows.
    max_refusal_reports_per_min: int = Field(default=30, ge=0)

    # name -> code hash of each allow-listed task when this table was read (site start).
    _start_hashes: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _allow_entries(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "allow" not in data:
            return data
        raw = data["allow"]
        if not isinstance(raw, list):
            raise ValueError(f"training.allow must be a list; {_ALLOW_FORMS}")
        names: list[str] = []
        pins: dict[str, str] = dict(data.get("pins") or {})
        for entry in raw:
            name, pin = allow_entry(entry)
            if name in names:
                raise ValueError(f"training.allow names task {name!r} twice")
            names.append(name)
            if pin is not None:
                pins[name] = pin
        return {**data, "allow": names, "pins": pins}

    @field_validator("tasks_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        # A missing folder is reported by the registry (with any task it then lacks).
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _known_tasks(self) -> TrainingSettings:
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError("training.datasets names must be unique")
        for name, pin in self.pins.items():
            if name not in self.allow:
                raise ValueError(f"training.pins names {name!r}, which is not in training.allow")
            if not _HASH.match(pin):
                raise ValueError(f"training.allow: hash of {name!r} must be 64 lowercase hex")
        from site_node.training.tasks import scan  # the registry imports no torch

        catalog = scan(self.tasks_dir)
        wanted = [*self.allow, *(d.task for d in self.datasets)]
        unknown = sorted({n for n in wanted if n not in catalog.tasks})
        if unknown:
            where = "training.allow" if set(unknown) & set(self.allow) else "training.datasets"
            left = f"; left out: {'; '.join(catalog.problems)}" if catalog.problems else ""
            raise ValueError(
                f"unknown task(s) {unknown} in {where}; known: {catalog.known()}{left}"
            )
        self._start_hashes = {n: catalog.tasks[n].code_hash for n in self.allow}
        return self

    def pinned_hash(self, task: str) -> str | None:
        """The code hash this site runs ``task`` with: its pin, else its hash at start."""
        return self.pins.get(task) or self._start_hashes.get(task)

    def dataset_for(self, task: str) -> DatasetConfig | None:
        """The first configured dataset of ``task`` (the one its jobs train on)."""
        return next((d for d in self.datasets if d.task == task), None)


def allow_entry(entry: Any) -> tuple[str, str | None]:
    """(name, pinned hash or None) of one training.allow entry."""
    name: Any
    pin: Any
    if isinstance(entry, str):
        name, _, text = entry.partition("@")
        pin = text or None
    elif isinstance(entry, dict) and not set(entry) - {"task", "hash"}:
        name, pin = entry.get("task"), entry.get("hash")
    else:
        raise ValueError(f"bad training.allow entry {entry!r}; {_ALLOW_FORMS}")
    if not isinstance(name, str) or not (pin is None or isinstance(pin, str)):
        raise ValueError(f"bad training.allow entry {entry!r}; {_ALLOW_FORMS}")
    if not _NAME.match(name):
        raise ValueError(f"training.allow: task name {name!r} must match [A-Za-z0-9_-]{{1,128}}")
    if pin is not None:
        pin = pin.removeprefix("sha256:")
        if not _HASH.match(pin):
            raise ValueError(
                f"training.allow: hash {pin!r} of {name!r} must be the 64 lowercase hex "
                "digits `fedmq-site tasks` lists"
            )
    return name, pin
