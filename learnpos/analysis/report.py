"""Figures and the self-contained HTML report of `learnpos inspect`.

This module draws and lays out; it knows tables, statistics and metric records, not tasks or
run directories. A task contributes its own charts as `Figure` values (data, not drawings), so
tasks stay free of matplotlib and every chart of a report looks alike. Every figure is a PNG
(written next to the report and embedded in it as a data URI), so `report.html` is one file
that opens offline.

What a table's figures show, for a table W of L rows:
    similarity      cos(W[i], W[j]) for every pair: a band along the diagonal means
                    neighbouring positions learned similar vectors
    by distance     the mean of cos(W[i], W[i+d]) over i, against d: how fast similarity
                    decays with distance
    PCA             the rows projected on their first two principal components, joined in
                    order and coloured by row: GPT-style tables often trace a smooth curve
    norms           ||W[k]|| per row
    training        from position_stats: mean gradient norm per row, steps with a non-zero
                    gradient, and drift ||W[k] - W_init[k]||; rows that never (or rarely)
                    received a gradient are shaded
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from learnpos.analysis.plots import similarity_png
from learnpos.files import atomic_write, atomic_write_text

RARE = 0.01  # a row is "rarely trained" when fewer than 1% of the run's steps reached it


@dataclass
class Figure:
    """A chart given as data: one x axis and one or more named series over it."""

    name: str  # file stem of the PNG
    title: str
    x: list
    series: dict[str, list[float]]
    xlabel: str
    ylabel: str
    kind: str = "line"  # "line" or "bar"
    note: str = ""  # one sentence shown under the chart
    ylim: tuple[float, float] | None = None  # e.g. (0, 1) for accuracies; None = matplotlib's choice


@dataclass
class Section:
    title: str
    html: list[str] = field(default_factory=list)  # body fragments in order
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, PNG) in order of appearance

    def text(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")

    def note(self, text: str) -> None:
        self.html.append(f'<p class="note">{html.escape(text)}</p>')

    def table(self, rows: list[tuple], header: tuple | None = None) -> None:
        out = ["<table>"]
        if header:
            out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows]
        self.html.append("".join(out) + "</table>")

    def image(self, name: str, png: bytes, alt: str) -> None:
        self.images.append((name, png))
        data = base64.b64encode(png).decode("ascii")
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
                         f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


# ------------------------------------------------------------------------- drawing


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _plt().close(fig)
    return buf.getvalue()


def _rows(table: Tensor) -> np.ndarray:
    return table.detach().float().cpu().numpy()


def similarity_by_distance(table: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(d, mean over i of cos(W[i], W[i+d])) for d = 0..L-1."""
    rows = torch.nn.functional.normalize(table.detach().float().cpu(), dim=1)
    sim = (rows @ rows.T).numpy()
    L = sim.shape[0]
    return np.arange(L), np.array([np.diagonal(sim, d).mean() for d in range(L)])


def pca_2d(table: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rows projected on their first two principal components (L, 2), and the share of the
    variance each explains."""
    x = _rows(table).astype(np.float64)
    x = x - x.mean(0, keepdims=True)
    if x.shape[0] < 2 or not np.any(x) or not np.isfinite(x).all():
        return np.zeros((x.shape[0], 2)), np.zeros(2)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    k = min(2, len(s))
    proj = np.zeros((x.shape[0], 2))
    proj[:, :k] = u[:, :k] * s[:k]
    var = s ** 2
    share = np.zeros(2)
    share[:k] = var[:k] / var.sum()
    return proj, share


def draw_table(table: Tensor, title: str, axis: str) -> dict[str, bytes]:
    """The four pictures of one learned table: similarity heatmap, similarity by distance, PCA
    curve, row norms."""
    plt = _plt()
    out = {"similarity": similarity_png(table, title, axis)}
    d, mean = similarity_by_distance(table)
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=100)
    ax.plot(d, mean, marker="." if len(d) <= 64 else None)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set(xlabel=f"distance d ({axis}s)", ylabel="mean cos(W[i], W[i+d])", title=f"{title}: similarity by distance")
    fig.tight_layout()
    out["by_distance"] = _png(fig)

    proj, share = pca_2d(table)
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=100)
    ax.plot(proj[:, 0], proj[:, 1], color="lightgrey", lw=0.8, zorder=1)
    sc = ax.scatter(proj[:, 0], proj[:, 1], c=np.arange(len(proj)), cmap="viridis", s=14, zorder=2)
    fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.04, label=axis)
    ax.set(xlabel=f"PC1 ({share[0]:.0%} of variance)", ylabel=f"PC2 ({share[1]:.0%})",
           title=f"{title}: rows on their first two principal components")
    fig.tight_layout()
    out["pca"] = _png(fig)

    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=100)
    ax.bar(np.arange(table.shape[0]), np.linalg.norm(_rows(table), axis=1), width=1.0)
    ax.set(xlabel=axis, ylabel="||W[k]||", title=f"{title}: row norms")
    fig.tight_layout()
    out["norms"] = _png(fig)
    return out


def untrained_rows(stats: dict[str, Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(never, rarely): rows with no non-zero gradient in the run, and rows reached in fewer
    than RARE of its steps (but at least once)."""
    nz = stats["nonzero_steps"].numpy()
    steps = int(stats["steps"][0])
    never = np.flatnonzero(nz == 0)
    rarely = np.flatnonzero((nz > 0) & (nz < RARE * steps))
    return never, rarely


def runs_of(ids: np.ndarray) -> list[tuple[int, int]]:
    """[0, 1, 2, 5, 7, 8] -> [(0, 2), (5, 5), (7, 8)]."""
    out: list[tuple[int, int]] = []
    for k in (int(i) for i in ids):
        if out and k == out[-1][1] + 1:
            out[-1] = (out[-1][0], k)
        else:
            out.append((k, k))
    return out


def draw_training(stats: dict[str, Tensor], title: str, axis: str) -> bytes:
    """Mean gradient norm, non-zero-gradient steps and drift from init per row, with the
    never-trained rows shaded red and the rarely trained ones orange."""
    plt = _plt()
    never, rarely = untrained_rows(stats)
    panels = [("grad_norm_mean", "mean ||dL/dW[k]||"), ("nonzero_steps", "steps with a gradient"),
              ("displacement", "||W[k] - W_init[k]||")]
    fig, axes = plt.subplots(3, 1, figsize=(6.4, 6.2), dpi=100, sharex=True)
    for ax, (key, label) in zip(axes, panels, strict=True):
        values = stats[key].double().numpy()
        ax.bar(np.arange(len(values)), values, width=1.0)
        for rows, colour in ((never, "red"), (rarely, "orange")):
            for start, stop in runs_of(rows):  # one span per run of consecutive rows, not one per row
                ax.axvspan(start - 0.5, stop + 0.5, color=colour, alpha=0.25, lw=0)
        ax.set_ylabel(label)
    axes[0].set_title(f"{title}: training per row ({int(stats['steps'][0])} steps)")
    axes[-1].set_xlabel(axis)
    fig.tight_layout()
    return _png(fig)


def draw_curves(records: list[dict], metric: str = "loss") -> bytes | None:
    """Train and eval `metric` against step from metrics.jsonl records (None if neither has it)."""
    plt = _plt()
    series = {split: [(r["step"], r[metric]) for r in records if r.get("split") == split
                      and isinstance(r.get(metric), (int, float))] for split in ("train", "val")}
    if not any(series.values()):
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for split, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if split == "val" else None, ms=3, label=split)
    values = [y for points in series.values() for _, y in points]
    if min(values) > 0 and max(values) / min(values) > 20:  # losses falling by orders of magnitude
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel=metric, title=f"{metric}: training and evaluation")
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def draw_figure(f: Figure) -> bytes:
    plt = _plt()
    n = len(f.series)
    many = n > 8 and f.kind != "bar"  # a legend that would cover the axes goes beside them
    fig, ax = plt.subplots(figsize=(10, max(4.0, 0.2 * n)) if many else (6.4, 3.6), dpi=100)
    colors = plt.get_cmap("tab10").colors
    for i, (label, ys) in enumerate(f.series.items()):
        if f.kind == "bar":
            width = 0.8 / n
            ax.bar(np.arange(len(f.x)) + (i - (n - 1) / 2) * width, ys, width=width, label=label)
        else:  # past 10 lines, colours repeat with another dash and marker so every line is told apart
            style = {"color": colors[i % 10], "linestyle": ("-", "--", ":", "-.")[i // 10 % 4]} if many else {}
            marker = ("o", "s", "^", "x")[i // 10 % 4] if many else "."
            ax.plot(f.x, ys, marker=marker if len(f.x) <= 64 else None, label=label, **style)
    if f.kind == "bar":
        ax.set_xticks(np.arange(len(f.x)), [str(x) for x in f.x])
    ax.set(xlabel=f.xlabel, ylabel=f.ylabel, title=f.title)
    if f.ylim is not None:
        ax.set_ylim(*f.ylim)
    if many:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    elif n > 1:
        ax.legend()
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- output

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{font-size:.8em;color:#555;max-width:520px}
img{max-width:520px;border:1px solid #eee}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.2em .6em;font-size:.9em;text-align:left}.note{color:#666;font-style:italic}
.warn{color:#a40}"""


def write_report(out_dir: Path, title: str, sections: list[Section]) -> Path:
    """Write every section's PNGs and `report.html` (images embedded) into out_dir, atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for s in sections:
        for name, png in s.images:
            atomic_write(out_dir / name, lambda tmp, png=png: Path(tmp).write_bytes(png))
    toc = "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections))
    body = "".join(f'<h2 id="s{i}">{html.escape(s.title)}</h2>' + "".join(s.html) for i, s in enumerate(sections))
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><ul>{toc}</ul>{body}</body></html>\n")
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path
