"""`learnpos inspect RUN`: a run explains itself in PNG plots and one self-contained
`report.html` (written to RUN/inspect/ unless told otherwise).

The report holds, in order: the config summary; training and evaluation loss curves; the
final metrics; for every learned table (positions, turns, speakers, ...) its similarity
heatmap, similarity by distance, PCA curve, row norms and, where the run recorded
`position_stats`, gradient, coverage and drift per row with the rows that were never or rarely
trained named and explained; the task's own figures (per-position accuracy for the probes,
loss by position for language models, per-direction MRR for KG, perplexity by history length
for dialogue); and the `learnpos verify` summary when the run has one (RUN/verify.json).
What does not apply to a run is left out with a note saying why, never an error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from learnpos.analysis.geometry import row_geometry
from learnpos.analysis.position_stats import load_position_stats
from learnpos.analysis.report import (
    Section,
    draw_curves,
    draw_figure,
    draw_table,
    draw_training,
    runs_of,
    untrained_rows,
    write_report,
)
from learnpos.errors import LearnposError, RunDirError
from learnpos.hardware import resolve_device
from learnpos.load import load_run
from learnpos.runs import BEST_DIR, latest_checkpoint, model_checkpoint, read_metrics

VERIFY_FILE = "verify.json"  # `learnpos verify --json > RUN/verify.json` puts a summary in the report


def inspect_run(run_dir: str | Path, out_dir: str | Path | None = None, device: str = "cpu",
                data: dict[str, str] | None = None) -> Path:
    """Write the report of `run_dir` (into out_dir, default RUN/inspect); returns the path of
    report.html. `data`: where the run's data is now, if it moved (see `load.load_run`)."""
    run_dir = Path(run_dir)
    model, cfg, task = load_run(run_dir, device, data=data, check_data=True)
    records = read_metrics(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "inspect"
    sections = [_summary(cfg, model, task, records), _curves(records), _final(records)]
    try:
        stats = load_position_stats(run_dir)
    except RunDirError as e:
        stats, stats_note = {}, str(e)
    else:
        stats_note = ""
    weights = model_checkpoint(run_dir)
    if stats and weights.parent.name == BEST_DIR:  # early stopping kept the best evaluation's weights
        sections_note = (f"The tables shown are the best evaluation's weights ({weights.name}); the training "
                         f"statistics cover the whole run ({latest_checkpoint(run_dir).name}).")
    else:
        sections_note = ""
    tables = _tables(cfg, model, stats, stats_note, records)
    if sections_note:
        tables[0].note(sections_note)
    sections += tables
    sections.append(_task_figures(task, model, device, cfg.task))
    sections.append(_verify(run_dir))
    return write_report(out, f"learnpos run {run_dir.name} ({cfg.task})", sections)


def _summary(cfg, model, task, records: list[dict]) -> Section:
    s = Section("Configuration")
    m, t, p = cfg.model, cfg.train, cfg.model.positional
    steps = max((r["step"] for r in records), default=0)
    tables = ", ".join(f"{x.name} ({x.rows} rows)" for x in m.tables) or "none"
    rows = [("task", cfg.task), ("model", f"{m.n_layer} layers x {m.n_embd} wide, {m.n_head} heads, "
                                         f"{'decoder (causal)' if m.causal else 'encoder (bidirectional)'}"),
            ("parameters", f"{model.num_params():,} ({model.num_params(include_tables=False):,} without learned "
                           f"tables)"),
            ("positions", f"{p.kind}" + (f", {p.max_len + p.offset} rows, init {p.init}, weight decay {p.weight_decay}"
                                         + (", randomized (Ruoss et al. 2023)" if p.randomize else "")
                                         + (f", random offsets 0..{p.offset} in training (max_len {p.max_len})"
                                            if p.offset else "")
                                         if p.kind == "learned" else "")),
            ("named tables", tables),
            ("training", f"{steps} of {t.max_iters} steps, batch {t.batch_size}, lr {t.lr:g} -> {t.min_lr:g}, "
                         f"weight decay {t.weight_decay:g}, seed {t.seed}, {t.dtype}")]
    name = type(task).config_section
    section = getattr(cfg, name, None) if name else None
    if section is not None:
        rows.append((name, ", ".join(f"{k}={v}" for k, v in vars(section).items())))
    s.table(rows)
    return s


def _curves(records: list[dict]) -> Section:
    s = Section("Loss curves")
    png = draw_curves(records)
    if png is None:
        s.note("metrics.jsonl holds no loss yet (the run logged nothing)")
    else:
        s.image("loss_curves.png", png, "training loss (every train.log_interval steps) and evaluation loss")
    return s


def _final(records: list[dict]) -> Section:
    s = Section("Final metrics")
    evals = [r for r in records if r.get("split") == "val"]
    if not evals:
        s.note("no evaluation was recorded (train.eval_interval was never reached)")
        return s
    last = evals[-1]
    s.text(f"The last evaluation, at step {last['step']}:")
    s.table([(k, v) for k, v in last.items() if k not in ("step", "split") and not isinstance(v, (list, dict))],
            ("metric", "value"))
    return s


def _tables(cfg, model, stats: dict, stats_note: str, records: list[dict]) -> list[Section]:
    tables = model.learned_tables()
    if not tables:
        s = Section("Learned tables")
        s.note(f"model.positional.kind={cfg.model.positional.kind} and no named tables: this run has no learned "
               f"table to show")
        return [s]
    out = []
    for name, module in tables.items():
        W = module.weight
        what = "the position table" if name == "pos" else f"the named table '{name}'"
        axis = "position" if name == "pos" else name
        s = Section(f"Learned table: {name}" + (" (positions)" if name == "pos" else ""))
        s.text(f"{what}: {W.shape[0]} rows of {W.shape[1]}.")
        if name == "pos":
            s.text(_geometry_line(cfg, W))
        pics = draw_table(W, name, axis)
        s.image(f"{name}_similarity.png", pics["similarity"],
                f"{name}: cosine similarity of every pair of rows (a diagonal band: neighbours are alike)")
        s.image(f"{name}_by_distance.png", pics["by_distance"], f"{name}: mean similarity against distance")
        s.image(f"{name}_pca.png", pics["pca"], f"{name}: the rows on their first two principal components, in order")
        s.image(f"{name}_norms.png", pics["norms"], f"{name}: row norms")
        if name in stats:
            st = stats[name]
            s.image(f"{name}_training.png", draw_training(st, name, axis),
                    f"{name}: gradient, coverage and drift per row (red: never trained; orange: rarely)")
            s.html.append(_coverage(name, st, W.shape[0]))
        else:
            s.note(f"no per-row training statistics: {stats_note or 'the run recorded none for this table'}")
        out.append(s)
    return out


def _geometry_line(cfg, W) -> str:
    """How alike near and far rows are (`learnpos.analysis.geometry`), far = farther apart than
    the longest training sequence's positions (before random offsets)."""
    from learnpos.tasks import TASKS

    task_cls = TASKS.get(cfg.task)
    length = task_cls.train_length(cfg) if task_cls is not None else None
    span = task_cls.positions_needed(cfg, length) if length else cfg.model.positional.max_len
    g = row_geometry(W, min(span, W.shape[0]))
    if g["far_similarity"] is None:
        return (f"every pair of rows is within {span} of each other (the longest training sequence's positions): "
                f"mean cosine similarity {g['near_similarity']}.")
    return (f"rows at most {span} apart (the longest training sequence's positions) have mean cosine similarity "
            f"{g['near_similarity']}, rows farther apart {g['far_similarity']}; "
            f"{100 * g['far_nearest_share']:.0f}% of rows have their most similar row more than {span} away "
            f"(rows no training sequence had to tell apart, which a longer input can confuse).")


def _coverage(name: str, st: dict, rows: int) -> str:
    never, rarely = untrained_rows(st)
    steps = int(st["steps"][0])
    if len(never) == 0 and len(rarely) == 0:
        return f"<p>Every one of the {rows} rows received a gradient in at least 1% of the {steps} steps.</p>"
    parts = []
    if len(never):
        reached = np.flatnonzero(st["nonzero_steps"].numpy() > 0)
        why = ("no training sequence reaches them: the longest used " f"{int(reached.max()) + 1} positions"
               if name == "pos" and len(reached) and never.min() > reached.max() else
               "no training batch used these ids")
        moved = st["displacement"].numpy()[never]
        drift = ("they still moved (weight decay pulls untrained rows towards zero)" if (moved > 0).any()
                 else "they are exactly their initial values")
        parts.append(f'<p class="warn">Never trained: {len(never)} rows ({_ranges(never)}): {why}; {drift}. '
                     f"Evaluating at those {'positions' if name == 'pos' else 'ids'} reads untrained vectors.</p>")
    if len(rarely):
        parts.append(f'<p class="warn">Rarely trained (a gradient in fewer than 1% of {steps} steps): {len(rarely)} '
                     f"rows ({_ranges(rarely)}).</p>")
    return "".join(parts)


def _ranges(ids: np.ndarray) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs_of(ids))


def _task_figures(task, model, device, name: str) -> Section:
    s = Section(f"Task figures: {name}")
    try:
        figures = task.figures(model, device)
    except LearnposError as e:  # e.g. the run's data is not on this machine
        s.note(f"the task's figures need an evaluation, which failed here: {e}")
        return s
    if not figures:
        s.note(f"task '{name}' has no figures of its own")
    for f in figures:
        s.image(f"{f.name}.png", draw_figure(f), f.title + (f". {f.note}" if f.note else ""))
    return s


def _verify(run_dir: Path) -> Section:
    s = Section("Verification")
    path = run_dir / VERIFY_FILE
    if not path.exists():
        s.note(f"no {VERIFY_FILE} in the run: `learnpos verify --json > {path}` adds the summary of the "
               f"gradient checks to this report")
        return s
    try:
        v = json.loads(path.read_text(encoding="utf-8").strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        s.note(f"{path} is not the JSON that `learnpos verify --json` prints ({e}); left out")
        return s
    checks = v.get("checks", [])
    failed = [c for c in checks if not c.get("ok")]
    s.text(f"`learnpos verify`: {len(checks) - len(failed)} of {len(checks)} checks passed"
           + ("." if not failed else "; failed: " + ", ".join(c["name"] for c in failed) + "."))
    worst = sorted((c for c in checks if c.get("max_rel_err") is not None), key=lambda c: -c["max_rel_err"])[:5]
    if worst:
        s.table([(c["name"], c["max_abs_err"], c["max_rel_err"], c["tol"], "yes" if c["ok"] else "NO") for c in worst],
                ("largest relative errors", "max abs err", "max rel err", "tolerance", "passed"))
    return s


def main(run_dir: str, out_dir: str | None = None, device: str = "cpu", data: dict[str, str] | None = None) -> Path:
    t0 = time.perf_counter()
    path = inspect_run(run_dir, out_dir, resolve_device(device, "--device"), data)
    print(f"wrote {path} ({len(list(path.parent.glob('*.png')))} plots) in {time.perf_counter() - t0:.1f} s")
    return path
