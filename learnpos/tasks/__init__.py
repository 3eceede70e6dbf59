"""Tasks: each owns its data, batch building, loss mask and metrics.

The trainer only sees `Batch`es (token ids, targets with IGNORE_INDEX where no loss is
taken, optional position ids and attention mask) and calls `task.evaluate(model)`.
Adding a task = a module with a `Task` subclass plus one line in `TASKS`.
"""

from learnpos.tasks.base import Batch, Task
from learnpos.tasks.synthetic import CopyTask, IndexTask, ReverseTask

TASKS: dict[str, type[Task]] = {"copy": CopyTask, "reverse": ReverseTask, "index": IndexTask}


def build_task(cfg) -> Task:
    return TASKS[cfg.task](cfg)


__all__ = ["Batch", "Task", "TASKS", "build_task"]
