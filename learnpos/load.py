"""Rebuild a run from its directory: config, task, model with the task's heads, weights.

Everything comes from the directory it is given, never from the `train.out_dir` saved in
its config: a run that was moved or copied is evaluated with its own tokenizer, and the
files a command writes land in that directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from learnpos.config import Config, load_run_config
from learnpos.errors import RunDirError
from learnpos.model import GPT
from learnpos.runs import CONFIG_FILE, load_weights, model_checkpoint
from learnpos.tasks import Task, build_task


def build_model(cfg: Config, task: Task) -> GPT:
    """The model of `cfg` with the task's own heads (if any)."""
    return GPT(cfg.model, heads=task.heads(cfg.model))


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Config, Task]:
    """(model in eval mode, config, task) of a finished or checkpointed run, with the weights
    of its best evaluation if it tracked one (train.early_stop_metric), else its latest."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise RunDirError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); train one with `learnpos train`")
    cfg = load_run_config(run_dir / CONFIG_FILE)
    cfg.train.out_dir = str(run_dir)  # where it is now, not where it was trained
    task = build_task(cfg, run_dir)
    model = build_model(cfg, task).to(device)
    load_weights(model, model_checkpoint(run_dir))  # the best evaluation's weights where the run kept them
    model.eval()
    return model, cfg, task
