"""What ``fedmq demo`` runs (:class:`DemoOptions`) and where it keeps things (:class:`DemoLayout`).

Exceptions::

    DemoError      the demo cannot start or go on; ``code`` names an ``EXIT`` entry
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from coordinator.demo.sites import FD001_ENGINES, TASK

__all__ = ["DemoError", "DemoLayout", "DemoOptions"]

# A file in the output dir that says "the demo made this", so a rerun may clear it.
_MARKER = ".fedmq-demo"


class DemoError(Exception):
    """The demo cannot start or go on; ``code`` is a key of ``coordinator.cli.EXIT``."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DemoOptions:
    """What ``fedmq demo`` runs (see its ``--help`` for each option)."""

    out: Path = Path("fedmq-demo")
    sites: int = 4
    rounds: int = 5
    task: str = TASK
    epochs: int | None = None
    engines: int = FD001_ENGINES
    rate_hz: float = 2.0
    start_timeout_s: float = 300.0
    round_timeout_s: float = 300.0
    keep: bool = False
    prefix: str = "fedmq/v1"
    # Live scoring after the last round (0 engines: no deployment).
    score_engines: int = 3
    score_rows: int = 100
    score_rate_hz: float = 20.0
    score_cadence_s: float = 0.5
    score_timeout_s: float = 180.0


@dataclass(frozen=True)
class DemoLayout:
    """Where everything of one demo lives, under ``root``."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "fedmq.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def private_key(self) -> Path:
        return self.root / "keys" / "coordinator.key"

    @property
    def public_key(self) -> Path:
        return self.root / "keys" / "coordinator.pub"

    @property
    def pids(self) -> Path:
        return self.root / "pids.json"

    def site_dir(self, site_id: str) -> Path:
        return self.root / "sites" / site_id

    def prepare(self) -> None:
        """Create ``root``, clearing what an earlier demo left there (and nothing else)."""
        if self.root.exists() and any(self.root.iterdir()):
            if not (self.root / _MARKER).exists():
                raise DemoError(
                    f"{self.root} is not empty and not a demo output dir; choose another --out",
                    "usage",
                )
            for entry in self.root.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        for folder in (self.root, self.logs, self.root / "keys", self.root / "broker"):
            folder.mkdir(parents=True, exist_ok=True)
        (self.root / _MARKER).write_text("written by `fedmq demo`; a rerun clears this dir\n")
