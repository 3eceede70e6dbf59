"""What each positional encoding reaches on the synthetic probes with one fixed budget.

    python benchmarks/position_probe.py [--json] [--steps N] [--kinds learned,none]

Runs the `demo` preset (reverse, 16 symbols, decoder) and the `index-encoder` preset
(index lookup, 8 distinct symbols, bidirectional encoder) for every encoding with the
same budget and hyper-parameters (nothing is tuned per encoding) and prints held-out
exact-match. Threads: OMP_WAIT_POLICY=PASSIVE (set by learnpos unless already set).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import _common as C

from learnpos.config import load_config
from learnpos.train import train

KINDS = ["learned", "sinusoidal", "rope", "alibi", "none"]
PROBES = {"reverse-16 (decoder)": "demo", "index-8 (encoder)": "index-encoder"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--steps", type=int, default=0, help="override each preset's max_iters")
    ap.add_argument("--kinds", default=",".join(KINDS))
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for probe, preset in PROBES.items():
            results[probe] = {}
            for kind in args.kinds.split(","):
                over = {"model.positional.kind": kind, "train.out_dir": f"{tmp}/{preset}-{kind}"}
                if args.steps:
                    over.update({"train.max_iters": str(args.steps), "train.eval_interval": str(args.steps),
                                 "train.warmup_iters": str(min(100, args.steps))})
                cfg = load_config(preset, over)
                t0 = time.perf_counter()
                m = train(cfg, quiet=True).metrics
                results[probe][kind] = m["exact_match"]
                print(f"{probe:22s} {kind:11s} steps {cfg.train.max_iters:5d}  exact-match {m['exact_match']:.3f}"
                      f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
    C.emit(args.json, {"steps": args.steps or "preset", "exact_match": results})


if __name__ == "__main__":
    main()
