"""The extrapolation study of docs/results.md: can a learned position table work far past its
training length? `learnpos compare` on copy, reverse and add, 3 seeds.

    python benchmarks/extrapolation.py [--json] [--out runs/extrapolation] [--seeds 1337,1,2]
        [--only copy,reverse,add] [--steps N] [--jobs 2]

    part     base preset    trained on                  evaluated at
    copy     study-copy     1..16 symbols (per batch)   1x 2x 4x   (16, 32, 64 symbols)
    reverse  study-reverse  1..16 symbols               1x 2x 4x
    add      study-add      operands of 1..20 digits    1x 2x 4x 5x (20 .. 100 digits)

Every part trains every variant below with one budget (the base preset's model, learning rate
and steps; `--steps` overrides the steps of all parts) and a `segment` table (input or answer:
2 rows, BERT-style type ids) for every variant, so the task-defined ids can tell a symbol from
the answer token that shares its id:

    learned                     the table as long as training needs; longer evaluations grow it
                                (copy-last, interpolate, init: one row each)
    learned+randomized          Ruoss et al. 2023, the table as long as the longest evaluation
    learned+offset              Abacus-style random offsets (model.positional.offset)
    learned+offset+randomized   both
    task-ids+offset             synthetic.positions=task (copy/reverse: position coupling, the
                                answer token carries the id of the symbol it predicts; add: Abacus,
                                each digit its place in its own number) with offsets
    task-ids+randomized         the task's ids, randomized table
    none, alibi, rope           references without a learned table

Resumable like `learnpos compare`: each part and seed is one compare folder (OUT/PART/seed-S:
finished runs are read back, an unfinished one resumes from its checkpoint); OUT/PART holds the
part's combined results.md, results.csv, plot and report. `--json` ends with
{"copy": {"1x": ..., "2x": ..., "4x": ...}, "reverse": {...}, "add": {..., "5x": ...},
 "best_variant": {part: label}, "parts": {part: {command, rows, ...}}}: per part the per-token
accuracy of the best learned-table variant (the one with the highest mean token accuracy past
1x), and every row. `python benchmarks/performance.py run --only extrapolation` saves it and
renders the tables into docs/results.md; the plot of accuracy against length goes to
docs/results/extrapolation-<part>.png.

Threads: these models are small (64-128 wide), and one thread trains them about twice as fast as
two on this 2-core machine, so every run has one thread (OMP_NUM_THREADS=1); `--jobs 2` (the
default) trains two (part, seed) folders side by side in processes of their own, the longest
(add) first, one run at a time in each. OMP_WAIT_POLICY=PASSIVE.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C
from study import FIGURES, table_stats

from learnpos.analysis.geometry import row_geometry
from learnpos.analysis.plots import similarity_png
from learnpos.compare import _label, _read_results, run_compare, run_path, write_outputs
from learnpos.load import load_run
from learnpos.tasks import TASKS

SEGMENT = json.dumps([{"name": "segment", "rows": 2}])
VARIANTS = ["learned", "learned+randomized", "learned+offset", "learned+offset+randomized", "task-ids+offset",
            "task-ids+randomized", "none", "alibi", "rope"]
LEARNED_TABLE = [v for v in VARIANTS if v not in ("none", "alibi", "rope")]
# part -> (base preset, overrides, evaluation lengths as multiples of the training length)
PARTS = {
    "copy": ("study-copy", {"synthetic.min_length": "1", "train.max_iters": "1500", "train.eval_interval": "750"},
             "1,2,4"),
    "reverse": ("study-reverse", {"synthetic.min_length": "1", "train.max_iters": "1500",
                                  "train.eval_interval": "750"}, "1,2,4"),
    "add": ("study-add", {}, "1,2,4,5"),
}


def overrides(part: str, steps: int | None) -> dict:
    over = {**PARTS[part][1], "model.tables": SEGMENT}
    if steps:
        over |= {"train.max_iters": str(steps), "train.eval_interval": str(max(1, steps // 2))}
    return over


def command(part: str, out: Path, seeds: str, steps: int | None) -> str:
    preset, _, lengths = PARTS[part]
    flags = "".join(f" --{k}='{v}'" if k == "model.tables" else f" --{k}={v}"
                    for k, v in overrides(part, steps).items())
    return (f"learnpos compare --preset {preset}{flags} --variants {','.join(VARIANTS)} --lengths {lengths} "
            f"--seeds S --out {out / part}/seed-S, for S in {seeds}")


def best_learned(rows: list[dict], factors: list[float]) -> tuple[str, dict]:
    """(label, {"1x": mean token accuracy, ...}) of the learned-table variant (extend method
    included) with the highest mean token accuracy over the lengths past 1x."""
    def mean_at(label: str, f: float) -> float | None:
        v = [r["token_accuracy"] for r in rows if _label(r) == label and r["factor"] == f]
        if not v and f == 1.0:  # a grown table's 1x row is the plain run's (it needs no growing there)
            v = [r["token_accuracy"] for r in rows if r["variant"] == label.split(" (")[0] and r["factor"] == f]
        return statistics.mean(v) if v else None

    labels = {_label(r) for r in rows if r["variant"] in LEARNED_TABLE}
    past = [f for f in factors if f > 1]
    scored = {lab: [mean_at(lab, f) for f in past] for lab in labels}
    scored = {lab: s for lab, s in scored.items() if all(x is not None for x in s)}
    best = max(scored, key=lambda lab: statistics.mean(scored[lab]))
    return best, {f"{f:g}x": round(mean_at(best, f), 4) for f in factors}


def train_units(parts: list[str], seeds: list[int], jobs: int, args) -> None:
    """Train every (part, seed) folder in `jobs` processes of one thread each, add's first (its
    runs take about five times copy's); each process is this script on one part and seed."""
    units = sorted(((p, s) for p in parts for s in seeds), key=lambda u: u[0] != "add")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}

    def one(unit: tuple[str, int]) -> int:
        part, seed = unit
        cmd = [sys.executable, __file__, "--only", part, "--out", args.out, "--seeds", str(seed), "--jobs", "1",
               "--train-only", *(["--steps", str(args.steps)] if args.steps else [])]
        return subprocess.run(cmd, env=env).returncode

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(pool.map(one, units))
    if any(codes):
        raise SystemExit(f"extrapolation: a training process failed (exit codes {codes}); run again to resume")


def table_geometry(run_dir: Path, longest: int, png: Path | None = None) -> dict | None:
    """`learnpos.analysis.geometry.row_geometry` of a run's position table over the rows the
    longest evaluation reads, `span` = the ids of the longest training sequence (before
    offsets). With `png`, the similarity heatmap of those rows is written there."""
    try:
        model, cfg, _ = load_run(run_dir, "cpu")
    except Exception:  # noqa: BLE001  (a run that failed)
        return None
    if "pos" not in model.learned_tables():
        return None
    task = TASKS[cfg.task]
    rows = min(task.positions_needed(cfg, longest), model.pos.weight.shape[0])
    W = model.pos.weight.detach()[:rows].float()
    if png is not None:
        png.write_bytes(similarity_png(W, f"{cfg.task}: {run_dir.parent.name}, rows 0..{rows - 1}"))
    return row_geometry(W, task.positions_needed(cfg, cfg.synthetic.length))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", default="runs/extrapolation")
    ap.add_argument("--seeds", default="1337,1,2")
    ap.add_argument("--only", default=",".join(PARTS))
    ap.add_argument("--steps", type=int, help="training steps of every run (default: each base's)")
    ap.add_argument("--jobs", type=int, default=2, help="training processes side by side, one thread each")
    ap.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)  # one unit of --jobs
    args = ap.parse_args()
    parts = args.only.split(",")
    if args.jobs > 1:
        train_units(parts, [int(s) for s in args.seeds.split(",")], args.jobs, args)
    out, seeds = Path(args.out), [int(s) for s in args.seeds.split(",")]
    FIGURES.mkdir(parents=True, exist_ok=True)
    record: dict = {"best_variant": {}, "parts": {}}
    for part in parts:
        preset, _, lengths = PARTS[part]
        factors = [float(f) for f in lengths.split(",")]
        over = overrides(part, args.steps)
        rows = []
        for seed in seeds:  # each seed's folder (trained by --jobs, or here, one run at a time)
            run_compare(preset, VARIANTS, [seed], factors, out / part / f"seed-{seed}", over, quiet=False)
            rows += [r for r in _read_results(out / part / f"seed-{seed}") if r["variant"] in VARIANTS]
        if args.train_only:
            continue
        write_outputs(out / part, preset, rows, VARIANTS, factors, [], over)  # the part's table over all seeds
        png = next((out / part).glob("*_by_length.png"))
        shutil.copyfile(png, FIGURES / f"extrapolation-{part}.png")
        best, by_length = best_learned(rows, factors)
        record[part], record["best_variant"][part] = by_length, best
        first = out / part / f"seed-{seeds[0]}"
        stats = {v: table_stats(run_path(first, v, seeds[0])) for v in LEARNED_TABLE}
        trained_cfg = load_run(run_path(first, "learned", seeds[0]), "cpu")[1]
        longest = round(max(factors) * TASKS[part].train_length(trained_cfg))
        geometry = {v: table_geometry(run_path(first, v, seeds[0]), longest,
                                      FIGURES / f"extrapolation-{part}-{v.replace('+', '-')}.png"
                                      if v in ("task-ids+offset", "task-ids+randomized") else None)
                    for v in LEARNED_TABLE}
        runs = {(r["variant"], r["seed"]): r["train_s"] for r in rows}
        record["parts"][part] = {"command": command(part, out, args.seeds, args.steps), "variants": VARIANTS,
                                 "rows": rows, "figure": f"results/extrapolation-{part}.png",
                                 "position_stats": {k: v for k, v in stats.items() if v},
                                 "geometry": {k: v for k, v in geometry.items() if v},
                                 "median_run_s": round(statistics.median(runs.values()), 1),
                                 "train_s_total": round(sum(runs.values()), 1)}
        print(f"{part}: best learned table {best}: " + ", ".join(f"{k} {v:.3f}" for k, v in by_length.items()),
              flush=True)
    if args.train_only:
        return
    record["seeds"] = seeds
    record["total_s"] = round(sum(p["train_s_total"] for p in record["parts"].values()), 1)
    C.emit(args.json, record)


if __name__ == "__main__":
    main()
