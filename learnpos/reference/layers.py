"""Layer forward/backward pairs of the model in NumPy float64, one pair per layer.

Shape letters (as in learnpos/positional.py): B batch, T sequence length, C = n_embd,
nh heads, hs = C // nh head size, L rows of the learned position table, V vocab.

Every layer is a pair

    <layer>_forward(inputs..., params...) -> (out, cache)
    <layer>_backward(dout, cache)         -> gradients

where `cache` holds exactly what the backward needs (its fields are named for what they
hold) and `dout` is dL/d(out) with the shape of `out`.

Accumulation semantics: a backward never adds into an existing buffer. It returns fresh
arrays, one per input and parameter, each the gradient through *this use only*. When a
tensor is used twice (the residual stream feeds a branch and the skip connection; the
tied head shares `tok_emb.weight` with the token embedding) the caller adds the
gradients of the uses explicitly, and says so at that line. So calling a backward twice
gives the same result twice, never a doubled one.

Parameter layouts are PyTorch's (so the model's `state_dict` plugs in unchanged):
Linear weight (out, in) with y = x @ W.T + b; Embedding weight (V, C); LayerNorm (C,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from learnpos.errors import PositionOutOfRange

LN_EPS = 1e-5  # nn.LayerNorm's default
IGNORE_INDEX = -100  # targets with this value contribute no loss (as in learnpos.model)
GELU_C = math.sqrt(2.0 / math.pi)  # constants of GPT-2's tanh GELU
GELU_A = 0.044715


# ------------------------------------------------------------------ token embedding


@dataclass
class EmbeddingCache:
    idx: np.ndarray  # (B, T) int: the rows that were looked up
    n_rows: int  # V: rows of the table (the gradient has this many)


def embedding_forward(idx: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, EmbeddingCache]:
    """out[b,t] = weight[idx[b,t]]: (B, T) ids, (V, C) table -> (B, T, C)."""
    return weight[idx], EmbeddingCache(idx=idx, n_rows=weight.shape[0])


def embedding_backward(dout: np.ndarray, cache: EmbeddingCache) -> np.ndarray:
    """dL/dweight (V, C): row v is the sum of dout[b,t] over every (b,t) with idx[b,t] = v.

    `np.add.at` is the unbuffered scatter-add: a row looked up k times gets all k
    contributions (plain fancy-index assignment would keep only the last one).
    Rows never looked up are exactly 0.
    """
    C = dout.shape[-1]
    dweight = np.zeros((cache.n_rows, C))
    np.add.at(dweight, cache.idx.reshape(-1), dout.reshape(-1, C))
    return dweight


# --------------------------------------------------------------- positional encodings


def default_position_ids(T: int, offset: int = 0) -> np.ndarray:
    """`offset + arange(T)` as (1, T): broadcasts over the batch (learnpos.positional's default)."""
    return np.arange(offset, offset + T)[None, :]


def table_gradient(dh: np.ndarray, position_ids: np.ndarray, L: int) -> np.ndarray:
    """The closed-form gradient of a learned position table P (L, C).

    With h[b,t] = E[x[b,t]] + P[pos[b,t]], dh[b,t]/dP[k] is the identity when
    pos[b,t] = k and zero otherwise, so

        dL/dP[k] = sum over (b,t) with pos[b,t] = k of dL/dh[b,t]

    dh: (B, T, C) the full-backward gradient at the embedding sum h.
    position_ids: (B, T) or (1, T) (broadcast over the batch) integer ids in 0..L-1.
    Returns dP (L, C); rows no position uses are exactly 0.0.
    """
    B, T, C = dh.shape
    ids = np.broadcast_to(position_ids, (B, T))
    dP = np.zeros((L, C))
    np.add.at(dP, ids.reshape(-1), dh.reshape(-1, C))  # scatter-add: repeated ids accumulate
    return dP


@dataclass
class LearnedPositionalCache:
    position_ids: np.ndarray  # (B|1, T) the ids that were looked up
    n_rows: int  # L: rows of the table


def learned_positional_forward(weight: np.ndarray, position_ids: np.ndarray | None,
                               T: int) -> tuple[np.ndarray, LearnedPositionalCache]:
    """P[pos]: the vector added to each token embedding, (B|1, T, C) from a (L, C) table.

    position_ids (B, T) or (1, T), or None for 0..T-1. Ids outside 0..L-1 raise
    `PositionOutOfRange` before any lookup (NumPy would silently wrap negative ids).
    """
    L = weight.shape[0]
    ids = default_position_ids(T) if position_ids is None else np.asarray(position_ids)
    if ids.size and (ids.min() < 0 or ids.max() >= L):
        raise PositionOutOfRange(f"position ids must lie in 0..{L - 1} (max_len={L}), "
                                 f"got {ids.min()}..{ids.max()}")
    return weight[ids], LearnedPositionalCache(position_ids=ids, n_rows=L)


def learned_positional_backward(dh: np.ndarray, cache: LearnedPositionalCache) -> np.ndarray:
    """dL/dP (L, C) from dL/dh (B, T, C): exactly `table_gradient`."""
    return table_gradient(dh, cache.position_ids, cache.n_rows)


def sinusoid_table(positions: np.ndarray, C: int, scale: float = 1.0) -> np.ndarray:
    """Fixed sinusoids (Vaswani et al., 2017), the formula of `learnpos.positional.sinusoid_table`:

        row p = scale * [sin(p w_0), cos(p w_0), sin(p w_1), cos(p w_1), ...],  w_i = 10000^(-2i/C)

    positions (...,) -> (..., C) float64 (the PyTorch version returns the model's dtype).
    """
    freqs = np.exp(np.arange(0, C, 2, dtype=np.float64) * (-math.log(10000.0) / C))  # (C/2,)
    angles = np.asarray(positions, dtype=np.float64)[..., None] * freqs  # (..., C/2)
    table = np.stack([np.sin(angles), np.cos(angles)], axis=-1).reshape(*angles.shape[:-1], C)
    return table * scale


def sinusoid_scale(init_std: float) -> float:
    """Element RMS `init_std` for the sinusoids (as `learnpos.positional.sinusoid_scale`)."""
    return init_std * math.sqrt(2.0)


# ------------------------------------------------------------------------ layer norm


@dataclass
class LayerNormCache:
    xhat: np.ndarray  # (..., C) the normalised input (x - mean) * rstd
    rstd: np.ndarray  # (..., 1) 1 / sqrt(var + eps), biased variance as in nn.LayerNorm
    weight: np.ndarray  # (C,) the gain
    has_bias: bool


def layernorm_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                      eps: float = LN_EPS) -> tuple[np.ndarray, LayerNormCache]:
    """y = (x - mean) / sqrt(var + eps) * weight (+ bias), over the last axis C."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # biased (divide by C), as PyTorch
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd
    y = xhat * weight if bias is None else xhat * weight + bias
    return y, LayerNormCache(xhat=xhat, rstd=rstd, weight=weight, has_bias=bias is not None)


def layernorm_backward(dout: np.ndarray, cache: LayerNormCache
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """-> (dx, dweight, dbias); dbias is None without a bias.

    With g = dout * weight, the gradient through the normalisation is
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    (the two means remove the components that the mean and variance absorb).
    """
    C = dout.shape[-1]
    dweight = (dout * cache.xhat).reshape(-1, C).sum(0)
    dbias = dout.reshape(-1, C).sum(0) if cache.has_bias else None
    g = dout * cache.weight
    dx = cache.rstd * (g - g.mean(-1, keepdims=True) - cache.xhat * (g * cache.xhat).mean(-1, keepdims=True))
    return dx, dweight, dbias


# ---------------------------------------------------------------------------- linear


@dataclass
class LinearCache:
    x: np.ndarray  # (..., in) the input
    weight: np.ndarray  # (out, in)
    has_bias: bool


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None
                   ) -> tuple[np.ndarray, LinearCache]:
    """y = x @ W.T (+ b): x (..., in), W (out, in) in PyTorch's layout -> (..., out)."""
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y, LinearCache(x=x, weight=weight, has_bias=bias is not None)


def linear_backward(dout: np.ndarray, cache: LinearCache
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """-> (dx, dweight, dbias): dx = dout @ W, dW = sum over rows of dout^T x, db = sum of dout."""
    n_out, n_in = cache.weight.shape
    dout2 = dout.reshape(-1, n_out)  # (N, out), N = every leading index flattened
    x2 = cache.x.reshape(-1, n_in)  # (N, in)
    dx = dout @ cache.weight
    dweight = dout2.T @ x2
    dbias = dout2.sum(0) if cache.has_bias else None
    return dx, dweight, dbias


# ------------------------------------------------------------------------------ GELU


@dataclass
class GeluCache:
    x: np.ndarray  # the input
    tanh: np.ndarray  # tanh(GELU_C * (x + GELU_A x^3)), reused by the derivative


def gelu_forward(x: np.ndarray) -> tuple[np.ndarray, GeluCache]:
    """GPT-2's tanh approximation, F.gelu(x, approximate="tanh"):
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    t = np.tanh(GELU_C * (x + GELU_A * x ** 3))
    return 0.5 * x * (1.0 + t), GeluCache(x=x, tanh=t)


def gelu_backward(dout: np.ndarray, cache: GeluCache) -> np.ndarray:
    """d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""
    x, t = cache.x, cache.tanh
    local = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x)
    return dout * local


@dataclass
class SwigluCache:
    a: np.ndarray  # the gated input, fc(x)
    b: np.ndarray  # the gate, gate(x)
    sigmoid: np.ndarray  # sigma(a), reused by the derivative


def swiglu_forward(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, SwigluCache]:
    """silu(a) * b, silu(a) = a sigma(a): the product inside model.mlp = "swiglu"."""
    s = 1.0 / (1.0 + np.exp(-a))
    return a * s * b, SwigluCache(a=a, b=b, sigmoid=s)


def swiglu_backward(dout: np.ndarray, cache: SwigluCache) -> tuple[np.ndarray, np.ndarray]:
    """(dL/da, dL/db): d silu/da = sigma(a) (1 + a (1 - sigma(a))), times b; d/db = silu(a)."""
    a, b, s = cache.a, cache.b, cache.sigmoid
    return dout * b * s * (1.0 + a * (1.0 - s)), dout * a * s


@dataclass
class Relu2Cache:
    relu: np.ndarray  # max(a, 0)


def relu2_forward(a: np.ndarray) -> tuple[np.ndarray, Relu2Cache]:
    """relu(a)^2: the activation of model.mlp = "relu2"."""
    r = np.maximum(a, 0.0)
    return r * r, Relu2Cache(relu=r)


def relu2_backward(dout: np.ndarray, cache: Relu2Cache) -> np.ndarray:
    """d relu(a)^2 / da = 2 relu(a) (0 where a <= 0)."""
    return dout * 2.0 * cache.relu


# --------------------------------------------------------------- RMS norm, soft-cap


QK_NORM_EPS = 1e-6  # learnpos.model.QK_NORM_EPS, restated so the reference stands on its own


@dataclass
class RmsNormCache:
    y: np.ndarray  # the output x * r
    r: np.ndarray  # 1 / sqrt(mean(x^2) + eps), over the last axis (keepdims)


def rms_norm_forward(x: np.ndarray, eps: float = QK_NORM_EPS) -> tuple[np.ndarray, RmsNormCache]:
    """x / sqrt(mean(x^2) + eps) over the last axis, no gain: F.rms_norm without a weight
    (model.qk_norm applies it to each head's queries and keys)."""
    r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    y = x * r
    return y, RmsNormCache(y=y, r=r)


def rms_norm_backward(dout: np.ndarray, cache: RmsNormCache) -> np.ndarray:
    """dx = r (dy - y mean(dy y)): the scale r depends on x through mean(x^2)."""
    return cache.r * (dout - cache.y * (dout * cache.y).mean(-1, keepdims=True))


def softcap_forward(z: np.ndarray, cap: float) -> tuple[np.ndarray, np.ndarray]:
    """cap * tanh(z / cap) (model.logit_softcap): logits bounded by +-cap; returns (out, tanh)."""
    t = np.tanh(z / cap)
    return cap * t, t


def softcap_backward(dout: np.ndarray, tanh: np.ndarray) -> np.ndarray:
    """d cap tanh(z / cap) / dz = 1 - tanh^2."""
    return dout * (1.0 - tanh * tanh)


# -------------------------------------------------------------------------- residual


def residual_forward(x: np.ndarray, branch: np.ndarray) -> tuple[np.ndarray, None]:
    """x + branch(x): the residual stream (no cache needed: addition's derivative is 1)."""
    return x + branch, None


def residual_backward(dout: np.ndarray, cache: None) -> tuple[np.ndarray, np.ndarray]:
    """-> (dx_skip, dbranch), both equal to dout. The caller adds dx_skip to the gradient
    that comes back through the branch: x was used twice, so its gradient is the sum."""
    return dout, dout


# ------------------------------------------------------------------ self-attention


def attention_allowed(T: int, causal: bool, attention_mask: np.ndarray | None) -> np.ndarray | None:
    """Which key each query may attend to, as `GPT._attention_mask` decides without a cache.

    Returns None when every query sees every key (bidirectional, no padding), else a bool
    (B|1, 1, T, T) array, True = may attend:
      causal: key s <= query t;
      attention_mask (B, T), 1 = token, 0 = pad: keys that are padding are excluded, and
      then every query may always attend to itself, so no softmax row is empty (a pad
      query's output is unused anyway).
    """
    if attention_mask is None and not causal:
        return None
    query = np.arange(T)[:, None]  # (T, 1)
    key = np.arange(T)[None, :]  # (1, T)
    allowed = key <= query if causal else np.ones((T, T), dtype=bool)
    allowed = allowed[None, None]  # (1, 1, T, T)
    if attention_mask is not None:
        is_token = np.asarray(attention_mask).astype(bool)[:, None, None, :]  # (B, 1, 1, T) over keys
        allowed = (allowed & is_token) | (key == query)[None, None]
    return allowed


@dataclass
class AttentionCache:
    qkv: LinearCache  # the fused q, k, v projection
    q: np.ndarray  # (B, nh, T, hs)
    k: np.ndarray  # (B, nh, T, hs)
    v: np.ndarray  # (B, nh, T, hs)
    probs: np.ndarray  # (B, nh, T, T) softmax attention weights (0 where masked)
    proj: LinearCache  # the output projection
    scale: float  # 1 / sqrt(hs)
    qk_norm: tuple[RmsNormCache, RmsNormCache] | None = None  # (q, k) with model.qk_norm


def attention_forward(x: np.ndarray, qkv_weight: np.ndarray, qkv_bias: np.ndarray | None,
                      proj_weight: np.ndarray, proj_bias: np.ndarray | None, n_head: int,
                      allowed: np.ndarray | None, qk_norm: bool = False) -> tuple[np.ndarray, AttentionCache]:
    """Multi-head self-attention exactly as `learnpos.model.SelfAttention` (no cache):

    qkv = x @ Wqkv.T + b (Wqkv (3C, C), split in the order q, k, v); each head
    softmax(q k^T / sqrt(hs), masked to `allowed`) v; heads concatenated; output projection.
    x (B, T, C) -> (B, T, C). `allowed` from `attention_allowed` (None = no mask). qk_norm:
    q and k RMS-normalised per head first (`rms_norm_forward`).
    """
    B, T, C = x.shape
    nh, hs = n_head, C // n_head
    qkv, qkv_cache = linear_forward(x, qkv_weight, qkv_bias)  # (B, T, 3C)
    q, k, v = np.split(qkv, 3, axis=2)  # each (B, T, C)
    q = q.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
    k = k.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
    v = v.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
    norms = None
    if qk_norm:
        (q, q_norm), (k, k_norm) = rms_norm_forward(q), rms_norm_forward(k)
        norms = (q_norm, k_norm)
    scale = 1.0 / math.sqrt(hs)
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale  # (B, nh, T, T)
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)  # stable softmax (every row has its diagonal)
    probs = np.exp(scores)  # exp(-inf) = 0 for masked keys
    probs = probs / probs.sum(-1, keepdims=True)
    y = probs @ v  # (B, nh, T, hs)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C): heads side by side
    out, proj_cache = linear_forward(y, proj_weight, proj_bias)  # (B, T, C)
    return out, AttentionCache(qkv=qkv_cache, q=q, k=k, v=v, probs=probs, proj=proj_cache, scale=scale,
                               qk_norm=norms)


def attention_backward(dout: np.ndarray, cache: AttentionCache) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """-> (dx, grads) with grads keyed like the module's state_dict: 'qkv.weight', 'qkv.bias',
    'proj.weight', 'proj.bias' (the bias keys only when the layer has biases)."""
    B, nh, T, hs = cache.q.shape
    C = nh * hs
    dy, d_proj_w, d_proj_b = linear_backward(dout, cache.proj)  # (B, T, C)
    dy = dy.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
    dprobs = dy @ cache.v.transpose(0, 1, 3, 2)  # (B, nh, T, T)
    dv = cache.probs.transpose(0, 1, 3, 2) @ dy  # (B, nh, T, hs)
    # softmax backward, row-wise: ds = p * (dp - sum(dp * p)); masked entries have p = 0
    dscores = cache.probs * (dprobs - (dprobs * cache.probs).sum(-1, keepdims=True))
    dq = (dscores @ cache.k) * cache.scale  # (B, nh, T, hs)
    dk = (dscores.transpose(0, 1, 3, 2) @ cache.q) * cache.scale  # (B, nh, T, hs)
    if cache.qk_norm is not None:  # back through the per-head RMS norms
        dq, dk = rms_norm_backward(dq, cache.qk_norm[0]), rms_norm_backward(dk, cache.qk_norm[1])
    dq, dk, dv = (d.transpose(0, 2, 1, 3).reshape(B, T, C) for d in (dq, dk, dv))  # each (B, T, C)
    dqkv = np.concatenate([dq, dk, dv], axis=2)  # (B, T, 3C), the order of the split
    dx, d_qkv_w, d_qkv_b = linear_backward(dqkv, cache.qkv)
    grads = {"qkv.weight": d_qkv_w, "proj.weight": d_proj_w}
    if d_qkv_b is not None:
        grads["qkv.bias"] = d_qkv_b
    if d_proj_b is not None:
        grads["proj.bias"] = d_proj_b
    return dx, grads


# ------------------------------------------------------------ softmax cross-entropy


@dataclass
class CrossEntropyCache:
    probs: np.ndarray  # (B, T, V) softmax of the logits
    targets: np.ndarray  # (B, T) int, IGNORE_INDEX where there is no loss
    counted: np.ndarray  # (B, T) bool: targets != IGNORE_INDEX
    n_counted: int  # how many targets the mean runs over


def cross_entropy_forward(logits: np.ndarray, targets: np.ndarray,
                          ignore_index: int = IGNORE_INDEX) -> tuple[float, CrossEntropyCache]:
    """Fused softmax + cross-entropy, the mean over targets != ignore_index
    (F.cross_entropy's default reduction). logits (B, T, V), targets (B, T) -> scalar.
    With no counted target the loss is nan and its gradient 0, as in PyTorch."""
    shifted = logits - logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(-1, keepdims=True))
    logp = shifted - log_z  # (B, T, V) log-softmax
    counted = targets != ignore_index
    safe_targets = np.where(counted, targets, 0)  # any valid index; these terms are dropped
    picked = np.take_along_axis(logp, safe_targets[..., None], axis=-1)[..., 0]  # (B, T)
    n = int(counted.sum())
    loss = float(-(picked * counted).sum() / n) if n else math.nan
    return loss, CrossEntropyCache(probs=np.exp(logp), targets=safe_targets, counted=counted, n_counted=n)


def cross_entropy_backward(dloss: float, cache: CrossEntropyCache) -> np.ndarray:
    """dL/dlogits (B, T, V) = dloss * (softmax - onehot(target)) / n on counted rows, 0 elsewhere."""
    onehot = np.zeros_like(cache.probs)
    np.put_along_axis(onehot, cache.targets[..., None], 1.0, axis=-1)
    per_target = dloss / cache.n_counted if cache.n_counted else 0.0  # no targets: zero gradient, as PyTorch
    return (cache.probs - onehot) * (cache.counted[..., None] * per_target)
