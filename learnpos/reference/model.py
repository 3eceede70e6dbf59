"""The whole model in NumPy float64: `forward` composes the layers of `layers.py` in the
order of `learnpos.model.GPT.forward`; `backward` is that forward read in reverse.

    h = E[x] + P[pos] + sum_n T_n[ids_n]       (token embedding + positions + named tables)
    n_layer x:  x = x + attn(ln1(x));  x = x + mlp(ln2(x))      mlp = proj(gelu(fc(.)))
                                                                 or proj(silu(fc(.)) * gate(.)) (swiglu)
                                                                 or proj(relu(fc(.))^2) (relu2)
                attn with qk_norm: each head's q and k RMS-normalised first
    logits = ln_f(x) @ W_head.T                (W_head = E when the head is tied)
             (with logit_softcap c: c tanh(logits / c))
    loss = mean cross-entropy over targets != -100

Parameters are a dict keyed by the PyTorch model's `state_dict()` names, in its layouts,
as float64 arrays (`tok_emb.weight` (V, C), `pos.weight` (L, C), `blocks.0.attn.qkv.weight`
(3C, C), ...). Gradients come back keyed like `model.named_parameters()`: a tied head
has no `head.weight` entry, its gradient is part of `tok_emb.weight`'s.

`cfg` is a `learnpos.config.ModelConfig`, read by attribute only (n_layer, n_head, n_embd,
vocab_size, bias, tie_weights, causal, positional.kind/max_len/init_std, tables[i].name/rows;
mlp and mlp_hidden where it has them, else GPT-2's gelu MLP, 4C wide).
Every named table `tables.<name>.weight` (rows, C) is a learned table like P, looked up by
its own ids and differentiated by the same closed form (`table_gradient`). Positional
kinds: learned, sinusoidal, none. Dropout is not modelled: the reference equals the model
in `eval()` mode (or with dropout 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from learnpos.reference.layers import (
    AttentionCache,
    CrossEntropyCache,
    EmbeddingCache,
    GeluCache,
    LayerNormCache,
    LearnedPositionalCache,
    LinearCache,
    Relu2Cache,
    SwigluCache,
    attention_allowed,
    attention_backward,
    attention_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    default_position_ids,
    embedding_backward,
    embedding_forward,
    gelu_backward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
    learned_positional_backward,
    learned_positional_forward,
    linear_backward,
    linear_forward,
    relu2_backward,
    relu2_forward,
    residual_backward,
    residual_forward,
    sinusoid_scale,
    sinusoid_table,
    softcap_backward,
    softcap_forward,
    swiglu_backward,
    swiglu_forward,
)

SUPPORTED_KINDS = ("learned", "sinusoidal", "none")


def mlp_kind(cfg) -> tuple[str, int]:
    """(model.mlp, the MLP's inner width H): mlp_hidden, else 4C for gelu, relu2 and 8C // 3 for swiglu
    (`learnpos.config.mlp_width`, restated here so the reference stands on its own)."""
    kind, hidden = getattr(cfg, "mlp", "gelu"), getattr(cfg, "mlp_hidden", 0)
    if kind not in ("gelu", "swiglu", "relu2"):
        raise NotImplementedError(f"the NumPy reference covers model.mlp gelu, swiglu and relu2, not '{kind}'")
    return kind, hidden or (8 * cfg.n_embd // 3 if kind == "swiglu" else 4 * cfg.n_embd)


def parameter_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Every `state_dict` name the reference reads for `cfg`, with its shape, in the model's order.
    A tied head still lists `head.weight` (the state_dict holds it under both names)."""
    (kind, H), C, V = mlp_kind(cfg), cfg.n_embd, cfg.vocab_size
    L = cfg.positional.max_len + getattr(cfg.positional, "offset", 0)  # rows: random offsets add some
    shapes: dict[str, tuple[int, ...]] = {"tok_emb.weight": (V, C)}
    if cfg.positional.kind == "learned":
        shapes["pos.weight"] = (L, C)
    for table in getattr(cfg, "tables", []):
        shapes[f"tables.{table.name}.weight"] = (table.rows, C)
    layers = {"ln1.weight": (C,), "ln1.bias": (C,), "attn.qkv.weight": (3 * C, C), "attn.qkv.bias": (3 * C,),
              "attn.proj.weight": (C, C), "attn.proj.bias": (C,), "ln2.weight": (C,), "ln2.bias": (C,),
              "mlp.fc.weight": (H, C), "mlp.fc.bias": (H,)}
    if kind == "swiglu":
        layers |= {"mlp.gate.weight": (H, C), "mlp.gate.bias": (H,)}
    layers |= {"mlp.proj.weight": (C, H), "mlp.proj.bias": (C,)}
    for i in range(cfg.n_layer):
        for name, shape in layers.items():
            if cfg.bias or not name.endswith(".bias"):
                shapes[f"blocks.{i}.{name}"] = shape
    shapes["ln_f.weight"] = (C,)
    if cfg.bias:
        shapes["ln_f.bias"] = (C,)
    shapes["head.weight"] = (V, C)
    return shapes


def trainable_names(cfg) -> list[str]:
    """The names `backward` returns gradients for (`named_parameters()` order: a tied head once)."""
    return [n for n in parameter_shapes(cfg) if not (n == "head.weight" and cfg.tie_weights)]


def check_params(params: dict[str, np.ndarray], cfg) -> None:
    """Raise ValueError unless `params` holds every expected name with its expected shape
    (and, for a tied head, a `head.weight` equal to `tok_emb.weight` if it is given)."""
    expected = parameter_shapes(cfg)
    optional = {"head.weight"} if cfg.tie_weights else set()
    missing = [n for n in expected if n not in params and n not in optional]
    unexpected = [n for n in params if n not in expected]
    if missing or unexpected:
        raise ValueError(f"parameters do not match the config: missing {missing}, unexpected {unexpected}")
    for name, array in params.items():
        if tuple(array.shape) != expected[name]:
            raise ValueError(f"{name} has shape {tuple(array.shape)}, the config needs {expected[name]}")
    if cfg.tie_weights and "head.weight" in params and not np.array_equal(params["head.weight"],
                                                                          params["tok_emb.weight"]):
        raise ValueError("tie_weights=True but head.weight differs from tok_emb.weight; share one array "
                         "under both names (or leave head.weight out)")


@dataclass
class BlockCache:
    ln1: LayerNormCache
    attn: AttentionCache
    ln2: LayerNormCache
    fc: LinearCache  # mlp.fc
    gate: LinearCache | None  # mlp.gate (swiglu only)
    act: GeluCache | SwigluCache | Relu2Cache  # gelu(fc), silu(fc) * gate or relu(fc)^2
    mlp_proj: LinearCache  # mlp.proj


@dataclass
class ModelCache:
    tok_emb: EmbeddingCache
    pos: LearnedPositionalCache | None  # None unless the table is learned
    tables: dict[str, LearnedPositionalCache]  # the named tables, by name
    blocks: list[BlockCache]
    ln_f: LayerNormCache
    head: LinearCache
    loss: CrossEntropyCache | None  # None when forward ran without targets
    tied: bool  # the head is tok_emb.weight
    names: list[str]  # the gradient names, in `named_parameters()` order
    softcap: np.ndarray | None = None  # tanh(logits / cap) with model.logit_softcap


def forward(params: dict[str, np.ndarray], idx: np.ndarray, targets: np.ndarray | None, cfg,
            position_ids: np.ndarray | None = None, attention_mask: np.ndarray | None = None,
            extra_ids: dict[str, np.ndarray] | None = None) -> tuple[float | None, np.ndarray, ModelCache]:
    """idx (B, T) token ids -> (loss, logits (B, T, V), cache), as `GPT.forward` without a KV cache.

    targets (B, T) or None (then loss is None; backprop from a `dlogits` of your choice).
    position_ids (B, T) or (1, T); None = 0..T-1. attention_mask (B, T), 1 = token, 0 = pad.
    extra_ids: table name -> (B, T) ids, one entry per table of `cfg.tables`.
    """
    kind = cfg.positional.kind
    if kind not in SUPPORTED_KINDS:
        raise NotImplementedError(
            f"the NumPy reference covers positional kinds {', '.join(SUPPORTED_KINDS)}, not '{kind}' "
            f"(rope and alibi act inside attention and have no reference backward yet)")
    check_params(params, cfg)
    idx = np.asarray(idx)
    B, T = idx.shape
    bias = (lambda name: params[name]) if cfg.bias else (lambda name: None)

    x, tok_cache = embedding_forward(idx, params["tok_emb.weight"])  # (B, T, C)
    pos_cache = None
    if kind == "learned":
        pe, pos_cache = learned_positional_forward(params["pos.weight"], position_ids, T)  # (B|1, T, C)
        x = x + pe  # h = E[x] + P[pos]
    elif kind == "sinusoidal":
        ids = default_position_ids(T) if position_ids is None else np.asarray(position_ids)
        x = x + sinusoid_table(ids, cfg.n_embd, sinusoid_scale(cfg.positional.init_std))  # fixed: no gradient
    table_caches = {}
    extra_ids = extra_ids or {}
    names = [table.name for table in getattr(cfg, "tables", [])]
    if set(extra_ids) != set(names):
        raise ValueError(f"extra_ids must hold one (B, T) array per table {names}, got {sorted(extra_ids)}")
    for name in names:  # each named table adds its rows exactly as P does: + T_name[ids]
        te, table_caches[name] = learned_positional_forward(params[f"tables.{name}.weight"], extra_ids[name], T)
        x = x + te
    allowed = attention_allowed(T, cfg.causal, attention_mask)  # (B|1, 1, T, T) or None

    kind = mlp_kind(cfg)[0]
    gated, qk_norm = kind == "swiglu", getattr(cfg, "qk_norm", False)
    blocks = []
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        a, ln1 = layernorm_forward(x, params[p + "ln1.weight"], bias(p + "ln1.bias"))
        a, attn = attention_forward(a, params[p + "attn.qkv.weight"], bias(p + "attn.qkv.bias"),
                                    params[p + "attn.proj.weight"], bias(p + "attn.proj.bias"),
                                    cfg.n_head, allowed, qk_norm)
        x, _ = residual_forward(x, a)
        m, ln2 = layernorm_forward(x, params[p + "ln2.weight"], bias(p + "ln2.bias"))
        a, fc = linear_forward(m, params[p + "mlp.fc.weight"], bias(p + "mlp.fc.bias"))  # (B, T, H)
        gate = None
        if gated:
            g, gate = linear_forward(m, params[p + "mlp.gate.weight"], bias(p + "mlp.gate.bias"))  # (B, T, H)
            m, act = swiglu_forward(a, g)
        else:
            m, act = relu2_forward(a) if kind == "relu2" else gelu_forward(a)
        m, mlp_proj = linear_forward(m, params[p + "mlp.proj.weight"], bias(p + "mlp.proj.bias"))  # (B, T, C)
        x, _ = residual_forward(x, m)
        blocks.append(BlockCache(ln1=ln1, attn=attn, ln2=ln2, fc=fc, gate=gate, act=act, mlp_proj=mlp_proj))

    x, ln_f = layernorm_forward(x, params["ln_f.weight"], bias("ln_f.bias"))
    head_weight = params["tok_emb.weight"] if cfg.tie_weights else params["head.weight"]
    logits, head = linear_forward(x, head_weight, None)  # (B, T, V)
    cap = getattr(cfg, "logit_softcap", 0.0)
    softcap = None
    if cap:
        logits, softcap = softcap_forward(logits, cap)  # softcap: the tanh, for the backward

    loss, loss_cache = None, None
    if targets is not None:
        loss, loss_cache = cross_entropy_forward(logits, np.asarray(targets))
    cache = ModelCache(tok_emb=tok_cache, pos=pos_cache, tables=table_caches, blocks=blocks, ln_f=ln_f, head=head,
                       loss=loss_cache, tied=cfg.tie_weights, names=trainable_names(cfg), softcap=softcap)
    return loss, logits, cache


def backward(cache: ModelCache, dlogits: np.ndarray | None = None, return_dh: bool = False
             ) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], np.ndarray]:
    """Gradients of every trainable parameter, keyed like `model.named_parameters()`.

    dlogits (B, T, V): the upstream gradient; None = that of the mean cross-entropy loss
    (forward must then have had targets). With `return_dh`, returns (grads, dh) where
    dh (B, T, C) is dL/dh at the embedding sum h = E[x] + P[pos].
    """
    if dlogits is None:
        if cache.loss is None:
            raise ValueError("forward ran without targets: pass dlogits")
        dlogits = cross_entropy_backward(1.0, cache.loss)
    grads: dict[str, np.ndarray] = {}

    def put(name: str, grad: np.ndarray | None) -> None:  # biases are None when the model has none
        if grad is not None:
            grads[name] = grad

    if cache.softcap is not None:
        dlogits = softcap_backward(dlogits, cache.softcap)
    dx, d_head, _ = linear_backward(dlogits, cache.head)
    dx, d_w, d_b = layernorm_backward(dx, cache.ln_f)
    put("ln_f.weight", d_w)
    put("ln_f.bias", d_b)

    for i in reversed(range(len(cache.blocks))):
        b, p = cache.blocks[i], f"blocks.{i}."
        dx_skip, dm = residual_backward(dx, None)  # x = x + mlp(ln2(x))
        dm, d_w, d_b = linear_backward(dm, b.mlp_proj)
        put(p + "mlp.proj.weight", d_w)
        put(p + "mlp.proj.bias", d_b)
        if isinstance(b.act, Relu2Cache):
            dm = relu2_backward(dm, b.act)
        elif b.gate is None:
            dm = gelu_backward(dm, b.act)
        else:
            dm, dg = swiglu_backward(dm, b.act)
            dg, d_w, d_b = linear_backward(dg, b.gate)
            put(p + "mlp.gate.weight", d_w)
            put(p + "mlp.gate.bias", d_b)
        dm, d_w, d_b = linear_backward(dm, b.fc)
        put(p + "mlp.fc.weight", d_w)
        put(p + "mlp.fc.bias", d_b)
        if b.gate is not None:
            dm = dm + dg  # ln2(x) fed both fc and gate: the sum of both uses
        dm, d_w, d_b = layernorm_backward(dm, b.ln2)
        put(p + "ln2.weight", d_w)
        put(p + "ln2.bias", d_b)
        dx = dx_skip + dm  # x fed the skip and the MLP branch: the sum of both uses

        dx_skip, da = residual_backward(dx, None)  # x = x + attn(ln1(x))
        da, attn_grads = attention_backward(da, b.attn)
        for name, grad in attn_grads.items():
            put(p + "attn." + name, grad)
        da, d_w, d_b = layernorm_backward(da, b.ln1)
        put(p + "ln1.weight", d_w)
        put(p + "ln1.bias", d_b)
        dx = dx_skip + da  # the sum of both uses again

    dh = dx  # (B, T, C): dL/dh, h = E[x] + P[pos]; dh/dE[x] and dh/dP[pos] are both the identity
    if cache.pos is not None:
        grads["pos.weight"] = learned_positional_backward(dh, cache.pos)  # the table gradient
    for name, table_cache in cache.tables.items():  # the same closed form for every named table
        grads[f"tables.{name}.weight"] = learned_positional_backward(dh, table_cache)
    d_tok = embedding_backward(dh, cache.tok_emb)
    if cache.tied:
        grads["tok_emb.weight"] = d_tok + d_head  # one tensor, two uses (lookup and head): the sum
    else:
        grads["tok_emb.weight"] = d_tok
        grads["head.weight"] = d_head

    grads = {name: grads[name] for name in cache.names}  # named_parameters() order
    return (grads, dh) if return_dh else grads
