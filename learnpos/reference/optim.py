"""Hand-written SGD and AdamW in NumPy float64, step for step what PyTorch's `SGD` and
`AdamW` optimizers do (same operation order, so the results agree to rounding).

Both update `params` in place, one entry per name in `grads`. A tied parameter appears
once in `grads` (as in `named_parameters()`), so it is stepped once; if the same array is
stored under two names in `params` (`tok_emb.weight` and `head.weight`), both see the
update, as the shared tensor does in PyTorch. Names missing from `grads` are not touched
(PyTorch skips parameters whose `.grad` is None).

`weight_decay` is one number for every parameter or a dict name -> number, which is how
the model's parameter groups are expressed here (see `weight_decay_policy`).
"""

from __future__ import annotations

import math

import numpy as np


def table_decay(cfg) -> dict[str, bool]:
    """Parameter name -> whether that learned table is decayed, from each table's own config
    entry: `pos.weight` from `positional.weight_decay`, `tables.<name>.weight` from its entry."""
    out = {}
    if cfg.positional.kind == "learned":
        out["pos.weight"] = cfg.positional.weight_decay
    for table in getattr(cfg, "tables", []):
        out[f"tables.{table.name}.weight"] = table.weight_decay
    return out


def weight_decay_policy(names_to_arrays: dict[str, np.ndarray], weight_decay: float, cfg) -> dict[str, float]:
    """Per-parameter decay, the policy of `learnpos.optim.param_groups`: every learned table
    gets `weight_decay` only if its config entry says so (decoupled decay shrinks every row,
    also rows no sequence reaches; see `table_decay`); other matrices (2-D and up) get
    `weight_decay`; biases and LayerNorm gains (1-D) get none."""
    tables = table_decay(cfg)
    policy = {}
    for name, array in names_to_arrays.items():
        if name in tables:
            policy[name] = weight_decay if tables[name] else 0.0
        else:
            policy[name] = weight_decay if array.ndim >= 2 else 0.0
    return policy


def _decay(weight_decay: float | dict[str, float], name: str) -> float:
    return weight_decay[name] if isinstance(weight_decay, dict) else weight_decay


def sgd_step(params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float,
             momentum: float = 0.0, weight_decay: float | dict[str, float] = 0.0,
             state: dict | None = None) -> dict:
    """One step of PyTorch's `SGD` (dampening 0, no Nesterov). Returns the state
    (momentum buffers by name); pass it back in on the next step.

        d = g + wd * p                 (coupled L2, as PyTorch's SGD defines weight decay)
        buf = d on the first step, else momentum * buf + d      (only if momentum != 0)
        p <- p - lr * buf  (or p - lr * d without momentum)

    With momentum 0 and wd 0 this is exactly the seed formula P <- P - lr * dL/dP.
    """
    state = {} if state is None else state
    for name, g in grads.items():
        p = params[name]
        wd = _decay(weight_decay, name)
        d = g + wd * p if wd != 0 else g
        if momentum != 0:
            buf = state.get(name)
            buf = d.copy() if buf is None else buf * momentum + d
            state[name] = buf
            d = buf
        p -= lr * d  # in place: every name holding this array sees the step
    return state


def adamw_step(params: dict[str, np.ndarray], grads: dict[str, np.ndarray], state: dict, lr: float,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
               weight_decay: float | dict[str, float] = 1e-2) -> dict:
    """One step of PyTorch's `AdamW` (no amsgrad); `state` (a dict, {} at first) is updated
    in place and returned. Per parameter, in PyTorch's order:

        t += 1
        p <- p * (1 - lr * wd)                      decoupled decay, before the moments
        m <- m + (1 - beta1) (g - m)                (PyTorch's lerp form of beta1 m + (1 - beta1) g)
        v <- beta2 v + (1 - beta2) g^2
        denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        p <- p - (lr / (1 - beta1^t)) * (m / denom)

    Defaults are PyTorch's AdamW defaults.
    """
    beta1, beta2 = betas
    for name, g in grads.items():
        p = params[name]
        s = state.setdefault(name, {"step": 0, "exp_avg": np.zeros_like(p), "exp_avg_sq": np.zeros_like(p)})
        s["step"] += 1
        t, m, v = s["step"], s["exp_avg"], s["exp_avg_sq"]
        wd = _decay(weight_decay, name)
        if wd != 0:
            p *= 1 - lr * wd
        m += (1 - beta1) * (g - m)
        v *= beta2
        v += (1 - beta2) * (g * g)
        bias_correction1 = 1 - beta1 ** t
        bias_correction2 = 1 - beta2 ** t
        step_size = lr / bias_correction1
        denom = np.sqrt(v) / math.sqrt(bias_correction2) + eps
        p -= step_size * (m / denom)
    return state


# --------------------------------------------------------------------------------- Muon

MUON_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic's (a, b, c) of PyTorch's Muon (Keller Jordan's)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """x rounded to bfloat16 (round to nearest, ties to even), returned as float64: what a
    tensor's `.bfloat16()` keeps of it. bf16 is float32 with the low 16 bits dropped."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def newton_schulz(g: np.ndarray, coefficients: tuple[float, float, float] = MUON_NS_COEFFICIENTS,
                  steps: int = 5, eps: float = 1e-7, bf16: bool = False) -> np.ndarray:
    """An approximately orthogonal matrix with g's singular vectors (g = U S V^T -> ~U S' V^T,
    S' within about 0.7..1.2 rather than exactly 1): from X = g / ||g||_F (so every singular
    value is <= 1), `steps` times

        A = X X^T,   X <- a X + (b A + c A^2) X

    which maps each singular value s to a s + b s^3 + c s^5. X is the wide orientation of g
    (transposed when g has more rows than columns), so A is the smaller Gram matrix.
    bf16=True rounds where PyTorch's Muon does (it runs the iteration in bfloat16): the
    input, the norm, the normalised X and each of the three products, each product summed
    exactly here and once rounded (PyTorch sums in float32: a sum may land on the other side
    of a rounding boundary, one bf16 ulp)."""
    a, b, c = coefficients
    r = round_bf16 if bf16 else (lambda v: v)
    tall = g.shape[0] > g.shape[1]
    x = r(g.T if tall else g)
    x = r(x / r(max(float(np.linalg.norm(x)), eps)))
    for _ in range(steps):
        A = r(x @ x.T)
        B = r(b * A + c * (A @ A))
        x = r(a * x + B @ x)
    return x.T if tall else x


def _lerp(start: np.ndarray, end: np.ndarray, weight: float) -> np.ndarray:
    """start + weight (end - start), evaluated as PyTorch's lerp does (from the nearer end)."""
    return start + weight * (end - start) if weight < 0.5 else end - (end - start) * (1 - weight)


def muon_step(params: dict[str, np.ndarray], grads: dict[str, np.ndarray], state: dict, lr: float,
              momentum: float = 0.95, nesterov: bool = True, weight_decay: float = 0.1,
              coefficients: tuple[float, float, float] = MUON_NS_COEFFICIENTS, ns_steps: int = 5,
              eps: float = 1e-7, bf16: bool = True) -> dict:
    """One step of PyTorch's `Muon` on 2-D parameters (Jordan et al. 2024); `state` (a dict,
    {} at first) holds each momentum buffer and is returned. Per matrix W (A x B) with gradient g:

        buf <- buf + (1 - mu) (g - buf)                 momentum (PyTorch's lerp form), buf_0 = 0
        u = g + mu (buf - g)  (nesterov)  or  buf
        O = newton_schulz(u)                            the orthogonalised update
        W <- W (1 - lr wd)                              decoupled decay, with the unscaled lr
        W <- W - lr sqrt(max(1, A / B)) O               the shape-dependent scale

    bf16=True runs the iteration in bfloat16 as PyTorch does (see `newton_schulz`)."""
    for name, g in grads.items():
        p = params[name]
        if p.ndim != 2:
            raise ValueError(f"Muon updates matrices; {name} has shape {p.shape}")
        buf = state.setdefault(name, {"momentum_buffer": np.zeros_like(g)})["momentum_buffer"]
        buf[...] = _lerp(buf, g, 1 - momentum)
        update = _lerp(g, buf, momentum) if nesterov else buf
        ortho = newton_schulz(update, coefficients, ns_steps, eps, bf16)
        scale = math.sqrt(max(1.0, p.shape[0] / p.shape[1]))
        p *= 1 - lr * weight_decay
        p -= lr * scale * ortho
    return state
