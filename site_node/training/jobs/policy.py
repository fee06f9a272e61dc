"""The site's own policy for an authentic train command: which tasks, which code."""

from __future__ import annotations

from typing import Any

from schemas import TrainCommand
from site_node.training.jobs.config import TrainingSettings
from site_node.training.tasks import TASKS

__all__ = ["hyperparams_for", "refusal"]


def refusal(cmd: TrainCommand, training: TrainingSettings, hosted: set[str] | None) -> str | None:
    """Why this site refuses ``cmd`` (a rejected job's reason), or None if it may run.

    ``hosted`` are the tasks with a hosted dataset, or None while the datasite starts
    (the job then waits for it, and fails if its dataset could not be hosted).
    """
    if cmd.task not in training.allow:
        return f"task {cmd.task} is not in this site's allow-list"
    task = TASKS.get(cmd.task)
    if task is None:  # allow-listed names are validated against the registry at load
        return f"task {cmd.task} is unknown at this site"
    if cmd.code_hash != task.code_hash:
        return (
            f"code hash mismatch for {cmd.task}: site runs {task.code_hash[:12]}, "
            f"command asks {cmd.code_hash[:12]}"
        )
    if training.dataset_for(cmd.task) is None or (hosted is not None and cmd.task not in hosted):
        return f"no dataset hosted for task {cmd.task}"
    return None


def hyperparams_for(cmd: TrainCommand) -> dict[str, Any]:
    """The task's hyperparameters: the command's own, its ``strategy`` and its ``round``.

    ``strategy`` (fedavg/fedprox, with ``mu``) always comes from the command's field;
    ``round`` (the tasks' learning-rate schedule counts 0-based rounds) from the command
    unless its hyperparameters set one. Unknown names are refused by the task itself (the
    job then fails with the reason).
    """
    return {
        **cmd.hyperparams,
        "strategy": cmd.strategy,
        "round": cmd.hyperparams.get("round", cmd.round),
    }
