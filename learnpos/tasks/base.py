"""What the trainer knows about a task: `Batch` and the `Task` interface."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class Batch:
    idx: Tensor  # (B, T) token ids
    targets: Tensor  # (B, T) next-token / masked-token targets; IGNORE_INDEX = no loss
    position_ids: Tensor | None = None  # (B, T); None = 0..T-1
    attention_mask: Tensor | None = None  # (B, T); 1 = token, 0 = padding; None = no padding

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return replace(self, idx=move(self.idx), targets=move(self.targets),
                       position_ids=move(self.position_ids), attention_mask=move(self.attention_mask))


class Task:
    """Interface every task implements."""

    name: str = ""
    vocab_size: int
    causal: bool | None = None  # the model mode the task needs; None = either

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ConfigError for configs this task cannot run with."""

    def train_batch(self, step: int, batch_size: int) -> Batch:
        """The batch for optimizer step `step` (a pure function of seed and step, so resume is exact)."""
        raise NotImplementedError

    def evaluate(self, model, device: torch.device, batch_size: int, autocast=None) -> dict:
        """Held-out metrics, including `loss`."""
        raise NotImplementedError

    def respond(self, model, prompt: str, max_new_tokens: int = 200, stream=None, **options) -> str:
        """Answer one text prompt (used by `learnpos generate`); `stream(text)` gets pieces as
        they are produced. `options`: sampling (temperature, top_k, top_p, generator) and
        task-specific flags."""
        raise NotImplementedError
