"""What every check of `learnpos verify` (and the tests beside it) is made of: the small
float64 models and batches, the two sides compared (autograd and the NumPy reference), and
the `Check` record with its tolerances.

Every check runs on a `learnpos.model.GPT(...).double()` of vocab V = 30, C = 16, 2 heads,
2 layers and L = 16 table rows, with parameters drawn at a scale where every path matters
(`make_model`), on a batch of B = 3 by T = 8 built by one of the input recipes of
`make_inputs`. A `Case` names one model configuration and one recipe; `GRAD_CASES` are the
cases the gradient checks run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import learnpos.reference.model as ref_model
from learnpos.config import ModelConfig, PositionalConfig, TableConfig
from learnpos.model import GPT, IGNORE_INDEX
from learnpos.positional import position_ids_from_mask

V, C, N_HEAD, N_LAYER, L = 30, 16, 2, 2, 16  # the small model of every check
B, T = 3, 8  # the batch of every check


@dataclass(frozen=True)
class Case:
    """One model configuration and one input recipe (see `make_inputs`)."""

    name: str
    kind: str = "learned"
    causal: bool = True
    bias: bool = True
    tie_weights: bool = True
    inputs: str = "arange"
    tables: tuple[tuple, ...] = ()  # named extra tables: (name, rows) or (name, rows, weight_decay)
    attention: str = "auto"  # model.attention (float64 -> SDPA under auto)
    mlp: str = "gelu"  # model.mlp
    qk_norm: bool = False  # model.qk_norm
    logit_softcap: float = 0.0  # model.logit_softcap


GRAD_CASES = [
    Case("learned causal"),
    Case("learned encoder", causal=False, inputs="right-padded"),
    Case("sinusoidal", kind="sinusoidal", inputs="left-padded"),
    Case("none", kind="none"),
    Case("learned untied no-bias", bias=False, tie_weights=False, inputs="offset"),
    Case("learned + 2 tables", tables=(("turn", 6), ("speaker", 3)), inputs="left-padded"),
    Case("matmul attention", attention="matmul", inputs="left-padded"),
    Case("matmul attention causal", attention="matmul"),
    Case("swiglu encoder", mlp="swiglu", causal=False, inputs="right-padded"),
    Case("relu2 qk-norm soft-cap", mlp="relu2", qk_norm=True, logit_softcap=3.0, tie_weights=False,
         inputs="left-padded"),
]
TABLES_CASE = next(c for c in GRAD_CASES if c.tables)  # the case whose tables `named_table_checks` examines
TABLE_RECIPES = ["arange", "offset", "left-padded", "repeated", "random ids per row"]


def model_config(case: Case) -> ModelConfig:
    return ModelConfig(vocab_size=V, n_layer=N_LAYER, n_head=N_HEAD, n_embd=C, dropout=0.0, bias=case.bias,
                       tie_weights=case.tie_weights, causal=case.causal, attention=case.attention, mlp=case.mlp,
                       qk_norm=case.qk_norm, logit_softcap=case.logit_softcap,
                       positional=PositionalConfig(kind=case.kind, max_len=L),
                       tables=[TableConfig(name=t[0], rows=t[1], weight_decay=bool(t[2:] and t[2]))
                               for t in case.tables])


def make_model(case: Case, seed: int) -> GPT:
    """A float64 GPT in eval mode with every parameter drawn afresh at a scale where every
    path matters. At the default init (std 0.02, zero biases, unit gains) attention is
    nearly uniform and biases and gains sit at 0 and 1, which would hide a wrong softmax
    backward or a wrong bias/gain term; here attention is peaked and nothing is at rest."""
    torch.manual_seed(seed)
    model = GPT(model_config(case)).double().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            is_gain = name.endswith("weight") and (".ln1." in name or ".ln2." in name or name.startswith("ln_f."))
            if p.dim() >= 2:
                p.copy_(0.3 * noise)  # matrices, token embedding, position table
            elif is_gain:
                p.copy_(1.0 + 0.1 * noise)  # LayerNorm gains
            else:
                p.copy_(0.1 * noise)  # Linear and LayerNorm biases
    return model


@dataclass
class Inputs:
    idx: torch.Tensor  # (B, T)
    targets: torch.Tensor  # (B, T), IGNORE_INDEX where there is no loss
    position_ids: torch.Tensor | None  # (B, T) or None = 0..T-1
    attention_mask: torch.Tensor | None  # (B, T) 1 = token, 0 = pad; or None
    extra_ids: dict[str, torch.Tensor]  # table name -> (B, T) ids

    def ids(self) -> np.ndarray:
        """The position ids the model uses, (B|1, T)."""
        return np.arange(T)[None] if self.position_ids is None else self.position_ids.numpy()

    def numpy(self) -> tuple:
        n = lambda t: None if t is None else t.numpy()  # noqa: E731
        return n(self.idx), n(self.targets), n(self.position_ids), n(self.attention_mask)

    def extra_numpy(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.extra_ids.items()}


def make_inputs(recipe: str, seed: int, tables: tuple[tuple[str, int], ...] = ()) -> Inputs:
    """A (B, T) batch and its positions:
    arange              ids None (= 0..T-1, broadcast over the batch)
    offset              ids 5..5+T-1, as a KV cache of 5 tokens would give the new ones
    left-padded         rows with 0, 3 and 5 pads in front, ids from `position_ids_from_mask`
    right-padded        rows with 0, 2 and 4 pads at the end, ids from the mask
    repeated            ids t // 2 + b: every id used twice in a row
    random ids per row  ids drawn with replacement from 0..L-1, different in each row
    Targets are random, with one ignored target, and ignored at pads. Each named table
    (name, rows) gets ids drawn from 0..rows-2, so its last row is never used."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, V, (B, T), generator=gen)
    targets = torch.randint(0, V, (B, T), generator=gen)
    targets[0, 0] = IGNORE_INDEX
    position_ids, mask = None, None
    if recipe == "offset":
        position_ids = (torch.arange(T) + 5).expand(B, T).contiguous()
    elif recipe in ("left-padded", "right-padded"):
        mask = torch.ones(B, T, dtype=torch.long)
        for b, n_pad in enumerate((0, 3, 5) if recipe == "left-padded" else (0, 2, 4)):
            if recipe == "left-padded":
                mask[b, :n_pad] = 0
            else:
                mask[b, T - n_pad:] = 0
        position_ids = position_ids_from_mask(mask)
        targets = targets.masked_fill(mask == 0, IGNORE_INDEX)
    elif recipe == "repeated":
        position_ids = torch.arange(T).view(1, T) // 2 + torch.arange(B).view(B, 1)
    elif recipe == "random ids per row":
        position_ids = torch.randint(0, L, (B, T), generator=gen)
    elif recipe != "arange":
        raise ValueError(f"unknown input recipe '{recipe}'")
    extra = {t[0]: torch.randint(0, t[1] - 1, (B, T), generator=gen) for t in tables}
    return Inputs(idx, targets, position_ids, mask, extra)


def reference_params(model: GPT) -> dict[str, np.ndarray]:
    """The model's `state_dict` as float64 NumPy copies. Tensors that share storage (a tied
    head) become one array under both names, so an in-place optimizer step reaches both."""
    arrays: dict[int, np.ndarray] = {}
    params = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key not in arrays:
            arrays[key] = tensor.detach().to(torch.float64).numpy().copy()
        params[name] = arrays[key]
    return params


# ------------------------------------------------------------------- the two sides


@dataclass
class Result:
    loss: float
    logits: np.ndarray  # (B, T, V)
    grads: dict[str, np.ndarray]  # keyed like named_parameters()
    dh: np.ndarray  # (B, T, C) dL/dh at the embedding sum


def loss_of(model: GPT, batch: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits) in float64. The loss is computed here rather than taken from
    `GPT.forward(targets=...)` because the model casts logits to float32 before its
    cross-entropy, which would cap the agreement at float32 precision."""
    logits = model(batch.idx, position_ids=batch.position_ids, attention_mask=batch.attention_mask,
                   extra_ids=batch.extra_ids or None).logits
    loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX)
    return loss, logits


def autograd_side(model: GPT, batch: Inputs) -> Result:
    """Loss, logits, parameter gradients and dL/dh from PyTorch autograd.

    dL/dh is captured at the input of `model.drop`, which `GPT.forward` applies to
    h = tok_emb(idx) + pos.embed(...) + the named tables and nothing else (dropout is the
    identity in eval)."""
    captured: list[torch.Tensor] = []

    def keep_h(module, inputs):
        inputs[0].retain_grad()
        captured.append(inputs[0])

    handle = model.drop.register_forward_pre_hook(keep_h)
    try:
        model.zero_grad(set_to_none=True)
        loss, logits = loss_of(model, batch)
        loss.backward()
    finally:
        handle.remove()
    if len(captured) != 1 or captured[0].grad is None:
        raise RuntimeError("could not capture dL/dh at model.drop; has GPT.forward changed?")
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
    return Result(loss.item(), logits.detach().numpy(), grads, captured[0].grad.detach().numpy())


def reference_side(model: GPT, batch: Inputs, params: dict[str, np.ndarray] | None = None) -> Result:
    params = reference_params(model) if params is None else params
    idx, targets, position_ids, mask = batch.numpy()
    loss, logits, cache = ref_model.forward(params, idx, targets, model.config, position_ids, mask,
                                            batch.extra_numpy())
    grads, dh = ref_model.backward(cache, return_dh=True)
    return Result(loss, logits, grads, dh)


# ---------------------------------------------------------------- checks, tolerances

# Tolerances, one per kind of comparison (why each is what it is):
GRAD_REL_TOL = 1e-9  # float64 reference vs autograd: both compute the same sums in other orders,
#                      so they agree to ~1e-15 of each tensor's scale; 1e-9 leaves room for
#                      conditioning, and any wrong term (a missing factor, a dropped use) is O(1).
FD_REL_TOL = 1e-6  # central differences, eps = 1e-5: truncation ~eps^2 and rounding ~1e-16/eps
#                    leave ~1e-9 of each tensor's scale; a wrong formula is off by O(1).
FD_EPS = 1e-5
FD_ENTRIES = 8  # entries sampled per tensor (all of them when a tensor is smaller)
TABLE_ABS_TOL = 1e-12  # the identity sums the same float64 numbers as autograd: only the
#                        order of additions may differ, ~1e-16 for gradients of size ~1.
OPTIM_ABS_TOL = 1e-10  # 10 AdamW steps: the same float64 update rule on the same (or ~1e-16-close)
#                        gradients agrees to ~1e-16; a wrong update rule is off by ~lr = 1e-2.
EXACT = 0.0  # the seed formula P <- P - lr*g: the same float64 operations must give the same bits


@dataclass
class Check:
    """One line of the verify table. `ok` is `max_abs_err <= tol` or `max_rel_err <= tol`
    as `tol_on` says (and any structural condition written in `detail`)."""

    name: str
    max_abs_err: float
    max_rel_err: float
    tol: float
    ok: bool
    tol_on: str = "rel"  # "rel" | "abs": which error `tol` bounds
    detail: str = ""

    def __post_init__(self):  # plain Python numbers (NumPy scalars do not serialise to JSON)
        self.max_abs_err, self.max_rel_err, self.tol = float(self.max_abs_err), float(self.max_rel_err), float(self.tol)
        self.ok = bool(self.ok)


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """max|actual - expected| / max|expected| over the whole tensor.

    Element-wise relative error is meaningless where the true value is 0 or tiny (rows of
    P no position uses are exactly 0; cancellation leaves some entries near 1e-17 next to
    neighbours near 1), while the rounding error of a float64 sum scales with the size of
    the terms summed, not with the result. So the error is measured against the tensor's
    own scale. An all-zero `expected` gives 0 if `actual` is all zero too, else inf.
    """
    abs_err = float(np.max(np.abs(actual - expected), initial=0.0))
    scale = float(np.max(np.abs(expected), initial=0.0))
    if scale == 0.0:
        return 0.0 if abs_err == 0.0 else math.inf
    return abs_err / scale


def abs_err(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(actual) - np.asarray(expected)), initial=0.0))
