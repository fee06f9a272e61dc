"""What the deployment service hands the scorer: one deployed model, ready to score."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ActiveModel"]


@dataclass(frozen=True)
class ActiveModel:
    """A deployed model: its task (registry name and code hash), its weights on disk
    (an npz the deployment service has already sha256-verified), how often to score
    (``cadence_s``), its alarm rules (:mod:`site_node.scoring.rules`) and the devices it
    covers (empty: every device of the site)."""

    deployment_id: str
    model_version: str
    task: str
    code_hash: str
    weights_path: Path
    cadence_s: float
    rules: tuple[str, ...]
    devices: tuple[str, ...] = ()

    def covers(self, device: str) -> bool:
        return not self.devices or device in self.devices
