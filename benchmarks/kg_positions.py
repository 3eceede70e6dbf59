"""What the positions do in knowledge-graph completion: the same CoKE-style model on one
dataset with `learned`, `sinusoidal` and `none` positions (coke queries), test MRR per direction.

    python benchmarks/kg_positions.py [--json] [--dataset umls] [--data PATH] [--kinds learned,sinusoidal,none]
        [--steps N] [--seeds 1337] [--set section.key=value ...]

In CoKE's convention a tail query is [h, r, MASK] and a head query [MASK, r, t]. Without
positions a bidirectional encoder is permutation-equivariant, and the answer is read at the
MASK token in both, so its output depends only on the set {e, r, MASK}: the queries (e, r, ?)
and (?, r, e) get the same scores. Only the positions say which way the model is asked; on
relations that are not symmetric that caps what `none` can reach, and the table says how much.
Each run
trains the `kg-<dataset>` preset with kg.queries = coke (early stopping on validation MRR) and
ranks the test split with the best weights, filtered, both directions, realistic ranks.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence

import _common as C
import torch

from learnpos.config import load_config
from learnpos.load import load_run
from learnpos.train import train


def run_config(dataset: str, kind: str, seed: str, out_dir: str, data: str = "", steps: int = 0,
               sets: Sequence[str] = ()):
    """The `kg-<dataset>` preset with `kind` positions and coke queries, whatever the preset's own
    queries: with reciprocal ones the inverse relation, not the position, would tell a head query
    from a tail query, and the table would not measure what the positions do."""
    sets = ["model.positional.kind=" + kind, "kg.queries=coke", *sets]
    return load_config(f"kg-{dataset}", C.kg_overrides(dataset, seed, out_dir, data, sets, steps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dataset", default="umls")
    ap.add_argument("--data", default="", help="dataset folder or .tar.gz (default: PyKEEN's copy)")
    ap.add_argument("--kinds", default="learned,sinusoidal,none")
    ap.add_argument("--steps", type=int, default=0, help="override train.max_iters (0 = the preset's)")
    ap.add_argument("--seeds", default="1337")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config override")
    args = ap.parse_args()
    print(f"# {C.cpu_info()}; torch {torch.__version__}; {C.thread_note()}; dataset {args.dataset}", flush=True)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            runs = []
            for seed in args.seeds.split(","):
                cfg = run_config(args.dataset, kind, seed, f"{tmp}/{kind}-{seed}", args.data, args.steps, args.set)
                t0 = time.perf_counter()
                train(cfg, quiet=True)
                wall = time.perf_counter() - t0
                model, _, task = load_run(cfg.train.out_dir)
                m = task.evaluate(model, torch.device("cpu"), split="test")
                runs.append({**{k: m[k] for k in ("mrr", "tail_mrr", "head_mrr", "hits@1", "hits@10")},
                             "wall_s": round(wall, 1)})
                print(f"{kind:10s} seed {seed}: test MRR {m['mrr']:.4f} (tail {m['tail_mrr']:.4f}, head "
                      f"{m['head_mrr']:.4f}), Hits@1 {m['hits@1']:.4f}, Hits@10 {m['hits@10']:.4f}  ({wall:.0f} s)",
                      flush=True)
            results[kind] = {k: round(statistics.mean(r[k] for r in runs), 4) for k in runs[0]}
            results[kind]["seeds"] = runs
    print("| positions | test MRR | tail MRR | head MRR | Hits@1 | Hits@10 |")
    print("|---|---|---|---|---|---|")
    for kind, r in results.items():
        print(f"| {kind} | {r['mrr']:.3f} | {r['tail_mrr']:.3f} | {r['head_mrr']:.3f} | {r['hits@1']:.3f} "
              f"| {r['hits@10']:.3f} |")
    C.emit(args.json, {"dataset": args.dataset, "steps": args.steps or "preset", "by_positions": results})


if __name__ == "__main__":
    main()
