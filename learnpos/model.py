"""THE model: a GPT-style Transformer, read top to bottom.

    token embedding + positional encoding -> n_layer x [pre-LN attention, pre-LN MLP]
    -> final LayerNorm -> linear head (optionally tied to the token embedding)

`causal=True` is a decoder-only language model; `causal=False` is a bidirectional encoder
(same weights and names, no causal mask) for masked-token tasks such as KG completion.

Shapes (see learnpos/positional.py): B batch, T new tokens, S keys (cache + new),
C n_embd, nh heads, hs head size, V vocab. Parameter names (the `state_dict` keys) are
the contract with the NumPy reference and the checkpoint files:
    tok_emb.weight, pos.weight (learned only), blocks.{i}.ln1.{weight,bias},
    blocks.{i}.attn.qkv.{weight,bias}, blocks.{i}.attn.proj.{weight,bias},
    blocks.{i}.ln2.*, blocks.{i}.mlp.fc.*, blocks.{i}.mlp.proj.*, ln_f.*, head.weight
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from learnpos.config import ModelConfig
from learnpos.positional import (
    LearnedPositionalEmbedding,
    apply_rotary,
    build_positional,
    default_position_ids,
)

IGNORE_INDEX = -100  # targets with this value contribute no loss (prompt tokens, padding)


class KVCache:
    """Keys and values of every layer for incremental decoding, preallocated to `capacity`.

    The model writes into it in place during `forward(..., past_kv=cache)` and then
    advances `length`; the default positions of new tokens continue from `length`.
    It also keeps, per cached slot, whether it is a real token (for left-padded batches)
    and its position id (for ALiBi's distance bias). Every buffer is allocated once, so a
    decoding step only writes its new slots and reads views of the first `length + T`.
    """

    def __init__(self, n_layer: int, capacity: int):
        self.capacity = capacity
        self.length = 0
        self.k: list[Tensor | None] = [None] * n_layer  # each (B, nh, capacity, hs)
        self.v: list[Tensor | None] = [None] * n_layer
        self.key_mask: Tensor | None = None  # (B, capacity) bool; None while nothing is padded
        self.positions: Tensor | None = None  # (B, capacity) long

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store this step's k, v (B, nh, T, hs); return all keys/values so far (B, nh, S, hs)."""
        B, nh, T, hs = k.shape
        if self.k[layer] is None:
            self.k[layer] = k.new_empty(B, nh, self.capacity, hs)
            self.v[layer] = v.new_empty(B, nh, self.capacity, hs)
        end = self.length + T
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def record(self, key_mask: Tensor | None, positions: Tensor) -> None:
        """Before the layers run: store the T new tokens' mask (B, T) and positions (B, T) in
        slots length..length+T-1, so `key_mask`/`positions` [:, :length + T] describe every key."""
        B, T = positions.shape
        end = self.length + T
        if end > self.capacity:
            raise ValueError(f"KV cache full: {self.length} + {T} > capacity {self.capacity}")
        if self.positions is None:
            self.positions = torch.zeros(B, self.capacity, dtype=torch.long, device=positions.device)
        self.positions[:, self.length:end] = positions
        if key_mask is not None and self.key_mask is None:
            self.key_mask = torch.ones(B, self.capacity, dtype=torch.bool, device=positions.device)
        if self.key_mask is not None:
            self.key_mask[:, self.length:end] = True if key_mask is None else key_mask.bool()

    def advance(self, T: int) -> None:
        """After the layers ran: the T new tokens are now part of the cache."""
        self.length += T


class ModelOutput(NamedTuple):
    logits: Tensor  # (B, T, V)
    loss: Tensor | None  # mean cross-entropy over targets != IGNORE_INDEX


# --------------------------------------------------------------------------- layers


# PyTorch's CPU flash-attention kernel is slow to train in bf16: its backward has a large
# fixed cost per (batch, head, block). With short keys, plain attention (batched matmuls
# around a softmax, which AMX/AVX-512 run well) with a hand-written backward is much faster,
# and causal attention skips the key blocks no query in a block may see. benchmarks/attention.py
# (one layer fwd+bwd in bf16, 6 heads of 64, 2-core Xeon with AMX, torch 2.13): 1.9x faster
# than SDPA at 64 keys, 2.4x at 128, 1.4x at 256, 1.15x at 512, 0.7x at 1024. Used up to 256
# keys, which also bounds the saved probabilities (B nh T S) that SDPA does not keep.
_CPU_BF16_MATMUL_ATTN_MAX_KEYS = 256
# Rows per query block. At <= 256 keys 64-row blocks and one block measured even (slicing makes
# bmm copy its operands and dk/dv are summed, which eats the skipped work); from 512 keys blocks
# win. Blocks also keep 37.5% fewer probabilities at T = 256.
_QUERY_BLOCK = 64


def _use_matmul_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> bool:
    """Backward-bound CPU bf16 attention (gradients wanted) with short keys, no dropout and a
    constant mask -> `_MatmulAttention`; everything else -> SDPA. Under torch.compile, SDPA
    (the compiler brings its own kernels and does not trace this Function's in-place layout)."""
    return (q.dtype == k.dtype == v.dtype == torch.bfloat16 and q.device.type == "cpu" and q.requires_grad
            and not torch.compiler.is_compiling()
            and dropout_p == 0.0 and k.shape[-2] <= _CPU_BF16_MATMUL_ATTN_MAX_KEYS
            and (mask is None or not mask.requires_grad))


_causal_biases: dict[tuple[int, int, torch.dtype, torch.device], Tensor] = {}


def _causal_bias(T: int, S: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(T, S) additive mask: -inf where query t (at slot S - T + t) must not see key s > S - T + t."""
    key = (T, S, dtype, device)
    if key not in _causal_biases:
        _causal_biases[key] = torch.full((T, S), float("-inf"), dtype=dtype, device=device).triu(S - T + 1)
    return _causal_biases[key]


def _blocks(T: int, S: int, is_causal: bool) -> list[tuple[int, int, int]]:
    """(first query, end query, end key) per block: with a causal mask the queries a..b-1 see
    keys 0..b-1 + (S - T) only; without one, a single block sees every key."""
    if not is_causal:
        return [(0, T, S)]
    return [(a, min(a + _QUERY_BLOCK, T), min(a + _QUERY_BLOCK, T) + S - T) for a in range(0, T, _QUERY_BLOCK)]


class _MatmulAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(hs) + mask) v as batched matmuls, backward by hand.

    Per block of queries (rows a..b-1) and the keys they may see (0..e-1):
        s = (scale q) k^T + causal bias; p = softmax(s); y = p v.     saves scale q, k, v, every p
    Backward, dy -> dq, dk, dv (the formulas of `learnpos.reference.layers.attention_backward`):
        dv += p^T dy; dp = dy v^T; ds = p * (dp - rowsum(dp * p)); dq = scale ds k; dk += scale ds^T q
    q, k, v are (B, nh, T|S, hs); mask is None, bool (True = may attend) or additive float,
    broadcastable to (B, nh, T, S). is_causal puts the T queries at the last T of the S key
    slots (query t sees keys 0..S-T+t, as after a KV cache), unlike SDPA's top-left alignment
    when T != S; the model passes is_causal only with T == S, where the two agree. The softmax
    reads bf16 and computes in fp32 internally, the matmuls accumulate in fp32, and dk, dv are
    summed over blocks in fp32.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
        B, nh, T, hs = q.shape
        S = k.shape[-2]
        scale = 1.0 / math.sqrt(hs)
        qs = torch.empty(B * nh, T, hs, dtype=q.dtype, device=q.device)
        torch.mul(q, scale, out=qs.view(B, nh, T, hs))  # scale * q, contiguous: one pass over q
        k3, v3 = (t.reshape(B * nh, S, hs) for t in (k, v))  # (B nh, S, hs), contiguous
        blocks = _blocks(T, S, is_causal)
        ys, ps = [], []
        for a, b, e in blocks:
            s = torch.bmm(qs[:, a:b], k3[:, :e].transpose(1, 2))  # (B nh, b - a, e)
            if is_causal:
                s.add_(_causal_bias(b - a, e, s.dtype, s.device))
            if mask is not None:
                m = mask[..., :e] if mask.shape[-2] == 1 else mask[..., a:b, :e]  # (.., 1|b - a, e)
                s4 = s.view(B, nh, b - a, e)
                if m.dtype == torch.bool:
                    s4.masked_fill_(~m, float("-inf"))
                else:
                    s4.add_(m)
            p = torch.softmax(s, dim=-1)
            ys.append(torch.bmm(p, v3[:, :e]))
            ps.append(p)
        ctx.save_for_backward(qs, k3, v3, *ps)
        ctx.scale, ctx.blocks, ctx.q_shape, ctx.k_shape = scale, blocks, q.shape, k.shape
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)
        return y.view(B, nh, T, hs)

    @staticmethod
    def backward(ctx, dy: Tensor):
        qs, k3, v3, *ps = ctx.saved_tensors
        dy = dy.reshape(qs.shape).to(v3.dtype)
        dq = torch.empty_like(qs)
        dk = torch.zeros(k3.shape, dtype=torch.float32, device=k3.device)
        dv = torch.zeros(v3.shape, dtype=torch.float32, device=v3.device)
        for (a, b, e), p in zip(ctx.blocks, ps, strict=True):
            dy_blk = dy[:, a:b]
            dv[:, :e] += torch.bmm(p.transpose(1, 2), dy_blk)
            dp = torch.bmm(dy_blk, v3[:, :e].transpose(1, 2))
            ds = torch._softmax_backward_data(dp, p, -1, p.dtype)
            dq[:, a:b] = torch.bmm(ds, k3[:, :e]).mul_(ctx.scale)
            dk[:, :e] += torch.bmm(ds.transpose(1, 2), qs[:, a:b])  # qs carries the scale
        return (dq.view(ctx.q_shape), dk.to(k3.dtype).view(ctx.k_shape), dv.to(v3.dtype).view(ctx.k_shape),
                None, None)


class SelfAttention(nn.Module):
    """Multi-head self-attention with fused qkv, `F.scaled_dot_product_attention`, KV cache."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None,
                is_causal: bool, cache: KVCache | None, layer: int) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, S, hs)
        dropout_p = self.dropout if self.training else 0.0
        if _use_matmul_attention(q, k, v, mask, dropout_p):
            y = _MatmulAttention.apply(q, k, v, mask, is_causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))  # GPT-2's tanh GELU


class Block(nn.Module):
    """Pre-LN residual block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, rope, mask, is_causal, cache, layer) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), rope, mask, is_causal, cache, layer))
        return x + self.drop(self.mlp(self.ln2(x)))


# ---------------------------------------------------------------------------- model


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (the task provides it)")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = build_positional(cfg.positional, cfg.n_embd, cfg.n_head)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 n_layer)
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # The positional table is not touched here: it has its own configured init.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, include_positions: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights are counted once
        if not include_positions and isinstance(self.pos, LearnedPositionalEmbedding):
            n -= self.pos.weight.numel()
        return n

    @property
    def max_len(self) -> int | None:
        """The longest sequence the positional encoding accepts (None = unbounded)."""
        return self.pos.max_len

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(len(self.blocks), capacity)

    def forward(self, idx: Tensor, targets: Tensor | None = None, position_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, past_kv: KVCache | None = None,
                last_only: bool = False) -> ModelOutput:
        """idx (B, T) token ids -> logits (B, T, V) and, given targets (B, T), the loss.

        position_ids (B, T): explicit positions; default `offset + arange(T)` where offset
            is the cache length. Derive them from a mask with `position_ids_from_mask`.
        attention_mask (B, T): 1 for real tokens, 0 for padding (keys that are padding are
            never attended to).
        past_kv: a `KVCache`, updated in place; the new tokens attend to everything in it.
        last_only: return logits for the last position only, (B, 1, V) (generation; with a
            large vocabulary the head over a whole prompt is the costliest part of prefill).
        """
        if last_only and targets is not None:
            raise ValueError("last_only=True gives logits for one position; it cannot compute a loss")
        B, T = idx.shape
        offset = past_kv.length if past_kv is not None else 0
        x = self.tok_emb(idx)  # (B, T, C)
        pe = self.pos.embed(position_ids, offset, T)  # (B|1, T, C) or None
        if pe is not None:
            x = x + pe
        x = self.drop(x)

        positions = position_ids if position_ids is not None else default_position_ids(T, offset, idx.device)
        if past_kv is not None:
            past_kv.record(attention_mask, positions.expand(B, T))
        rope = self.pos.rotary(positions)
        mask, is_causal = self._attention_mask(positions, attention_mask, past_kv, T)

        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, is_causal, past_kv, i)
        if past_kv is not None:
            past_kv.advance(T)
        if last_only:
            x = x[:, -1:]  # (B, 1, C): the next-token logits are all that decoding needs
        x = self.ln_f(x)
        logits = self.head(x)  # (B, T, V), or (B, 1, V) with last_only

        loss = None
        if targets is not None:
            # at least float32 (bf16 logits under autocast), float64 stays float64 (the reference checks)
            wide = logits.flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32))
            loss = F.cross_entropy(wide, targets.flatten(), ignore_index=IGNORE_INDEX)
        return ModelOutput(logits, loss)

    def _attention_mask(self, positions: Tensor, attention_mask: Tensor | None,
                        cache: KVCache | None, T: int) -> tuple[Tensor | None, bool]:
        """What SDPA needs: (attn_mask, is_causal). attn_mask is bool (True = may attend) or
        float (additive, for ALiBi), shaped (B|1, 1|nh, T, S). Common cases need no mask.
        With a cache, the new tokens are already recorded in it (`KVCache.record`)."""
        causal = self.config.causal
        offset = cache.length if cache is not None else 0
        S = offset + T
        k_pos = cache.positions[:, :S] if cache is not None else positions  # (B|1, S), a view
        bias = self.pos.attn_bias(positions, k_pos)  # (B|1, nh, T, S) or None
        if cache is not None:  # (B, S) or None: which keys are real tokens
            key_mask = cache.key_mask[:, :S] if cache.key_mask is not None else None
        else:
            key_mask = attention_mask.bool() if attention_mask is not None else None
        if key_mask is None and bias is None:
            if not causal:
                return None, False
            if offset == 0:
                return None, True
            if T == 1:  # one new token may see every cached slot
                return None, False

        slots = torch.arange(S, device=positions.device).view(1, S)
        q_slots = torch.arange(offset, S, device=positions.device).view(T, 1)  # query t sits at offset + t
        allowed = slots <= q_slots if causal else torch.ones(T, S, dtype=torch.bool, device=slots.device)
        allowed = allowed.view(1, 1, T, S)
        if key_mask is not None:
            # A padding query may have nothing left to see; let every query see itself so
            # no softmax row is empty (its output is unused: nobody attends to padding).
            allowed = (allowed & key_mask.view(-1, 1, 1, S)) | (slots == q_slots).view(1, 1, T, S)
        if bias is None:
            return allowed, False
        return bias.masked_fill(~allowed, float("-inf")), False

    # ------------------------------------------------------------ positional utilities

    def extend_positions(self, n: int, method: str = "copy-last") -> None:
        """Grow the learned table to n rows (see `LearnedPositionalEmbedding.extend`)."""
        self._learned_table().extend(n, method)
        self.config.positional.max_len = n

    def crop_positions(self, n: int) -> None:
        self._learned_table().crop(n)
        self.config.positional.max_len = n

    def _learned_table(self) -> LearnedPositionalEmbedding:
        if not isinstance(self.pos, LearnedPositionalEmbedding):
            raise ValueError(f"only a learned table can be resized; this model uses '{self.config.positional.kind}'")
        return self.pos

    def generate(self, prompts, max_new_tokens: int, **kwargs) -> list[list[int]]:
        """Sample continuations; see `learnpos.generate.generate`."""
        from learnpos.generate import generate

        return generate(self, prompts, max_new_tokens, **kwargs)
