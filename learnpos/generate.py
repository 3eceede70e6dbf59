"""Sampling with a KV cache, for one prompt or a batch of prompts of different lengths.

A batch is left-padded so every row's last prompt token sits in the same column; each
row's positions start at 0 at its first real token (`position_ids_from_mask`) and pad
slots are masked out of attention, so every row yields what its prompt yields alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from learnpos.positional import LearnedPositionalEmbedding, position_ids_from_mask


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """logits (B, V) -> token ids (B,). temperature 0 means greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(model, prompts: Sequence[Sequence[int]] | Tensor, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             stop_token: int | None = None, pad_id: int = 0, generator: torch.Generator | None = None,
             on_token: Callable[[Tensor], None] | None = None) -> list[list[int]]:
    """Continue each prompt by up to `max_new_tokens` tokens; returns only the new tokens.

    A row stops after it emits `stop_token` (the stop token is not returned). `on_token`
    is called with each step's (B,) tokens, for streaming. Raises `PositionOutOfRange`
    up front if a learned table cannot hold prompt + generation.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if isinstance(prompts, Tensor):
        prompts = prompts.tolist()
    rows = [list(p) for p in prompts]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    B, T = len(rows), max(len(r) for r in rows)
    if max_new_tokens == 0:
        return [[] for _ in rows]
    if isinstance(model.pos, LearnedPositionalEmbedding):  # fail before doing any work
        model.pos.check(None, 0, T + max_new_tokens - 1)

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    idx = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, r in enumerate(rows):
        idx[b, T - len(r):] = torch.tensor(r)
        mask[b, T - len(r):] = 1
    idx, mask = idx.to(device), mask.to(device)
    padded = bool((mask == 0).any())
    position_ids = position_ids_from_mask(mask) if padded else None
    next_pos = mask.sum(1, keepdim=True)  # (B, 1): each row's next position

    # The cache holds prompt + generation; every decoding step then writes one slot per
    # layer and the loop allocates nothing but the step's activations. No host sync per
    # step unless a stop token is set (then `finished.all()` decides whether to go on).
    cache = model.new_cache(T + max_new_tokens)
    logits = model(idx, position_ids=position_ids, attention_mask=mask if padded else None,
                   past_kv=cache, last_only=True).logits[:, -1]  # (B, V)
    out = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device) if stop_token is not None else None
    n = 0
    for step in range(max_new_tokens):
        tok = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        if finished is not None:
            tok = tok.masked_fill(finished, stop_token)
            finished |= tok == stop_token
        out[:, step] = tok
        n = step + 1
        if on_token is not None:
            on_token(tok)
        if step == max_new_tokens - 1 or (finished is not None and bool(finished.all())):
            break
        logits = model(out[:, step:step + 1], position_ids=next_pos if padded else None,
                       past_kv=cache, last_only=True).logits[:, -1]
        if padded:
            next_pos += 1
    model.train(was_training)

    result = []
    for row in out[:, :n].tolist():
        if stop_token is not None and stop_token in row:
            row = row[: row.index(stop_token)]
        result.append(row)
    return result
