"""THE model: a GPT-style Transformer, read top to bottom.

    token embedding + positional encoding + named tables -> n_layer x [pre-LN attention,
    pre-LN MLP] -> final LayerNorm -> linear head (optionally tied to the token embedding)

The embedding sum h = E[x] + P[pos] + sum over `model.tables` of T_name[ids_name] is formed
in one place, `GPT.embed`. A task that scores something else than the vocabulary (entities,
a subset of tokens) asks for the hidden states (`return_hidden=True`) and applies its own
head, which the model carries as `heads[name]` so it is trained and saved with it; the
model itself has no task branches.

`causal=True` is a decoder-only language model; `causal=False` is a bidirectional encoder
(same weights and names, no causal mask) for masked-token tasks such as KG completion.
Attention is `F.scaled_dot_product_attention` unless `model.attention` picks the CPU bf16
matmul kernel of learnpos/attention.py.

Shapes (see learnpos/positional.py): B batch, T new tokens, S keys (cache + new),
C n_embd, nh heads, hs head size, V vocab. Parameter names (the `state_dict` keys) are
the contract with the NumPy reference and the checkpoint files:
    tok_emb.weight, pos.weight (learned only), tables.{name}.weight, blocks.{i}.ln1.{weight,bias},
    blocks.{i}.attn.qkv.{weight,bias}, blocks.{i}.attn.proj.{weight,bias},
    blocks.{i}.ln2.*, blocks.{i}.mlp.fc.*, blocks.{i}.mlp.gate.* (swiglu only), blocks.{i}.mlp.proj.*, ln_f.*,
    head.weight, heads.{name}.*
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from learnpos.attention import attend
from learnpos.cache import KVCache
from learnpos.config import ModelConfig, mlp_width
from learnpos.positional import (
    LearnedPositionalEmbedding,
    apply_rotary,
    build_positional,
    default_position_ids,
)

IGNORE_INDEX = -100  # targets with this value contribute no loss (prompt tokens, padding)
QK_NORM_EPS = 1e-6  # model.qk_norm: x / sqrt(mean(x^2) + eps), the same in float32, bf16 and the reference


class ModelOutput(NamedTuple):
    logits: Tensor | None  # (B, T, V); None with return_hidden
    loss: Tensor | None  # mean cross-entropy over targets != IGNORE_INDEX
    hidden: Tensor | None = None  # (B, T, C) after ln_f, with return_hidden


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of logits (B, T, V) against targets (B, T), skipping IGNORE_INDEX;
    computed in the wider of float32 and the logits' dtype (bf16 logits under autocast are
    widened, float64 stays float64 for the reference checks)."""
    wide = logits.flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(wide, targets.flatten(), ignore_index=IGNORE_INDEX)


# --------------------------------------------------------------------------- layers


def _rate(specific: float | None, default: float) -> float:
    """A dropout rate: its own setting (model.attn_dropout, ...) or model.dropout."""
    return default if specific is None else specific


class SelfAttention(nn.Module):
    """Multi-head self-attention with fused qkv and a KV cache. The attention itself is
    `learnpos.attention.attend`: SDPA, or a matmul kernel where `model.attention` says so."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = _rate(cfg.attn_dropout, cfg.dropout)
        self.attention = cfg.attention  # auto | sdpa | matmul
        self.qk_norm = cfg.qk_norm

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None,
                is_causal: bool, cache: KVCache | None, layer: int) -> Tensor:
        """x (B, T, C) -> (B, T, C)."""
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        q, k = self.positioned(q, rope), self.positioned(k, rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, S, hs)
        dropout_p = self.dropout if self.training else 0.0
        y = attend(q, k, v, mask, is_causal, dropout_p, self.attention)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)

    def positioned(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        """Queries or keys (B, nh, T, hs) as attention compares them: RMS-normalised per head
        (model.qk_norm), then rotated (RoPE)."""
        if self.qk_norm:
            x = F.rms_norm(x, (x.shape[-1],), eps=QK_NORM_EPS)
        return apply_rotary(x, *rope) if rope is not None else x


class MLP(nn.Module):
    """gelu: proj(gelu(fc(x))), GPT-2's (tanh GELU). swiglu: proj(silu(fc(x)) * gate(x)).
    relu2: proj(relu(fc(x))^2) (So et al. 2021's Primer; the small-GPT speedruns use it)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H = mlp_width(cfg)
        self.fc = nn.Linear(cfg.n_embd, H, bias=cfg.bias)
        self.gate = nn.Linear(cfg.n_embd, H, bias=cfg.bias) if cfg.mlp == "swiglu" else None
        self.proj = nn.Linear(H, cfg.n_embd, bias=cfg.bias)
        self.kind = cfg.mlp

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "relu2":
            return self.proj(F.relu(self.fc(x)).square())
        if self.gate is None:
            return self.proj(F.gelu(self.fc(x), approximate="tanh"))
        return self.proj(F.silu(self.fc(x)) * self.gate(x))


class Block(nn.Module):
    """Pre-LN residual block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(_rate(cfg.resid_dropout, cfg.dropout))

    def forward(self, x: Tensor, rope, mask, is_causal, cache, layer) -> Tensor:
        """x (B, T, C) -> (B, T, C)."""
        x = x + self.drop(self.attn(self.ln1(x), rope, mask, is_causal, cache, layer))
        return x + self.drop(self.mlp(self.ln2(x)))


def _read_index(read: Tensor | None, last_only: bool, targets: Tensor | None, idx: Tensor) -> Tensor | None:
    """The (B, R) positions whose outputs `forward` returns (last_only: T - 1), or None for all
    (also for last_only over one token: a decoding step reads it anyway)."""
    if read is None and not (last_only and idx.shape[1] > 1):
        if last_only and targets is not None:
            raise ValueError("last_only=True gives outputs at the last position; it cannot compute a loss")
        return None
    if targets is not None:
        raise ValueError("last_only=True or read= gives outputs at some positions; it cannot compute a loss")
    if last_only:
        if read is not None:
            raise ValueError("give last_only=True or read=, not both (last_only is read = T - 1)")
        return torch.full((idx.shape[0], 1), idx.shape[1] - 1, dtype=torch.long, device=idx.device)
    if read.dim() != 2 or read.dtype.is_floating_point or read.dtype == torch.bool:
        raise ValueError(f"read must be (B, R) integer positions, got {tuple(read.shape)} {read.dtype}")
    return read


def _rows(x: Tensor, index: Tensor) -> Tensor:
    """x (B, T, ...) at positions index (B, R) -> (B, R, ...)."""
    return x[torch.arange(x.shape[0], device=x.device).unsqueeze(1), index]


def _block_at(block: Block, x: Tensor, index: Tensor, rope, mask: Tensor | None, is_causal: bool) -> Tensor:
    """`_rows(block(x, rope, mask, is_causal, None, 0), index)`, (B, R, C), computed at the R
    positions only: keys and values at every position, queries, residual and MLP at `index`.
    The faster path of `forward(read=)`: a KG query reads 1 position of 3, and this makes its
    whole training step 1.47x faster on UMLS, 1.19x on FB15k-237 (benchmarks/kg_step.py)."""
    attn, (B, T, C) = block.attn, x.shape
    h, w, b = block.ln1(x), attn.qkv.weight, attn.qkv.bias
    k, v = F.linear(h, w[C:], None if b is None else b[C:]).split(C, dim=2)  # each (B, T, C)
    q = F.linear(_rows(h, index), w[:C], None if b is None else b[:C])  # (B, R, C)
    q, k, v = (t.view(B, t.shape[1], attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k, v))
    at = lambda t: _rows(t.expand(B, -1, -1, -1).transpose(1, 2), index).transpose(1, 2)  # noqa: E731  (B, ., T, .) -> R
    q, k = attn.positioned(q, None if rope is None else tuple(at(r) for r in rope)), attn.positioned(k, rope)
    if mask is not None:  # (B|1, 1|nh, T, S)
        mask = at(mask)
    elif is_causal:  # query t sees keys 0..t
        mask = torch.arange(T, device=x.device).view(1, 1, 1, T) <= index.view(B, 1, -1, 1)
    y = attend(q, k, v, mask, False, attn.dropout if attn.training else 0.0, attn.attention)  # (B, nh, R, hs)
    x = _rows(x, index) + block.drop(attn.proj(y.transpose(1, 2).reshape(B, -1, C)))
    return x + block.drop(block.mlp(block.ln2(x)))


# ---------------------------------------------------------------------------- model


class GPT(nn.Module):
    """token embedding + positional encoding + named tables -> blocks -> ln_f -> head.

    forward(idx, targets=None, position_ids=None, attention_mask=None, past_kv=None, last_only=False,
            extra_ids=None, check_ids=True, return_hidden=False, read=None) -> ModelOutput:
    position_ids (B, T): explicit positions; default `offset + arange(T)` where offset
        is the cache length. Derive them from a mask with `position_ids_from_mask`.
    attention_mask (B, T): 1 for real tokens, 0 for padding (keys that are padding are
        never attended to).
    past_kv: a `KVCache`, updated in place; the new tokens attend to everything in it.
    last_only: outputs at the last position only, (B, 1, V) (generation: with a large
        vocabulary the head over a whole prompt is the costliest part of prefill).
    read (B, R) long: outputs at these positions only, (B, R, V) or hidden (B, R, C) (a
        masked-token task reads its MASK). Without a cache the last block runs at those
        positions alone (`_block_at`); the values are the full forward's there.
    extra_ids: table name -> (B, T) ids, one entry per table of `model.tables`.
    check_ids: range-check position and table ids (two host syncs per tensor of ids).
    return_hidden: skip the vocabulary head and return `hidden` (B, T, C) after ln_f, for
        a task's own head; logits and loss are then None.
    """

    def __init__(self, cfg: ModelConfig, heads: dict[str, nn.Module] | None = None):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (the task provides it)")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = build_positional(cfg.positional, cfg.n_embd, cfg.n_head)
        self.tables = nn.ModuleDict({  # named learned tables (turns, speakers, ...) summed into h
            t.name: LearnedPositionalEmbedding(t.rows, cfg.n_embd, t.init, t.init_std, name=t.name,
                                               weight_decay=t.weight_decay) for t in cfg.tables})
        self.drop = nn.Dropout(_rate(cfg.embd_dropout, cfg.dropout))  # on h
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 n_layer)
            if name.endswith("proj.weight"):  # model.zero_init_proj: each block starts as the identity
                nn.init.normal_(p, mean=0.0, std=0.0 if cfg.zero_init_proj else 0.02 / math.sqrt(2 * cfg.n_layer))
        # A task's own output modules (see the module docstring), attached after the init
        # above: they keep the init their task gave them.
        self.heads = nn.ModuleDict(heads or {})

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # The learned tables are not touched here: each has its own configured init.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def learned_tables(self) -> dict[str, LearnedPositionalEmbedding]:
        """Every learned table by name: `pos` (the position table, if learned), then `model.tables`."""
        out = {"pos": self.pos} if isinstance(self.pos, LearnedPositionalEmbedding) else {}
        out.update(self.tables.items())
        return out

    def num_params(self, include_tables: bool = True) -> int:
        """Parameters (tied weights once); include_tables=False leaves out every learned table."""
        n = sum(p.numel() for p in self.parameters())
        if not include_tables:
            n -= sum(t.weight.numel() for t in self.learned_tables().values())
        return n

    @property
    def max_len(self) -> int | None:
        """The longest sequence the positional encoding accepts (None = unbounded)."""
        return self.pos.max_len

    def check_length(self, n: int) -> None:
        """Raise `PositionOutOfRange` unless positions 0..n-1 fit the position table."""
        if isinstance(self.pos, LearnedPositionalEmbedding):
            self.pos.check(None, 0, n)

    def check_ids(self, position_ids: Tensor | None, extra_ids: dict[str, Tensor] | None, T: int) -> None:
        """The range checks `forward` runs (PositionOutOfRange), on their own: the trainer runs
        them on the CPU batch, so the step itself needs no host sync (and torch.compile no
        graph break)."""
        if isinstance(self.pos, LearnedPositionalEmbedding):
            self.pos.check(position_ids, 0, T)
        for name, ids in (extra_ids or {}).items():
            if name in self.tables:
                self.tables[name].check(ids, 0, T)

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(len(self.blocks), capacity)

    def embed(self, idx: Tensor, position_ids: Tensor | None, offset: int,
              extra_ids: dict[str, Tensor] | None, check_ids: bool = True) -> Tensor:
        """h = E[x] + P[pos] + sum over named tables T_name[ids_name], (B, T, C): the one place
        where the sum is formed. Every table range-checks its ids first (unless check_ids is
        False: the caller checked them, as `generate` does once for the whole generation)."""
        T = idx.shape[1]
        x = self.tok_emb(idx)  # (B, T, C)
        pe = self.pos.embed(position_ids, offset, T, check=check_ids)  # (B|1, T, C) or None
        if pe is not None:
            x = x + pe
        extra_ids = extra_ids or {}
        if set(extra_ids) != set(self.tables.keys()):
            raise ValueError(f"extra_ids must hold (B, T) ids for every table of the model "
                             f"({', '.join(self.tables.keys()) or 'none'}); got {', '.join(extra_ids) or 'none'}")
        for name, table in self.tables.items():
            ids = extra_ids[name]
            if ids.dim() != 2 or ids.shape[1] != T or ids.shape[0] not in (1, idx.shape[0]):
                raise ValueError(f"ids of table '{name}' have shape {tuple(ids.shape)}; they must be (B, T) = "
                                 f"{tuple(idx.shape)} like the tokens (or (1, T) for every row)")
            if ids.dtype.is_floating_point or ids.dtype == torch.bool:
                raise ValueError(f"ids of table '{name}' must be integers, got {ids.dtype}")
            x = x + table.embed(ids, 0, T, check=check_ids)  # (B|1, T, C)
        return x

    def forward(self, idx: Tensor, targets: Tensor | None = None, position_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, past_kv: KVCache | None = None,
                last_only: bool = False, extra_ids: dict[str, Tensor] | None = None,
                check_ids: bool = True, return_hidden: bool = False, read: Tensor | None = None) -> ModelOutput:
        """idx (B, T) token ids -> logits (B, T, V) and, given targets (B, T), the loss (arguments:
        see the class docstring)."""
        B, T = idx.shape
        read = _read_index(read, last_only, targets, idx)  # (B, R) or None
        fast = read is not None and past_kv is None and len(self.blocks) > 0  # the last block at `read` only
        offset = past_kv.length if past_kv is not None else 0
        position_ids = self.pos.resolve(position_ids, T, B, past_kv, attention_mask, check_ids)
        x = self.drop(self.embed(idx, position_ids, offset, extra_ids, check_ids))  # (B, T, C)
        positions = position_ids if position_ids is not None else default_position_ids(T, offset, idx.device)
        if past_kv is not None:
            past_kv.record(attention_mask, positions.expand(B, T))
        rope = self.pos.rotary(positions)
        mask, is_causal = self._attention_mask(positions, attention_mask, past_kv, T)
        for i, block in enumerate(self.blocks):
            if fast and i == len(self.blocks) - 1:
                x = _block_at(block, x, read, rope, mask, is_causal)  # (B, R, C)
            else:
                x = block(x, rope, mask, is_causal, past_kv, i)  # (B, T, C)
        if past_kv is not None:
            past_kv.advance(T)
        x = self.ln_f(x if read is None or fast else _rows(x, read))  # (B, T|R, C)
        if return_hidden:
            return ModelOutput(None, None, x)
        logits = self.head(x)  # (B, T|R, V)
        if self.config.logit_softcap:  # bounded logits: c * tanh(logits / c)
            logits = self.config.logit_softcap * torch.tanh(logits / self.config.logit_softcap)
        return ModelOutput(logits, cross_entropy(logits, targets) if targets is not None else None)

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
        self.config.positional.max_len = n - self.pos.offset  # the config counts rows less the offsets

    def crop_positions(self, n: int) -> None:
        self._learned_table().crop(n)
        self.config.positional.max_len = n - self.pos.offset

    def _learned_table(self) -> LearnedPositionalEmbedding:
        if not isinstance(self.pos, LearnedPositionalEmbedding):
            raise ValueError(f"only a learned table can be resized; this model uses '{self.config.positional.kind}'")
        return self.pos

    def generate(self, prompts, max_new_tokens: int, **kwargs) -> list[list[int]]:
        """Sample continuations; see `learnpos.generate.generate`."""
        from learnpos.generate import generate

        return generate(self, prompts, max_new_tokens, **kwargs)
