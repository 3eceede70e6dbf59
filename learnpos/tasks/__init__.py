"""Tasks: each owns its data, batch building, loss mask and metrics.

The trainer only sees `Batch`es (token ids, targets with IGNORE_INDEX where no loss is
taken, optional position ids and attention mask) and calls `task.evaluate(model)`.
Adding a task = a module with a `Task` subclass plus one line in `TASKS`.
"""

from pathlib import Path

from learnpos.tasks.base import Batch, Task
from learnpos.tasks.lm import LMTask
from learnpos.tasks.synthetic import CopyTask, IndexTask, ReverseTask

TASKS: dict[str, type[Task]] = {"copy": CopyTask, "reverse": ReverseTask, "index": IndexTask, "lm": LMTask}


def build_task(cfg, run_dir: str | Path | None = None) -> Task:
    """The task of `cfg`. `run_dir` (default: cfg.train.out_dir) is where a task keeps what
    belongs to the run, e.g. the tokenizer of an LM."""
    return TASKS[cfg.task](cfg, run_dir)


__all__ = ["Batch", "Task", "TASKS", "build_task"]
