"""The positional-encoding study of docs/results.md: `learnpos compare` on four tasks, 3 seeds.

    python benchmarks/study.py [--json] [--out runs/study] [--data PATH] [--seeds 1337,1,2] [--only copy,char]

Each part is one `learnpos compare` (the equivalent command is printed and saved with the
results); the parts are resumable like compare itself, so an interrupted study continues,
and a finished one only re-reads its results. The PNG of each part is copied to
docs/results/. `python benchmarks/performance.py run --only study` saves the `--json` record
and renders the tables into docs/results.md (and docs/performance.md).

    part          preset         what is varied
    copy          study-copy     10 variants, evaluated at 1, 1.5, 2, 4 x the training length (16)
    reverse       study-reverse  the same
    index         study-index    10 variants at the training length (8) only (no query tokens past it)
    char          study-char     10 variants, loss on windows of 1, 1.5, 2, 4 x 64 characters
    copy-long     study-copy     learned+randomized trained on lengths 1..16 for 5000 steps,
    reverse-long  study-reverse  evaluated at 16, 32, 64 (the randomized-positions target)

Threads: OMP_WAIT_POLICY=PASSIVE (set before torch starts); one run at a time.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import _common as C

from learnpos.analysis.position_stats import load_position_stats
from learnpos.compare import TASK_IDS, VARIANTS, _read_results, run_compare, run_path
from learnpos.errors import LearnposError

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "results"
CHAR_DATA = "../shared/data/tinyshakespeare/input.txt"
LONG = {"synthetic.min_length": "1", "train.max_iters": "5000", "train.eval_interval": "2500"}
ALL = [v for v in VARIANTS if "offset" not in v and v not in TASK_IDS]  # this study's ten (extrapolation.py: the rest)

# part -> (preset, overrides, variants, evaluation lengths as multiples of the training length)
PARTS = {
    "copy": ("study-copy", {}, ALL, "1,1.5,2,4"),
    "reverse": ("study-reverse", {}, ALL, "1,1.5,2,4"),
    "index": ("study-index", {}, ALL, "1"),
    "char": ("study-char", {"lm.data": CHAR_DATA}, ALL, "1,1.5,2,4"),
    "copy-long": ("study-copy", LONG, ["learned+randomized"], "1,2,4"),
    "reverse-long": ("study-reverse", LONG, ["learned+randomized"], "1,2,4"),
}


def command(part: str, out: Path, seeds: str) -> str:
    preset, over, variants, lengths = PARTS[part]
    flags = "".join(f" --{k}={v}" for k, v in over.items())
    picked = "" if variants == ALL else f" --variants {','.join(variants)}"
    return (f"learnpos compare --preset {preset}{flags}{picked} --lengths {lengths} --seeds {seeds} "
            f"--out {out / part}")


def table_stats(run_dir: Path) -> dict | None:
    """How evenly the learned position table trained: rows, rows never reached, the least
    reached row's share of steps, and the smallest and largest mean gradient norm per row
    relative to the median row."""
    try:
        s = load_position_stats(run_dir)["pos"]
    except (LearnposError, KeyError):
        return None
    steps = int(s["steps"][0])
    g = s["grad_norm_mean"].double()
    med = float(g.median())
    nz = s["nonzero_steps"].double()
    return {"rows": int(g.numel()), "never": int((nz == 0).sum()), "least_reached": float(nz.min()) / max(1, steps),
            "grad_min_vs_median": float(g.min()) / med if med else 0.0,
            "grad_max_vs_median": float(g.max()) / med if med else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", default="runs/study")
    ap.add_argument("--data", default=CHAR_DATA, help="tinyshakespeare input.txt for the char part")
    ap.add_argument("--seeds", default="1337,1,2")
    ap.add_argument("--only", default=",".join(PARTS))
    args = ap.parse_args()
    out, seeds = Path(args.out), [int(s) for s in args.seeds.split(",")]
    FIGURES.mkdir(parents=True, exist_ok=True)
    parts = {}
    for part in args.only.split(","):
        preset, over, variants, lengths = PARTS[part]
        if part == "char":
            over = {**over, "lm.data": args.data}
        run_compare(preset, variants, seeds, [float(f) for f in lengths.split(",")], out / part, over, quiet=True)
        rows = [r for r in _read_results(out / part) if r["variant"] in variants and r["seed"] in seeds]
        png = next((out / part).glob("*_by_length.png"))
        shutil.copyfile(png, FIGURES / f"{part}.png")
        stats = {v: table_stats(run_path(out / part, v, seeds[0])) for v in variants}
        parts[part] = {"command": command(part, out, args.seeds), "variants": variants, "rows": rows,
                       "figure": f"results/{part}.png", "position_stats": {k: v for k, v in stats.items() if v},
                       "train_s_total": round(sum({(r["variant"], r["seed"]): r["train_s"] for r in rows}.values()), 1)}
        total = parts[part]["train_s_total"]
        print(f"{part}: {len(rows)} rows from {len({(r['variant'], r['seed']) for r in rows})} runs, "
              f"{total:.0f} s of training and evaluation", flush=True)
    C.emit(args.json, {"seeds": seeds, "parts": parts,
                       "total_s": round(sum(p["train_s_total"] for p in parts.values()), 1)})


if __name__ == "__main__":
    main()
