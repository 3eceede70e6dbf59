"""Time to quality: the shakespeare-char preset end to end, against nanoGPT's published result.

    python benchmarks/time_to_quality.py [--json] [--data PATH] [--iters N] [--threads 0]
        [--dtype auto|float32|bfloat16] [--preset shakespeare-char] [--out-dir DIR]
        [--seeds 1337,1,2,3] [--set section.key=value ...]

Trains `learnpos.train.train` on the preset (4 layers, 4 heads, 128 dims, block 64, batch 12,
2000 iterations) and reports the final validation loss (mean cross-entropy over the
validation split), the wall time of the whole run (data loading, training, evaluations,
checkpoints) and the iterations. Reference: the nanoGPT CPU recipe with the same settings
reports val loss 1.88 (`reference_val_loss`). The preset differs from that recipe in one
respect, the init of the learned position table (sinusoids at the N(0, 0.02) scale instead of
N(0, 0.02) noise; see the preset file); `--set model.positional.init=normal` runs the recipe
exactly. `--iters N` shortens the run (the schedule is
rescaled to N: warmup capped at N, evaluation at the end) for a smoke test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import _common as C
import torch

from learnpos.config import load_config
from learnpos.errors import ConfigError
from learnpos.train import train

_BESIDE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
DEFAULT_DATA = _BESIDE if _BESIDE.exists() else Path("/work/shared/data/tinyshakespeare/input.txt")
REFERENCE_VAL_LOSS = 1.88  # nanoGPT shakespeare_char on CPU, same model and schedule


def build_overrides(preset: str, data: str | None, out_dir: str, iters: int, dtype: str | None) -> dict[str, str]:
    """`--section.key=value` overrides for the run (all values as strings, as on the CLI)."""
    over = {"train.out_dir": out_dir}
    if data is not None:
        over["lm.data"] = data
    if dtype is not None:
        over["train.dtype"] = dtype
    if iters:
        base = load_config(preset, {k: v for k, v in over.items() if k != "train.out_dir"}).train
        over.update({"train.max_iters": str(iters), "train.warmup_iters": str(min(base.warmup_iters, iters)),
                     "train.eval_interval": str(min(base.eval_interval, iters)),
                     "train.log_interval": str(min(base.log_interval, iters))})
    return over


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the tinyshakespeare input.txt")
    ap.add_argument("--iters", type=int, default=0, help="override train.max_iters (0 = the preset's)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16"],
                    help="override train.dtype (default: the preset's, i.e. learnpos's default)")
    ap.add_argument("--preset", default="shakespeare-char")
    ap.add_argument("--out-dir", default=None, help="run directory (default: a temporary one, deleted after)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="extra config override, repeatable; e.g. --set model.positional.init=normal runs "
                    "nanoGPT's exact recipe (GPT-2's N(0, 0.02) position table)")
    ap.add_argument("--seeds", default="", help="comma-separated train.seed values, one run each (default: the "
                    "preset's); val_loss and wall_s are then means, per-seed values under by_seed")
    args = ap.parse_args()

    C.set_threads(args.threads)
    seeds = [s for s in args.seeds.split(",") if s] or [None]
    by_seed = {}
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            out_dir = args.out_dir if args.out_dir and len(seeds) == 1 else str(Path(tmp) / "run")
            data = args.data if args.preset == "shakespeare-char" or args.data != str(DEFAULT_DATA) else None
            over = build_overrides(args.preset, data, out_dir, args.iters, args.dtype)
            for kv in args.set:
                key, sep, value = kv.partition("=")
                if not sep:
                    raise SystemExit(f"time_to_quality: --set {kv!r} needs the form section.key=value")
                over[key] = value
            if seed is not None:
                over["train.seed"] = seed
            try:
                cfg = load_config(args.preset, over)
            except ConfigError as e:
                raise SystemExit(f"time_to_quality: {e}") from None
            print(f"# {C.cpu_info()}; torch {torch.__version__}; {C.thread_note()}; preset {args.preset}, "
                  f"{cfg.train.max_iters} iterations, train.dtype={cfg.train.dtype}, seed {cfg.train.seed}, "
                  f"data {data}", flush=True)
            result = train(cfg, quiet=True)
        by_seed[cfg.train.seed] = {"val_loss": round(float(result.metrics["loss"]), 4),
                                   "wall_s": round(result.wall_s, 1)}
        print(f"  seed {cfg.train.seed}: val loss {by_seed[cfg.train.seed]['val_loss']:.4f} "
              f"in {result.wall_s:.1f} s", flush=True)
    val_loss = statistics.mean(r["val_loss"] for r in by_seed.values())
    wall_s = statistics.mean(r["wall_s"] for r in by_seed.values())
    precision = C.default_cpu_precision() if cfg.train.dtype == "auto" else cfg.train.dtype  # what auto chose
    out = {"val_loss": round(val_loss, 4), "wall_s": round(wall_s, 1), "iters": cfg.train.max_iters,
           "reference_val_loss": REFERENCE_VAL_LOSS, "threads": torch.get_num_threads(),
           "dtype": cfg.train.dtype, "precision": precision, "preset": args.preset, "overrides": args.set,
           "position_init": cfg.model.positional.init,
           "by_seed": {str(k): v for k, v in by_seed.items()}}
    what = "val loss" if len(by_seed) == 1 else f"mean val loss over {len(by_seed)} seeds"
    print(f"time_to_quality {args.preset} (position init {cfg.model.positional.init}): {what} {val_loss:.4f} "
          f"(nanoGPT CPU reference {REFERENCE_VAL_LOSS}) "
          f"after {cfg.train.max_iters} iterations in {wall_s:.1f} s per run ({precision}); {C.thread_note()}")
    C.emit(args.json, out)


if __name__ == "__main__":
    main()
