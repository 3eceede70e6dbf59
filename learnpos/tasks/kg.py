"""Knowledge-graph completion with learnable positions: a CoKE-style encoder (Wang et al.,
2019, "CoKE: Contextualized Knowledge Graph Embedding") over (entity, relation) sequences.

A triple (h, r, t) becomes two 3-token queries, each answered by 1-N scoring over all
entities at the MASK token:

    kg.queries = coke        tail query [h, r, MASK] -> t      head query [MASK, r, t] -> h
                             nothing but the position tells the model which way it is asked
    kg.queries = reciprocal  [h, r, MASK] -> t  and  [t, r^-1, MASK] -> h (inverse relations,
                             Lacroix et al. 2018): the answer is always at position 2

What one training example is (`kg.targets`):

    kg.targets = triple      one example per training triple and direction, one answer
                             (CoKE): a query with k answers is seen k times per epoch
    kg.targets = query       one example per distinct query, its target spread evenly over
                             all k of its training answers (the 1-N multi-label training of
                             ConvE/TuckER, PyKEEN's LCWA with cross-entropy): fewer, cheaper
                             epochs with less noisy gradients on dense graphs

Vocabulary: entities 0..E-1, relations E..E+R-1, inverse relations (reciprocal only), MASK.
The model is the library's GPT in encoder mode (model.causal=false); the task owns its head
(`EntityHead`: dense + GELU + LayerNorm on the MASK state, then scores against the entity
rows of the token embedding plus a bias per entity, as CoKE ties them) and its loss (softmax
cross-entropy over the entities with label smoothing, one example per query).
Evaluation is filtered ranking in both directions (`learnpos.analysis.ranking`).
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save as serialize
from torch import Tensor

from learnpos.analysis.ranking import AnswerIndex, RankAccumulator, filtered_ranks
from learnpos.analysis.report import Figure
from learnpos.data.kg import SPLITS, KGData, load_kg
from learnpos.errors import ConfigError, DataError
from learnpos.files import atomic_write, write_bytes
from learnpos.model import IGNORE_INDEX
from learnpos.tasks.base import Batch, EpochOrder, Task, autocast_context, eval_mode, register

log = logging.getLogger(__name__)

QUERY_KINDS = ("coke", "reciprocal")
TARGET_KINDS = ("triple", "query")


@dataclass
class KGConfig:
    """Knowledge-graph completion (task = "kg"): `cfg.kg`."""

    dataset: str = "umls"  # nations | kinships | umls (from PyKEEN if installed) | any name with kg.data
    data: str = ""  # a folder or .tar.gz with train/valid/test.txt; "" = PyKEEN's copy of the dataset
    queries: str = "coke"  # coke | reciprocal
    targets: str = "triple"  # triple (an example per triple) | query (an example per distinct query, all its answers)
    # kg.targets=query: how queries weigh in a batch's loss. uniform: each query alike; answers:
    # by its answer count k, as ranking weighs them (a test query with k answers is ranked k
    # times) and as kg.targets=triple does in expectation
    query_weight: str = "uniform"
    label_smoothing: float = 0.1
    negatives: int = 0  # training only: 0 = score every entity (1-N); N = the batch's answers + N drawn uniformly
    eval_split: str = "valid"  # the split evaluated during training (early stopping reads it)
    eval_batch_size: int = 256  # queries scored at once in evaluation
    CHOICES = {"queries": QUERY_KINDS, "targets": TARGET_KINDS, "query_weight": ("uniform", "answers")}


class EntityHead(nn.Module):
    """Scores over all entities from the hidden state at MASK: CoKE's output layer."""

    def __init__(self, n_embd: int, n_entities: int):
        super().__init__()
        self.dense = nn.Linear(n_embd, n_embd)
        self.ln = nn.LayerNorm(n_embd)
        self.bias = nn.Parameter(torch.zeros(n_entities))
        nn.init.normal_(self.dense.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)

    def forward(self, hidden: Tensor, entity_emb: Tensor, entities: Tensor | None = None) -> Tensor:
        """hidden (B, C), entity_emb (E, C) -> scores (B, E); or (B, N) over `entities` (N,) ids
        (only those rows are gathered and cast to the hidden state's dtype)."""
        x = self.ln(F.gelu(self.dense(hidden)))
        if entities is None:
            return x @ entity_emb.to(x.dtype).T + self.bias
        return x @ entity_emb[entities].to(x.dtype).T + self.bias[entities]


class Ensemble(nn.Module):
    """Several runs of the same data and query convention scored as one model: the mean of
    their log-softmax scores over the entities, the log of the members' geometric-mean
    probability up to a constant per query. (The ranks are those of the mean raw score too,
    log-softmax being a shift per query; it makes the saved scores and the loss comparable
    across members.)"""

    def __init__(self, members: list[nn.Module], names: list[str]):
        super().__init__()
        self.members, self.names = nn.ModuleList(members), names


_WARNED: set[tuple] = set()  # unseen-triple warnings already given


@register
class KGTask(Task):
    name = "kg"
    config_section, config_class = "kg", KGConfig
    causal = False
    splits = SPLITS  # `learnpos eval --split` choices
    saves_scores = True
    data_fields = ("data",)

    def __init__(self, cfg, run_dir: str | Path | None = None):
        self.kg, self.seed = cfg.kg, cfg.train.seed
        self.epochs = EpochOrder(self.seed, 2)
        self.data: KGData = load_kg(self.kg.dataset, self.kg.data)
        self.E, self.R = self.data.n_entities, self.data.n_relations
        self.reciprocal = self.kg.queries == "reciprocal"
        self.MASK = self.E + self.R * (2 if self.reciprocal else 1)
        self.vocab_size = self.MASK + 1
        self.known = AnswerIndex(self.data.known_triples(), self.E, self.R)
        for split, n in self.data.unseen.items():
            if n and (self.kg.data, self.kg.dataset, split, n) not in _WARNED:  # once a process: a derived
                _WARNED.add((self.kg.data, self.kg.dataset, split, n))      # run's probe builds the task too
                log.warning("%s: %d %s triples have an entity or relation not seen in training; they are "
                            "left out of ranking (the standard policy)", self.kg.dataset, n, split)

    @classmethod
    def check_config(cls, cfg) -> None:
        kg, m = cfg.kg, cfg.model
        if m.positional.kind == "learned" and m.positional.max_len < 3:
            raise ConfigError("task 'kg' reads 3-token queries: set --model.positional.max_len=3 (or more)")
        if not 0 <= kg.label_smoothing < 1:
            raise ConfigError(f"kg.label_smoothing must be in [0, 1), got {kg.label_smoothing}")
        if kg.negatives < 0:
            raise ConfigError(f"kg.negatives must be 0 (score every entity) or a positive count, got {kg.negatives}")
        if kg.eval_split not in SPLITS or kg.eval_batch_size <= 0:
            raise ConfigError(f"kg.eval_split must be one of {', '.join(SPLITS)} and kg.eval_batch_size positive")

    def heads(self, model_cfg) -> dict[str, nn.Module]:
        return {"entity": EntityHead(model_cfg.n_embd, self.E)}

    def data_sources(self) -> dict[str, dict]:
        return {"kg.data": self.data.source}

    # ------------------------------------------------------------------ queries
    def queries(self, triples: np.ndarray, direction: str) -> tuple[np.ndarray, np.ndarray]:
        """(idx (N, 3) token ids, answers (N,) entity ids) of the `direction` queries."""
        h, r, t = triples[:, 0], triples[:, 1] + self.E, triples[:, 2]
        mask = np.full_like(h, self.MASK)
        if direction == "tail":
            return np.stack([h, r, mask], 1), t
        if self.reciprocal:
            return np.stack([t, r + self.R, mask], 1), h
        return np.stack([mask, r, t], 1), h

    def _examples(self) -> tuple[np.ndarray, np.ndarray]:
        """(idx (N, 3), answers (N,)) of the training examples. kg.targets=triple: a query per
        triple and direction, its answer an entity id. kg.targets=query: each distinct query
        once, its "answer" the query's row in the answer table (`_answer_offsets`, `_answer_ids`:
        its training answers are _answer_ids[offsets[q]:offsets[q + 1]])."""
        if not hasattr(self, "_train_examples"):
            tails, heads = self.queries(self.data.train, "tail"), self.queries(self.data.train, "head")
            idx, answers = np.concatenate([tails[0], heads[0]]), np.concatenate([tails[1], heads[1]])
            if self.kg.targets == "query":
                # sort by (query, answer): a query's answers become one contiguous run
                order = np.lexsort((answers, idx[:, 2], idx[:, 1], idx[:, 0]))
                idx, answers = idx[order], answers[order]
                first = np.ones(len(idx), dtype=bool)
                first[1:] = (idx[1:] != idx[:-1]).any(1)
                starts = np.flatnonzero(first)
                self._answer_offsets = torch.from_numpy(np.append(starts, len(idx)))
                self._answer_ids = torch.from_numpy(answers)
                idx, answers = idx[starts], np.arange(len(starts))
            self._train_examples = (idx, answers)
        return self._train_examples

    def train_batch(self, step: int, batch_size: int) -> Batch:
        """Every example once per epoch in a seeded order (epoch e's permutation from (seed, e))."""
        idx, answers = self._examples()
        picks = self.epochs.picks(step, batch_size, len(idx))
        x = torch.from_numpy(idx[picks])
        targets = torch.full_like(x, IGNORE_INDEX)
        targets[x == self.MASK] = torch.from_numpy(answers[picks])
        return Batch(x, targets)

    def scores(self, model, idx: Tensor, entities: Tensor | None = None) -> Tensor:
        """(B, E) scores of the entity at each query's MASK; given `entities` (N,) ids, (B, N)
        scores of those entities only (sampled training)."""
        if isinstance(model, Ensemble):
            assert entities is None, "an ensemble scores every entity (it is evaluated, not trained)"
            return torch.stack([F.log_softmax(self.scores(m, idx).float(), -1) for m in model.members]).mean(0)
        where = (idx == self.MASK).long().argmax(1, keepdim=True)  # (B, 1): one MASK per query
        at_mask = model(idx, return_hidden=True, read=where).hidden[:, 0]  # (B, C): the outputs at MASK
        head = model.heads["entity"]
        return head(at_mask, model.tok_emb.weight[:self.E], entities)

    def candidates(self, answers: Tensor) -> Tensor:
        """The sorted entity ids a training batch is scored against under kg.negatives = N: its
        answers and N entities drawn uniformly with replacement (torch's global generator), or
        every entity where N >= E."""
        if self.kg.negatives >= self.E:
            return torch.arange(self.E, device=answers.device)
        drawn = torch.randint(0, self.E, (self.kg.negatives,), device=answers.device)
        return torch.unique(torch.cat([answers, drawn]))

    def loss(self, model, batch: Batch) -> Tensor:
        """Cross-entropy over all entities, or with kg.negatives = N over the batch's candidates
        (sampled softmax: a step of 512 queries on WN18RR's 40,943 entities then scores at most
        2,560 of them; label smoothing spreads eps over the candidates)."""
        answers = batch.targets[batch.idx == self.MASK]
        triple = self.kg.targets == "triple"
        rows, cols, count = (None, answers, None) if triple else self._answers_of(answers)
        entities = self.candidates(cols) if self.kg.negatives else None
        scores = self.scores(model, batch.idx, entities).float()
        if entities is not None:
            cols = torch.searchsorted(entities, cols)  # each answer's column among the candidates
        if triple:
            return F.cross_entropy(scores, cols, label_smoothing=self.kg.label_smoothing)
        return self._multi_answer_loss(scores, rows, cols, count)

    def _answers_of(self, queries: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(rows, cols, count) of kg.targets=query examples: a row index and an entity id per
        training answer of each query in the batch, and each query's answer count."""
        self._examples()  # the answer table
        device = queries.device
        offsets = self._answer_offsets.to(device)
        start, count = offsets[queries], offsets[queries + 1] - offsets[queries]
        rows = torch.repeat_interleave(torch.arange(len(queries), device=device), count)  # a row per answer
        within = torch.arange(len(rows), device=device) - torch.repeat_interleave(count.cumsum(0) - count, count)
        return rows, self._answer_ids.to(device)[start[rows] + within], count

    def _multi_answer_loss(self, scores: Tensor, rows: Tensor, cols: Tensor, count: Tensor) -> Tensor:
        """Cross-entropy against each query's answers, the target mass (1 - eps) spread evenly
        over its k answers (`cols`, columns of `scores`) and eps over every column (label
        smoothing as F.cross_entropy defines it): with k = 1 this is exactly the triple loss."""
        logp = F.log_softmax(scores, dim=-1)
        nll = torch.zeros(len(count), device=scores.device).index_add_(0, rows, logp[rows, cols]).neg_() / count
        eps = self.kg.label_smoothing
        per_query = (1 - eps) * nll - eps * logp.mean(-1) if eps else nll
        if self.kg.query_weight == "answers":
            return (per_query * count).sum() / count.sum()
        return per_query.mean()

    def ensemble(self, models: list[nn.Module], others: list[Task], names: list[str]) -> Ensemble:
        """The runs as one `Ensemble`; they must share kg.queries and their data (every split's
        triples and both vocabularies), so a query means the same token ids to every member."""
        for other, name in zip(others, names[1:], strict=True):
            if other.kg.queries != self.kg.queries:
                raise ConfigError(f"{name} has kg.queries={other.kg.queries}, {names[0]} {self.kg.queries}: an "
                                  f"ensemble's runs must read the same queries")
            differ = [what for what, a, b in (("entities", other.data.entities, self.data.entities),
                                              ("relations", other.data.relations, self.data.relations))
                      if a != b] + [f"{s} triples" for s in SPLITS
                                    if not np.array_equal(other.data.split(s), self.data.split(s))]
            if differ:
                theirs, ours = (t.kg.data or f"PyKEEN's {t.kg.dataset}" for t in (other, self))
                raise ConfigError(f"{name} reads other data than {names[0]} ({theirs} vs {ours}: "
                                  f"{', '.join(differ)} differ); an ensemble's runs must share their data")
        return Ensemble(models, names)

    # --------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model, device, batch_size: int | None = None, autocast=None, length: int | None = None,
                 split: str | None = None, save_scores: str | Path | None = None, tag: str = "") -> dict:
        """Filtered MRR, MR, Hits@1/3/10 per direction and both on `split` (default
        kg.eval_split). save_scores: write a safetensors file with `scores` (Q, E) float32 (one
        row per query over all entities, unfiltered), `queries` (Q, 4) int64 rows of (head,
        relation, tail, direction: 0 = tail query, 1 = head query) and the vocabularies in its
        metadata (`entities`, `relations`: JSON lists in id order), so any evaluator can re-rank."""
        if length not in (None, 3):
            raise ConfigError("task 'kg' has queries of 3 tokens only; --length does not apply")
        split = split or self.kg.eval_split
        triples = self.data.split(split)
        if len(triples) == 0:
            raise DataError(f"the {split} split of {self.kg.dataset} has no triple to rank")
        B = batch_size or self.kg.eval_batch_size
        with eval_mode(model):
            acc, loss_sum, count = RankAccumulator(), 0.0, 0
            all_scores, all_queries = [], []
            keep = save_scores is not None
            for d, direction in enumerate(("tail", "head")):
                idx, answers = self.queries(triples, direction)
                for i in range(0, len(idx), B):
                    x = torch.from_numpy(idx[i:i + B]).to(device)
                    a = torch.from_numpy(answers[i:i + B]).to(device)
                    with autocast_context(autocast):
                        s = self.scores(model, x).float()
                    loss_sum += float(F.cross_entropy(s, a, reduction="sum"))
                    count += len(a)
                    acc.add(direction, filtered_ranks(s, a, self.known.mask(direction, triples[i:i + B])))
                    if keep:
                        all_scores.append(s.cpu())
                        rows = torch.from_numpy(triples[i:i + B])
                        all_queries.append(torch.cat([rows, torch.full((len(rows), 1), d)], 1))
        if keep:
            tensors = {"scores": torch.cat(all_scores).contiguous(), "queries": torch.cat(all_queries).contiguous()}
            meta = {"entities": json.dumps(self.data.entities), "relations": json.dumps(self.data.relations),
                    "dataset": self.kg.dataset, "split": split, "kg.queries": self.kg.queries,
                    "columns": "head, relation, tail, direction (0 = tail query, 1 = head query)"}
            if isinstance(model, Ensemble):
                meta |= {"members": json.dumps(model.names),
                         "scores": f"the mean log-softmax of {len(model.names)} runs' scores"}
            atomic_write(Path(save_scores), lambda tmp: write_bytes(tmp, serialize(tensors, metadata=meta)))
        return {"loss": loss_sum / count, **acc.metrics(), "ranked_split": split,
                "unseen_excluded": int(self.data.unseen.get(split, 0))}

    def figures(self, model, device) -> list:
        m = self.evaluate(model, device)
        names = ["mrr", "hits@1", "hits@3", "hits@10"]
        return [Figure("mrr_by_direction", f"{self.kg.dataset}: filtered {m['ranked_split']} metrics by direction",
                       names, {d: [m[f"{d}_{k}"] for k in names] for d in ("tail", "head")}, "metric", "value",
                       kind="bar", note=f"tail queries [h, r, ?], head queries [?, r, t]; both: MRR {m['mrr']:.4f} "
                                        f"over {m['queries']} queries (kg.queries={self.kg.queries})")]

    # --------------------------------------------------------------- prediction
    def respond(self, model, prompt: str, max_new_tokens: int = 0, stream=None, **options) -> str:
        raise ConfigError("a kg run answers queries, not text: use `learnpos kg predict --run DIR --head H "
                          "--relation R` (or `--tail T` for heads)")

    def entity_id(self, name: str) -> int:
        return self._lookup(name, self.data.entities, "entity")

    def relation_id(self, name: str) -> int:
        return self._lookup(name, self.data.relations, "relation")

    def _lookup(self, name: str, names: list[str], what: str) -> int:
        if not hasattr(self, "_ids"):
            self._ids = {"entity": {n: i for i, n in enumerate(self.data.entities)},
                         "relation": {n: i for i, n in enumerate(self.data.relations)}}
        if name in self._ids[what]:
            return self._ids[what][name]
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        plural = "entities" if what == "entity" else "relations"
        raise DataError(f"unknown {what} '{name}' in {self.kg.dataset} ({len(names)} {plural}){hint}")

    @torch.no_grad()
    def predict(self, model, relation: str, head: str | None = None, tail: str | None = None,
                top: int = 10) -> list[dict]:
        """The `top` entities for (head, relation, ?) or (?, relation, tail), best first, each
        marked `known` if the triple is in the data (train, valid or test)."""
        if (head is None) == (tail is None):
            raise DataError("give exactly one of --head and --tail (the other side is predicted)")
        r = self.relation_id(relation)
        direction = "tail" if head is not None else "head"
        e = self.entity_id(head if head is not None else tail)
        triple = np.asarray([[e, r, 0]] if direction == "tail" else [[0, r, e]])
        idx, _ = self.queries(triple, direction)
        device = next(model.parameters()).device
        with eval_mode(model):
            scores = self.scores(model, torch.from_numpy(idx).to(device))[0].float().cpu()
        known = set(self.known.answers(direction, tuple(triple[0])).tolist())
        best = scores.topk(min(top, self.E))
        return [{"entity": self.data.entities[i], "score": float(s), "known": i in known}
                for s, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)]
