"""Position-probing tasks that need no data: copy, reverse, index.

Every sequence is drawn from a seeded generator, so a batch is a pure function of
(seed, step) and the held-out set of (eval_seed). Only answer tokens carry loss.

Vocabulary: symbols 0..S-1, then PAD, BOS, SEP, MASK, then one query token per position.

    copy     BOS x1..xn SEP | x1..xn          (decoder; teacher-forced answer)
    reverse  BOS x1..xn SEP | xn..x1          (decoder)
    index    decoder: BOS x1..xn Q_k | x_k    encoder: x1..xn Q_k, predict x_k at Q_k

Metrics: `exact_match` (every answer token right; with teacher forcing this equals greedy
decoding being right), `token_accuracy`, and `per_position_accuracy` (by answer index for
copy/reverse, by queried position for index).

Why index draws *distinct* symbols: then every input holds the same set of symbols in
some order, and an encoder without positions (permutation-equivariant) can do no better
than guessing among the n symbols: chance is exactly 1/n.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from learnpos.errors import ConfigError
from learnpos.model import IGNORE_INDEX
from learnpos.tasks.base import Batch, Task


class SyntheticTask(Task):
    causal: bool | None = True

    def __init__(self, cfg, run_dir=None):
        s = cfg.synthetic
        self.seed, self.eval_seed = cfg.train.seed, s.eval_seed
        self.n, self.n_eval = s.length, s.n_eval
        self.eval_n = s.eval_length or s.length
        self.S = s.n_symbols
        self.PAD, self.BOS, self.SEP, self.MASK = self.S, self.S + 1, self.S + 2, self.S + 3
        self.Q0 = self.S + 4  # query token for position k is Q0 + k
        self.vocab_size = self.Q0 + self._n_query_tokens(s)
        self.causal_model = cfg.model.causal

    # -- subclasses define the sequence layout ----------------------------------------
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

    # -- shared ----------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg) -> None:
        s, p = cfg.synthetic, cfg.model.positional
        if cls.causal is not None and cfg.model.causal != cls.causal:
            mode = "decoder (model.causal=true)" if cls.causal else "encoder (model.causal=false)"
            raise ConfigError(f"task '{cfg.task}' needs a {mode}")
        longest = cls.seq_len(max(s.length, s.eval_length), cfg.model.causal)
        if p.kind == "learned" and longest > p.max_len:
            raise ConfigError(
                f"model.positional.max_len={p.max_len} is shorter than the {longest}-token sequences of task "
                f"'{cfg.task}' (synthetic.length={s.length}, eval_length={s.eval_length}); "
                f"set --model.positional.max_len={longest} or shorten the task")

    def train_batch(self, step: int, batch_size: int) -> Batch:
        rng = np.random.default_rng([self.seed, 0, step])
        idx, targets = self._make(rng, batch_size, self.n)
        return Batch(torch.from_numpy(idx), torch.from_numpy(targets))

    def eval_set(self, n: int | None = None) -> Batch:
        rng = np.random.default_rng([self.eval_seed, 1, n or self.eval_n])
        idx, targets = self._make(rng, self.n_eval, n or self.eval_n)
        return Batch(torch.from_numpy(idx), torch.from_numpy(targets))

    @torch.no_grad()
    def evaluate(self, model, device, batch_size: int = 256, autocast=None, length: int | None = None) -> dict:
        data = self.eval_set(length)
        was_training = model.training
        model.eval()
        loss_sum, exact, correct, count = 0.0, 0, 0, 0
        per_pos_right = per_pos_total = None
        for i in range(0, data.idx.shape[0], batch_size):
            b = Batch(data.idx[i:i + batch_size], data.targets[i:i + batch_size]).to(device)
            with autocast() if autocast else contextlib.nullcontext():
                out = model(b.idx, targets=b.targets)
            answer = b.targets != IGNORE_INDEX  # (B, T)
            n_answer = int(answer.sum())
            loss_sum += float(out.loss) * n_answer
            right = (out.logits.argmax(-1) == b.targets) & answer  # (B, T)
            exact += int((right.sum(1) == answer.sum(1)).sum())
            correct += int(right.sum())
            count += n_answer
            r, t = self._per_position(b, right, answer)
            per_pos_right = r if per_pos_right is None else per_pos_right + r
            per_pos_total = t if per_pos_total is None else per_pos_total + t
        model.train(was_training)
        n_seq = data.idx.shape[0]
        return {"loss": loss_sum / count, "exact_match": exact / n_seq, "token_accuracy": correct / count,
                "per_position_accuracy": (per_pos_right / per_pos_total.clamp(min=1)).tolist()}

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

    def respond(self, model, prompt: str, max_new_tokens: int = 0, stream=None, **options) -> str:
        """The answer to "x1 x2 ... xn": always n tokens (max_new_tokens is ignored)."""
        xs = self.parse_symbols(prompt)
        out = model.generate([[self.BOS, *xs, self.SEP]], len(xs), **_sampling(options))[0]
        return " ".join(str(t) if t < self.S else f"<{t}>" for t in out)


class CopyTask(SyntheticTask):
    name = "copy"

    @classmethod
    def seq_len(cls, n: int, causal: bool = True) -> int:
        return 2 * n + 1  # BOS x1..xn SEP y1..yn, minus the last token (it is only a target)

    def _answer(self, x: np.ndarray) -> np.ndarray:
        return x

    def _make(self, rng, count, n):
        x = rng.integers(0, self.S, size=(count, n))
        seq = np.concatenate([np.full((count, 1), self.BOS), x, np.full((count, 1), self.SEP),
                              self._answer(x)], axis=1)  # (count, 2n + 2)
        idx, targets = seq[:, :-1].copy(), seq[:, 1:].copy()
        targets[:, :n + 1] = IGNORE_INDEX  # no loss on predicting the input symbols or SEP
        return idx.astype(np.int64), targets.astype(np.int64)


class ReverseTask(CopyTask):
    name = "reverse"

    def _answer(self, x: np.ndarray) -> np.ndarray:
        return x[:, ::-1]


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
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        s = cfg.synthetic
        if max(s.length, s.eval_length) > s.n_symbols:
            raise ConfigError(
                f"task 'index' draws distinct symbols, so synthetic.n_symbols={s.n_symbols} must be >= "
                f"the sequence length ({max(s.length, s.eval_length)})")

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

    def chance(self) -> float:
        """Best accuracy without any notion of order: 1/n (see module docstring)."""
        return 1.0 / self.eval_n

    def respond(self, model, prompt: str, max_new_tokens: int = 0, stream=None, **options) -> str:
        body, _, query = prompt.partition("?")
        xs = self.parse_symbols(body)
        if not query.strip().isdigit() or not 0 <= int(query) < len(xs):
            raise ConfigError(f"index prompt is 'x1 x2 ... xn ?k' with 0 <= k < n, got {prompt!r}")
        q = self.Q0 + int(query)
        if self.causal_model:
            out = model.generate([[self.BOS, *xs, q]], 1, **_sampling(options))[0]
            return " ".join(map(str, out))
        with torch.no_grad():
            idx = torch.tensor([[*xs, q]], device=next(model.parameters()).device)
            return str(int(model(idx).logits[0, -1].argmax()))


def _sampling(options: dict) -> dict:
    return {k: v for k, v in options.items() if k in ("temperature", "top_k", "top_p", "generator")}
