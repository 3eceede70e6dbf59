"""Settings derived from the data: `learnpos train --task kg|lm|dialogue --data PATH` with no
preset.

Each task has one documented function from its data's statistics to settings
(`learnpos.derive.kg`, `.lm`, `.dialogue`); then a short probe measures the derived model on
this machine and the schedule is fitted to `train.time_budget` (`learnpos.derive.schedule`).
Any key the user sets wins over both. What was chosen, and why, is printed in a few lines and
the result is an ordinary config (saved as config.json by the run).
"""

from __future__ import annotations

from learnpos.config import Config, load_config
from learnpos.errors import ConfigError

DEFAULT_BUDGET = 10.0  # minutes: about what a preset's run takes on 2 CPU cores
TASKS = ("kg", "lm", "dialogue")


def _module(task: str):
    if task == "kg":
        from learnpos.derive import kg as module
    elif task == "lm":
        from learnpos.derive import lm as module
    elif task == "dialogue":
        from learnpos.derive import dialogue as module
    else:
        raise ConfigError(f"settings are derived from the data for tasks {', '.join(TASKS)}; task '{task}' needs "
                          f"--preset (see `learnpos config --list`)")
    return module


def derived_settings(task: str, data: str, val_data: str | None = None,
                     budget_s: float = DEFAULT_BUDGET * 60) -> tuple[dict, list[str], int]:
    """(settings, reasons, most steps worth training) of `task` on `data`, before any probe."""
    return _module(task).derive(data, val_data, budget_s)  # one signature; kg and dialogue ignore val_data


def derive_config(task: str, data: str, overrides: dict[str, str], val_data: str | None = None,
                  fit_schedule: bool = True) -> tuple[Config, list[str]]:
    """The config of `task` on `data`: derived settings <- the user's `overrides`, the schedule
    fitted to train.time_budget (default DEFAULT_BUDGET minutes) by a probe unless the user
    fixed train.max_iters. Returns it and the lines that say what was chosen and why."""
    import learnpos.tasks  # noqa: F401  (registers the tasks' config sections)
    from learnpos.derive.schedule import fit, probe

    try:
        budget = float(overrides.get("train.time_budget", DEFAULT_BUDGET))
    except ValueError:
        budget = DEFAULT_BUDGET  # load_config below names the bad value
    sizing_budget = budget if budget > 0 else DEFAULT_BUDGET  # 0 = no bound; < 0 is refused by load_config
    settings, why, most = derived_settings(task, data, val_data, sizing_budget * 60)
    settings.setdefault("train.out_dir", f"runs/{task}-{settings.pop('_name', 'data')}")
    settings["train.time_budget"] = DEFAULT_BUDGET
    try:  # the user fixed the steps: the schedule follows them (warmup, evaluations), no probe
        steps = int(overrides["train.max_iters"])
        settings |= {"train.warmup_iters": min(200, round(steps * _module(task).WARMUP_SHARE)),
                     "train.eval_interval": max(1, -(-steps // 10)),
                     "train.log_interval": max(1, min(100, steps // 50))}
    except (KeyError, ValueError):
        pass  # not given (the probe fits it), or not a number (load_config names it)
    if "model.n_embd" in overrides and "model.mlp_hidden" not in overrides:
        settings.pop("model.mlp_hidden", None)  # a derived inner width follows a width the user set
    merged = {k: str(v) for k, v in settings.items()} | dict(overrides)
    cfg = load_config(None, {"task": task, **merged})
    lines = [f"settings derived from the data (learnpos.derive.{task}); any --key=value overrides them:",
             *(f"  {line}" for line in why)]
    if fit_schedule and "train.max_iters" not in overrides:
        lines += [f"  {line}" for line in fit(cfg, probe(cfg), cfg.train.time_budget * 60, most, set(overrides),
                                              _module(task).WARMUP_SHARE)]
    return cfg, lines
