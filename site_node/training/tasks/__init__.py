"""Named, versioned training recipes, each identified by the sha256 of its code.

Importing this package never imports torch: a task's module is loaded on first use.
"""

from site_node.training.tasks.registry import TASKS, Task, UnknownTaskError, get_task

__all__ = ["TASKS", "Task", "UnknownTaskError", "get_task"]
