"""Text and dialogue on any data: the data-derived settings against a known recipe on the same
data, side by side in one run (same machine, threads, split and evaluator).

    python benchmarks/own_data.py --task lm --data TEXT [--val-data TEXT] [--budget 10] [--json]
    python benchmarks/own_data.py --task dialogue --data FOLDER [--budget 10] [--json]

lm: the derived run (`learnpos train --task lm --data TEXT`) against nanoGPT's CPU
shakespeare-char recipe (4 layers x 128, block 64, batch 12, 2,000 iterations, lr 1e-3 cosine
to 1e-4, the N(0, 0.02) position table: the `shakespeare-char` preset with
`model.positional.init=normal`) run by learnpos on the same text. The figure is validation bits
per character, which does not depend on the tokenizer (the derived run may choose BPE).
dialogue: the derived run against the `dailydialog` preset on the same corpus; the figure is
test response bits per character (and perplexity, distinct-1/2 with their unit).
Both sides are timed from data loading to their last evaluation; the derived side includes
its probe. `--json` ends with {task, data, derived: {...}, reference: {...}, ratio_bits_per_char
(derived / reference: below 1 is better), derived_wall_s, reference_wall_s}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _common as C
import torch

from learnpos.config import load_config
from learnpos.derive import derive_config
from learnpos.load import load_run
from learnpos.runs import read_metrics
from learnpos.train import train

KEEP = ("loss", "perplexity", "bits_per_char", "distinct_1", "distinct_2", "distinct_unit")


def _figures(run_dir: str, split: str, t0: float, extra: dict | None = None) -> dict:
    model, cfg, task = load_run(run_dir)
    if cfg.task == "lm":
        task.lm.eval_windows = 0  # the whole validation split, whatever the run evaluated during training
        m = task.evaluate(model, torch.device("cpu"))
    else:
        task.dlg.eval_examples = 0
        m = task.evaluate(model, torch.device("cpu"), split=split)
    return {**{k: m[k] for k in KEEP if k in m}, "wall_s": round(time.perf_counter() - t0, 1),
            "steps": max(r["step"] for r in read_metrics(run_dir)), "planned_steps": cfg.train.max_iters,
            "tokenizer": getattr(cfg, cfg.task).tokenizer,
            "shape": f"{cfg.model.n_layer}x{cfg.model.n_embd}", **(extra or {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=("lm", "dialogue"), required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--val-data", default="")
    ap.add_argument("--budget", type=float, default=10.0, help="minutes for the derived run")
    ap.add_argument("--seed", default="1337")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(f"# {C.cpu_info()}; torch {torch.__version__}; {C.thread_note()}; {args.task} on {args.data}", flush=True)
    split = "test" if args.task == "dialogue" else "valid"
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cfg, lines = derive_config(args.task, str(Path(args.data).resolve()),
                                   {"train.out_dir": f"{tmp}/derived", "train.seed": args.seed,
                                    "train.time_budget": str(args.budget)},
                                   str(Path(args.val_data).resolve()) if args.val_data else None)
        print("\n".join(lines), flush=True)
        train(cfg, quiet=True)
        derived = _figures(cfg.train.out_dir, split, t0)
        print(f"derived: {derived}", flush=True)
        if args.task == "lm":
            ref_over = {"lm.data": str(Path(args.data).resolve()), "model.positional.init": "normal"}
            if args.val_data:
                ref_over["lm.val_data"] = str(Path(args.val_data).resolve())
            ref_cfg, name = load_config("shakespeare-char", {**ref_over, "train.out_dir": f"{tmp}/reference",
                                                              "train.seed": args.seed}), "nanoGPT CPU recipe"
        else:
            ref_cfg, name = load_config("dailydialog", {"dialogue.data": str(Path(args.data).resolve()),
                                                        "train.out_dir": f"{tmp}/reference",
                                                        "train.seed": args.seed}), "dailydialog preset"
        t0 = time.perf_counter()
        train(ref_cfg, quiet=True)
        reference = _figures(ref_cfg.train.out_dir, split, t0, {"name": name})
        print(f"reference: {reference}", flush=True)
    what = "validation" if args.task == "lm" else "test response"
    print(f"\n{args.task} on {Path(args.data).name}: {what} bits per character")
    print("| run | bits/char | loss | model | tokenizer | steps | wall s |\n|---|---|---|---|---|---|---|")
    for label, r in (("derived from the data", derived), (reference["name"], reference)):
        print(f"| {label} | {r['bits_per_char']:.3f} | {r['loss']:.3f} | {r['shape']} | {r['tokenizer']} | "
              f"{r['steps']} | {r['wall_s']:.0f} |")
    ratio = derived["bits_per_char"] / reference["bits_per_char"]
    print(f"derived / reference bits per character: {ratio:.3f}")
    C.emit(args.json, {"task": args.task, "data": args.data, "derived": derived, "reference": reference,
                       "ratio_bits_per_char": ratio, "derived_wall_s": derived["wall_s"],
                       "reference_wall_s": reference["wall_s"]})


if __name__ == "__main__":
    main()
