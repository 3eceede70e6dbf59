"""Filtered rank metrics for knowledge-graph completion (the standard protocol).

For a query with a known answer (a tail query (h, r, ?) answered by t, or a head query
(?, r, t) answered by h) and scores over every entity:

    filtered   every other entity that also answers the query in a known true triple
               (train + valid + test) is removed from the ranking (Bordes et al., 2013)
    optimistic rank  = 1 + #{e : s_e > s_answer}
    pessimistic rank = #{e : s_e >= s_answer}          (counts the answer itself)
    realistic rank   = (optimistic + pessimistic) / 2  (the expected rank under random
                       tie-breaking: a model that scores everything equal gets the middle)
    MRR = mean 1/rank, MR = mean rank, Hits@k = fraction with rank <= k

All metrics use the realistic rank, per direction (`tail`, `head`) and over both, the
definitions of PyKEEN's `RankBasedEvaluator` (tests/test_kg.py proves the numbers equal on
the same score matrices, ties included). Scores stream in batches: nothing of size
(queries x entities) is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

DIRECTIONS = ("tail", "head")
HITS_AT = (1, 3, 10)


class AnswerIndex:
    """All known answers of each query, as CSR arrays: tail queries keyed by (h, r), head
    queries by (r, t)."""

    def __init__(self, triples: np.ndarray, n_entities: int, n_relations: int):
        self.E, self.R = n_entities, n_relations
        h, r, t = triples[:, 0], triples[:, 1], triples[:, 2]
        self._csr = {"tail": self._build(h * n_relations + r, t), "head": self._build(r * n_entities + t, h)}

    @staticmethod
    def _build(keys: np.ndarray, values: np.ndarray):
        pairs = np.unique(np.stack([keys, values], axis=1), axis=0)  # sorted by key, then value; no duplicates
        uniq, starts = np.unique(pairs[:, 0], return_index=True)
        ends = np.append(starts[1:], len(pairs))
        return uniq, starts, ends, pairs[:, 1]

    def _key(self, direction: str, queries: np.ndarray) -> np.ndarray:
        h, r, t = queries[:, 0], queries[:, 1], queries[:, 2]
        return h * self.R + r if direction == "tail" else r * self.E + t

    def mask(self, direction: str, queries: np.ndarray) -> Tensor:
        """(B, E) bool: True for every known answer of each query (the true one included)."""
        uniq, starts, ends, values = self._csr[direction]
        keys = self._key(direction, queries)
        pos = np.searchsorted(uniq, keys)
        found = (pos < len(uniq)) & (uniq[np.minimum(pos, len(uniq) - 1)] == keys)
        out = np.zeros((len(queries), self.E), dtype=bool)
        for i in np.flatnonzero(found):
            out[i, values[starts[pos[i]]:ends[pos[i]]]] = True
        return torch.from_numpy(out)

    def answers(self, direction: str, query: tuple[int, int, int]) -> np.ndarray:
        m = self.mask(direction, np.asarray([query]))
        return np.flatnonzero(m[0].numpy())


def filtered_ranks(scores: Tensor, answers: Tensor, known: Tensor | None) -> Tensor:
    """Realistic ranks (B,) of `answers` (B,) under `scores` (B, E), other known answers
    (`known` (B, E) bool, may include the answer itself) removed; None = unfiltered."""
    scores = scores.float().clone()
    rows = torch.arange(scores.shape[0], device=scores.device)
    true = scores[rows, answers]
    if known is not None:
        scores[known.to(scores.device)] = float("nan")  # NaN compares False: out of every count
    scores[rows, answers] = true
    true = true.unsqueeze(1)
    optimistic = (scores > true).sum(1) + 1
    pessimistic = (scores >= true).sum(1)
    return (optimistic + pessimistic).double() * 0.5


@dataclass
class RankAccumulator:
    """Collects realistic ranks per direction; `metrics()` gives MRR, MR and Hits@k."""

    ranks: dict[str, list[Tensor]] = field(default_factory=lambda: {d: [] for d in DIRECTIONS})

    def add(self, direction: str, ranks: Tensor) -> None:
        self.ranks[direction].append(ranks.detach().cpu().double())

    def metrics(self) -> dict[str, float]:
        out = {}
        by_dir = {d: torch.cat(r) if r else torch.zeros(0, dtype=torch.float64) for d, r in self.ranks.items()}
        by_dir["both"] = torch.cat([by_dir[d] for d in DIRECTIONS])
        for name, r in by_dir.items():
            if r.numel() == 0:
                continue
            prefix = "" if name == "both" else f"{name}_"
            out[f"{prefix}mrr"] = float((1.0 / r).mean())
            out[f"{prefix}mr"] = float(r.mean())
            for k in HITS_AT:
                out[f"{prefix}hits@{k}"] = float((r <= k).double().mean())
        out["queries"] = int(by_dir["both"].numel())
        return out
