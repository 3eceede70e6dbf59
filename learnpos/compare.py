"""`learnpos compare`: one model, one task, one budget, every positional encoding.

Trains the preset once per variant and seed, everything else fixed, then evaluates each run at
the training length and at multiples of it (`--lengths 1,1.5,2,4`). A learned table shorter
than an evaluation length is grown explicitly with each `extend` method (copy-last,
interpolate, init) and each is reported as its own row: nothing is ever clamped silently.

    variant              what changes against the preset
    learned              model.positional.kind = learned (the preset's table size, init, decay)
    learned+randomized   model.positional.randomize = true, the table as long as the longest
                         evaluation (Ruoss et al. 2023)
    sinusoidal, rope, alibi, none
                         model.positional.kind
    init=randn, init=sinusoidal, init=zeros
                         model.positional.init of the learned table (the preset's is normal)
    learned+decay        model.positional.weight_decay = true (decoupled decay on every row)
    learned+offset       model.positional.offset = K: training shifts each sequence's ids by
                         0..K (Abacus, McLeish et al. 2024), K = the rows the longest evaluation
                         reads, so every row it reads was reached as often as the middle ones
    learned+offset+randomized
                         both: shifted by up to (longest - training) rows, then mapped through a
                         sorted random subset of a table as long as the longest evaluation
    task-ids+offset      a learned table read at the task's own ids (synthetic.positions = task:
                         position coupling for copy/reverse, Abacus for add), with offsets
    task-ids+randomized  the task's ids, randomized table (Ruoss et al. 2023)

Output in `--out` (default runs/compare-<preset>): one run directory per variant and seed,
`results.jsonl` (one line per run with its rows per evaluation length and extend method,
appended as each run finishes), `results.csv`, `results.md` (mean ± spread over seeds per variant and length), a PNG
of the metric against evaluation length, and `report.html`. Run the same command again after
an interruption and it continues: finished runs are read back, an unfinished one resumes
from its last checkpoint.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import shutil
import statistics
import time
from pathlib import Path

from learnpos.analysis.report import Figure, Section, draw_figure, write_report
from learnpos.config import load_config
from learnpos.errors import ConfigError, LearnposError
from learnpos.files import append_line, atomic_write_text, lock_dir
from learnpos.hardware import autocast_for, resolve_device
from learnpos.load import load_run
from learnpos.positional import LearnedPositionalEmbedding
from learnpos.runs import has_checkpoint, latest_checkpoint, read_metrics
from learnpos.tasks import TASKS
from learnpos.train import train

log = logging.getLogger(__name__)

LEARNED = {"model.positional.kind": "learned"}  # whatever the preset uses
VARIANTS = {
    "learned": {**LEARNED},
    "learned+randomized": {**LEARNED, "model.positional.randomize": "true"},
    "sinusoidal": {"model.positional.kind": "sinusoidal"},
    "rope": {"model.positional.kind": "rope"},
    "alibi": {"model.positional.kind": "alibi"},
    "none": {"model.positional.kind": "none"},
    "init=randn": {**LEARNED, "model.positional.init": "randn"},
    "init=sinusoidal": {**LEARNED, "model.positional.init": "sinusoidal"},
    "init=zeros": {**LEARNED, "model.positional.init": "zeros"},
    "learned+decay": {**LEARNED, "model.positional.weight_decay": "true"},
    "learned+offset": {**LEARNED},  # the offset is sized by `variant_config`
    "learned+offset+randomized": {**LEARNED, "model.positional.randomize": "true"},
    "task-ids+offset": {**LEARNED, "synthetic.positions": "task"},
    "task-ids+randomized": {**LEARNED, "synthetic.positions": "task", "model.positional.randomize": "true"},
}
TASK_IDS = ("task-ids+offset", "task-ids+randomized")  # for tasks that define their own position ids
EXTEND_METHODS = ("copy-last", "interpolate", "init")
RESULTS = "results.jsonl"


def variant_config(preset: str, variant: str, seed: int, out: Path, overrides: dict, longest: int | None):
    """The config of one run: the preset, the user's overrides, the variant's own. `longest`:
    the longest evaluation length (symbols, tokens), which sizes the tables of the variants
    that read rows past the training length."""
    over = {**overrides, **VARIANTS[variant], "train.seed": str(seed), "train.out_dir": str(out)}
    cfg = load_config(preset, over)
    if longest is None or not ("randomized" in variant or "offset" in variant):
        return cfg
    task = TASKS[cfg.task]
    need = task.positions_needed(cfg, longest)  # rows the longest evaluation reads
    if "randomized" in variant:  # a table of exactly those rows: every evaluation length reads trained rows
        trained = task.positions_needed(cfg, task.train_length(cfg))
        over["model.positional.max_len"] = str(need if "offset" not in variant else trained)
        if "offset" in variant:  # shifted by up to need - trained, then drawn as a sorted subset of the need rows
            over["model.positional.offset"] = str(need - trained)
    elif "offset" in variant:  # offsets up to need: rows max_len..need are reached about as often as the middle
        over["model.positional.offset"] = str(need)
    return load_config(preset, over)


def run_path(out: Path, variant: str, seed: int) -> Path:
    """The run directory of one variant and seed inside a comparison folder."""
    return out / variant.replace("=", "-").replace("+", "-") / f"seed-{seed}"


def _finished(run_dir: Path, max_iters: int) -> bool:
    if not has_checkpoint(run_dir):
        return False
    return int(latest_checkpoint(run_dir).name.split("-")[1]) >= max_iters


def evaluate_lengths(run_dir: Path, factors: list[float], device) -> list[dict]:
    """Rows (length, factor, method, metrics) of one trained run at every evaluation length."""
    model, cfg, task = load_run(run_dir, device)
    task.files_dir = run_dir  # compare trained these runs and holds their folder's lock: its files go there
    base = type(task).train_length(cfg)
    autocast = autocast_for(device, cfg.train.dtype)
    rows = []
    for f in factors:
        n = max(1, round(f * base))
        need = type(task).positions_needed(cfg, n)
        plain = isinstance(model.pos, LearnedPositionalEmbedding) and not cfg.model.positional.randomize
        if cfg.model.positional.randomize and need > model.max_len:
            raise ConfigError(f"{run_dir} was trained with a randomized table of {model.max_len} rows; length {n} "
                              f"needs {need}: compare the longer lengths in a new --out")
        if plain and need > model.max_len:
            for method in EXTEND_METHODS:
                grown = copy.deepcopy(model)
                grown.extend_positions(need, method)
                metrics = task.evaluate(grown, device, autocast=autocast, length=n, tag=method)
                rows.append({"factor": f, "length": n, "method": method, **_scalars(metrics)})
        else:
            rows.append({"factor": f, "length": n, "method": "",
                         **_scalars(task.evaluate(model, device, autocast=autocast, length=n))})
    return rows


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_compare(preset: str, variants: list[str], seeds: list[int], factors: list[float], out: Path,
                overrides: dict, quiet: bool = False) -> Path:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if not seeds or not factors or not all(math.isfinite(f) and f > 0 for f in factors):
        raise ConfigError("--seeds needs at least one seed and --lengths positive factors (e.g. 1,1.5,2,4)")
    probe = load_config(preset, overrides)
    task_cls = TASKS[probe.task]
    base = task_cls.train_length(probe)
    if base is None:
        raise ConfigError(f"task '{probe.task}' has no sequence length to vary; `learnpos compare` needs a task "
                          f"that evaluates at other lengths (the synthetic probes, lm)")
    longest = max(1, round(max(factors) * base))
    failed: list[tuple[str, int, str]] = []
    lengths = [max(1, round(f * base)) for f in factors]
    if len(set(lengths)) != len(lengths):
        raise ConfigError(f"--lengths {','.join(f'{f:g}' for f in factors)} give the evaluation lengths {lengths} "
                          f"(training length {base}): give factors that differ after rounding")
    with lock_dir(out, "--out"):  # one compare writes a folder at a time (each run is locked by train too)
        done = _read_results(out)
        _check_settings(out, preset, overrides, has_results=bool(done))
        device = resolve_device(probe.train.device)
        for variant in variants:
            for seed in seeds:
                have = {r["factor"] for r in done if r["variant"] == variant and r["seed"] == seed}
                todo = [f for f in factors if f not in have]
                if not todo:
                    continue
                run_dir = run_path(out, variant, seed)
                cfg = variant_config(preset, variant, seed, run_dir, overrides, longest)
                t0 = time.perf_counter()
                if run_dir.exists() and not has_checkpoint(run_dir):  # killed before its first checkpoint
                    log.warning("%s: an interrupted run without a checkpoint; training it again", run_dir)
                    shutil.rmtree(run_dir)  # this compare holds the folder's lock: nobody else writes it
                try:
                    if not _finished(run_dir, cfg.train.max_iters):
                        train(cfg, resume=has_checkpoint(run_dir), quiet=True)
                    rows = evaluate_lengths(run_dir, todo, device)
                except LearnposError as e:  # one variant that cannot train or run is a row of the table, not the end
                    log.warning("%s seed %d failed: %s", variant, seed, e)
                    print(f"{variant}/seed-{seed}: failed: {e}", flush=True)
                    failed.append((variant, seed, str(e)))
                    continue
                wall = time.perf_counter() - t0
                rows = [{"variant": variant, "seed": seed, "train_s": round(wall, 1), **r} for r in rows]
                append_line(out / RESULTS, json.dumps({"variant": variant, "seed": seed, "rows": rows}))  # one write
                done += rows
                if not quiet:
                    first = rows[0]
                    shown = {k: first[k] for k in ("token_accuracy", "exact_match", "loss") if k in first}
                    print(f"{variant}/seed-{seed}: {wall:.0f} s; at length {first['length']} " +
                          ", ".join(f"{k} {v:.4f}" for k, v in shown.items()), flush=True)
        rows = [r for r in done if r["variant"] in variants and r["seed"] in seeds and r["factor"] in factors]
        return write_outputs(out, preset, rows, variants, factors, failed, overrides)


SETTINGS = "compare.json"


def _check_settings(out: Path, preset: str, overrides: dict, has_results: bool) -> None:
    """Runs and results in `out` all come from one preset and one set of overrides: a rerun
    with other settings would mix two studies in one table, so it is refused. Variants, seeds
    and lengths may change between reruns (they add rows; they do not change a run)."""
    settings = {"preset": preset, "overrides": {k: overrides[k] for k in sorted(overrides)}}
    path = out / SETTINGS
    if path.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise ConfigError(f"{path} is not valid JSON: remove it only if every run in {out} was made with "
                              f"--preset {preset} and the same --section.key=value settings") from None
        if before != settings:
            raise ConfigError(f"{out} holds a comparison made with {_command(before)}, not {_command(settings)}: "
                              f"give another --out (mixing the two would put different models in one table)")
        return
    if has_results:
        raise ConfigError(f"{out} holds results but no {SETTINGS} recording how they were made: give another --out")
    atomic_write_text(path, json.dumps(settings, indent=1) + "\n")


def _command(settings: dict) -> str:
    over = "".join(f" --{k}={v}" for k, v in settings.get("overrides", {}).items())
    return f"`--preset {settings.get('preset')}{over}`"


def _read_results(out: Path) -> list[dict]:
    """The rows of every run already evaluated (one line per run). A line cut off by a kill is
    dropped (that run is evaluated again) and the file rewritten without it, so appending
    continues on a clean line."""
    path = out / RESULTS
    if not path.exists():
        return []
    runs, text = [], path.read_text(encoding="utf-8")
    for line in text.splitlines():
        try:
            runs.append(json.loads(line))
        except ValueError:
            continue
    clean = "".join(json.dumps(r) + "\n" for r in runs)
    if clean != text:
        log.warning("%s: dropped a line cut off by an interruption; that run is evaluated again", path)
        atomic_write_text(path, clean)
    return [row for r in runs for row in r["rows"]]


def _metric(rows: list[dict]) -> tuple[str, str]:
    """(metric key, label) the tables report: token accuracy where the task has it, else loss."""
    return ("token_accuracy", "token accuracy") if "token_accuracy" in rows[0] else ("loss", "loss")


def _label(r: dict) -> str:
    return r["variant"] + (f" ({r['method']})" if r["method"] else "")


def write_outputs(out: Path, preset: str, rows: list[dict], variants: list[str], factors: list[float],
                  failed: list[tuple[str, int, str]] = (), overrides: dict | None = None) -> Path:
    if not rows:
        why = "; ".join(f"{v} seed {s}: {e}" for v, s, e in failed)
        raise ConfigError(f"{out} holds no results" + (f" (every run failed: {why})" if why else ""))
    key, label = _metric(rows)
    lengths = sorted({(r["factor"], r["length"]) for r in rows})
    labels = list(dict.fromkeys(_label(r) for v in variants for r in rows if r["variant"] == v))
    seeds = sorted({r["seed"] for r in rows})
    cell = {}
    for lab in labels:
        for _f, n in lengths:
            vals = [r[key] for r in rows if _label(r) == lab and r["length"] == n]
            if vals:
                cell[lab, n] = (statistics.mean(vals), statistics.pstdev(vals), len(vals))
    extra = [k for k in ("exact_match",) if k in rows[0]]
    head = "| variant | " + " | ".join(f"{label} @ {n} ({f:g}x)" for f, n in lengths) + " |"
    command = _command({"preset": preset, "overrides": dict(sorted((overrides or {}).items()))}).strip("`")
    md = [f"`learnpos compare {command}`: {label}, mean ± spread (population standard deviation) over "
          f"{len(seeds)} seed(s) {', '.join(map(str, seeds))}; a learned table shorter than the evaluation is "
          f"grown with the extend method in brackets.", "", head, "|---" * (len(lengths) + 1) + "|"]
    for lab in labels:
        md.append(f"| {lab} | " + " | ".join(
            f"{cell[lab, n][0]:.3f} ± {cell[lab, n][1]:.3f}" if (lab, n) in cell else "n/a" for _, n in lengths) + " |")
    for k in extra:
        md += ["", f"{k}, mean ± spread over seeds:", "", head.replace(label, k), "|---" * (len(lengths) + 1) + "|"]
        for lab in labels:
            vals = {n: [r[k] for r in rows if _label(r) == lab and r["length"] == n] for _, n in lengths}
            md.append(f"| {lab} | " + " | ".join(
                f"{statistics.mean(vals[n]):.3f} ± {statistics.pstdev(vals[n]):.3f}" if vals[n] else "n/a"
                for _, n in lengths) + " |")
    if failed:
        md += ["", "Failed (the command retries them when run again):", ""]
        md += [f"- {v} seed {s}: {e}" for v, s, e in failed]
    atomic_write_text(out / "results.md", "\n".join(md) + "\n")
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())

    fig = Figure(f"{key}_by_length", f"{label} against evaluation length ({preset})", [n for _, n in lengths],
                 {lab: [cell[lab, n][0] if (lab, n) in cell else float("nan") for _, n in lengths] for lab in labels},
                 "evaluation length", label)
    s = Section("Results")
    s.html.append(_md_table_html(md))
    s.image(f"{key}_by_length.png", draw_figure(fig), fig.title)
    runs = Section("Runs")
    runs.table([(r["variant"], r["seed"], r["train_s"]) for r in rows if r["factor"] == lengths[0][0]
                and r["method"] in ("", EXTEND_METHODS[0])], ("variant", "seed", "train s"))
    curves = Section("Training loss")
    by_run = {}
    for v in variants:
        for seed in seeds:
            d = run_path(out, v, seed)
            if d.exists():
                by_run[f"{v} seed {seed}"] = [r for r in read_metrics(d) if r.get("split") == "val"]
    steps = sorted({r["step"] for rs in by_run.values() for r in rs})
    if steps:
        series = {name: [next((r["loss"] for r in rs if r["step"] == st), float("nan")) for st in steps]
                  for name, rs in by_run.items()}
        curves.image("eval_loss.png", draw_figure(Figure("eval_loss", "evaluation loss during training", steps,
                                                         series, "step", "loss")), "evaluation loss per run")
    return write_report(out, f"learnpos compare: {preset}", [s, runs, curves])


def _md_table_html(md: list[str]) -> str:
    import html

    out, in_table = [], False
    for line in md:
        if line.startswith("|---"):
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            tag = "th" if not in_table else "td"
            out.append(("<table>" if not in_table else "") + "<tr>" +
                        "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            in_table = True
        else:
            if in_table:
                out.append("</table>")
                in_table = False
            if line:
                out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    return "".join(out)


def all_variants(preset: str, overrides: dict) -> list[str]:
    """Every variant that applies to the preset's task (task-ids variants where it has ids)."""
    task_cls = TASKS[load_config(preset, overrides).task]
    has_ids = getattr(task_cls, "task_ids", lambda n: None)(1) is not None
    return [v for v in VARIANTS if has_ids or v not in TASK_IDS]


def main(preset: str, variants: str, seed_list: list[int], factors: list[float], out: str | None,
         overrides: dict, as_json: bool = False) -> int:
    names = all_variants(preset, overrides) if variants == "all" else [v for v in variants.split(",") if v]
    folder = Path(out) if out else Path("runs") / f"compare-{Path(preset).stem}"
    t0 = time.perf_counter()
    report = run_compare(preset, names, seed_list, factors, folder, overrides)
    print((folder / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {folder}/results.md, results.csv and {report} in {time.perf_counter() - t0:.0f} s")
    if as_json:  # the runs of this comparison, one record each (results.jsonl), as one object
        runs = [json.loads(line) for line in (folder / RESULTS).read_text(encoding="utf-8").splitlines() if line]
        print(json.dumps({"preset": preset, "out": str(folder), "variants": names, "seeds": seed_list,
                          "lengths": factors, "runs": runs}))
    return 0
