"""Plots of what the learned tables learned (matplotlib, written atomically)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from learnpos.files import atomic_write


def cosine_similarity_matrix(table: Tensor) -> Tensor:
    """(L, C) rows -> (L, L) cosine similarities between rows."""
    rows = torch.nn.functional.normalize(table.detach().float().cpu(), dim=1)
    return rows @ rows.T


def plot_position_similarity(table: Tensor, path: str | Path, title: str = "learned positions",
                             axis: str = "position") -> Path:
    """Heatmap of cosine similarity between every pair of table rows. A band along the
    diagonal means neighbouring positions learned similar vectors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = cosine_similarity_matrix(table).numpy()
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    im = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1, origin="upper")
    ax.set_xlabel(f"{axis} j")
    ax.set_ylabel(f"{axis} i")
    ax.set_title(f"{title}: cos(W[i], W[j])")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
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
