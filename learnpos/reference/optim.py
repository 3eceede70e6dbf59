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
