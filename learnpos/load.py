"""Rebuild a run from its directory: config, task, model with the task's heads, weights.

Everything comes from the directory it is given, never from the `train.out_dir` saved in
its config: a run that was moved or copied is evaluated with its own tokenizer, and the
files a command writes land in that directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from learnpos.config import Config, load_run_config
from learnpos.errors import ConfigError, RunDirError
from learnpos.model import GPT
from learnpos.runs import CONFIG_FILE, load_weights, model_checkpoint
from learnpos.tasks import Task, build_task


def build_model(cfg: Config, task: Task) -> GPT:
    """The model of `cfg` with the task's own heads (if any)."""
    return GPT(cfg.model, heads=task.heads(cfg.model))


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Config, Task]:
    """(model in eval mode, config, task) of a finished or checkpointed run, with the weights
    of its best evaluation if it tracked one (train.early_stop_metric), else its latest."""
    return _load(Path(run_dir), run_config(run_dir), device)


def run_config(run_dir: str | Path) -> Config:
    """The run's config, its train.out_dir set to where the run is now (not where it was trained)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise RunDirError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); train one with `learnpos train`")
    cfg = load_run_config(run_dir / CONFIG_FILE)
    cfg.train.out_dir = str(run_dir)
    return cfg


def _load(run_dir: Path, cfg: Config, device: str | torch.device) -> tuple[GPT, Config, Task]:
    task = build_task(cfg, run_dir)
    model = build_model(cfg, task).to(device)
    load_weights(model, model_checkpoint(run_dir))  # the best evaluation's weights where the run kept them
    model.eval()
    return model, cfg, task


def load_runs(run_dirs: list[str | Path], device: str | torch.device = "cpu",
              command: tuple[str, str] | None = None) -> tuple[torch.nn.Module, Config, Task]:
    """One run as `load_run`; several as the task's ensemble of them (`Task.ensemble`), with
    the first run's config and task, which the evaluation then uses. `command`: (its name, the
    task it needs), checked for every run before anything is combined. The configs are checked
    before any dataset or weights are loaded."""
    names, seen = [str(d) for d in run_dirs], {}
    for name in names:
        if (where := Path(name).resolve()) in seen:
            raise ConfigError(f"{name} is given twice (as {seen[where]}); an ensemble takes each run once")
        seen[where] = name
    cfgs = [run_config(d) for d in run_dirs]
    for name, c in zip(names, cfgs, strict=True):
        if command is not None and c.task != command[1]:
            raise ConfigError(f"{name} is a '{c.task}' run; `{command[0]}` needs a run of task {command[1]}")
        if c.task != cfgs[0].task:
            raise ConfigError(f"{name} is a '{c.task}' run and {names[0]} a '{cfgs[0].task}' run: an ensemble's "
                              f"runs must be of one task")
        if c.train.dtype != cfgs[0].train.dtype:  # the evaluation runs under one autocast: the first run's
            raise ConfigError(f"{name} has train.dtype={c.train.dtype}, {names[0]} {cfgs[0].train.dtype}: an "
                              f"ensemble is evaluated in one precision, so its runs must share train.dtype")
    loaded = [_load(Path(d), c, device) for d, c in zip(run_dirs, cfgs, strict=True)]
    model, cfg, task = loaded[0]
    if len(loaded) == 1:
        return model, cfg, task
    return task.ensemble([m for m, _, _ in loaded], [t for _, _, t in loaded[1:]], names), cfg, task
