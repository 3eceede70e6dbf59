"""Positional encodings behind one small interface, plus position-id helpers.

Shape letters used throughout learnpos (model, reference, tests, docs):
    B batch, T sequence length (queries), S key length (cache + new), C = n_embd,
    nh heads, hs = C // nh head size, L = max_len rows of a learned table, V vocab.

Positions enter a Transformer in one of two places:

* absolute encodings add a vector to each token embedding:  h[b,t] = E[x[b,t]] + P[pos[b,t]]
  (`learned`, `sinusoidal`) -> `embed()` returns that vector;
* relative encodings act inside attention (`rope` rotates q and k, `alibi` adds a distance
  bias to the scores) -> `rotary()` / `attn_bias()` return what attention needs.

`none` is the null object: every hook returns None. A model holds exactly one encoding,
chosen by `PositionalConfig.kind` through `build_positional`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from learnpos.config import PositionalConfig
from learnpos.errors import PositionOutOfRange

# ------------------------------------------------------------------ position-id helpers


def default_position_ids(T: int, offset: int = 0, device: torch.device | str | None = None) -> Tensor:
    """`offset + arange(T)` as a (1, T) tensor: broadcasts over the batch without copies."""
    return torch.arange(offset, offset + T, device=device).unsqueeze(0)


def position_ids_from_mask(attention_mask: Tensor, offset: Tensor | int = 0) -> Tensor:
    """Position ids (B, T) for a padded batch, from its attention mask (1 = token, 0 = pad).

    Works for left and right padding alike: the first real token of each row gets
    `offset`, the next `offset + 1`, and so on; pad slots get 0 (with the mask passed to
    the model no real token attends to them, so any in-range value is fine, and 0 always
    is). Give pad slots target -100 as well, or they add loss. `offset` may be a (B,) tensor,
    e.g. the number of real tokens already in a KV cache for each row.
    """
    mask = attention_mask.to(torch.long)
    ids = mask.cumsum(-1) - 1
    if isinstance(offset, Tensor):
        ids = ids + offset.to(ids.device).view(-1, 1)
    else:
        ids = ids + offset
    return ids.masked_fill(mask == 0, 0)


def sinusoid_table(positions: Tensor, dim: int, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """Vaswani et al. (2017) sinusoids: row p = [sin(p w_0), cos(p w_0), sin(p w_1), ...],
    w_i = 10000^(-2i/dim), times `scale`. `positions` (...,) -> (..., dim), computed in
    float64 and returned as `dtype`."""
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device)
                      * (-math.log(10000.0) / dim))
    angles = positions.to(torch.float64).unsqueeze(-1) * freqs  # (..., dim/2)
    table = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # interleave sin, cos
    return (table * scale).to(dtype)


def sinusoid_scale(init_std: float) -> float:
    """Scale that gives sinusoids an element RMS of `init_std`, the scale of the token
    embeddings at init. Raw sinusoids have RMS 1/sqrt(2), ~35x a 0.02 token embedding,
    and would drown the token signal after LayerNorm (Vaswani et al. instead multiply the
    embeddings by sqrt(C)); matching scales keeps the comparison with `learned` fair."""
    return init_std * math.sqrt(2.0)


# ------------------------------------------------------------------------ the interface


class PositionalEncoding(nn.Module):
    """The null encoding (`none`) and the interface every encoding implements.

    Without positions a bidirectional encoder is permutation-equivariant: permuting the
    input permutes the outputs. A causal decoder still sees order through its mask.
    """

    max_len: int | None = None  # positions >= max_len are rejected; None = unbounded

    def embed(self, position_ids: Tensor | None, offset: int, T: int, check: bool = True) -> Tensor | None:
        """Vector added to each token embedding: (B or 1, T, C), or None. `check`: range-check
        the ids first (encodings with a limit)."""
        return None

    plans_positions: bool = False  # True: `resolve` maps the ids through `plan` before they are embedded

    def resolve(self, position_ids: Tensor | None, T: int, batch: int, cache=None,
                attention_mask: Tensor | None = None, check: bool = True) -> Tensor | None:
        """The position ids the model uses for its T new tokens (the one call `GPT.forward`
        makes): `position_ids` as given, unless the encoding plans positions (a randomized
        table), which maps them through `plan`. `cache` (a KVCache or None) gives the offset
        and each row's planned length; a cache nobody planned for is read as its capacity
        less each row's padding."""
        if not self.plans_positions:
            return position_ids
        offset, planned = 0, None
        if cache is not None:
            if cache.planned is None:
                capacity = torch.full((batch,), cache.capacity, dtype=torch.long, device=self.weight.device)
                cache.planned = capacity - ((attention_mask == 0).sum(1) if attention_mask is not None else 0)
            offset, planned = cache.length, cache.planned
        return self.plan(position_ids, offset, T, batch, planned, attention_mask, check)

    def plan(self, position_ids: Tensor | None, offset: int, T: int, batch: int = 1,
             planned: Tensor | None = None, attention_mask: Tensor | None = None, check: bool = True) -> Tensor:
        """The position ids the model uses for the T new tokens of `batch` rows, for encodings
        with `plans_positions` (`resolve` calls nothing otherwise). `planned` (B, 1): each row's
        positions over the whole sequence when it is decoded in pieces (set on the KV cache by
        `generate`); `attention_mask` marks the real tokens of a padded batch."""
        raise NotImplementedError

    def rotary(self, positions: Tensor) -> tuple[Tensor, Tensor] | None:
        """(cos, sin), each (B or 1, 1, T, hs/2), for rotating q and k; or None."""
        return None

    def attn_bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """Additive attention-score bias (B or 1, nh, T, S) from query/key positions; or None."""
        return None


class LearnedPositionalEmbedding(PositionalEncoding):
    """A trainable table P (L, C): h[b,t] = E[x[b,t]] + P[pos[b,t]].  Absolute, learnable.

    Gradient: dL/dP[k] = sum over (b,t) with pos[b,t] = k of dL/dh[b,t]; rows no position
    uses get exactly zero. Past the table (pos >= L) there is nothing to look up, so
    `embed` raises `PositionOutOfRange` before indexing; `extend` grows the table.
    Inits: `normal` (std 0.02, GPT-2), `zeros`, `sinusoidal` (start from the fixed
    sinusoid at the same scale as `normal`, then learn), `randn` (std 1: what many tutorials do; ~50x the token
    embedding scale, it drowns the token signal at the start of training).

    Random offsets (`model.positional.offset = K`, Abacus: McLeish et al. 2024): in training each
    sequence reads rows p + k, k drawn uniformly from 0..K per sequence (torch's global
    generator, like dropout), so a table of max_len + K rows is trained by sequences of at most
    max_len positions, every row reached; evaluation reads rows p (offset 0), so sequences up to
    max_len + K positions read trained rows. The gradient is the plain table's at the shifted
    ids. `max_len` here counts every row; training refuses positions >= max_len - offset.

    The same class serves every named table of `model.tables` (turn, speaker, segment ids):
    `name` says which table an error is about ("position" for the position table) and
    `weight_decay` is the table's own decay policy and `lr_scale` its learning rate as a multiple
    of train.lr, both read by `learnpos.optim.param_groups`.
    """

    def __init__(self, max_len: int, n_embd: int, init: str = "normal", init_std: float = 0.02,
                 name: str = "position", weight_decay: bool = False, lr_scale: float = 1.0, offset: int = 0):
        super().__init__()
        self.max_len = max_len  # rows
        self.offset = offset  # training shifts each sequence by 0..offset rows
        self.init, self.init_std = init, init_std
        self.name, self.weight_decay, self.lr_scale = name, weight_decay, lr_scale
        self.weight = nn.Parameter(torch.empty(max_len, n_embd))  # (L, C)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.copy_(self._init_rows(0, self.max_len))

    def _init_rows(self, start: int, stop: int) -> Tensor:
        C, dev = self.weight.shape[1], self.weight.device
        if self.init == "normal":
            return torch.randn(stop - start, C, device=dev) * self.init_std
        if self.init == "zeros":
            return torch.zeros(stop - start, C, device=dev)
        if self.init == "sinusoidal":
            return sinusoid_table(torch.arange(start, stop, device=dev), C, sinusoid_scale(self.init_std))
        if self.init == "randn":
            return torch.randn(stop - start, C, device=dev)
        raise ValueError(f"unknown init '{self.init}'")

    @property
    def plans_positions(self) -> bool:  # a table with random offsets shifts the ids it is given
        return self.offset > 0

    def plan(self, position_ids: Tensor | None, offset: int, T: int, batch: int = 1,
             planned: Tensor | None = None, attention_mask: Tensor | None = None, check: bool = True) -> Tensor:
        """Random offsets: in training the ids plus k ~ U{0..offset}, one k per sequence; in
        evaluation the ids as given."""
        if check:
            self.check(position_ids, offset, T)
        logical = (position_ids if position_ids is not None
                   else default_position_ids(T, offset, self.weight.device)).long()
        if not self.training:
            return logical
        return logical + self.draw_offsets(max(batch, logical.shape[0]))

    def draw_offsets(self, batch: int) -> Tensor:
        """(B, 1) shifts, each uniform in 0..offset (zeros without offsets)."""
        return torch.randint(0, self.offset + 1, (batch, 1), device=self.weight.device)

    def check(self, position_ids: Tensor | None, offset: int, T: int) -> None:
        """Raise `PositionOutOfRange` if any position is outside 0..max_len-1 (0..max_len-1-offset
        in training with random offsets: the shifted ids must stay in the table)."""
        if position_ids is None:
            lo, hi = offset, offset + T - 1
        else:
            if position_ids.numel() == 0:
                return
            lo, hi = int(position_ids.min()), int(position_ids.max())
        what = "position" if self.name == "position" else f"'{self.name}' table"
        if lo < 0:
            raise PositionOutOfRange(f"{what} ids must be >= 0, got {lo}")
        if hi >= self.max_len and self.name != "position":
            raise PositionOutOfRange(
                f"{self.name} id {hi} is past the learned '{self.name}' table (rows={self.max_len}: ids "
                f"0..{self.max_len - 1}). Give ids in 0..{self.max_len - 1} (e.g. cap or cut the {self.name} ids "
                f"the data produces), or raise model.tables.{self.name}.rows and train again")
        if self.training and self.offset and hi >= self.max_len - self.offset:
            L, K = self.max_len, self.offset
            raise PositionOutOfRange(
                f"position {hi} is too far for training with random offsets: the table has {L} rows and each "
                f"sequence is shifted by up to model.positional.offset={K}, so training positions must be below "
                f"{L - K} (model.positional.max_len). Raise max_len to at least {hi + 1} or shorten the sequences")
        if hi >= self.max_len:
            L = self.max_len
            raise PositionOutOfRange(
                f"position {hi} is past the learned position table (max_len={L}: positions 0..{L - 1}); "
                f"the input needs {hi + 1} positions. Crop the input to at most {L} tokens, grow the table "
                f"with model.extend_positions(n, method='copy-last'|'interpolate'|'init') and fine-tune, "
                f"or use a relative encoding (model.positional.kind=rope or alibi)")

    def embed(self, position_ids: Tensor | None, offset: int, T: int, check: bool = True) -> Tensor:
        if check and not self.plans_positions:  # planned ids are rows: `resolve` checked what it was given
            self.check(position_ids, offset, T)
        if position_ids is None:
            return self.weight[offset:offset + T].unsqueeze(0)  # (1, T, C): a view, broadcast over B
        # F.embedding, not self.weight[ids]: on CPU the backward of advanced indexing adds rows
        # from several threads in a varying order (runs differ in the last bits); embedding's
        # backward is deterministic, so resumed runs stay bit-exact.
        return F.embedding(position_ids, self.weight)  # (B, T, C)

    @torch.no_grad()
    def crop(self, n: int) -> None:
        """Keep rows 0..n-1 (a smaller `max_len`, e.g. before export)."""
        if not 0 < n <= self.max_len:
            raise ValueError(f"crop size must be in 1..{self.max_len}, got {n}")
        self.weight = nn.Parameter(self.weight[:n].clone())
        self.max_len = n

    @torch.no_grad()
    def extend(self, n: int, method: str = "copy-last") -> None:
        """Grow the table to n rows.

        copy-last:   rows L..n-1 repeat the last trained row; rows 0..L-1 unchanged.
        init:        rows L..n-1 freshly drawn from the configured init; rows 0..L-1 unchanged.
        interpolate: resample the whole table linearly along positions so that n rows
                     span the old 0..L-1 range (position interpolation): row 0 and row n-1
                     equal the old first and last rows; the rows in between are new.
        Create the optimizer after resizing: the parameter object is replaced.
        """
        L = self.max_len
        if n < L:
            raise ValueError(f"extend size must be >= max_len={L}, got {n}; use crop() to shrink")
        old = self.weight.detach()
        if method == "copy-last":
            new = torch.cat([old, old[-1:].expand(n - L, -1)])
        elif method == "init":
            new = torch.cat([old, self._init_rows(L, n)])
        elif method == "interpolate":
            x = torch.linspace(0, L - 1, n, dtype=torch.float64, device=old.device)
            lo = x.floor().long().clamp(max=L - 1)
            hi = (lo + 1).clamp(max=L - 1)
            w = (x - lo).to(old.dtype).unsqueeze(1)
            new = old[lo] * (1 - w) + old[hi] * w
        else:
            raise ValueError(f"unknown extend method '{method}'; use copy-last, interpolate or init")
        self.weight = nn.Parameter(new.contiguous())
        self.max_len = n


class RandomizedPositionalEmbedding(LearnedPositionalEmbedding):
    """A learned table trained on randomized positions (Ruoss et al. 2023, "Randomized
    Positional Encodings Boost Length Generalization of Transformers";
    `model.positional.randomize = true`).

    Logical positions p (the default 0..T-1, or explicit ones such as positions that restart
    in every utterance) use other rows of the table of L = max_len rows:
        training:   row S[p], where S[0] < S[1] < ... < S[K-1] is a sorted random subset of
                    0..L-1 drawn for each sequence (K = the batch's largest p + 1; torch's
                    global generator, like dropout, so a resumed run draws the same subsets)
        evaluation: row round(p (L-1) / (K-1)), K = the row's largest p + 1 (over its real
                    tokens where a mask is given; with a KV cache, the largest position
                    `generate` will feed + 1): the sequence spread evenly over the table, and
                    the same rows whether it is run in one pass or decoded in pieces
    With random offsets (`offset` K > 0) training shifts p by k ~ U{0..K} first (row S[p + k]);
    evaluation is unchanged. Order is kept, and every row is trained although training sequences are shorter than the
    table, so a sequence of any length up to L reads trained rows. Logical positions >= L are
    refused as for the plain table. A right-padded batch given without a mask and with default
    ids spreads over its padded length. With default ids there is no host sync; explicit ids
    cost one (the subset size, or each row's K). Resizing is refused: it would move every row
    a spread sequence reads.
    """

    plans_positions = True

    def plan(self, position_ids: Tensor | None, offset: int, T: int, batch: int = 1,
             planned: Tensor | None = None, attention_mask: Tensor | None = None, check: bool = True) -> Tensor:
        dev, L = self.weight.device, self.max_len
        if check:
            self.check(position_ids, offset, T)
        logical = (position_ids if position_ids is not None else default_position_ids(T, offset, dev)).long()
        if self.training:
            B = max(batch, logical.shape[0])
            if self.offset:  # random offsets first: the subset is drawn for the shifted positions
                logical = logical + self.draw_offsets(B)
            K = (offset + T + self.offset if position_ids is None
                 else (int(logical.max()) + 1 if logical.numel() else 1))
            rows = torch.rand(B, L, device=dev).argsort(dim=1)[:, :K].sort(dim=1).values  # (B, K)
            return rows.gather(1, logical.expand(B, -1))
        if planned is not None:
            K = planned.to(dev).view(-1, 1)  # (B, 1), checked by `generate` up front
        elif position_ids is None:
            K = offset + T
        else:
            real = logical if attention_mask is None else logical.masked_fill(attention_mask.to(dev) == 0, 0)
            K = real.amax(dim=1, keepdim=True) + 1  # (B, 1)
        scale = (L - 1) / max(K - 1, 1) if isinstance(K, int) else (L - 1) / (K - 1).clamp(min=1).double()
        return (logical.double() * scale).round().long()

    def extend(self, n: int, method: str = "copy-last") -> None:
        raise ValueError("a randomized table is trained over all its rows and read spread over them; resizing "
                         "would move every row a sequence reads. Train with the max_len you need instead")

    def crop(self, n: int) -> None:
        self.extend(n)


class SinusoidalPositionalEncoding(PositionalEncoding):
    """Fixed sinusoids (Vaswani et al., 2017) added to embeddings, scaled to the token
    embedding init (`sinusoid_scale`). Absolute, not learned.
    Defined for every position, so there is no table limit; beyond the training length the
    vectors exist but the model has not seen them."""

    def __init__(self, n_embd: int, scale: float = 1.0):
        super().__init__()
        self.n_embd, self.scale = n_embd, scale
        self.register_buffer("anchor", torch.empty(0), persistent=False)  # follows .to(device/dtype)

    def embed(self, position_ids: Tensor | None, offset: int, T: int, check: bool = True) -> Tensor:
        if position_ids is None:
            position_ids = default_position_ids(T, offset, device=self.anchor.device)
        return sinusoid_table(position_ids, self.n_embd, self.scale, self.anchor.dtype)  # (B|1, T, C), model dtype


class RotaryPositionalEncoding(PositionalEncoding):
    """RoPE (Su et al., 2021, RoFormer): rotate each (q, k) channel pair by an angle
    proportional to the position, so q.k depends on the position difference. Relative,
    not learned; no table, so any position works (quality past the training length is
    another matter). Half-split pairing: channel i rotates with channel i + hs/2."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rotary(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        angles = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq  # (B|1, T, hs/2)
        return angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)  # (B|1, 1, T, hs/2)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, nh, T, hs) by (cos, sin) (B|1, 1, T, hs/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class ALiBiPositionalEncoding(PositionalEncoding):
    """ALiBi (Press et al., 2022): no position vectors; each head h adds
    -m_h * |i - j| to the score of query i for key j, with fixed geometric slopes m_h.
    Relative, not learned, no table limit."""

    def __init__(self, n_head: int):
        super().__init__()
        self.register_buffer("slopes", self._slopes(n_head), persistent=False)  # (nh,)

    @staticmethod
    def _slopes(n: int) -> Tensor:
        def power_of_2(k: int) -> list[float]:
            start = 2 ** (-8 / k)
            return [start ** (i + 1) for i in range(k)]

        if math.log2(n).is_integer():
            s = power_of_2(n)
        else:  # the paper's recipe: slopes of the closest power of 2, then every other of 2x that
            k = 2 ** math.floor(math.log2(n))
            s = power_of_2(k) + power_of_2(2 * k)[0::2][: n - k]
        return torch.tensor(s, dtype=torch.float32)

    def attn_bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        dist = (q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)).abs().to(torch.float32)  # (B|1, T, S)
        return -self.slopes.view(1, -1, 1, 1) * dist.unsqueeze(1)  # (B|1, nh, T, S)


def build_positional(cfg: PositionalConfig, n_embd: int, n_head: int) -> PositionalEncoding:
    """The registry: one `kind` string -> one encoding."""
    registry = {
        "learned": lambda: (RandomizedPositionalEmbedding if cfg.randomize else LearnedPositionalEmbedding)(
            cfg.max_len + cfg.offset, n_embd, cfg.init, cfg.init_std, weight_decay=cfg.weight_decay,
            lr_scale=cfg.lr_scale, offset=cfg.offset),
        "sinusoidal": lambda: SinusoidalPositionalEncoding(n_embd, sinusoid_scale(cfg.init_std)),
        "rope": lambda: RotaryPositionalEncoding(n_embd // n_head, cfg.rope_base),
        "alibi": lambda: ALiBiPositionalEncoding(n_head),
        "none": lambda: PositionalEncoding(),
    }
    if cfg.kind not in registry:
        raise ValueError(f"unknown positional kind '{cfg.kind}'; known: {', '.join(registry)}")
    return registry[cfg.kind]()
