"""Sampling with a KV cache, for one prompt or a batch of prompts of different lengths.

A batch is left-padded so every row's last prompt token sits in the same column; each
row's positions start at 0 at its first real token (`position_ids_from_mask`) and pad
slots are masked out of attention, so every row yields what its prompt yields alone.

A model with named tables (`model.tables`, e.g. turn and speaker ids) takes the prompt's
ids per table (`extra_ids`) and continues them for the new tokens (`next_extra_ids`).
Every id is range-checked once, before any work: the decoding loop does no host sync
unless a stop token or a callback asks for one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from learnpos.positional import position_ids_from_mask

NextIds = int | Sequence[int] | Callable[[int, Tensor], Tensor]


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """logits (B, V) -> token ids (B,). temperature 0 means greedy (argmax).

    top_k keeps the k largest logits. top_p (nucleus sampling, Holtzman et al. 2020) keeps the
    smallest set of most likely tokens whose probability *reaches* top_p (sum >= top_p), the
    convention of HF transformers: a token is dropped when the tokens ranked above it already
    hold top_p of the mass. The most likely token is always kept."""
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
        drop = probs.cumsum(-1) - probs >= top_p
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(model, prompts: Sequence[Sequence[int]] | Tensor, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             stop_token: int | None = None, pad_id: int = 0, generator: torch.Generator | None = None,
             on_token: Callable[[Tensor], None] | None = None,
             extra_ids: Mapping[str, Sequence[Sequence[int]] | Tensor] | None = None,
             next_extra_ids: Mapping[str, NextIds] | None = None, vocab_limit: int | None = None,
             position_ids: Sequence[Sequence[int]] | None = None,
             next_position: int | Sequence[int] | None = None, position_step: int = 1) -> list[list[int]]:
    """Continue each prompt by up to `max_new_tokens` tokens; returns only the new tokens.

    A row stops after it emits `stop_token` (the stop token is not returned). `on_token`
    is called with each step's (B,) tokens, for streaming. Raises `PositionOutOfRange`
    up front if a learned table cannot hold prompt + generation.

    extra_ids: for a model with named tables, table name -> one id per prompt token (a list
        per row, like `prompts`). next_extra_ids: table name -> the ids of the new tokens:
        an int (every row), a sequence of B ints (one per row), or a callback
        `f(step, tokens) -> (B,) ids` given the new tokens so far (B, step) (its ids are
        range-checked every step: two host syncs). A table without an entry continues each
        row's last prompt id (e.g. the reply's turn and speaker).
    vocab_limit: sample only ids below it (a model whose vocab_size was padded beyond its
        tokenizer's never emits an id the tokenizer cannot decode).
    position_ids: each prompt token's position (a list per row), for layouts whose positions
        are not 0..len-1 (e.g. restarting in every utterance of a dialogue); with it,
        next_position (an int, or one per row) is the first new token's position, and each
        later new token's is the previous one's + position_step (1, or e.g. -1 for ids that
        count down). Default: 0..len-1 per row, continued.
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
    custom = _custom_positions(rows, position_ids, next_position)
    last = None  # (B, 1): the last new token's position fed (custom positions only)
    if custom is None:
        if position_step != 1:
            raise ValueError("position_step needs position_ids (the prompt's positions)")
        model.check_length(T + max_new_tokens - 1)  # fail before doing any work
    else:  # the positions fed: the prompt's, then next_position + i * position_step for i < max_new_tokens - 1
        last = custom[1] + position_step * max(max_new_tokens - 2, 0)  # (B, 1)
        if int(last.min()) < 0:
            raise ValueError(f"position_step={position_step} takes the new tokens' positions below 0 within "
                             f"{max_new_tokens} tokens")
        model.check_length(max(int(custom[0].max()), int(custom[1].max()), int(last.max())) + 1)
    prompt_extra, next_extra = _extra_ids(model, rows, T, extra_ids, next_extra_ids)

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        idx = left_pad(rows, T, pad_id)
        mask = left_pad([[1] * len(r) for r in rows], T)
        idx, mask = idx.to(device), mask.to(device)
        padded = bool((mask == 0).any())
        if custom is not None:
            position_ids, next_pos = custom[0].to(device), custom[1].to(device)
        else:
            position_ids = position_ids_from_mask(mask) if padded else None
            next_pos = mask.sum(1, keepdim=True)  # (B, 1): each row's next position
        explicit = padded or custom is not None  # positions are passed, not 0..T-1

        # The cache holds prompt + generation; every decoding step then writes one slot per
        # layer and the loop allocates nothing but the step's activations. No host sync per
        # step unless a stop token is set (then `finished.all()` decides whether to go on).
        cache = model.new_cache(T + max_new_tokens - 1)  # the last new token is sampled, never fed
        # each row's largest position fed + 1: what encodings that plan positions spread over
        if not model.pos.plans_positions:
            pass  # a plain table, sinusoids, rope, alibi: nothing to plan
        elif custom is not None:
            fed = torch.maximum(next_pos, last.to(device)).view(-1)
            cache.planned = torch.maximum(position_ids.amax(1), fed) + 1
        else:
            cache.planned = mask.sum(1) + max_new_tokens - 1
        prompt_extra = {k: v.to(device) for k, v in prompt_extra.items()}
        next_extra = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in next_extra.items()}
        logits = model(idx, position_ids=position_ids, attention_mask=mask if padded else None,
                       past_kv=cache, last_only=True, extra_ids=prompt_extra or None,
                       check_ids=False).logits[:, -1]  # (B, V); every id was checked above
        out = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device) if stop_token is not None else None
        n = 0
        for step in range(max_new_tokens):
            if vocab_limit is not None:
                logits = logits[:, :vocab_limit]
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
            step_extra = {}
            for name, nxt in next_extra.items():
                if callable(nxt):
                    ids = torch.as_tensor(nxt(step + 1, out[:, :step + 1]), device=device).reshape(-1, 1)
                    if ids.shape[0] not in (1, B):
                        raise ValueError(f"next_extra_ids['{name}'] returned {ids.shape[0]} ids for {B} rows")
                    ids = ids.expand(B, 1)
                    model.tables[name].check(ids, 0, 1)  # user ids: checked (a host sync) before the lookup
                else:
                    ids = nxt  # (B, 1), checked up front
                step_extra[name] = ids
            logits = model(out[:, step:step + 1], position_ids=next_pos if explicit else None,
                           past_kv=cache, last_only=True, extra_ids=step_extra or None,
                           check_ids=False).logits[:, -1]
            if explicit:
                next_pos += position_step
    finally:
        model.train(was_training)

    result = []
    for row in out[:, :n].tolist():
        if stop_token is not None and stop_token in row:
            row = row[: row.index(stop_token)]
        result.append(row)
    return result


def left_pad(rows: Sequence[Sequence[int]], T: int, fill: int = 0) -> Tensor:
    """Rows of at most T ints -> (B, T) long, each row right-aligned after `fill`s."""
    out = torch.full((len(rows), T), fill, dtype=torch.long)
    for b, r in enumerate(rows):
        if len(r):
            out[b, T - len(r):] = torch.as_tensor(r, dtype=torch.long)
    return out


def _custom_positions(rows: list[list[int]], position_ids, next_position) -> tuple[Tensor, Tensor] | None:
    """Left-padded (B, T) prompt positions and (B, 1) first new positions, or None for the
    default 0..len-1 layout."""
    if position_ids is None:
        if next_position is not None:
            raise ValueError("next_position needs position_ids (the prompt's positions)")
        return None
    if isinstance(position_ids, Tensor):
        position_ids = position_ids.tolist()
    B, T = len(rows), max(len(r) for r in rows)
    if len(position_ids) != B or any(len(p) != len(r) for p, r in zip(position_ids, rows, strict=True)):
        raise ValueError("position_ids must hold one position per prompt token, row by row")
    ids = left_pad(position_ids, T)
    if next_position is None:
        nxt = torch.tensor([[p[-1] + 1] for p in position_ids], dtype=torch.long)
    else:
        nxt = torch.as_tensor(next_position, dtype=torch.long).reshape(-1, 1)
        if nxt.shape[0] not in (1, B):
            raise ValueError(f"next_position must be an int or {B} ints (one per row)")
        nxt = nxt.expand(B, 1).clone()
    if int(ids.min()) < 0 or int(nxt.min()) < 0:
        raise ValueError("positions must be >= 0")
    return ids, nxt


def _extra_ids(model, rows: list[list[int]], T: int, extra_ids, next_extra_ids):
    """Left-padded (B, T) prompt ids and the new tokens' ids per named table, range-checked.
    Pad slots get id 0 (masked out of attention, like their positions)."""
    names = list(model.tables.keys()) if hasattr(model, "tables") else []
    extra_ids, next_extra_ids = dict(extra_ids or {}), dict(next_extra_ids or {})
    for given in (extra_ids, next_extra_ids):
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(f"the model has no table {', '.join(map(repr, unknown))} "
                             f"(its tables: {', '.join(names) or 'none'})")
    missing = [n for n in names if n not in extra_ids]
    if missing:
        raise ValueError(f"the model has tables {', '.join(missing)}: pass extra_ids={{name: ids per prompt "
                         f"token}} for each")
    B = len(rows)
    prompt, nxt = {}, {}
    for name in names:
        given = extra_ids[name]
        if isinstance(given, Tensor):
            given = given.tolist()
        if len(given) != B or any(len(g) != len(r) for g, r in zip(given, rows, strict=True)):
            raise ValueError(f"extra_ids['{name}'] must hold one id per prompt token, row by row")
        ids = left_pad(given, T)
        model.tables[name].check(ids, 0, T)
        prompt[name] = ids
        rule = next_extra_ids.get(name, [g[-1] for g in given])  # default: each row's last prompt id
        if callable(rule):
            nxt[name] = rule
            continue
        const = torch.as_tensor(rule, dtype=torch.long).reshape(-1, 1)
        const = const.expand(B, 1) if const.shape[0] == 1 else const
        if const.shape[0] != B:
            raise ValueError(f"next_extra_ids['{name}'] must be an int, {B} ints (one per row) or a callback")
        model.tables[name].check(const, 0, 1)
        nxt[name] = const
    return prompt, nxt
