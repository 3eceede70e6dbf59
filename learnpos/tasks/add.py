"""The `add` probe: multi-digit addition, least significant digit first, the task of the
extrapolation study (docs/results.md). Its batches, positions (Abacus ids with
`synthetic.positions=task`), metrics and named tables are the synthetic probes' (synthetic.py).
"""

from __future__ import annotations

import numpy as np

from learnpos.errors import ConfigError
from learnpos.model import IGNORE_INDEX
from learnpos.tasks.base import register
from learnpos.tasks.synthetic import SyntheticTask, sampling_options


@register
class AddTask(SyntheticTask):
    """Multi-digit addition in base `n_symbols` (10 in the presets), least significant digit
    first: a1..an + b1..bn = c1..c(n+1). Both operands have n digits (any digit, leading zeros
    included), n drawn per batch from min_length..length; the answer has n + 1 digits (the
    last is the final carry). Loss and metrics on the answer digits only; exact match is the
    whole sum right."""

    name = "add"

    def __init__(self, cfg, run_dir=None):
        super().__init__(cfg, run_dir)
        self.PLUS, self.EQ = self.Q0, self.Q0 + 1

    @staticmethod
    def _n_query_tokens(s) -> int:
        return 2  # '+' and '='

    @classmethod
    def seq_len(cls, n: int, causal: bool = True) -> int:
        return 3 * n + 2  # a + b = c, minus the last answer digit (it is only a target)

    @classmethod
    def first_segment(cls, n: int, causal: bool = True) -> int:
        return 2 * n + 1  # the operands and '+'; '=' and the answer are segment 1

    @classmethod
    def task_ids(cls, n: int) -> list[int]:  # Abacus: each digit its place in its own number
        return [*range(1, n + 1), 0, *range(1, n + 1), 0, *range(1, n + 1)]

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if cfg.synthetic.n_symbols < 2:
            raise ConfigError(f"task 'add' adds numbers in base synthetic.n_symbols, which must be >= 2; got "
                              f"{cfg.synthetic.n_symbols} (the presets use 10)")

    def _make(self, rng, count, n):
        base = self.S
        a, b = rng.integers(0, base, size=(count, n)), rng.integers(0, base, size=(count, n))
        c = np.zeros((count, n + 1), dtype=np.int64)
        carry = np.zeros(count, dtype=np.int64)
        for i in range(n):  # least significant first
            total = a[:, i] + b[:, i] + carry
            c[:, i], carry = total % base, total // base
        c[:, n] = carry
        seq = np.concatenate([a, np.full((count, 1), self.PLUS), b, np.full((count, 1), self.EQ), c], axis=1)
        idx, targets = seq[:, :-1].copy(), seq[:, 1:].copy()
        targets[:, :2 * n + 1] = IGNORE_INDEX  # loss on the answer digits only
        return idx.astype(np.int64), targets.astype(np.int64)

    def respond(self, model, prompt: str, max_new_tokens: int = 0, stream=None, **options) -> str:
        """The sum of "a1 .. an + b1 .. bn" (digits least significant first): n + 1 digits."""
        left, plus, right = prompt.partition("+")
        if not plus:
            raise ConfigError(f"add prompt is 'a1 .. an + b1 .. bn' (digits 0..{self.S - 1}, least significant "
                              f"first, both numbers n digits), got {prompt!r}")
        a, b = self.parse_symbols(left), self.parse_symbols(right)
        if len(a) != len(b):
            raise ConfigError(f"give both numbers the same number of digits (pad with zeros at the end: the "
                              f"digits are least significant first); got {len(a)} and {len(b)}")
        self.check_prompt_length(a)
        prompt_ids = [*a, self.PLUS, *b, self.EQ]
        out = model.generate([prompt_ids], len(a) + 1, **self._table_options(len(a), len(prompt_ids)),
                             **self._positions(len(a), len(prompt_ids)), **sampling_options(options))[0]
        return " ".join(str(t) if t < self.S else f"<{t}>" for t in out)
