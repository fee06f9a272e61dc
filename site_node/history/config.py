"""Typed settings of the site's local telemetry history (``[history]``) and of a training
dataset drawn from it (``history = {...}`` in ``[[training.datasets]]``). Pydantic only.

Example::

    [history]
    max_age_days = 30            # what the site stored longer ago is pruned
    max_bytes = 1073741824       # 1 GiB of database pages; the oldest samples go first

    [[training.datasets]]
    name = "press-local"
    task = "my-task"
    history = {devices = ["press-1"], since_days = 14}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["HISTORY_FILE", "HistorySelection", "HistorySettings", "check_site_history"]

# The history database, in the site's data dir (next to, never inside, the outbox).
HISTORY_FILE = "history.db"

_DeviceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")]


class HistorySettings(BaseModel):
    """Bounds and pacing of the history (the ``[history]`` table)."""

    model_config = ConfigDict(extra="forbid")

    # Off: no history; a device with publish = "none" is then a configuration error.
    enabled: bool = True
    # Readings the site stored longer ago than this are pruned (by when they arrived, so a
    # replayed file with recorded times from years ago is kept).
    max_age_days: float = Field(default=30.0, gt=0, le=36_500)
    # Database pages in use; over it the oldest samples are pruned down to 90 %.
    max_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024 * 1024)
    # Samples are committed in one transaction at most this often (a kill -9 loses what
    # was not committed yet: at most this long of samples).
    flush_interval_s: float = Field(default=1.0, gt=0, le=60)
    # Samples waiting for the writer (about 0.5 KB each in memory); beyond this they are
    # dropped and counted, so a slow disk never slows the sources or the outbox down.
    max_pending: int = Field(default=50_000, ge=1000)
    # How often samples older than max_age_days are looked for.
    prune_interval_s: float = Field(default=60.0, gt=0)
    # FULL survives power loss, NORMAL only process crashes (kill -9); WAL either way.
    synchronous: Literal["FULL", "NORMAL"] = "NORMAL"


class HistorySelection(BaseModel):
    """Which history rows a training dataset uses: devices and a look-back window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: list[_DeviceName] = Field(min_length=1)
    # Only samples of the last N days (by sample time); None: everything kept.
    since_days: float | None = Field(default=None, gt=0)


def check_site_history(
    devices: Sequence[Any], history: HistorySettings, datasets: Sequence[Any]
) -> None:
    """Cross-checks of a site's settings; ValueError with the reason.

    A device that publishes nothing needs the history (its samples would go nowhere), and
    a history dataset names configured devices (or devices a split file source makes,
    ``<name>-<value>``) and needs the history enabled.
    """
    names = [d.name for d in devices]
    if not history.enabled:
        silent = [d.name for d in devices if getattr(d, "publish", "raw") == "none"]
        if silent:
            raise ValueError(
                f"devices {silent} publish 'none' but [history] enabled = false: their "
                "samples would go nowhere"
            )
    for ds in datasets:
        selection = getattr(ds, "history", None)
        if selection is None:
            continue
        if not history.enabled:
            raise ValueError(
                f"dataset {ds.name} trains on the history but [history] enabled = false"
            )
        unknown = [
            d for d in selection.devices if d not in names and not any(
                d.startswith(f"{n}-") for n in names)
        ]  # fmt: skip
        if unknown:
            raise ValueError(
                f"dataset {ds.name}: history devices {unknown} are not configured; "
                f"devices are {names}"
            )
