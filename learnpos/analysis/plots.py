"""Plots of what the positional encoding learned (matplotlib, written atomically)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from learnpos.positional import LearnedPositionalEmbedding
from learnpos.runs import atomic_write


def cosine_similarity_matrix(table: Tensor) -> Tensor:
    """(L, C) rows -> (L, L) cosine similarities between positions."""
    rows = torch.nn.functional.normalize(table.detach().float().cpu(), dim=1)
    return rows @ rows.T


def plot_position_similarity(table: Tensor, path: str | Path, title: str = "learned positions") -> Path:
    """Heatmap of cosine similarity between every pair of table rows. A band along the
    diagonal means neighbouring positions learned similar vectors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = cosine_similarity_matrix(table).numpy()
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    im = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1, origin="upper")
    ax.set_xlabel("position j")
    ax.set_ylabel("position i")
    ax.set_title(f"{title}: cos(P[i], P[j])")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path


def save_position_plots(model, run_dir: Path) -> list[Path]:
    """The plots a run directory gets at the end of training."""
    if not isinstance(model.pos, LearnedPositionalEmbedding):
        return []
    return [plot_position_similarity(model.pos.weight, Path(run_dir) / "pos_similarity.png")]
