"""The site's own policy for an authentic deploy command: which task, which code, which
devices.

The same allow-list as for training jobs (``[training] allow``, docs/tasks.md): the task
must be on it, its files hashed now must still match the pinned hash, and the command
must ask for that same hash: one check for both, :func:`site_node.training.jobs.policy.code_refusal`
(so the refusal texts are the same). A deployment
needs no dataset at the site: it scores the site's live telemetry. Every device it names
must be one the site streams.
"""

from __future__ import annotations

from collections.abc import Collection

from schemas import DeployCommand
from site_node.training.jobs.config import TrainingSettings
from site_node.training.jobs.policy import code_refusal

__all__ = ["refusal"]


def refusal(
    cmd: DeployCommand,
    training: TrainingSettings,
    devices: Collection[str],
    more_devices_possible: bool = False,
) -> str | None:
    """Why this site refuses ``cmd`` (a rejected deployment's reason), or None.

    ``devices`` are the devices the site streams; ``more_devices_possible`` when a source
    finds its devices in its data as it reads (a split source): names not seen yet are
    then accepted, since they may appear later.
    """
    why = code_refusal(cmd.task, cmd.code_hash, training)
    if why is not None:
        return why
    unknown = [d for d in cmd.devices if d not in devices]
    if unknown and not more_devices_possible:
        streams = ", ".join(sorted(devices)) or "none"
        return f"unknown device(s) {', '.join(unknown)}: this site streams {streams}"
    return None
