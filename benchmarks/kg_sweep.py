"""Tune a kg preset on the validation split: train the preset once per variant and print each
variant's best validation MRR (the number early stopping keeps), the step it was reached at,
the test MRR of those weights and the wall time.

    python benchmarks/kg_sweep.py --dataset umls [--json] [--data PATH] [--seed 1337]
        --variant "model.n_layer=2 kg.label_smoothing=0.2" --variant "model.n_layer=4" ...

Each --variant is a space-separated list of config overrides applied to the `kg-<dataset>`
preset ("" = the preset itself). Choose on validation MRR; the test column is printed so the
choice can be checked afterwards, not to choose by.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import _common as C
import torch

from learnpos.config import load_config
from learnpos.load import load_run
from learnpos.train import train


def run_variant(dataset: str, data: str, seed: str, variant: str, out_dir: str) -> dict:
    cfg = load_config(f"kg-{dataset}", C.kg_overrides(dataset, seed, out_dir, data, variant.split()))
    t0 = time.perf_counter()
    train(cfg, quiet=True)
    wall = time.perf_counter() - t0
    evals = [json.loads(line) for line in open(f"{out_dir}/metrics.jsonl", encoding="utf-8")]
    evals = [e for e in evals if e.get("split") == "val"]
    best = max(evals, key=lambda e: e["mrr"])
    model, _, task = load_run(out_dir)
    test = task.evaluate(model, torch.device("cpu"), split="test")
    return {"variant": variant or "(preset)", "best_val_mrr": best["mrr"], "best_step": best["step"],
            "last_val_mrr": evals[-1]["mrr"], "test_mrr": test["mrr"], "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="umls")
    ap.add_argument("--data", default="", help="dataset folder (default: PyKEEN's copy of nations/kinships/umls)")
    ap.add_argument("--seed", default="1337")
    ap.add_argument("--variant", action="append", default=None, metavar="OVERRIDES")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(f"# {C.cpu_info()}; torch {torch.__version__}; {C.thread_note()}; kg-{args.dataset}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, variant in enumerate(args.variant or [""]):
            rows.append(run_variant(args.dataset, args.data, args.seed, variant, f"{tmp}/v{i}"))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nkg-{args.dataset}, seed {args.seed}: validation MRR of the best evaluation (early stopping's choice)")
    print("| variant | best val MRR | at step | last val MRR | test MRR | wall s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['best_val_mrr']:.4f} | {r['best_step']} | {r['last_val_mrr']:.4f} "
              f"| {r['test_mrr']:.4f} | {r['wall_s']:.0f} |")
    C.emit(args.json, {"dataset": args.dataset, "seed": args.seed, "rows": rows})


if __name__ == "__main__":
    main()
