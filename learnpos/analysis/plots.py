"""Plots of what the learned tables learned, and of a tune's trials (matplotlib, written atomically)."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import Tensor

from learnpos.files import atomic_write


def cosine_similarity_matrix(table: Tensor) -> Tensor:
    """(L, C) rows -> (L, L) cosine similarities between rows."""
    rows = torch.nn.functional.normalize(table.detach().float().cpu(), dim=1)
    return rows @ rows.T


def similarity_png(table: Tensor, title: str = "learned positions", axis: str = "position") -> bytes:
    """PNG heatmap of cosine similarity between every pair of table rows. A band along the
    diagonal means neighbouring positions learned similar vectors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = cosine_similarity_matrix(table).numpy()
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=100)
    im = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1, origin="upper")
    ax.set(xlabel=f"{axis} j", ylabel=f"{axis} i", title=f"{title}: cos(W[i], W[j])")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_position_similarity(table: Tensor, path: str | Path, title: str = "learned positions",
                             axis: str = "position") -> Path:
    """`similarity_png` written (atomically) to `path`."""
    png = similarity_png(table, title, axis)
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_bytes(png))
    return path


def save_position_plots(model, run_dir: Path) -> list[Path]:
    """The plots a run directory gets at the end of training: `pos_similarity.png` for the
    position table, `<name>_similarity.png` for every other learned table."""
    paths = []
    for name, table in model.learned_tables().items():
        title = "learned positions" if name == "pos" else f"learned table '{name}'"
        paths.append(plot_position_similarity(table.weight, Path(run_dir) / f"{name}_similarity.png", title,
                                              "position" if name == "pos" else "id"))
    return paths


def plot_trials(summary: dict, path: Path) -> None:
    """`learnpos tune`'s trials.png: the validation metric by trial (pruned trials at their last
    reported value) and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["trials"] if r["value"] is not None or r["reported"] is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    done = [r for r in rows if r["state"] == "complete"]
    cut = [r for r in rows if r["state"] != "complete"]
    ax.plot([r["trial"] for r in done], [r["value"] for r in done], "o", label="complete")
    ax.plot([r["trial"] for r in cut], [r["reported"] for r in cut], "x", color="grey", label="pruned (last value)")
    best, line = None, []
    better = max if summary["direction"] == "max" else min
    for r in done:
        best = r["value"] if best is None else better(best, r["value"])
        line.append((r["trial"], best))
    if line:
        ax.step(*zip(*line, strict=True), where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {summary['metric']}")
    ax.set_title(f"{summary['study']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
