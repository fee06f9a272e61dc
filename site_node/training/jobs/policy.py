"""The site's own policy for an authentic train command: which tasks, which code.

A job runs only a task on the allow-list whose files, hashed now, still match the hash the
allow-list pins (or, for a plain name, the hash at site start), and only when the command
asks for that same hash. Every refusal names the hashes it compared.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from schemas import TaskOffer, TrainCommand
from site_node.training.jobs.config import TrainingSettings
from site_node.training.tasks import TASKS_DIR_ENV, scan

__all__ = [
    "advertised",
    "code_refusal",
    "hyperparams_for",
    "pin_warnings",
    "refusal",
    "use_tasks_dir",
]

log = logging.getLogger(__name__)


def refusal(cmd: TrainCommand, training: TrainingSettings, hosted: set[str] | None) -> str | None:
    """Why this site refuses ``cmd`` (a rejected job's reason), or None if it may run.

    ``hosted`` are the tasks with a hosted dataset, or None while the datasite starts
    (the job then waits for it, and fails if its dataset could not be hosted).
    """
    why = code_refusal(cmd.task, cmd.code_hash, training)
    if why is not None:
        return why
    if training.dataset_for(cmd.task) is None or (hosted is not None and cmd.task not in hosted):
        return f"no dataset hosted for task {cmd.task}"
    return None


def code_refusal(task_name: str, code_hash: str, training: TrainingSettings) -> str | None:
    """Why this site will not run ``task_name`` at ``code_hash`` (training or scoring),
    or None: the task must be allow-listed, still hash to its pin, and the command must ask
    for exactly that hash."""
    if task_name not in training.allow:
        return f"task {task_name} is not in this site's allow-list"
    pinned = training.pinned_hash(task_name)
    task = scan(training.tasks_dir).tasks.get(task_name)
    if task is None or pinned is None:
        return f"task {task_name} is allow-listed but no longer found at this site"
    if task.code_hash != pinned:
        return (
            f"task {task_name} changed at this site: its files hash to {task.code_hash}, "
            f"the allow-list pins {pinned}"
        )
    if code_hash != pinned:
        return (
            f"code hash mismatch for {task_name}: this site runs {pinned}, "
            f"the command asks {code_hash}"
        )
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


def advertised(training: TrainingSettings) -> dict[str, TaskOffer]:
    """What the site offers for each allow-listed task it knows: version and pinned hash."""
    catalog = scan(training.tasks_dir)
    out = {}
    for name in training.allow:
        pinned, task = training.pinned_hash(name), catalog.tasks.get(name)
        if pinned is not None and task is not None:
            out[name] = TaskOffer(name=name, version=task.version, code_hash=pinned)
    return out


def pin_warnings(training: TrainingSettings) -> list[str]:
    """Allow-listed tasks whose files no longer match their pinned hash (refused jobs)."""
    catalog = scan(training.tasks_dir)
    out = []
    for name, pin in training.pins.items():
        task = catalog.tasks.get(name)
        if task is not None and task.code_hash != pin:
            out.append(
                f"task {name}: its files ({task.path}) hash to {task.code_hash}, the "
                f"allow-list pins {pin}; its jobs will be refused"
            )
    return out


def use_tasks_dir(training: TrainingSettings) -> None:
    """Name the site's tasks folder for this process and its children (the training
    worker, the job bodies in its datasite): ``get_task(name)`` then finds its tasks."""
    if training.tasks_dir is None:
        os.environ.pop(TASKS_DIR_ENV, None)
    else:
        os.environ[TASKS_DIR_ENV] = str(training.tasks_dir)
    for warning in pin_warnings(training):
        log.warning("%s", warning)
