"""Rebuild a run from its directory: config, task, model with the task's heads, weights.

Everything comes from the directory it is given, never from the `train.out_dir` saved in
its config: a run that was moved or copied is evaluated with its own tokenizer. Loading
writes nothing into the run.

config.json is untrusted input: the sizes it names are checked against the shapes in the
weights file's header (and a model built on the meta device) before any memory is allocated
for the model, so a config that disagrees with its weights is one error, not a huge
allocation or a traceback. The data a run was trained on is recorded in its data.json;
`data_change` says in one line when the data read now differs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from learnpos.config import Config, load_run_config, set_override
from learnpos.data.sources import describe_change
from learnpos.errors import ConfigError, DataError, RunDirError
from learnpos.model import GPT
from learnpos.runs import (
    CONFIG_FILE,
    MODEL_FILE,
    check_shapes,
    load_weights,
    model_checkpoint,
    read_data_manifest,
    weight_shapes,
)
from learnpos.tasks import TASKS, Task, build_task

log = logging.getLogger(__name__)


def build_model(cfg: Config, task: Task) -> GPT:
    """The model of `cfg` with the task's own heads (if any)."""
    return GPT(cfg.model, heads=task.heads(cfg.model))


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", data: dict[str, str] | None = None,
             check_data: bool = False) -> tuple[GPT, Config, Task]:
    """(model in eval mode, config, task) of a finished or checkpointed run, with the weights
    of its best evaluation if it tracked one (train.early_stop_metric), else its latest.
    data: {field: path} of the task's data fields (e.g. {"data": PATH}) where the data is now.
    check_data: read the data now and warn (one line) if it differs from the run's data.json."""
    return load_runs([run_dir], device, data=data, check_data=check_data)


def data_keys(cfg: Config) -> list[str]:
    """The dotted config keys that name the task's data paths (e.g. lm.data, lm.val_data)."""
    cls = TASKS[cfg.task]
    return [f"{cls.config_section}.{name}" for name in cls.data_fields]


def absolute_data_paths(cfg: Config) -> None:
    """Make every data path of `cfg` absolute, so a run's config.json names its data wherever
    the run is used from."""
    for key in data_keys(cfg):
        section, name = key.split(".")
        value = getattr(cfg.sections[section], name)
        if value:
            setattr(cfg.sections[section], name, os.path.abspath(value))


def set_data_paths(cfg: Config, data: dict[str, str], run: str) -> None:
    """Point the task's data fields at where the data is now (`--data` of a reader)."""
    cls = TASKS[cfg.task]
    for name, value in data.items():
        if name not in cls.data_fields:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag}: {run} is a '{cfg.task}' run, whose data is given by "
                              f"{', '.join('--' + f.replace('_', '-') for f in cls.data_fields) or 'nothing'}")
        set_override(cfg, f"{cls.config_section}.{name}", os.path.abspath(value))


def data_change(run_dir: str | Path, task: Task) -> str | None:
    """One line saying how the data the task reads now differs from the run's data.json;
    None when it is the same (or the run has no data.json)."""
    saved = read_data_manifest(run_dir)
    return None if saved is None else describe_change(saved, task.data_sources())


def run_config(run_dir: str | Path) -> Config:
    """The run's config, its train.out_dir set to where the run is now (not where it was trained)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise RunDirError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); train one with `learnpos train`")
    cfg = load_run_config(run_dir / CONFIG_FILE)
    cfg.train.out_dir = str(run_dir)
    return cfg


def check_config_against_weights(cfg: Config, task: Task, weights: Path) -> None:
    """RunDirError unless the model `cfg` describes has exactly the tensors of `weights`
    (names and shapes from its header). The layer count and width are compared first, so a
    config asking for a million layers is refused before even a meta model is built."""
    shapes, _ = weight_shapes(weights)
    m = cfg.model
    blocks = {k.split(".")[1] for k in shapes if k.startswith("blocks.")}
    emb = shapes.get("tok_emb.weight")
    if len(blocks) != m.n_layer or emb is None or len(emb) != 2 or emb[1] != m.n_embd:
        raise RunDirError(f"{weights} holds {len(blocks)} blocks of width {emb[1] if emb and len(emb) == 2 else '?'} "
                          f"but config.json says model.n_layer={m.n_layer}, model.n_embd={m.n_embd}: the weights and "
                          f"the config come from different runs")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(cfg, task).state_dict().items()}
    check_shapes(expected, shapes, weights, {"head.weight"} if m.tie_weights else set())


def _load(run_dir: Path, cfg: Config, device: str | torch.device, check_data: bool) -> tuple[GPT, Config, Task]:
    task = build_task(cfg, run_dir)
    changed = data_change(run_dir, task) if check_data else None
    if changed:
        log.warning("warning: %s was trained on other data: %s; what follows is for the data as it is now",
                    run_dir, changed)
    folder = model_checkpoint(run_dir)  # the best evaluation's weights where the run kept them
    try:
        check_config_against_weights(cfg, task, folder / MODEL_FILE)
    except RunDirError as e:
        if changed:  # e.g. a KG whose entities changed: the model no longer fits the data
            raise DataError(f"{run_dir} was trained on other data ({changed}), and its model does not fit the data "
                            f"as it is now ({e})") from None
        raise
    model = build_model(cfg, task).to(device)
    load_weights(model, folder)
    model.eval()
    return model, cfg, task


def load_runs(run_dirs: list[str | Path], device: str | torch.device = "cpu",
              command: tuple[str, str] | None = None, data: dict[str, str] | None = None,
              check_data: bool = False) -> tuple[torch.nn.Module, Config, Task]:
    """One run as `load_run`; several as the task's ensemble of them (`Task.ensemble`), with
    the first run's config and task, which the evaluation then uses. `command`: (its name, the
    task it needs), checked for every run before anything is combined. The configs are checked
    before any dataset or weights are loaded. `data`, `check_data`: as for `load_run`, for
    every run."""
    names, seen = [str(d) for d in run_dirs], {}
    for name in names:
        if (where := Path(name).resolve()) in seen:
            raise ConfigError(f"{name} is given twice (as {seen[where]}); an ensemble takes each run once")
        seen[where] = name
    cfgs = [run_config(d) for d in run_dirs]
    for name, c in zip(names, cfgs, strict=True):
        if data:
            set_data_paths(c, data, name)
        if command is not None and c.task != command[1]:
            raise ConfigError(f"{name} is a '{c.task}' run; `{command[0]}` needs a run of task {command[1]}")
        if c.task != cfgs[0].task:
            raise ConfigError(f"{name} is a '{c.task}' run and {names[0]} a '{cfgs[0].task}' run: an ensemble's "
                              f"runs must be of one task")
        if c.train.dtype != cfgs[0].train.dtype:  # the evaluation runs under one autocast: the first run's
            raise ConfigError(f"{name} has train.dtype={c.train.dtype}, {names[0]} {cfgs[0].train.dtype}: an "
                              f"ensemble is evaluated in one precision, so its runs must share train.dtype")
    loaded = [_load(Path(d), c, device, check_data) for d, c in zip(run_dirs, cfgs, strict=True)]
    model, cfg, task = loaded[0]
    if len(loaded) == 1:
        return model, cfg, task
    return task.ensemble([m for m, _, _ in loaded], [t for _, _, t in loaded[1:]], names), cfg, task
