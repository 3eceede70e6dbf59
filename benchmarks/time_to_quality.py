"""Time to quality on shakespeare-char: the nanoGPT recipe and learnpos's recipe switches, side
by side, each timed to a target validation loss.

    python benchmarks/time_to_quality.py [--json] [--data PATH] [--target 1.88] [--seeds 1337,1,2]
        [--variants nanogpt,recipe,muon,...] [--iters N] [--eval-every 100] [--fine-every 20] [--threads 0]
        [--dtype auto|float32|bfloat16] [--runs PATH] [--fresh] [--timing-rounds 3]
        [--preset shakespeare-char] [--set KEY=VALUE ...]

Every variant is the nanoGPT CPU recipe (the `shakespeare-char` preset with GPT-2's N(0, 0.02)
position table: 4 x 128, block 64, batch 12, 2,000 iterations, AdamW 1e-3 cosine to 1e-4, 100
warmup) plus the overrides named in VARIANTS, trained by learnpos itself: the same step code on
both sides, so a ratio is the recipe's. `--preset` starts every variant from another LM preset
(shakespeare-bpe, wikitext2-bpe with --data its folder) and `--set KEY=VALUE` adds an override to
every variant, the baseline included (`--set model.positional.init=sinusoidal` measures the
shakespeare-char preset's own table init against the recipe's).

A variant's *time to target* is its steps to the target times its time per step:
- steps to target: every `--eval-every` steps the whole validation split is evaluated; the first
  evaluation at or below `--target` ends the run (a run that never gets there trains its whole
  schedule and reports its final loss). The variants that reach it fastest (FINE, the recipe's
  headline among them) are evaluated every `--fine-every` steps: 100 of the recipe's steps are
  0.12x of the baseline's time, too coarse to tell 0.5x from 0.6x. Steps do not depend on the
  machine's speed (a CPU run in one precision is deterministic), so each (variant, seed) run is
  kept in `--runs` (default benchmarks/results/kept/time_to_quality.json, with the commit it ran
  at) and a later invocation reuses it: the 3-seed ablation can be spread over several sittings.
- time per step: measured in this invocation, all variants interleaved (`--timing-rounds`
  rounds, each variant 40 steps of a short run in one process, order reversed every other round;
  the median), so a drift in the machine's speed (up to 1.7x within a session here) hits every
  variant alike. Evaluations and checkpoints are not counted (they are this benchmark's
  instrument).
`--target baseline` first trains the baseline's whole schedule on every seed and takes its mean
final loss as the target of the others: "the preset's quality in what share of its time" on a
preset with no published target, e.g. `--preset wikitext2-bpe --data wikitext-2 --target baseline
--variants recipe` (a value "xF" in VARIANTS is F times the preset's own: `recipe` doubles
wikitext2-bpe's batch of 16 and halves its 5,000 steps as it does shakespeare-char's 12 and 2,000).
The baseline is the nanoGPT recipe's whole 2,000 iterations (1.88 is where that recipe ends in
nanoGPT's report; here it ends near 1.90) at its time per step. Per variant: the median steps to
target over seeds (None if any seed misses), time to target, its ratio to the baseline, and the
final loss of the runs that trained their whole schedule. `recipe` is the combination learnpos
proposes (RECIPE); the JSON's `time_to_target_s`, `baseline_time_to_target_s` and `ratio` (< 1 =
faster) are about it. Each quality run is a process of its own (`--one VARIANT --seed S`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import torch

from learnpos.config import load_config
from learnpos.tasks.lm import LMTask
from learnpos.train import train

_BESIDE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
DEFAULT_DATA = _BESIDE if _BESIDE.exists() else Path("/work/shared/data/tinyshakespeare/input.txt")
RUNS = Path(__file__).resolve().parent / "results" / "kept" / "time_to_quality.json"  # not runs/: .gitignore
NANOGPT = {"model.positional.init": "normal"}  # the preset with the recipe's own position-table init

# One switch each, on top of the nanoGPT recipe (the speedrun lessons, and the table's own settings)
VARIANTS = {
    "nanogpt": {},
    "muon": {"train.optimizer": "muon"},
    "zero-init": {"model.zero_init_proj": "true"},
    "untied": {"model.tie_weights": "false"},
    "relu2": {"model.mlp": "relu2"},
    "qk-norm": {"model.qk_norm": "true"},
    "softcap": {"model.logit_softcap": "15"},
    "wsd": {"train.schedule": "wsd"},
    "lr x2": {"train.lr": "x2", "train.min_lr": "x2"},
    "batch x2": {"train.batch_size": "x2"},
    "muon + table lr x3": {"train.optimizer": "muon", "model.positional.lr_scale": "3"},
    "muon + table decay": {"train.optimizer": "muon", "model.positional.weight_decay": "true"},
    "muon + batch x2": {"train.optimizer": "muon", "train.batch_size": "x2"},
    "muon + 3 ns steps": {"train.optimizer": "muon", "train.muon_ns_steps": "3"},
    "muon + 1000 steps": {"train.optimizer": "muon", "train.max_iters": "1000"},
}
# learnpos's proposal. First one-seed passes (seed 1337; final val loss; steps to 1.88): nanoGPT 1.899 (never),
# muon 1.632 (800), muon + 1000 steps 1.740 (700), muon + relu2 + 1000 steps 1.852 (900), relu2 1.802 (1400),
# lr x2 1.793 (1400), untied 1.878 (2000), zero-init 1.902 (never), muon + batch x2 1.546 (500). relu2 helps
# AdamW but not Muon; a larger batch makes Muon's per-step iteration cheaper per token.
# = the shakespeare-char-muon preset (tests/test_performance_doc.py holds the two equal)
RECIPE = {"train.optimizer": "muon", "train.batch_size": "x2", "train.max_iters": "x0.5"}
VARIANTS["recipe"] = RECIPE
FINE = ("recipe", "muon + batch x2")  # evaluated every --fine-every steps (they reach the target in ~500)


def resolve(name: str, preset: str = "shakespeare-char", sets: list[str] = ()) -> dict:
    """The variant's overrides for `preset`: a value "xF" is F times the preset's own (batch x2 is
    24 on shakespeare-char's 12, 32 on wikitext2-bpe's 16), so a recipe carries to other presets
    as the same change."""
    sets = dict(x.split("=", 1) for x in sets)
    base = load_config(preset, {**NANOGPT, **sets})
    out = {}
    for key, value in VARIANTS[name].items():
        if value.startswith("x"):
            section, field = key.split(".", 1)
            old = getattr(getattr(base, section), field)
            value = str(round(old * float(value[1:])) if isinstance(old, int) else old * float(value[1:]))
        out[key] = value
    return out


def _overrides(name: str, sets: list[str], preset: str = "shakespeare-char") -> dict:
    return {**NANOGPT, **resolve(name, preset, sets), **dict(x.split("=", 1) for x in sets)}


def run_one(name: str, seed: str, data: str, target: float, iters: int, eval_every: int, dtype: str | None,
            out_dir: str, preset: str = "shakespeare-char", sets: list[str] = ()) -> dict:
    """One quality run: the first evaluation at or below `target` ends it."""
    over = {**_overrides(name, sets, preset), "lm.data": data, "train.seed": seed, "train.out_dir": out_dir,
            "train.eval_interval": str(eval_every), "train.log_interval": str(eval_every)}
    if dtype:
        over["train.dtype"] = dtype
    if iters:
        base = load_config(preset, {"lm.data": data}).train
        over |= {"train.max_iters": str(iters), "train.warmup_iters": str(min(base.warmup_iters, iters // 4 or 1))}
    cfg = load_config(preset, over)
    reached = {}

    def on_eval(step, metrics):
        if metrics["loss"] <= target:
            reached.update(step=step, loss=metrics["loss"])
        return bool(reached)

    t0 = time.perf_counter()
    result = train(cfg, quiet=True, on_eval=on_eval)
    return {"step_at_target": reached.get("step"), "val_loss": round(float(result.metrics["loss"]), 4),
            "steps_run": result.step, "iters": cfg.train.max_iters, "precision": cfg.train.dtype,
            "wall_s": round(time.perf_counter() - t0, 1)}


def step_times(names: list[str], data: str, dtype: str | None, rounds: int, preset: str = "shakespeare-char",
               sets: list[str] = (), steps: int = 40, skip: int = 5) -> dict:
    """ms per training step of each variant: short runs (`skip` + `steps` steps, the median
    interval between consecutive batches after the first `skip`), variants interleaved over
    `rounds` rounds (order reversed every other round); the median over rounds."""
    stamps: list[float] = []
    real = LMTask.train_batch

    def train_batch(task, step, batch_size):
        stamps.append(time.perf_counter())
        return real(task, step, batch_size)

    out: dict[str, list[float]] = {n: [] for n in names}
    LMTask.train_batch = train_batch
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(rounds):
                for name in (names if r % 2 == 0 else names[::-1]):
                    n = skip + steps + 1
                    over = {**_overrides(name, sets, preset), "lm.data": data, "train.out_dir": f"{tmp}/{name}-{r}",
                            "train.max_iters": str(n), "train.warmup_iters": "1", "train.eval_interval": str(n),
                            "train.log_interval": str(n), "lm.eval_windows": "8"}
                    if dtype:
                        over["train.dtype"] = dtype
                    stamps.clear()
                    train(load_config(preset, over), quiet=True)
                    gaps = [b - a for a, b in zip(stamps[skip:-1], stamps[skip + 1:], strict=True)]
                    out[name].append(statistics.median(gaps) * 1e3)
    finally:
        LMTask.train_batch = real
    return {name: round(statistics.median(ms), 2) for name, ms in out.items()}


def summarise(runs: dict[str, dict], ms: dict[str, float], baseline: str) -> dict:
    out = {}
    for name, by_seed in runs.items():
        steps = [r["step_at_target"] for r in by_seed.values()]
        full = [r["val_loss"] for r in by_seed.values() if r["step_at_target"] is None]
        median_steps = None if None in steps else statistics.median(steps)
        out[name] = {"overrides": VARIANTS.get(name, {}), "steps_to_target": median_steps, "ms_per_step": ms[name],
                     "time_to_target_s": None if median_steps is None else round(median_steps * ms[name] / 1e3, 1),
                     "final_val_loss": round(statistics.mean(full), 4) if full else None,
                     "final_val_loss_sd": round(statistics.pstdev(full), 4) if full else None,
                     "by_seed": by_seed}
    base = out.get(baseline)
    base_s = round(next(iter(base["by_seed"].values()))["iters"] * base["ms_per_step"] / 1e3, 1) if base else None
    for v in out.values():
        v["ratio"] = round(v["time_to_target_s"] / base_s, 3) if base_s and v["time_to_target_s"] else None
    return {"variants": out, "baseline_s": base_s}


def _elsewhere(args) -> bool:
    """Runs of another preset or with --set: kept under their own keys, beside the default ones."""
    return args.preset != "shakespeare-char" or bool(args.set)


def _key(name: str, seed: str, args) -> str:
    return f"{name}|{seed}" + (f"|{args.preset}|{','.join(args.set)}" if _elsewhere(args) else "")


def _every(name: str, args) -> int:
    return args.fine_every if name in FINE else args.eval_every


def _settings(name: str, args) -> dict:
    """What a kept run must match to be reused."""
    out = {"overrides": resolve(name, args.preset, args.set), "target": args.target, "iters": args.iters,
           "eval_every": _every(name, args),
           "dtype": args.dtype or "auto", "data": Path(args.data).name}
    if _elsewhere(args):
        out |= {"preset": args.preset, "sets": args.set}
    return out


def _same(a: dict | None, b: dict) -> bool:
    """Kept settings match, numbers compared as numbers ("2e-3" is "0.002")."""
    def number(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return v

    def norm(d: dict) -> dict:
        return {**d, "overrides": {k: number(v) for k, v in d["overrides"].items()}}

    return a is not None and norm(a) == norm(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the tinyshakespeare input.txt")
    ap.add_argument("--target", default="1.88",
                    help="validation loss to reach (nanoGPT's CPU result), or 'baseline': the baseline's own final "
                         "loss (the mean over seeds; its runs then train their whole schedule first)")
    ap.add_argument("--seeds", default="1337,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of: {', '.join(VARIANTS)}")
    ap.add_argument("--iters", type=int, default=0, help="train.max_iters (0 = the recipe's 2000)")
    ap.add_argument("--eval-every", type=int, default=100, help="steps between evaluations (resolution of the time)")
    ap.add_argument("--fine-every", type=int, default=20,
                    help=f"steps between evaluations for {', '.join(FINE)} (the fastest: finer resolution)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--runs", default=str(RUNS), help="JSON file of finished quality runs, reused and extended")
    ap.add_argument("--fresh", action="store_true", help="run every quality run again (the --runs file is rewritten)")
    ap.add_argument("--timing-rounds", type=int, default=3, help="interleaved rounds of the step timing")
    ap.add_argument("--preset", default="shakespeare-char", help="the LM preset every variant starts from")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override on every variant, the baseline included (repeatable)")
    ap.add_argument("--one", metavar="VARIANT", help="run one variant with --seeds' one seed; print its JSON")
    args = ap.parse_args()
    bad = [x for x in args.set if "=" not in x]
    if bad:
        raise SystemExit(f"time_to_quality: --set {bad[0]} is not KEY=VALUE (e.g. --set "
                         f"model.positional.init=sinusoidal)")
    from_baseline = args.target == "baseline"
    try:
        args.target = 0.0 if from_baseline else float(args.target)  # 0: a loss never reached
    except ValueError:
        raise SystemExit(f"time_to_quality: --target is a loss or 'baseline', not {args.target!r}") from None
    if args.one:
        C.set_threads(args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            r = run_one(args.one, args.seeds, args.data, args.target, args.iters, args.eval_every, args.dtype,
                        tmp + "/run", args.preset, args.set)
        print(json.dumps(r), flush=True)
        return
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"time_to_quality: unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if "nanogpt" not in names:
        names.insert(0, "nanogpt")  # the baseline
    C.set_threads(args.threads)
    precision = C.default_cpu_precision() if args.dtype in (None, "auto") else args.dtype
    commit = C.machine()["commit"]
    print(f"# {C.cpu_info()}; torch {torch.__version__}; {C.thread_note()}; precision {precision}; target "
          f"{'baseline' if from_baseline else args.target}; seeds {args.seeds}; evaluation every {args.eval_every} "
          f"steps ({', '.join(FINE)}: every {args.fine_every})", flush=True)
    kept_path = Path(args.runs)
    kept = {} if args.fresh or not kept_path.exists() else json.loads(kept_path.read_text(encoding="utf-8"))
    runs: dict[str, dict] = {}

    def quality(name: str, seed: str) -> None:
        """One (variant, seed) run: kept if its settings match, else run in a process of its own."""
        old = kept.get(_key(name, seed, args))
        if old and _same(old.get("settings"), _settings(name, args)) and old.get("precision") == precision:
            r, how = old, f"kept from {old.get('commit')}"
        else:
            cmd = [sys.executable, __file__, "--one", name, "--seeds", seed, "--data", args.data, "--target",
                   str(args.target), "--iters", str(args.iters), "--eval-every", str(_every(name, args)),
                   "--threads", str(args.threads), "--preset", args.preset,
                   *[f"--set={x}" for x in args.set], *(["--dtype", args.dtype] if args.dtype else [])]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"time_to_quality: {name} seed {seed} failed:\n{done.stderr[-3000:]}")
            r = {**json.loads(done.stdout.strip().splitlines()[-1]), "settings": _settings(name, args),
                 "commit": commit, "cpu": C.cpu_info()}
            kept[_key(name, seed, args)] = r
            kept_path.parent.mkdir(parents=True, exist_ok=True)
            kept_path.write_text(json.dumps(kept, indent=1) + "\n", encoding="utf-8")  # after every run
            how = f"{r['wall_s']} s"
        runs.setdefault(name, {})[seed] = {k: r[k] for k in ("step_at_target", "val_loss", "steps_run", "iters",
                                                              "commit")}
        print(f"  {name:18s} seed {seed:>5s}: target at step {r['step_at_target']}, val loss {r['val_loss']:.4f} "
              f"after {r['steps_run']} steps ({how})", flush=True)

    seeds, rest = args.seeds.split(","), names
    if from_baseline:  # the baseline's whole schedule first (target 0: never reached); its final loss is the target
        for seed in seeds:
            quality("nanogpt", seed)
        args.target = round(statistics.mean(r["val_loss"] for r in runs["nanogpt"].values()), 4)
        print(f"# target: {args.target}, the baseline's final validation loss (mean over seeds)", flush=True)
        rest = [n for n in names if n != "nanogpt"]
    for seed in seeds:
        for name in rest:
            quality(name, seed)
    print(f"# step times, {args.timing_rounds} interleaved rounds", flush=True)
    ms = step_times(names, args.data, args.dtype, args.timing_rounds, args.preset, args.set)
    table = summarise(runs, ms, "nanogpt")
    for name, v in table["variants"].items():
        v["eval_every"] = _every(name, args)
        v["overrides"] = resolve(name, args.preset, args.set)  # as run on this preset ("x2" resolved)
    print(f"\n| variant | steps to {args.target} | ms/step | time to {args.target} | vs nanoGPT's "
          f"{table['baseline_s']} s | final val loss (never reached) |\n|---|---|---|---|---|---|")
    for name, v in table["variants"].items():
        ratio = f"{v['ratio']:.2f}x" if v["ratio"] else "-"
        final = f"{v['final_val_loss']:.4f} ± {v['final_val_loss_sd']:.4f}" if v["final_val_loss"] else "-"
        steps = "never" if v["steps_to_target"] is None else f"{v['steps_to_target']:.0f}"
        t = "not reached" if v["time_to_target_s"] is None else f"{v['time_to_target_s']} s"
        print(f"| {name} | {steps} | {v['ms_per_step']} | {t} | {ratio} | {final} |")
    rec, base = table["variants"].get("recipe", {}), table["variants"]["nanogpt"]
    out = {"target": args.target, "precision": precision, "seeds": args.seeds.split(","), "eval_every": args.eval_every,
           "fine_every": args.fine_every, "fine": [n for n in FINE if n in names],
           "target_from_baseline": from_baseline,
           "variants": table["variants"], "recipe": resolve("recipe", args.preset, args.set),
           "time_to_target_s": rec.get("time_to_target_s"),
           "baseline_time_to_target_s": table["baseline_s"], "baseline_val_loss": base["final_val_loss"],
           "ratio": rec.get("ratio"), "timing_rounds": args.timing_rounds, "preset": args.preset, "sets": args.set,
           "run_commits": sorted({r["commit"] for v in runs.values() for r in v.values()})}
    iters = next(iter(base["by_seed"].values()))["iters"]
    print(f"time_to_quality: recipe reaches {args.target} in {out['time_to_target_s']} s; the nanoGPT recipe's "
          f"{iters} iterations take {out['baseline_time_to_target_s']} s (ending at {out['baseline_val_loss']}): ratio "
          f"{out['ratio']} ({precision}; {C.thread_note()})", flush=True)
    C.emit(args.json, out)


if __name__ == "__main__":
    main()
