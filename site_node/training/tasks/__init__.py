"""Named, versioned training recipes, each identified by the sha256 of its code.

Importing this package never imports torch: a task's module is loaded on first use.
Where tasks come from and how they are hashed: :mod:`site_node.training.tasks.registry`.
"""

from site_node.training.tasks.registry import (
    ENTRY_POINT_GROUP,
    TASKS,
    TASKS_DIR_ENV,
    Catalog,
    Task,
    TaskLoadError,
    UnknownTaskError,
    contract_problems,
    get_task,
    load_tasks,
    scan,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "TASKS",
    "TASKS_DIR_ENV",
    "Catalog",
    "Task",
    "TaskLoadError",
    "UnknownTaskError",
    "contract_problems",
    "get_task",
    "load_tasks",
    "scan",
]
