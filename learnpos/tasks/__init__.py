"""Tasks: each owns its data, batch building, loss (and head) and metrics.

The trainer only sees `Batch`es and calls `task.loss(model, batch)` and
`task.evaluate(model, ...)`. Adding a task = a module with a `Task` subclass decorated
with `@register` (which also registers its config section), imported here or by the user
before the config is built. Nothing else in learnpos changes.
"""

from __future__ import annotations

from pathlib import Path

from learnpos.tasks import add, dialogue, kg, lm, synthetic  # noqa: F401  (the built-in tasks register on import)
from learnpos.tasks.base import TASKS, Batch, Task, register


def build_task(cfg, run_dir: str | Path | None = None) -> Task:
    """The task of `cfg`. `run_dir` (default: cfg.train.out_dir) is where a task keeps what
    belongs to the run, e.g. the tokenizer of an LM; commands on an existing run pass the
    run directory they were given."""
    return TASKS[cfg.task](cfg, run_dir)


__all__ = ["Batch", "Task", "TASKS", "register", "build_task"]
