"""Fitting a run to a time budget: a short probe of the derived config measures its step,
evaluation and set-up times on this machine, and the schedule is sized from them.

The probe is the real trainer (`learnpos.train.train`) run for `PROBE_STEPS` steps into a
temporary folder with a log line per step and one evaluation at the end; its metrics log
gives each step's time, the evaluation's and the set-up's (data loading, tokenizer, model).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from learnpos.config import Config

PROBE_STEPS = 30
USE = 0.9  # of the time left after the probe: margin for noise and the final checkpoint
EVAL_SHARE = 0.15  # at most this share of the budget goes to evaluations (at least MIN_EVALS of them)
MIN_EVALS, MAX_EVALS = 2, 10


@dataclass
class Probe:
    setup_s: float  # before the first step: data, tokenizer, model
    step_s: float  # one training step (median of the probe's later steps)
    eval_s: float  # one evaluation plus its checkpoint
    wall_s: float  # the whole probe


def probe(cfg: Config, steps: int = PROBE_STEPS) -> Probe:
    from learnpos.train import train

    c = copy.deepcopy(cfg)
    with tempfile.TemporaryDirectory(prefix="learnpos-probe-") as tmp:
        c.train.out_dir = str(Path(tmp) / "run")
        c.train.max_iters = max(c.train.max_iters, steps * 10)
        c.train.warmup_iters = min(c.train.warmup_iters, c.train.max_iters)
        c.train.log_interval, c.train.eval_interval = 1, steps
        c.train.position_stats, c.train.time_budget, c.train.early_stop_patience = False, 0.0, 0
        result = train(c, stop_after=steps, quiet=True)
        records = [json.loads(line) for line in (Path(c.train.out_dir) / "metrics.jsonl").read_text().splitlines()]
    times = [r["time_s"] for r in records if r["split"] == "train"]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)][len(times) // 3:]
    step_s = statistics.median(gaps) if gaps else times[-1]
    return Probe(setup_s=max(0.0, times[0] - step_s), step_s=step_s,
                 eval_s=max(0.0, result.wall_s - times[-1]), wall_s=result.wall_s)


def fit(cfg: Config, p: Probe, budget_s: float, most_steps: int, fixed: set[str],
        warmup_share: float = 0.05) -> list[str]:
    """Size max_iters, the evaluations, warmup (`warmup_share` of the steps, at most 200) and
    early stopping of `cfg` so that the run fits `budget_s` seconds after the probe; keys in
    `fixed` (the user's) are left alone."""
    t = cfg.train
    avail = USE * (budget_s - p.wall_s) - p.setup_s
    n_evals = MAX_EVALS
    while n_evals > MIN_EVALS and n_evals * p.eval_s > EVAL_SHARE * max(avail, 0.0):
        n_evals -= 1
    fits = max(1, math.floor((avail - n_evals * p.eval_s) / p.step_s)) if budget_s > 0 else most_steps
    steps = t.max_iters if "train.max_iters" in fixed else min(fits, most_steps)
    every = t.eval_interval if "train.eval_interval" in fixed else max(1, math.ceil(steps / n_evals))
    set_ = {"train.max_iters": steps, "train.eval_interval": every,
            "train.warmup_iters": min(200, max(1, round(steps * warmup_share))),
            "train.log_interval": max(1, min(100, every // 5)),
            "train.early_stop_patience": 3 if steps // every >= 5 and t.early_stop_metric else 0}
    for key, value in set_.items():
        if key not in fixed:
            setattr(t, key.split(".")[1], value)
    t.warmup_iters = min(t.warmup_iters, t.max_iters)
    bound = "the data (epochs)" if steps == most_steps and most_steps < fits else "the time budget"
    planned = p.wall_s + p.setup_s + t.max_iters * p.step_s + math.ceil(t.max_iters / t.eval_interval) * p.eval_s
    lines = [f"probe ({PROBE_STEPS} steps, {p.wall_s:.0f} s): {p.step_s * 1000:.0f} ms a step, {p.eval_s:.1f} s an "
             f"evaluation, {p.setup_s:.1f} s to set up",
             f"schedule: {t.max_iters:,} steps (set by {bound}), warmup {t.warmup_iters}, cosine to the end, an "
             f"evaluation every {t.eval_interval:,}"
             + (f", early stop after {t.early_stop_patience} without progress" if t.early_stop_patience else ""),
             f"planned {planned / 60:.1f} of the {budget_s / 60:g} minutes (train.time_budget stops the run if "
             f"it runs longer)" if budget_s > 0 else f"planned {planned / 60:.1f} minutes (no train.time_budget)"]
    if steps < 100 and "train.max_iters" not in fixed and bound == "the time budget":
        lines.append(f"warning: only {steps} steps fit; give more time with --train.time_budget=MINUTES")
    return lines
