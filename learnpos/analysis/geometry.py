"""What the rows of a learned table look like to each other, in numbers: how alike rows close
together are against rows far apart, and how many rows have their most similar row far away.

A table trained only on sequences of at most `span` positions was never asked to tell apart
two rows more than `span` apart: nothing in training pushes them apart, and a longer input that
holds both can confuse them. Random offsets train every row but still only against its
neighbours within `span`; randomized rows (sorted random subsets) make far rows meet in
training. `learnpos inspect` prints this for the position table; the extrapolation study
(benchmarks/extrapolation.py) reports it per variant.
"""

from __future__ import annotations

import torch
from torch import Tensor

from learnpos.analysis.plots import cosine_similarity_matrix


def row_geometry(table: Tensor, span: int) -> dict:
    """For an (L, C) table: mean cosine similarity of pairs at most `span` apart (excluding a
    row with itself) and farther apart (None if no pair is), and the share of rows whose most
    similar other row is more than `span` away."""
    L = table.shape[0]
    sim = cosine_similarity_matrix(table)
    idx = torch.arange(L)
    d = (idx.view(-1, 1) - idx.view(1, -1)).abs()
    near, far = sim[(d > 0) & (d <= span)], sim[d > span]
    nearest = sim.masked_fill(d == 0, -2.0).argmax(1) if L > 1 else idx
    return {"rows": L, "span": span,
            "near_similarity": round(float(near.mean()), 4) if near.numel() else None,
            "far_similarity": round(float(far.mean()), 4) if far.numel() else None,
            "far_nearest_share": round(float(((nearest - idx).abs() > span).float().mean()), 4)}
