"""Position-probing tasks that need no data: copy, reverse, index (here) and add (tasks/add.py).

Every sequence is drawn from a seeded generator, so a batch is a pure function of
(seed, step) and the held-out set of (eval_seed). Only answer tokens carry loss.

Vocabulary: symbols 0..S-1, then PAD, BOS, SEP, MASK, then one query token per position.

    copy     BOS x1..xn SEP | x1..xn          (decoder; teacher-forced answer)
    reverse  BOS x1..xn SEP | xn..x1          (decoder)
    index    decoder: BOS x1..xn Q_k | x_k    encoder: x1..xn Q_k, predict x_k at Q_k
    add      a1..an + b1..bn = | c1..c(n+1)   (decoder; digits in base n_symbols, least
             significant first, so each answer digit needs only digits already seen)

Position ids (`synthetic.positions`): `running` is the default 0..T-1; `task` gives each token
the position the task defines, passed as explicit `position_ids` (no model branch):
    copy     BOS 0, x_i i; SEP and each answer token the id of the input symbol it predicts
             (SEP 1, y_j j+1): position coupling (Cho et al. 2024)
    reverse  the same coupling, counting down: SEP n, y_j n-j
    add      every digit its place in its own number (1..n), '+' and '=' 0 (Abacus, McLeish
             et al. 2024)
With task ids the token that predicts an answer symbol finds its source at a fixed distance in
id whatever the length (copy and reverse: the same id, in the input segment; add: the same id
and the next), and a learned table trained with random offsets (`model.positional.offset`) has
trained rows for every id a longer input uses.

Metrics: `exact_match` (every answer token right; with teacher forcing this equals greedy
decoding being right), `token_accuracy`, and `per_position_accuracy` (by answer index for
copy/reverse, by queried position for index).

Named tables (`model.tables`) the probes can fill, for trying extra learned tables without
a dialogue corpus: `segment` (0 for BOS and the input, 1 for what follows: the query or SEP
and the answer; BERT-style type ids, 2 rows) and `symbol_index` (the index within that
segment, restarting at 0 at the second segment: PLATO-style per-utterance positions,
length + 1 rows).

Why index draws *distinct* symbols: then every input holds the same set of symbols in
some order, and an encoder without positions (permutation-equivariant) can do no better
than guessing among the n symbols: chance is exactly 1/n.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from learnpos.analysis.report import Figure
from learnpos.errors import ConfigError
from learnpos.model import IGNORE_INDEX, cross_entropy
from learnpos.tasks.base import Batch, Task, autocast_context, eval_mode, register


@dataclass
class SyntheticConfig:
    """Position-probing tasks generated from a seed (copy, reverse, index): `cfg.synthetic`."""

    length: int = 16  # number of symbols per training sequence
    eval_length: int = 0  # 0 = same as `length`; set larger for length generalisation
    # 0 = every training sequence has `length` symbols; otherwise each step draws its length
    # uniformly from min_length..length (one length per batch), as Ruoss et al. (2023) train
    min_length: int = 0
    n_symbols: int = 16  # alphabet size
    n_eval: int = 512  # held-out sequences
    eval_seed: int = 1234  # held-out sequences come from their own seed
    positions: str = "running"  # running (0..T-1) | task (the task's own ids; see the module docstring)

    CHOICES = {"positions": ("running", "task")}


TABLE_IDS = ("segment", "symbol_index")  # the named tables these tasks can fill


class SyntheticTask(Task):
    config_section, config_class = "synthetic", SyntheticConfig
    causal: bool | None = True
    fills_tables = TABLE_IDS

    def __init__(self, cfg, run_dir=None):
        s = cfg.synthetic
        self.seed, self.eval_seed = cfg.train.seed, s.eval_seed
        self.n, self.n_eval = s.length, s.n_eval
        self.min_n = s.min_length or s.length
        self.eval_n = s.eval_length or s.length
        self.S = s.n_symbols
        self.PAD, self.BOS, self.SEP, self.MASK = self.S, self.S + 1, self.S + 2, self.S + 3
        self.Q0 = self.S + 4  # query token for position k is Q0 + k
        self.vocab_size = self.Q0 + self._n_query_tokens(s)
        self.causal_model = cfg.model.causal
        self.tables = [t.name for t in cfg.model.tables]
        self.task_positions = s.positions == "task"

    # -- subclasses define the sequence layout ----------------------------------------
    @classmethod
    def first_segment(cls, n: int, causal: bool = True) -> int:
        """Tokens of the first segment (BOS and the n input symbols)."""
        return n + 1
    @staticmethod
    def _n_query_tokens(s) -> int:
        return 0

    @classmethod
    def seq_len(cls, n: int, causal: bool = True) -> int:
        """Model input length for n symbols."""
        raise NotImplementedError

    def _make(self, rng: np.random.Generator, count: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (idx, targets) int64 arrays (count, seq_len(n))."""
        raise NotImplementedError

    @classmethod
    def task_ids(cls, n: int) -> list[int] | None:
        """The task's own position id of each of the seq_len(n) input tokens, or None (the task
        defines none)."""
        return None

    @classmethod
    def positions_for(cls, n: int, causal: bool = True, task: bool = False) -> int:
        """Rows of a learned table that sequences of n symbols read (ids 0..that-1)."""
        return max(cls.task_ids(n)) + 1 if task else cls.seq_len(n, causal)

    # -- shared ----------------------------------------------------------------------
    @classmethod
    def train_length(cls, cfg) -> int:
        return cfg.synthetic.length

    @classmethod
    def positions_needed(cls, cfg, length: int) -> int:
        return cls.positions_for(length, cfg.model.causal, cfg.synthetic.positions == "task")

    @classmethod
    def check_config(cls, cfg) -> None:
        s, p = cfg.synthetic, cfg.model.positional
        for key in ("length", "n_symbols", "n_eval"):
            if getattr(s, key) <= 0:
                raise ConfigError(f"synthetic.{key} must be positive, got {getattr(s, key)}")
        if s.eval_length < 0:
            raise ConfigError(f"synthetic.eval_length must be >= 0 (0 = same as length), got {s.eval_length}")
        if not 0 <= s.min_length <= s.length:
            raise ConfigError(f"synthetic.min_length must be between 0 (off) and synthetic.length={s.length}, "
                              f"got {s.min_length}")
        if s.positions == "task" and cls.task_ids(1) is None:
            raise ConfigError(f"task '{cfg.task}' defines no position ids of its own: use "
                              f"--synthetic.positions=running (task ids exist for copy, reverse and add)")
        train_need, eval_need = (cls.positions_needed(cfg, n) for n in (s.length, s.eval_length or s.length))
        need = {"segment": 2, "symbol_index": cls.first_segment(max(s.length, s.eval_length), cfg.model.causal)}
        for table in cfg.model.tables:  # the names were checked against `fills_tables` before
            if table.rows < need[table.name]:
                raise ConfigError(f"model.tables.{table.name}.rows={table.rows} is too small for task "
                                  f"'{cfg.task}': it needs {need[table.name]}")
        if p.kind == "learned" and train_need > p.max_len:
            raise ConfigError(
                f"model.positional.max_len={p.max_len} is shorter than the {train_need} positions that training "
                f"sequences of task '{cfg.task}' read (synthetic.length={s.length}, positions={s.positions}); "
                f"set --model.positional.max_len={train_need} or shorten the task")
        if p.kind == "learned" and eval_need > p.max_len + p.offset:
            raise ConfigError(
                f"synthetic.eval_length={s.eval_length} needs {eval_need} positions but the learned table has "
                f"{p.max_len + p.offset} rows (max_len {p.max_len} + offset {p.offset}); set "
                f"--model.positional.max_len={eval_need - p.offset} or --model.positional.offset="
                f"{eval_need - p.max_len}, or a shorter eval_length")

    def table_ids(self, n: int, T: int) -> dict[str, torch.Tensor]:
        """(1, T) ids of every configured table for sequences of n symbols (the same in every
        row: they broadcast over the batch)."""
        first = self.first_segment(n, self.causal_model)
        ids = {"segment": [0] * first + [1] * (T - first),
               "symbol_index": list(range(first)) + list(range(T - first))}
        return {name: torch.tensor([ids[name]]) for name in self.tables}

    def _batch(self, idx: np.ndarray, targets: np.ndarray, n: int) -> Batch:
        B, T = idx.shape
        extra = {k: v.expand(B, T) for k, v in self.table_ids(n, T).items()}
        pos = torch.tensor([self.task_ids(n)]).expand(B, T) if self.task_positions else None
        return Batch(torch.from_numpy(idx), torch.from_numpy(targets), position_ids=pos, extra_ids=extra)

    def train_batch(self, step: int, batch_size: int) -> Batch:
        rng = np.random.default_rng([self.seed, 0, step])
        n = self.n if self.min_n == self.n else int(rng.integers(self.min_n, self.n + 1))
        idx, targets = self._make(rng, batch_size, n)
        return self._batch(idx, targets, n)

    def eval_set(self, n: int | None = None) -> Batch:
        n = n or self.eval_n
        rng = np.random.default_rng([self.eval_seed, 1, n])
        idx, targets = self._make(rng, self.n_eval, n)
        return self._batch(idx, targets, n)

    def check_length(self, n: int, model=None) -> None:
        """Raise ConfigError if this task cannot be evaluated on n symbols (`eval --length`)."""
        if n <= 0:
            raise ConfigError(f"the evaluation length must be positive, got {n}")
        L = getattr(model, "max_len", None) if model is not None else None
        need = self.positions_for(n, self.causal_model, self.task_positions)
        if L is not None and need > L:
            raise ConfigError(
                f"length {n} needs {need} positions but the learned table has {L} (trained on length {self.n}); "
                f"evaluate at most length {self._longest_for(L)}, or extend the table (model.extend_positions) "
                f"and fine-tune, or train with random offsets (--model.positional.offset=K adds K trained rows)")

    def _longest_for(self, L: int) -> int:
        n = 1
        while self.positions_for(n + 1, self.causal_model, self.task_positions) <= L:
            n += 1
        return n

    @torch.no_grad()
    def evaluate(self, model, device, batch_size: int = 256, autocast=None, length: int | None = None,
                 split: str | None = None, tag: str = "") -> dict:
        if length is not None:
            self.check_length(length, model)
        data = self.eval_set(length)
        with eval_mode(model):
            loss_sum, exact, correct, count = 0.0, 0, 0, 0
            per_pos_right = per_pos_total = None
            for i in range(0, data.idx.shape[0], batch_size):
                part = slice(i, i + batch_size)
                b = Batch(data.idx[part], data.targets[part],
                          position_ids=data.position_ids[part] if data.position_ids is not None else None,
                          extra_ids={k: v[part] for k, v in data.extra_ids.items()}).to(device)
                with autocast_context(autocast):
                    logits = model(b.idx, **b.model_inputs()).logits
                answer = b.targets != IGNORE_INDEX  # (B, T)
                n_answer = int(answer.sum())
                loss_sum += float(cross_entropy(logits, b.targets)) * n_answer
                right = (logits.argmax(-1) == b.targets) & answer  # (B, T)
                exact += int((right.sum(1) == answer.sum(1)).sum())
                correct += int(right.sum())
                count += n_answer
                r, t = self._per_position(b, right, answer)
                per_pos_right = r if per_pos_right is None else per_pos_right + r
                per_pos_total = t if per_pos_total is None else per_pos_total + t
        n_seq = data.idx.shape[0]
        return {"loss": loss_sum / count, "exact_match": exact / n_seq, "token_accuracy": correct / count,
                "per_position_accuracy": (per_pos_right / per_pos_total.clamp(min=1)).tolist()}

    def figures(self, model, device) -> list:
        m = self.evaluate(model, device)
        acc = m["per_position_accuracy"]
        return [Figure("per_position_accuracy", f"{self.name}: accuracy by answer position (held-out set)",
                       list(range(len(acc))), {"token accuracy": acc}, "answer position", "accuracy", ylim=(0, 1.02),
                       note=f"exact match {m['exact_match']:.3f}, token accuracy {m['token_accuracy']:.3f} "
                            f"over the whole held-out set")]

    def _per_position(self, b: Batch, right, answer):
        """Counts per answer index: answer tokens are the trailing n targets of each row."""
        n = int(answer[0].sum())
        return right[:, -n:].sum(0).cpu(), answer[:, -n:].sum(0).cpu()

    # -- text interface for `learnpos generate` ----------------------------------------
    def parse_symbols(self, text: str) -> list[int]:
        try:
            xs = [int(t) for t in text.split()]
        except ValueError:
            raise ConfigError(f"prompt must be space-separated symbols 0..{self.S - 1}, got {text!r}") from None
        if not xs or any(not 0 <= x < self.S for x in xs):
            raise ConfigError(f"prompt must be space-separated symbols 0..{self.S - 1}, got {text!r}")
        return xs

    def check_prompt_length(self, xs: list[int]) -> None:
        """A model trained on n symbols answers a prompt of another length wrongly without a
        word; refuse such prompts instead (eval --length measures other lengths)."""
        # trained on a range of lengths and evaluated past it (synthetic.eval_length): every length up to that
        longest = max(self.n, self.eval_n) if self.min_n < self.n else self.n
        allowed = set(range(self.min_n, longest + 1)) | {self.eval_n}
        if len(xs) not in allowed:
            trained = f"{self.min_n}..{self.n}" if self.min_n < self.n else f"{self.n}"
            span = f"{self.min_n}..{longest}" if self.min_n < longest else f"{longest}"
            lengths = span + (f" or {self.eval_n}" if not self.min_n <= self.eval_n <= longest else "")
            raise ConfigError(f"this {self.name} model was trained on {trained} symbols; give {lengths} "
                              f"space-separated symbols (got {len(xs)}); `learnpos eval --length N` "
                              f"measures how it does at other lengths")

    def _positions(self, n: int, prompt_len: int) -> dict:
        """generate()'s position arguments for a prompt of the first prompt_len tokens of a
        sequence of n symbols: none with running ids; with task ids the prompt's ids, the first
        new token's and the step (+1, or -1 where the task's ids count down)."""
        if not self.task_positions:
            return {}
        ids, P = self.task_ids(n), prompt_len
        nxt = ids[P] if P < len(ids) else ids[-1] + 1  # (no new token is fed when the answer is one token)
        step = ids[P + 1] - ids[P] if P + 1 < len(ids) else 1  # (only matters when two or more are fed)
        return {"position_ids": [ids[:P]], "next_position": nxt, "position_step": step}

    def respond(self, model, prompt: str, max_new_tokens: int = 0, stream=None, **options) -> str:
        """The answer to "x1 x2 ... xn": always n tokens (max_new_tokens is ignored)."""
        xs = self.parse_symbols(prompt)
        self.check_prompt_length(xs)
        prompt_ids = [self.BOS, *xs, self.SEP]
        out = model.generate([prompt_ids], len(xs), **self._table_options(len(xs), len(prompt_ids)),
                             **self._positions(len(xs), len(prompt_ids)), **sampling_options(options))[0]
        return " ".join(str(t) if t < self.S else f"<{t}>" for t in out)

    def _table_options(self, n: int, T: int) -> dict:
        """Prompt ids of every table and how they continue: the answer stays in segment 1 and
        its symbol index counts on from the prompt's last token."""
        prompt = {k: v.tolist() for k, v in self.table_ids(n, T).items()}
        last = prompt.get("symbol_index", [[0]])[0][-1]
        nxt = {"segment": 1, "symbol_index": lambda step, tokens: torch.full((tokens.shape[0],), last + step)}
        return {"extra_ids": prompt, "next_extra_ids": {k: nxt[k] for k in prompt}} if prompt else {}


@register
class CopyTask(SyntheticTask):
    name = "copy"

    @classmethod
    def seq_len(cls, n: int, causal: bool = True) -> int:
        return 2 * n + 1  # BOS x1..xn SEP y1..yn, minus the last token (it is only a target)

    def _answer(self, x: np.ndarray) -> np.ndarray:
        return x

    @classmethod
    def task_ids(cls, n: int) -> list[int]:  # BOS 0, x_i i, then each token the id of the symbol it predicts
        return [0, *range(1, n + 1), *range(1, n + 1)]  # SEP 1 (-> x_1), y_j j+1 (-> x_(j+1)), j < n

    def _make(self, rng, count, n):
        x = rng.integers(0, self.S, size=(count, n))
        seq = np.concatenate([np.full((count, 1), self.BOS), x, np.full((count, 1), self.SEP),
                              self._answer(x)], axis=1)  # (count, 2n + 2)
        idx, targets = seq[:, :-1].copy(), seq[:, 1:].copy()
        targets[:, :n + 1] = IGNORE_INDEX  # no loss on predicting the input symbols or SEP
        return idx.astype(np.int64), targets.astype(np.int64)


@register
class ReverseTask(CopyTask):
    name = "reverse"

    def _answer(self, x: np.ndarray) -> np.ndarray:
        return x[:, ::-1]

    @classmethod
    def task_ids(cls, n: int) -> list[int]:  # BOS 0, x_i i, then each token the id of the symbol it predicts
        return [0, *range(1, n + 1), *range(n, 0, -1)]  # SEP n (-> x_n), y_j n-j (-> x_(n-j)), j < n


@register
class IndexTask(SyntheticTask):
    """Return the symbol at a queried position. Decoder or encoder (model.causal=false)."""

    name = "index"
    causal = None

    @staticmethod
    def _n_query_tokens(s) -> int:
        return max(s.length, s.eval_length)

    @classmethod
    def seq_len(cls, n: int, causal: bool = True) -> int:
        return n + 2 if causal else n + 1  # decoder: BOS x1..xn Q_k; encoder: x1..xn Q_k

    @classmethod
    def first_segment(cls, n: int, causal: bool = True) -> int:
        return n + 1 if causal else n

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        s = cfg.synthetic
        if max(s.length, s.eval_length) > s.n_symbols:
            raise ConfigError(
                f"task 'index' draws distinct symbols, so synthetic.n_symbols={s.n_symbols} must be >= "
                f"the sequence length ({max(s.length, s.eval_length)})")

    def check_length(self, n: int, model=None) -> None:
        super().check_length(n, model)
        trained = self.vocab_size - self.Q0  # query tokens Q_0..Q_{trained-1} exist in the vocabulary
        if n > trained:
            raise ConfigError(f"task 'index' has query tokens for positions 0..{trained - 1} only (trained with "
                              f"synthetic.length={self.n}, eval_length={self.eval_n}); it cannot be evaluated "
                              f"at length {n} > {trained}: train with --synthetic.eval_length={n} to make room")
        if n > self.S:
            raise ConfigError(f"task 'index' draws distinct symbols: length {n} > n_symbols={self.S}")

    def _make(self, rng, count, n):
        x = np.argsort(rng.random((count, self.S)), axis=1)[:, :n]  # n distinct symbols per row
        k = rng.integers(0, n, size=count)
        answer = x[np.arange(count), k]
        q = (self.Q0 + k)[:, None]
        if self.causal_model:
            idx = np.concatenate([np.full((count, 1), self.BOS), x, q], axis=1)
        else:
            idx = np.concatenate([x, q], axis=1)  # the answer is read out at the query token
        targets = np.full_like(idx, IGNORE_INDEX)
        targets[:, -1] = answer
        return idx.astype(np.int64), targets.astype(np.int64)

    def _per_position(self, b, right, answer):
        n = b.idx.shape[1] - (2 if self.causal_model else 1)
        k = (b.idx[:, -1] - self.Q0).cpu()
        hit = right[:, -1].cpu().to(torch.long)
        return (torch.zeros(n, dtype=torch.long).index_add_(0, k, hit),
                torch.zeros(n, dtype=torch.long).index_add_(0, k, torch.ones_like(hit)))

    def respond(self, model, prompt: str, max_new_tokens: int = 0, stream=None, **options) -> str:
        body, _, query = prompt.partition("?")
        xs = self.parse_symbols(body)
        self.check_prompt_length(xs)
        if not query.strip().isdigit() or not 0 <= int(query) < len(xs):
            raise ConfigError(f"index prompt is 'x1 x2 ... xn ?k' with 0 <= k < n, got {prompt!r}")
        q = self.Q0 + int(query)
        if self.causal_model:
            prompt_ids = [self.BOS, *xs, q]
            out = model.generate([prompt_ids], 1, **self._table_options(len(xs), len(prompt_ids)),
                                 **sampling_options(options))[0]
            return " ".join(map(str, out))
        with torch.no_grad():
            device = next(model.parameters()).device
            idx = torch.tensor([[*xs, q]], device=device)
            extra = {k: v.to(device) for k, v in self.table_ids(len(xs), idx.shape[1]).items()}
            return str(int(model(idx, extra_ids=extra or None).logits[0, -1].argmax()))


def sampling_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k in ("temperature", "top_k", "top_p", "generator")}
