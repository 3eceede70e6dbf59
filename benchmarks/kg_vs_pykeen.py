"""learnpos's CoKE-style model against PyKEEN's strongest recipes, side by side on the same data
with the same protocol (test split, filtered by train + valid + test, both directions,
realistic ranks).

    python benchmarks/kg_vs_pykeen.py --dataset umls [--json] [--data PATH] [--seeds 1337,1,2]
        [--models ConvE,TuckER,RotatE,ComplEx-N3,DistMult-N3] [--epochs 200] [--steps N]
        [--set section.key=value ...] [--ensemble K [--jobs J]]
    python benchmarks/kg_vs_pykeen.py --data PATH [--budget MINUTES] [--learnpos derived|preset|both] ...

Any graph: with `--data PATH` and no `--dataset` (or with `--learnpos derived`), learnpos runs
the settings `learnpos train --task kg --data PATH` derives from the data (learnpos.derive.kg),
its schedule fitted to `--budget` minutes (default 10; the probe that fits it is inside the
timed wall time); `--learnpos both` runs the preset as well (a row each; the ratio uses the
derived row).

PyKEEN's defaults are not used (its default DistMult/ComplEx are badly under-regularised in
the 1-N regime); every model trains with 1-N scoring (LCWA) and, where it takes them,
reciprocal relations:
    ConvE, TuckER   BCE after sigmoid, label smoothing 0.1, Adam (Dettmers et al. 2018 settings)
    RotatE          softmax cross-entropy over all entities, Adam
    ComplEx-N3, DistMult-N3   softmax cross-entropy, N3 regularisation, Adagrad (Lacroix et al. 2018)
PyKEEN evaluates with its own RankBasedEvaluator; learnpos with its evaluator, which
tests/test_kg.py proves equal to it on the same scores. Both sides are timed from data
loading to the final test evaluation, one after the other in this process, with the same
threads. Prints a table of MRR, Hits@1/10 and wall time per model and learnpos MRR / best
PyKEEN MRR; `--json` ends with dataset, learnpos_mrr, learnpos_mrr_std, best_pykeen_model,
best_pykeen_mrr, ratio, learnpos_wall_s, pykeen_wall_s. Needs PyKEEN (`pip install 'learnpos[kg]'`).

`--ensemble K` trains K learnpos runs per seed as `learnpos train` processes, `--jobs` of them
at a time with this process's threads split among them, and ranks them as one model (the mean
of their log-softmax scores, as `learnpos eval --run A --run B ...` does). Its row's wall time
is that of all K runs together; the ratio and `learnpos_*` figures are then the ensemble's, and
`learnpos_single_*` the first run's alone.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C
import torch

from learnpos.config import load_config
from learnpos.data.kg import dataset_path
from learnpos.load import load_runs
from learnpos.runs import read_metrics
from learnpos.train import train

SINGLE = "learnpos (CoKE-style, learned positions)"
N3_WEIGHT = 1e-2
SMALL_NORMAL = functools.partial(torch.nn.init.normal_, std=1e-3)

# name -> pipeline arguments (PyKEEN 1.11 names); the epochs come from --epochs
RECIPES = {
    "ConvE": dict(model="ConvE", model_kwargs=dict(embedding_dim=200, input_dropout=0.2, feature_map_dropout=0.2,
                                                   output_dropout=0.3),
                  loss="BCEAfterSigmoidLoss", optimizer="Adam", optimizer_kwargs=dict(lr=1e-3),
                  training_kwargs=dict(batch_size=128, label_smoothing=0.1), inverse=True),
    "TuckER": dict(model="TuckER", model_kwargs=dict(embedding_dim=200, relation_dim=30, dropout_0=0.3,
                                                     dropout_1=0.4, dropout_2=0.5),
                   loss="BCEAfterSigmoidLoss", optimizer="Adam", optimizer_kwargs=dict(lr=5e-3),
                   training_kwargs=dict(batch_size=128, label_smoothing=0.1), inverse=True),
    "RotatE": dict(model="RotatE", model_kwargs=dict(embedding_dim=200), loss="CrossEntropyLoss",
                   optimizer="Adam", optimizer_kwargs=dict(lr=1e-3), training_kwargs=dict(batch_size=128),
                   inverse=True),
    # N3 (Lacroix et al. 2018) is the sum of cubed moduli of the factors a query touches: PyKEEN's
    # "powersum" regulariser with p=3 ("lp" with p=3 is the cube *root* of that, a different penalty).
    # DistMult's PyKEEN default pins entities to unit norm and regularises relations only; N3
    # instead leaves both free and regularises both.
    # Lacroix et al. start from small factors (normal, std 1e-3); PyKEEN's ComplEx default (std 1
    # over 200 complex dimensions) starts with saturated softmax scores.
    "ComplEx-N3": dict(model="ComplEx", model_kwargs=dict(embedding_dim=200, regularizer="powersum",
                                                          entity_initializer=SMALL_NORMAL,
                                                          relation_initializer=SMALL_NORMAL,
                                                          regularizer_kwargs=dict(p=3.0, weight=N3_WEIGHT)),
                       loss="CrossEntropyLoss", optimizer="Adagrad", optimizer_kwargs=dict(lr=0.1),
                       training_kwargs=dict(batch_size=128), inverse=True),
    "DistMult-N3": dict(model="DistMult", model_kwargs=dict(
        embedding_dim=200, entity_constrainer=None, regularizer="powersum",
        regularizer_kwargs=dict(p=3.0, weight=N3_WEIGHT),
        entity_representations_kwargs=dict(regularizer="powersum", regularizer_kwargs=dict(p=3.0, weight=N3_WEIGHT))),
                        loss="CrossEntropyLoss", optimizer="Adagrad", optimizer_kwargs=dict(lr=0.1),
                        training_kwargs=dict(batch_size=128), inverse=True),
}


def pykeen_factories(folder: Path, inverse: bool):
    from pykeen.triples import TriplesFactory

    train_tf = TriplesFactory.from_path(folder / "train.txt", create_inverse_triples=inverse)
    kw = dict(entity_to_id=train_tf.entity_to_id, relation_to_id=train_tf.relation_to_id,
              create_inverse_triples=inverse)
    return train_tf, TriplesFactory.from_path(folder / "valid.txt", **kw), TriplesFactory.from_path(
        folder / "test.txt", **kw)


def run_pykeen(name: str, folder: Path, epochs: int, seed: int) -> dict:
    from pykeen.pipeline import pipeline

    recipe = dict(RECIPES[name])
    inverse = recipe.pop("inverse")
    t0 = time.perf_counter()
    train_tf, valid_tf, test_tf = pykeen_factories(folder, inverse)
    result = pipeline(training=train_tf, validation=valid_tf, testing=test_tf, training_loop="LCWA",
                      evaluator="RankBasedEvaluator", evaluator_kwargs=dict(filtered=True), random_seed=seed,
                      device="cpu", **{**recipe, "training_kwargs": {**recipe["training_kwargs"], "num_epochs": epochs,
                                                                      "use_tqdm": False}})
    m = result.metric_results
    return {"mrr": m.get_metric("both.realistic.inverse_harmonic_mean_rank"),
            "hits@1": m.get_metric("both.realistic.hits_at_1"), "hits@10": m.get_metric("both.realistic.hits_at_10"),
            "wall_s": round(time.perf_counter() - t0, 1)}


def run_learnpos(dataset: str, data: str, seed: str, steps: int, sets: list[str], tmp: str) -> dict:
    """One learnpos run, trained and ranked in this process with its threads."""
    t0 = time.perf_counter()
    cfg = load_config(f"kg-{dataset}", C.kg_overrides(dataset, seed, f"{tmp}/learnpos-{seed}", data, sets, steps))
    train(cfg, quiet=True)
    return _test_metrics([cfg.train.out_dir], t0)


DERIVED = "learnpos, settings derived from the data"


def run_derived(folder: Path, seed: str, budget: float, sets: list[str], tmp: str) -> dict:
    """One run of the data-derived settings, from the derivation (its probe included) to the test ranking."""
    from learnpos.derive import derive_config

    t0 = time.perf_counter()
    over = {"train.seed": str(seed), "train.out_dir": f"{tmp}/derived-{seed}", "train.time_budget": str(budget),
            **dict(x.split("=", 1) for x in sets)}
    cfg, lines = derive_config("kg", str(folder), over)
    print("\n".join(lines), flush=True)
    train(cfg, quiet=True)
    records = read_metrics(cfg.train.out_dir)
    val = [r["mrr"] for r in records if r.get("split") == "val" and "mrr" in r]
    return {**_test_metrics([cfg.train.out_dir], t0), "steps": max(r["step"] for r in records),
            "planned_steps": cfg.train.max_iters,  # more than steps: the budget or early stopping ended it
            "best_val_mrr": max(val) if val else None}  # what early stopping kept


def run_ensemble(dataset: str, data: str, seed: str, steps: int, sets: list[str], tmp: str, members: int,
                 jobs: int) -> tuple[dict, dict]:
    """(the first member alone, the ensemble) of `members` runs with seeds seed, seed + 1000, ...
    (disjoint across --seeds 1337,1,2), trained as `learnpos train` processes, `jobs` at a time,
    each with this process's threads divided among the jobs (`--jobs 1`: one after another with
    all of them). The ensemble's wall time runs from the first start to its test ranking; the
    first member's is its own training (as it ran, beside the others) plus its own ranking."""
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, torch.get_num_threads() // jobs))}
    dirs = [f"{tmp}/learnpos-{seed}-{j}" for j in range(members)]

    def member(j: int) -> float:
        member_seed = int(seed) + 1000 * j
        over = C.kg_overrides(dataset, member_seed, dirs[j], data, sets, steps)
        r = subprocess.run([sys.executable, "-m", "learnpos", "train", "--preset", f"kg-{dataset}",
                            *(f"--{k}={v}" for k, v in over.items()), "--quiet", "--json"],
                           env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"ensemble member {j} (seed {member_seed}) failed:\n{r.stderr}")
        return json.loads(r.stdout.strip().splitlines()[-1])["wall_s"]

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        walls = list(pool.map(member, range(members)))
    ensemble = _test_metrics(dirs, t0)  # before the first member's own ranking, which the ensemble does not need
    single = _test_metrics(dirs[:1], time.perf_counter())
    single["wall_s"] = round(walls[0] + single["wall_s"], 1)
    return single, ensemble


def _test_metrics(dirs: list[str], t0: float) -> dict:
    model, _, task = load_runs(dirs)
    m = task.evaluate(model, torch.device("cpu"), split="test")
    return {"mrr": m["mrr"], "hits@1": m["hits@1"], "hits@10": m["hits@10"], "tail_mrr": m["tail_mrr"],
            "head_mrr": m["head_mrr"], "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="", help="a preset's dataset: umls, kinships, nations, wn18rr, fb15k-237 "
                                                  "(default umls, or none with --data: derived settings)")
    ap.add_argument("--data", default="", help="dataset folder (default: PyKEEN's copy of nations/kinships/umls)")
    ap.add_argument("--learnpos", choices=("preset", "derived", "both"), default="",
                    help="learnpos's settings: the dataset's preset, derived from the data, or both (default: "
                         "preset with --dataset, derived without)")
    ap.add_argument("--budget", type=float, default=10.0, help="minutes for a derived run (train.time_budget)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seeds", default="1337,1,2")
    ap.add_argument("--models", default=",".join(RECIPES))
    ap.add_argument("--epochs", type=int, default=200, help="PyKEEN training epochs")
    ap.add_argument("--steps", type=int, default=0, help="learnpos train.max_iters (0 = the preset's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a learnpos config override")
    ap.add_argument("--ensemble", type=int, default=1,
                    help="rank an ensemble of this many learnpos runs per seed (`learnpos eval --run A --run B ...`), "
                         "timed together; the ratio then uses the ensemble")
    ap.add_argument("--jobs", type=int, default=2, help="ensemble members trained at once (threads split among them)")
    args = ap.parse_args()
    if args.ensemble < 1 or (args.ensemble > 1 and not 1 <= args.jobs <= torch.get_num_threads()):
        ap.error(f"--ensemble must be at least 1 and --jobs between 1 and the {torch.get_num_threads()} threads "
                 f"(got {args.ensemble} and {args.jobs})")
    if not args.dataset and not args.data:
        args.dataset = "umls"
    which = args.learnpos or ("preset" if args.dataset else "derived")
    if which != "preset" and args.ensemble > 1:
        ap.error("--ensemble trains preset runs; drop it or use --learnpos preset")
    if which != "derived" and not args.dataset:
        ap.error("--learnpos preset needs --dataset NAME (its preset is kg-NAME)")
    folder = dataset_path(args.dataset or "data", args.data)
    name = args.dataset or folder.name
    print(f"# {C.cpu_info()}; torch {torch.__version__}; {C.thread_note()}; {name} from {folder}", flush=True)
    seeds = args.seeds.split(",")
    rows: dict[str, dict] = {}
    ours = f"learnpos, ensemble of {args.ensemble} runs" if args.ensemble > 1 else SINGLE  # what the ratio uses
    if which != "preset":
        ours = DERIVED
    with tempfile.TemporaryDirectory() as tmp:
        if which != "preset":
            rows[DERIVED] = [run_derived(folder, s, args.budget, args.set, tmp) for s in seeds]
            print(f"{DERIVED}: MRR {statistics.mean(r['mrr'] for r in rows[DERIVED]):.4f}", flush=True)
        if which != "derived" and args.ensemble > 1:
            runs = [run_ensemble(args.dataset, str(folder), s, args.steps, args.set, tmp, args.ensemble, args.jobs)
                    for s in seeds]
            rows[SINGLE] = [single for single, _ in runs]
            rows[ours] = [ens for _, ens in runs]
        elif which != "derived":
            rows[SINGLE] = [run_learnpos(args.dataset, str(folder), s, args.steps, args.set, tmp) for s in seeds]
        if which != "derived":
            print(f"{SINGLE}: MRR {statistics.mean(r['mrr'] for r in rows[SINGLE]):.4f}", flush=True)
        for model in filter(None, args.models.split(",")):
            rows[f"PyKEEN {model}"] = [run_pykeen(model, folder, args.epochs, int(s)) for s in seeds]
            print(f"PyKEEN {model}: MRR {statistics.mean(r['mrr'] for r in rows[f'PyKEEN {model}']):.4f}", flush=True)
    mean = {k: {m: statistics.mean(r[m] for r in v) for m in ("mrr", "hits@1", "hits@10", "wall_s")}
            for k, v in rows.items()}
    print(f"\n{name}, test split, filtered, both directions, realistic ranks; mean of {len(seeds)} seed(s)")
    print("| model | MRR | Hits@1 | Hits@10 | wall s per run |\n|---|---|---|---|---|")
    for k, m in mean.items():
        print(f"| {k} | {m['mrr']:.3f} | {m['hits@1']:.3f} | {m['hits@10']:.3f} | {m['wall_s']:.0f} |")
    pykeen = {k: m for k, m in mean.items() if k.startswith("PyKEEN")}
    best = max(pykeen, key=lambda k: pykeen[k]["mrr"]) if pykeen else None
    ratio = mean[ours]["mrr"] / pykeen[best]["mrr"] if best else None
    if best:
        print(f"{ours} MRR / best PyKEEN MRR ({best}): {ratio:.3f}")
    spread = {k: statistics.pstdev([r["mrr"] for r in v]) if len(v) > 1 else 0.0 for k, v in rows.items()}
    single = mean.get(SINGLE, {})
    C.emit(args.json, {"dataset": name, "learnpos_settings": which, "rows": rows, "ensemble": args.ensemble,
                       "jobs": args.jobs if args.ensemble > 1 else 1,
                       "learnpos_mrr": mean[ours]["mrr"], "learnpos_mrr_std": spread[ours],
                       "learnpos_single_mrr": single.get("mrr"), "learnpos_single_mrr_std": spread.get(SINGLE),
                       "learnpos_single_wall_s": single.get("wall_s"),
                       "learnpos_derived_mrr": mean.get(DERIVED, {}).get("mrr"),
                       "learnpos_preset_mrr": single.get("mrr") if args.ensemble == 1 else None,
                       "best_pykeen_model": best, "best_pykeen_mrr": pykeen[best]["mrr"] if best else None,
                       "ratio": ratio, "learnpos_wall_s": mean[ours]["wall_s"],
                       "pykeen_wall_s": pykeen[best]["wall_s"] if best else None, "pykeen_epochs": args.epochs})


if __name__ == "__main__":
    main()
