"""Typed ``[training]`` table of a site's TOML: what the site runs, on which data, how.

Example::

    [training]
    allow = ["cmapss-rul"]
    approval = "manual"

    [[training.datasets]]
    name = "fd001-west"
    task = "cmapss-rul"
    paths = ["/data/cmapss/train_FD001.txt"]
    params = {units = [1, 2, 3]}

Pydantic only: parsing the table never imports torch or syft.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["DatasetConfig", "TrainingSettings"]

_strict = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(BaseModel):
    """One private dataset: the task's table read from ``paths`` with ``params``."""

    model_config = _strict

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")
    task: str = Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")
    paths: list[str] = Field(min_length=1)
    params: dict[str, Any] = {}


class TrainingSettings(BaseModel):
    """Policy and data of a training site (the ``[training]`` table)."""

    model_config = _strict

    # Task names this site runs; a task's code hash is this site's own registry hash.
    allow: list[str] = []
    approval: Literal["auto", "manual"] = "auto"
    datasets: list[DatasetConfig] = []
    # Weights above this many bytes travel in ResultChunk messages.
    chunk_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    # How long a train command waits for its missing TrainChunks before it fails.
    chunk_timeout_s: float = Field(default=60.0, gt=0, le=24 * 3600)
    # Chunks buffered for commands not seen yet (a flood of unsigned chunks is bounded).
    max_buffered_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    max_concurrent_jobs: int = Field(default=1, ge=1, le=1)
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

    @field_validator("allow")
    @classmethod
    def _known_tasks(cls, value: list[str]) -> list[str]:
        from site_node.training.tasks import TASKS  # the registry imports no torch

        unknown = sorted(set(value) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown} in training.allow; known: {sorted(TASKS)}")
        return value

    @model_validator(mode="after")
    def _datasets(self) -> TrainingSettings:
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError("training.datasets names must be unique")
        from site_node.training.tasks import TASKS

        for d in self.datasets:
            if d.task not in TASKS:
                raise ValueError(f"dataset {d.name}: unknown task {d.task!r}")
        return self

    def dataset_for(self, task: str) -> DatasetConfig | None:
        """The first configured dataset of ``task`` (the one its jobs train on)."""
        return next((d for d in self.datasets if d.task == task), None)
