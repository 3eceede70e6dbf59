"""The data-derived KG settings against each graph's preset and PyKEEN's best recipe, graph by
graph, all in one run (same machine, same threads, same evaluator).

    python benchmarks/kg_own_data.py [--graphs nations,umls,kinships] [--seeds 1337,1,2]
        [--budget 10] [--models best|M1,M2,...] [--pykeen-seeds 1337] [--epochs 100]
        [--presets run|saved] [--json]

Each graph is a held-out case for the derived settings in the sense the brief asks: the rules
in learnpos/derive/kg.py take only the graph's counts, no name. (They were written knowing the
presets of UMLS and Kinships, so those two are not held out; Nations, WN18RR and FB15k-237 are.)
Per graph: the derived run (`learnpos train --task kg --data PATH`, its probe inside the timed
wall time, `--budget` minutes), the graph's preset (`kg-NAME`), and PyKEEN's recipes from
kg_vs_pykeen.py (`--models best`, the default: the recipe kg_vs_pykeen.py found best on that
graph over all five, from its saved result, or all five for a graph without one; PyKEEN runs
`--pykeen-seeds`, by default one seed, its 3-seed figures being in those saved results);
test split, filtered, both directions, realistic ranks. `--presets saved` takes each preset's
figure from its saved `benchmarks/kg_large.py` result (results/kg_large_NAME.json) instead of
training it again: for WN18RR and FB15k-237, whose presets train a fixed number of steps for
about 29 minutes (so their MRR does not depend on the machine's speed; their wall time is that
run's, on its machine), with `--budget 29` giving the derived run the same minutes here.
`--json` ends with
{"graphs": {name: {derived_mrr, preset_mrr, ratio_to_preset, best_pykeen_model, best_pykeen_mrr,
ratio_to_pykeen, derived_wall_s, preset_wall_s, pykeen_wall_s}}}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import _common as C
import torch
from kg_vs_pykeen import RECIPES, run_derived, run_learnpos, run_pykeen

from learnpos.data.kg import dataset_path

SHARED = {"nations": "nations", "umls": "umls", "kinships": "kinship", "wn18rr": "wn18rr", "fb15k-237": "fb15k-237"}


def _models(spec: str, graph: str) -> list[str]:
    if spec != "best":
        return [m for m in spec.split(",") if m]
    saved = Path(__file__).resolve().parent / "results" / f"kg_vs_pykeen_{graph}.json"
    if saved.exists():
        return [json.loads(saved.read_text(encoding="utf-8"))["best_pykeen_model"].removeprefix("PyKEEN ")]
    return list(RECIPES)


def _saved_preset(graph: str) -> dict:
    """The preset's test figures from its saved benchmarks/kg_large.py run (one seed)."""
    saved = Path(__file__).resolve().parent / "results" / f"kg_large_{graph.replace('-', '_')}.json"
    if not saved.exists():
        raise SystemExit(f"kg_own_data: --presets saved needs {saved} (python benchmarks/performance.py run --only "
                         f"kg_large_{graph.replace('-', '_')})")
    r = json.loads(saved.read_text(encoding="utf-8"))
    m = r["machine"]
    return {"mrr": r["test"]["mrr"], "hits@1": r["test"]["hits@1"], "hits@10": r["test"]["hits@10"],
            "wall_s": r["wall_s"], "steps": r["steps"], "saved": f"{saved.name}: {m['cpu']}, commit {m['commit']}"}


def _mean_or_none(rows: list[dict], key: str) -> float | None:
    return statistics.mean(r[key] for r in rows) if all(key in r for r in rows) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graphs", default="nations,umls,kinships")
    ap.add_argument("--shared", default="../shared/data", help="the folder holding the graphs")
    ap.add_argument("--seeds", default="1337,1,2")
    ap.add_argument("--budget", type=float, default=10.0, help="minutes for each derived run")
    ap.add_argument("--models", default="best", help="PyKEEN recipes: best (per graph), a list, or '' (none)")
    ap.add_argument("--pykeen-seeds", default="1337")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--presets", choices=("run", "saved"), default="run",
                    help="train each graph's preset (run) or read its saved kg_large.py result (saved)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override of the derived run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    root = Path(__file__).resolve().parent.parent / args.shared if not Path(args.shared).is_absolute() \
        else Path(args.shared)
    print(f"# {C.cpu_info()}; torch {torch.__version__}; {C.thread_note()}; budget {args.budget:g} min", flush=True)
    seeds = args.seeds.split(",")
    out = {}
    mean = lambda rows, k: statistics.mean(r[k] for r in rows)  # noqa: E731
    for name in args.graphs.split(","):
        folder = dataset_path(name, str(root / SHARED.get(name, name)))
        with tempfile.TemporaryDirectory() as tmp:
            derived = [run_derived(folder, s, args.budget, args.set, tmp) for s in seeds]
            preset = [run_learnpos(name, str(folder), s, 0, [], tmp) for s in seeds] if args.presets == "run" \
                else [_saved_preset(name)]
            pykeen = {m: [run_pykeen(m, folder, args.epochs, int(s)) for s in args.pykeen_seeds.split(",")]
                      for m in _models(args.models, name)}
        best = max(pykeen, key=lambda m: mean(pykeen[m], "mrr")) if pykeen else None
        row = {"derived_mrr": mean(derived, "mrr"), "preset_mrr": mean(preset, "mrr"),
               "derived_val_mrr": mean(derived, "best_val_mrr"),
               "derived_tail_mrr": mean(derived, "tail_mrr"), "derived_head_mrr": mean(derived, "head_mrr"),
               "preset_tail_mrr": _mean_or_none(preset, "tail_mrr"),
               "preset_head_mrr": _mean_or_none(preset, "head_mrr"),
               "derived_steps": [r["steps"] for r in derived],
               "derived_wall_s": mean(derived, "wall_s"), "preset_wall_s": mean(preset, "wall_s"),
               "best_pykeen_model": best, "best_pykeen_mrr": mean(pykeen[best], "mrr") if best else None,
               "pykeen_wall_s": mean(pykeen[best], "wall_s") if best else None,
               "runs": {"derived": derived, "preset": preset, **{f"PyKEEN {m}": v for m, v in pykeen.items()}}}
        row["ratio_to_preset"] = row["derived_mrr"] / row["preset_mrr"]
        row["ratio_to_pykeen"] = row["derived_mrr"] / row["best_pykeen_mrr"] if best else None
        out[name] = row
        print(f"{name}: derived {row['derived_mrr']:.4f} (best validation {row['derived_val_mrr']:.4f}, "
              f"{row['derived_wall_s']:.0f} s), preset "
              f"{row['preset_mrr']:.4f} ({row['preset_wall_s']:.0f} s)"
              + (f", PyKEEN {best} {row['best_pykeen_mrr']:.4f} ({row['pykeen_wall_s']:.0f} s)" if best else ""),
              flush=True)
    print(f"\ntest MRR, mean of {len(seeds)} seed(s); derived runs: {args.budget:g}-minute budget")
    print("| graph | derived | preset | derived / preset | best PyKEEN | derived / PyKEEN | wall s: derived, "
          "preset, PyKEEN |\n|---|---|---|---|---|---|---|")
    for name, r in out.items():
        pk = f"{r['best_pykeen_mrr']:.3f} ({r['best_pykeen_model']})" if r["best_pykeen_model"] else "-"
        ratio = f"{r['ratio_to_pykeen']:.3f}" if r["ratio_to_pykeen"] else "-"
        walls = f"{r['derived_wall_s']:.0f}, {r['preset_wall_s']:.0f}, " + (
            f"{r['pykeen_wall_s']:.0f}" if r["pykeen_wall_s"] else "-")
        print(f"| {name} | {r['derived_mrr']:.3f} | {r['preset_mrr']:.3f} | {r['ratio_to_preset']:.3f} | {pk} | "
              f"{ratio} | {walls} |")
    print("\nby direction (test MRR): tail [h, r, ?] / head [?, r, t]")
    print("| graph | derived tail | derived head | preset tail | preset head |\n|---|---|---|---|---|")
    for name, r in out.items():
        preset = [f"{r[k]:.3f}" if r[k] is not None else "-" for k in ("preset_tail_mrr", "preset_head_mrr")]
        print(f"| {name} | {r['derived_tail_mrr']:.3f} | {r['derived_head_mrr']:.3f} | {preset[0]} | {preset[1]} |")
    C.emit(args.json, {"graphs": out, "seeds": seeds, "pykeen_seeds": args.pykeen_seeds.split(","),
                       "budget_minutes": args.budget, "pykeen_epochs": args.epochs,
                       "presets": args.presets})


if __name__ == "__main__":
    main()
