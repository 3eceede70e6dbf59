"""Special attention kernels, chosen by `model.attention` (`ModelConfig.attention`).

Everything here computes softmax(q k^T / sqrt(hs) + mask) v, the function that
`F.scaled_dot_product_attention` (SDPA) computes. It exists for one case where SDPA is slow:
training in bf16 on CPU, where a plain kernel of batched matmuls (`matmul_attention`) is much
faster at short keys. `attend` is what the model calls; `mode` is the config setting:

    sdpa    always SDPA
    matmul  `matmul_attention` wherever it applies (no dropout, not under torch.compile, a mask
            that needs no gradient, q, k, v of one dtype) on any device and in any dtype, so it
            can be checked in float64 against SDPA; SDPA where it does not apply
    auto    `matmul_attention` only where it was measured faster (`use_matmul`), SDPA elsewhere

This module holds no state: MAX_KEYS and QUERY_BLOCK are constants that nothing changes, the
block size is an argument of `matmul_attention`, and the causal bias is built on every call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("auto", "sdpa", "matmul")

# PyTorch's CPU flash-attention kernel is slow to train in bf16: its backward has a large
# fixed cost per (batch, head, block). With short keys, plain attention (batched matmuls
# around a softmax, which AMX/AVX-512 run well) with a hand-written backward is much faster,
# and causal attention skips the key blocks no query in a block may see. benchmarks/attention.py
# prints the comparison (one layer fwd+bwd in bf16, 6 heads of 64); its last saved run is in
# docs/performance.md. The 256-key limit of `auto` was set on a 2-core Xeon with AMX, where the
# kernel lost to SDPA at 1024 keys; it also bounds the saved probabilities (B nh T S) that SDPA
# does not keep.
MAX_KEYS = 256
# Rows per query block. At <= 256 keys 64-row blocks and one block measured even (slicing makes
# bmm copy its operands and dk/dv are summed, which eats the skipped work); from 512 keys blocks
# win. Blocks also keep 37.5% fewer probabilities at T = 256.
QUERY_BLOCK = 64


def use_matmul(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, mode: str) -> bool:
    """Whether `attend` takes `matmul_attention` (True) or SDPA (False) under `mode`.

    The kernel applies with q, k, v of one dtype, no dropout, a constant mask, and outside
    torch.compile (the compiler brings its own kernels and does not trace the kernel's in-place
    layout). `auto` takes it only for backward-bound CPU bf16 attention (gradients wanted)
    with at most MAX_KEYS keys, where benchmarks/attention.py measured it faster."""
    if mode not in MODES:
        raise ValueError(f"attention mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "sdpa":
        return False
    applies = (q.dtype == k.dtype == v.dtype and dropout_p == 0.0 and not torch.compiler.is_compiling()
               and (mask is None or not mask.requires_grad))
    if mode == "matmul":
        return applies
    return (applies and q.dtype == torch.bfloat16 and q.device.type == "cpu" and q.requires_grad
            and k.shape[-2] <= MAX_KEYS)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, dropout_p: float,
           mode: str) -> Tensor:
    """Attention of q (B, nh, T, hs) over k, v (B, nh, S, hs) -> (B, nh, T, hs), by the kernel
    `use_matmul` picks for `mode`. mask: None, bool (True = may attend) or additive float,
    broadcastable to (B, nh, T, S), as SDPA's attn_mask. is_causal needs T == S (the only case
    where SDPA's top-left and the matmul kernel's bottom-right alignment agree)."""
    if is_causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"is_causal needs as many queries as keys, got {q.shape[-2]} and {k.shape[-2]}")
    if use_matmul(q, k, v, mask, dropout_p, mode):
        return matmul_attention(q, k, v, mask, is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)


def matmul_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False,
                     query_block: int = QUERY_BLOCK) -> Tensor:
    """softmax(q k^T / sqrt(hs) + mask) v by `_MatmulAttention`, in blocks of `query_block`
    queries when causal (a block larger than T is one block)."""
    return _MatmulAttention.apply(q, k, v, mask, is_causal, query_block)


def _causal_bias(T: int, S: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(T, S) additive mask: -inf where query t (at slot S - T + t) must not see key s > S - T + t.
    Built on every call (no cache, so no module state): one small comparison next to the
    block's matmuls."""
    slot = torch.arange(S - T, S, device=device).view(T, 1)  # each query's own slot
    return torch.zeros(T, S, dtype=dtype, device=device).masked_fill_(torch.arange(S, device=device) > slot,
                                                                        float("-inf"))


def _blocks(T: int, S: int, is_causal: bool, query_block: int) -> list[tuple[int, int, int]]:
    """(first query, end query, end key) per block: with a causal mask the queries a..b-1 see
    keys 0..b-1 + (S - T) only; without one, a single block sees every key."""
    if not is_causal:
        return [(0, T, S)]
    return [(a, min(a + query_block, T), min(a + query_block, T) + S - T) for a in range(0, T, query_block)]


class _MatmulAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(hs) + mask) v as batched matmuls, backward by hand.

    Per block of queries (rows a..b-1) and the keys they may see (0..e-1):
        s = (scale q) k^T + causal bias; p = softmax(s); y = p v.  saves scale q, k, v, y, every p
    Backward, dy -> dq, dk, dv (the formulas of `learnpos.reference.layers.attention_backward`):
        dv += p^T dy; dp = dy v^T; ds = p * (dp - rowsum(dp * p)); dq = scale ds k; dk += scale ds^T q
    The softmax backward is spelled out, in two steps that touch (T, S) tensors once each:
    rowsum(dp * p)_t = sum_s p_ts (dy_t . v_s) = dy_t . y_t, one pass over dy and y ((T, hs) per
    head, as FlashAttention takes it) instead of over dp and p; then one baddbmm gives dp - rowsum
    and one in-place multiply by p gives ds. This costs more than torch's fused private softmax
    backward, which it replaced, by a fixed ~0.3 ms per layer call: +4% at 256 keys, +7% at 128,
    +10% at 64, fwd+bwd of one layer (benchmark shapes, 2-core AMD EPYC, allocator page faults
    taken out; with them the run-to-run spread is larger than this). Measured slower: the row
    sum over dp * p (+5%, and up to +27% at 256 keys in one block, as with a mask), or
    dp - rowsum and the product on fp32 copies of the block (+10-25%).
    q, k, v are (B, nh, T|S, hs) of one dtype; mask is None, bool (True = may attend) or
    additive float, broadcastable to (B, nh, T, S). is_causal puts the T queries at the last T of
    the S key slots (query t sees keys 0..S-T+t, as after a KV cache), unlike SDPA's top-left
    alignment when T != S; `attend` passes is_causal only with T == S, where the two agree.

    Precision, for bf16 inputs: the matmuls accumulate in fp32 and round their products (s, y,
    dp, dq) to bf16; the softmax reads bf16 and computes in fp32; the row sum dy . y accumulates
    in fp32 and is rounded to bf16 once, and dp - rowsum and the product with p are bf16 in place;
    dk, dv are summed over blocks in fp32. Wider dtypes keep their own precision throughout
    (float64 is float64 everywhere).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool,
                query_block: int) -> Tensor:
        B, nh, T, hs = q.shape
        S = k.shape[-2]
        scale = 1.0 / math.sqrt(hs)
        qs = torch.empty(B * nh, T, hs, dtype=q.dtype, device=q.device)
        torch.mul(q, scale, out=qs.view(B, nh, T, hs))  # scale * q, contiguous: one pass over q
        k3, v3 = (t.reshape(B * nh, S, hs) for t in (k, v))  # (B nh, S, hs), contiguous
        blocks = _blocks(T, S, is_causal, query_block)
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
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)  # (B nh, T, hs)
        ctx.save_for_backward(qs, k3, v3, y, *ps)
        ctx.scale, ctx.blocks, ctx.q_shape, ctx.k_shape = scale, blocks, q.shape, k.shape
        return y.view(B, nh, T, hs)

    @staticmethod
    def backward(ctx, dy: Tensor):
        qs, k3, v3, y, *ps = ctx.saved_tensors
        acc = torch.promote_types(k3.dtype, torch.float32)  # accumulation dtype: fp32 for bf16
        dy = dy.reshape(qs.shape).to(v3.dtype)
        # rowsum(dp * p) of every query row, as dy . y (see the class docstring): (B nh, T, 1)
        rowsum = (dy * y).sum(-1, keepdim=True, dtype=acc).to(dy.dtype)
        dq = torch.empty_like(qs)
        dk = torch.zeros(k3.shape, dtype=acc, device=k3.device)
        dv = torch.zeros(v3.shape, dtype=acc, device=v3.device)
        for (a, b, e), p in zip(ctx.blocks, ps, strict=True):
            dy_blk = dy[:, a:b]
            dv[:, :e] += torch.bmm(p.transpose(1, 2), dy_blk)
            # dp - rowsum = dy v^T - rowsum in one matmul (baddbmm: beta * input + batch1 batch2)
            dp = torch.baddbmm(rowsum[:, a:b].expand(-1, -1, e), dy_blk, v3[:, :e].transpose(1, 2), beta=-1)
            ds = dp.mul_(p)  # (B nh, b - a, e): the softmax backward p * (dp - rowsum), in place
            dq[:, a:b] = torch.bmm(ds, k3[:, :e]).mul_(ctx.scale)
            dk[:, :e] += torch.bmm(ds.transpose(1, 2), qs[:, a:b])  # qs carries the scale
        return (dq.view(ctx.q_shape), dk.to(k3.dtype).view(ctx.k_shape), dv.to(v3.dtype).view(ctx.k_shape),
                None, None, None)
