"""Which positional scheme helps a dialogue model: the `dailydialog` preset trained once per
scheme and seed at one budget, then test response perplexity, bits per character and
distinct-1/2 of sampled responses (mean ± spread over seeds, the spread being the population
standard deviation).

    python benchmarks/dialogue_ablation.py [--json] [--data ../shared/data/dailydialog]
        [--schemes token,token+speaker,token+turn+speaker,utterance+turn+speaker]
        [--seeds 1337,1,2] [--steps N] [--set section.key=value ...] [--keep DIR]

Every run has the same model, data, tokenizer settings, schedule and number of steps; only
`dialogue.positions` and the named tables it needs (`model.tables`) change. `--json` ends with
`test_ppl` and `distinct_2` per scheme (means over seeds). `--keep DIR` keeps the run
directories (DIR/SCHEME-SEED) for `learnpos chat` and `learnpos inspect`; by default they are
temporary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import _common as C
import torch

from learnpos.config import load_config
from learnpos.load import load_run
from learnpos.tasks.dialogue import SCHEMES, scheme_tables
from learnpos.train import train

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dailydialog"


def run(scheme: str, seed: str, data: str, steps: int, sets: list[str], out: str) -> dict:
    over = {"dialogue.data": data, "dialogue.positions": scheme, "train.seed": seed, "train.out_dir": out,
            **dict(s.split("=", 1) for s in sets)}
    if steps:
        over["train.max_iters"] = str(steps)
    max_turns = int(over.get("dialogue.max_turns", load_config("dailydialog").dialogue.max_turns))
    over["model.tables"] = json.dumps(scheme_tables(scheme, max_turns))
    cfg = load_config("dailydialog", over)
    t0 = time.perf_counter()
    train(cfg, quiet=True)
    wall = time.perf_counter() - t0
    model, _, task = load_run(out)
    m = task.evaluate(model, torch.device("cpu"), split="test")
    return {"scheme": scheme, "seed": seed, "train_examples": len(task.examples("train")),
            "test_ppl": m["perplexity"], "bits_per_char": m["bits_per_char"],
            "distinct_1": m["distinct_1"], "distinct_2": m["distinct_2"], "train_wall_s": round(wall, 1),
            "steps": cfg.train.max_iters}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--seeds", default="1337,1,2")
    ap.add_argument("--steps", type=int, default=0, help="train.max_iters for every run (0 = the preset's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config override")
    ap.add_argument("--keep", metavar="DIR", help="keep the runs under DIR (default: a temporary folder)")
    args = ap.parse_args()
    print(f"# {C.cpu_info()}; torch {torch.__version__}; {C.thread_note()}; data {args.data}", flush=True)
    schemes, seeds = args.schemes.split(","), args.seeds.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        for scheme in schemes:
            for seed in seeds:
                rows.append(run(scheme, seed, args.data, args.steps, args.set, str(root / f"{scheme}-{seed}")))
                print(json.dumps(rows[-1]), flush=True)
    summary = {}
    print(f"\nDailyDialog test split; mean ± spread over {len(seeds)} seed(s)")
    print("| dialogue.positions | response perplexity | bits/char | distinct-1 | distinct-2 | train s |")
    print("|---|---|---|---|---|---|")
    for scheme in schemes:
        rs = [r for r in rows if r["scheme"] == scheme]
        stat = {k: (statistics.mean(r[k] for r in rs), statistics.pstdev([r[k] for r in rs]))
                for k in ("test_ppl", "bits_per_char", "distinct_1", "distinct_2", "train_wall_s")}
        summary[scheme] = {"test_ppl": stat["test_ppl"][0], "test_ppl_spread": stat["test_ppl"][1],
                           "distinct_2": stat["distinct_2"][0], "bits_per_char": stat["bits_per_char"][0],
                           "distinct_1": stat["distinct_1"][0], "train_wall_s": stat["train_wall_s"][0]}
        print(f"| {scheme} | {stat['test_ppl'][0]:.2f} ± {stat['test_ppl'][1]:.2f} | {stat['bits_per_char'][0]:.3f} "
              f"| {stat['distinct_1'][0]:.3f} | {stat['distinct_2'][0]:.3f} ± {stat['distinct_2'][1]:.3f} "
              f"| {stat['train_wall_s'][0]:.0f} |")
    C.emit(args.json, {"rows": rows, "seeds": seeds, "schemes": summary,
                       "test_ppl": {s: v["test_ppl"] for s, v in summary.items()},
                       "distinct_2": {s: v["distinct_2"] for s, v in summary.items()}})


if __name__ == "__main__":
    main()
