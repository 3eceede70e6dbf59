"""`learnpos tune`: hyperparameter search with Optuna over a task's declared space.

    learnpos tune --task kg --data PATH [--preset P] --budget MINUTES [--trials N]
                  [--storage sqlite:///PATH] [--study NAME] [--jobs J] [--out DIR]

The base config is the preset (with the data) or the settings derived from the data
(`learnpos.derive`); it is the study's first trial, so the search starts from what a user
would run anyway. Then the TPE sampler proposes settings from the task's `SPACE`
(`learnpos.derive.<task>`) in two stages: for the first FIRST_STAGE of the budget only the
training settings (learning rate, dropout, batch, ...; `Param.stage` 1) vary, near the base
(a learning rate within a factor LOCAL of it), then every key over its whole range, the model's
shape and the recipe included. Each trial is an ordinary run directory `OUT/trial-NNNN` trained by
`learnpos.train.train`, its validation metric reported to a percentile pruner at every
evaluation past half the base's steps (a trial in the worst PRUNE_BELOW % of the complete
trials at the same step is stopped there).
A trial's value is its best validation figure (the weights `best/` keeps).

The study lives in SQLite (default `OUT/study.db`): a tune stopped in any way, `kill -9`
included, resumes where it was with the same command. A trial that was running when the
process died is marked failed and proposed again first, continuing its run directory from its
last checkpoint. The budget counts the minutes of every session of the study. One tune
writes an OUT folder at a time (its lock); several studies can share one storage file and be
compared by name.

`--jobs J` runs J trials at once, in threads of this process, each with 1/J of torch's threads
(on 2 cores the default, one trial at a time with both, is usually as fast).

At the end (and after every trial) OUT holds `best.toml` (a preset: `learnpos train --preset
OUT/best.toml`), `summary.json`, `summary.md` (the trials table and the parameters that
mattered, by PED-ANOVA importance) and `trials.png` (the metric by trial).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path

from learnpos.analysis.plots import plot_trials
from learnpos.config import Config, load_config, set_override, to_toml, validate
from learnpos.errors import ConfigError
from learnpos.files import atomic_write_text, lock_dir

log = logging.getLogger(__name__)
METRICS = {"kg": ("mrr", "max"), "lm": ("loss", "min"), "dialogue": ("loss", "min")}
SUMMARY, BEST_PRESET, PLOT = "summary.json", "best.toml", "trials.png"
FIRST_STAGE = 0.5  # of the budget: trials vary only the stage-1 (training) settings, the rest stay the base's
# the median (50) cut 13 of the first 18 trials of a 20-minute UMLS tune, 10 of them within 16 s (the base trial took
# 67 s), where early validation figures are noisy
PRUNE_BELOW = 25.0
LOCAL = 2.0  # in the first stage a log-scaled setting stays within base / LOCAL .. base * LOCAL


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("learnpos tune needs Optuna: pip install 'learnpos[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def space_of(task: str):
    from learnpos.derive import _module

    return _module(task).SPACE


def base_config(task: str, data: str, preset: str | None, overrides: dict[str, str], trial_minutes: float,
                val_data: str | None = None) -> tuple[Config, list[str]]:
    """The study's starting point: the preset plus the data, or the derived settings, with the
    user's overrides."""
    if preset:
        import learnpos.tasks  # noqa: F401

        cfg = load_config(preset, {k: v for k, v in overrides.items() if k != "task"})
        if cfg.task != task:
            raise ConfigError(f"--preset {preset} is a '{cfg.task}' preset, not '{task}'")
        if data:
            section = {"kg": "kg", "lm": "lm", "dialogue": "dialogue"}[task]
            set_override(cfg, f"{section}.data", str(Path(data).resolve()))
        return cfg, [f"base: preset {preset}"]
    from learnpos.derive import derive_config

    over = {"train.time_budget": f"{trial_minutes:g}", **overrides}
    cfg, lines = derive_config(task, str(Path(data).resolve()), over, val_data)
    return cfg, ["base: settings derived from the data", *lines]


def _metric(cfg: Config) -> tuple[str, str]:
    t = cfg.train
    if t.early_stop_metric:
        return t.early_stop_metric, t.early_stop_mode
    return METRICS.get(cfg.task, ("loss", "min"))


def _base_value(cfg: Config, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _suggest(trial, p, base, local: bool = False):
    """A value of `p` for `trial`; `local` (the first stage): a float within a factor LOCAL of the
    base's value (log-scaled) or within a quarter of its range of it (linear)."""
    if p.kind == "float":
        low, high = min(p.low, base), max(p.high, base)
        if local and p.log and base > 0:
            low, high = max(low, base / LOCAL), min(high, base * LOCAL)
        elif local:
            low, high = max(low, base - (p.high - p.low) / 4), min(high, base + (p.high - p.low) / 4)
        return trial.suggest_float(p.key, low, high, log=p.log)
    if p.kind == "int":
        return trial.suggest_int(p.key, min(int(p.low), base), max(int(p.high), base))
    choices = list(p.choices) if p.kind == "scale" or base in p.choices else [base, *p.choices]
    picked = trial.suggest_categorical(_name(p), choices)
    return max(1, round(base * picked)) if p.kind == "scale" else picked


def _name(p) -> str:
    """The parameter's name in the study: its key, or for a scale parameter "key (x base)"."""
    return f"{p.key} (x base)" if p.kind == "scale" else p.key


def _baseline_params(cfg: Config, space) -> dict:
    """The suggestion values that reproduce the base config (scale parameters: factor 1)."""
    return {_name(p): 1.0 if p.kind == "scale" else _base_value(cfg, p.key) for p in space}


def apply_params(base: Config, values: dict) -> Config:
    """A copy of `base` with `values` (dotted keys) set; the head count follows the width (64-
    wide heads, or the base's head count when it divides the width) and the schedule's
    evaluations follow the step count."""
    cfg = copy.deepcopy(base)
    for key, value in values.items():
        set_override(cfg, key, str(value).lower() if isinstance(value, bool) else str(value))
    m, t = cfg.model, cfg.train
    if m.n_embd % m.n_head:
        m.n_head = max(1, m.n_embd // 64) if m.n_embd % 64 == 0 else max(1, m.n_embd // 32)
    if "train.max_iters" in values:
        scale = t.max_iters / max(1, base.train.max_iters)
        t.eval_interval = max(1, round(base.train.eval_interval * scale))
        t.warmup_iters = min(t.max_iters, round(base.train.warmup_iters * scale))
    validate(cfg)
    return cfg


def tune(task: str, data: str, budget: float, preset: str | None = None, trials: int = 0, storage: str = "",
         study_name: str = "", jobs: int = 1, out: str = "", overrides: dict[str, str] | None = None,
         seed: int = 0, val_data: str | None = None, quiet: bool = False, say=print) -> dict:
    """Run (or resume) a study; returns the summary (also in OUT/summary.json)."""
    optuna = _optuna()
    overrides = dict(overrides or {})
    name = study_name or f"{task}-{Path(data).name or 'data'}" + (f"-{Path(preset).stem}" if preset else "")
    out_dir = Path(out or f"runs/tune-{name}")
    with lock_dir(out_dir, "--out"):
        storage = storage or f"sqlite:///{out_dir.resolve() / 'study.db'}"
        trial_minutes = min(10.0, max(1.0, budget / 8))
        base, lines = base_config(task, data, preset, overrides, trial_minutes, val_data)
        metric, mode = _metric(base)
        space = [p for p in space_of(task) if p.key not in overrides]  # what the user sets is not searched
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
        # no pruning in the first half of the base's steps: early figures rank trials poorly (on UMLS,
        # pruning from the end of warmup on cut 17 of 19 sampled trials, most within a third of the
        # base trial's time, some at 0.938 where the base ends at 0.947; from step 0, 33 of 44 at 3 s)
        pruner = optuna.pruners.PercentilePruner(PRUNE_BELOW, n_startup_trials=3,
                                                 n_warmup_steps=max(base.train.warmup_iters, base.train.max_iters // 2))
        try:
            study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, sampler=sampler,
                                        pruner=pruner, direction="maximize" if mode == "max" else "minimize")
        except Exception as e:  # noqa: BLE001 (SQLAlchemy / Optuna errors: one line for the user)
            raise ConfigError(f"--storage {storage}: cannot open the study ({str(e).splitlines()[0]})") from None
        if study.user_attrs.get("metric", metric) != metric or study.user_attrs.get("task", task) != task:
            raise ConfigError(f"study '{name}' in {storage} tunes {study.user_attrs.get('task')} for "
                              f"{study.user_attrs.get('metric')}; pick another --study name")
        study.set_user_attr("metric", metric)
        study.set_user_attr("task", task)
        resumed = _recover(study, optuna)
        if study.trials:  # a resumed study: a sampler seeded as before would propose the last session's trials again
            study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials), n_startup_trials=5)
        if not study.trials:
            study.enqueue_trial(_baseline_params(base, space), user_attrs={"baseline": True})
        for line in lines + [f"study '{name}' in {storage}: {len(study.trials)} trial(s) so far, maximising"
                             if mode == "max" else f"study '{name}' in {storage}: {len(study.trials)} trial(s) so far, "
                             f"minimising"]:
            say(line) if not quiet else None
        if resumed:
            say(f"resuming: {resumed} trial(s) cut short by the last session are proposed again") if not quiet else None
        spent = float(study.user_attrs.get("spent_s", 0.0))
        t_start = time.perf_counter()
        left = lambda: budget * 60 - spent - (time.perf_counter() - t_start)  # noqa: E731

        def worst(step: int) -> str:
            return f"in the worst {PRUNE_BELOW:g} % at step {step}"

        def objective(trial):
            stage = 1 if left() > (1 - FIRST_STAGE) * budget * 60 else 2
            again = trial.user_attrs.get("retry_params")  # a cut-short trial: exactly its parameters, again
            values = {p.key: _suggest(trial, p, _base_value(base, p.key), local=stage == 1 and again is None)
                      for p in space if (_name(p) in again if again is not None else p.stage <= stage)}
            cfg = apply_params(base, values)
            run_dir = Path(trial.user_attrs.get("resume_dir") or out_dir / f"trial-{trial.number:04d}")
            trial.set_user_attr("run_dir", str(run_dir))
            cfg.train.out_dir = str(run_dir)
            own = cfg.train.time_budget or math.inf
            cfg.train.time_budget = max(0.05, min(own, left() / 60))
            study_cut = cfg.train.time_budget < own  # the study's end, not the trial's own budget, bounds it
            best = {"value": None}
            pruned = {"at": None}

            def on_eval(step: int, metrics: dict) -> bool:
                value = float(metrics[metric])
                better = best["value"] is None or (value > best["value"] if mode == "max" else value < best["value"])
                best["value"] = value if better else best["value"]
                trial.report(value, step)
                if trial.should_prune():
                    pruned["at"] = step
                    return True
                return False

            from learnpos.runs import read_metrics
            from learnpos.train import train

            resume = (run_dir / "config.json").exists()
            if resume:  # a trial of a killed session: its run goes on, with what the session has left
                history = [r for r in read_metrics(run_dir) if metric in r and r.get("split") == "val"]
                for r in history:
                    on_eval(r["step"], r)
                used = max([r.get("time_s", 0.0) for r in read_metrics(run_dir)] or [0.0])
                cfg.train.time_budget = (used + max(3.0, left())) / 60
                if pruned["at"] is not None:
                    raise optuna.TrialPruned(worst(pruned["at"]))
            elif run_dir.exists():  # made by a killed session before it wrote its config: nothing to keep
                import shutil

                shutil.rmtree(run_dir)
            t0 = time.perf_counter()
            result = train(cfg, resume=resume, quiet=True, on_eval=on_eval)
            trial.set_user_attr("wall_s", round(time.perf_counter() - t0, 1))
            study.set_user_attr("spent_s", spent + time.perf_counter() - t_start)
            if pruned["at"] is not None:
                raise optuna.TrialPruned(worst(pruned["at"]))
            if study_cut and result.step < cfg.train.max_iters and left() <= 1.0:
                # stopped early by the study's end: its value says how far it got, not how good it is
                raise optuna.TrialPruned(f"the study's budget ended it at step {result.step}")
            if best["value"] is None:
                raise ConfigError(f"trial {trial.number} evaluated nothing")
            return best["value"]

        def after(study, trial):
            study.set_user_attr("spent_s", spent + time.perf_counter() - t_start)
            if not quiet:
                value = "pruned" if trial.value is None else f"{metric} {trial.value:.4f}"
                say(f"trial {trial.number}: {trial.state.name.lower()}, {value} "
                    f"({trial.user_attrs.get('wall_s', 0):.0f} s; {max(0.0, left()) / 60:.1f} min left)")
            write_summary(study, out_dir, base, metric, mode)

        if jobs > 1:  # trials run in threads of this process: each gets its share of the cores
            import torch

            torch.set_num_threads(max(1, torch.get_num_threads() // jobs))
        done = len([t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")])  # a failed one is retried
        n = (trials - done) if trials else None
        if (n is None or n > 0) and left() > 0:
            study.optimize(objective, n_trials=n, timeout=max(1.0, left()), n_jobs=jobs, callbacks=[after],
                           catch=(), gc_after_trial=True)
        study.set_user_attr("spent_s", spent + time.perf_counter() - t_start)
        summary = write_summary(study, out_dir, base, metric, mode)
    return summary


def _recover(study, optuna) -> int:
    """Trials left RUNNING by a killed session (this process holds the OUT lock, so none is
    alive): mark them failed and propose their parameters again, continuing their run dirs."""
    from optuna.trial import TrialState

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial({k: v for k, v in t.params.items()},
                            user_attrs={"resume_dir": t.user_attrs.get("run_dir", ""), "retry_of": t.number,
                                        "retry_params": sorted(t.params)})
    return len(stale)


def write_summary(study, out_dir: Path, base: Config, metric: str, mode: str) -> dict:
    from optuna.trial import TrialState

    rows = []
    for t in study.trials:
        if t.state == TrialState.RUNNING or t.state == TrialState.WAITING:
            continue
        last = max(t.intermediate_values) if t.intermediate_values else None
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                     "reported": t.intermediate_values.get(last) if last is not None else None,
                     "params": t.params, "run_dir": t.user_attrs.get("run_dir"),
                     "wall_s": t.user_attrs.get("wall_s"), "baseline": bool(t.user_attrs.get("baseline"))})
    complete = [r for r in rows if r["state"] == "complete"]
    best = (max if mode == "max" else min)(complete, key=lambda r: r["value"]) if complete else None
    baseline = next((r for r in complete if r["baseline"]), None)
    summary = {"study": study.study_name, "task": base.task, "metric": metric, "direction": mode,
               "trials": rows, "best": best, "baseline": baseline,
               "spent_minutes": round(float(study.user_attrs.get("spent_s", 0.0)) / 60, 2),
               "importance": _importance(study) if len(complete) >= 4 else {}}
    if best is not None:
        best_cfg = json.loads((Path(best["run_dir"]) / "config.json").read_text(encoding="utf-8"))
        best_cfg["train"]["out_dir"] = f"runs/{study.study_name}-tuned"
        best_cfg["model"]["vocab_size"] = base.model.vocab_size  # 0: from the data, as the run resolved it
        best_cfg["train"]["dtype"], best_cfg["train"]["device"] = base.train.dtype, base.train.device  # e.g. auto
        header = (f"learnpos tune: trial {best['trial']} of study '{study.study_name}', validation {metric} "
                  f"{best['value']:.4f}" + (f" (the base config: {baseline['value']:.4f})" if baseline else ""))
        atomic_write_text(out_dir / BEST_PRESET, to_toml(best_cfg, header))
        summary["preset"] = str(out_dir / BEST_PRESET)
    atomic_write_text(out_dir / SUMMARY, json.dumps(summary, indent=1, default=str) + "\n")
    atomic_write_text(out_dir / "summary.md", summary_markdown(summary))
    plot_trials(summary, out_dir / PLOT)
    return summary


def _importance(study) -> dict[str, float]:
    import optuna

    try:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        return {k: round(v, 4) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
    except Exception as e:  # noqa: BLE001 (too few or too similar trials: no importances yet)
        log.info("no parameter importances yet: %s", e)
        return {}


def summary_markdown(s: dict) -> str:
    keys = sorted({k for r in s["trials"] for k in r["params"]})
    lines = [f"# Study {s['study']}: {s['task']}, validation {s['metric']} ({s['direction']})", "",
             f"{len(s['trials'])} trials, {s['spent_minutes']} minutes.", "",
             "| trial | state | " + s["metric"] + " | wall s | " + " | ".join(keys) + " |",
             "|---" * (4 + len(keys)) + "|"]
    for r in s["trials"]:
        value = f"{r['value']:.4f}" if r["value"] is not None else (
            f"({r['reported']:.4f})" if r["reported"] is not None else "-")
        cells = [_cell(r["params"].get(k)) for k in keys]
        mark = " (base)" if r["baseline"] else ""
        lines.append(f"| {r['trial']}{mark} | {r['state']} | {value} | {r['wall_s'] or '-'} | " + " | ".join(cells)
                     + " |")
    if s.get("best"):
        lines += ["", f"Best: trial {s['best']['trial']}, {s['metric']} {s['best']['value']:.4f}; preset "
                      f"`{s.get('preset')}` (`learnpos train --preset {s.get('preset')}`)."]
    else:
        lines += ["", "No trial completed, so no preset was written: give a larger --budget (the same command "
                      "goes on with the study)."]
    if s.get("importance"):
        lines += ["", "Parameters that mattered (PED-ANOVA importance):", ""]
        lines += [f"- {k}: {v:.3f}" for k, v in s["importance"].items()]
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "-" if v is None else str(v)
