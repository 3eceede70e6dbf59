"""`learnpos verify`: PyTorch autograd vs the NumPy reference vs finite differences.

Every check runs on small random float64 models (`learnpos.model.GPT(...).double()`,
vocab 30, C = 16, 2 heads, 2 layers, L = 16 table rows, inputs B = 3 by T = 8) and
reports, per named tensor or per property, the largest absolute and relative error:

    grad <case>: <tensor>      reference backward vs autograd, every parameter   (rel 1e-9);
                               the cases include a model with two named tables and models
                               whose attention is the matmul kernel (model.attention=matmul)
    fd <case>                  reference backward vs central differences of the
                               reference forward, a sample of entries per tensor (rel 1e-6)
    table identity <ids>       autograd dL/dP vs table_gradient(autograd dL/dh, ids)  (abs 1e-12),
                               rows no position uses exactly 0.0
    table reference <ids>      reference dL/dP vs autograd dL/dP                  (rel 1e-9)
    tables <name>: identity    the same two checks for every named table of `model.tables`
    tables <name>: reference   (turn and speaker ids next to the positions)
    sgd / adamw                hand-written optimizers vs torch.optim, the model's own
                               parameter groups; one SGD step equals P - lr*g exactly
    <kind>: no trainable table sinusoidal and none have no `pos.weight` to learn

`run_checks()` returns the checks; `main()` prints them and exits 1 if any failed.
Shape letters: B batch, T sequence length, C = n_embd, L table rows, V vocab.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

import learnpos.reference.model as ref_model
from learnpos.config import PositionalConfig
from learnpos.fixtures import (
    GRAD_CASES,
    TABLE_RECIPES,
    TABLES_CASE,
    B,
    Case,
    Inputs,
    L,
    T,
    make_inputs,
    make_model,
    model_config,
    reference_params,
)
from learnpos.model import GPT, IGNORE_INDEX
from learnpos.optim import param_groups
from learnpos.reference.layers import table_gradient
from learnpos.reference.optim import adamw_step, sgd_step, weight_decay_policy

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


def _abs_err(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(actual) - np.asarray(expected)), initial=0.0))


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


# ---------------------------------------------------------------------------- checks


def gradient_checks(case: Case, seed: int) -> list[Check]:
    """Loss, logits and every parameter gradient: reference vs autograd."""
    model, batch = make_model(case, seed), make_inputs(case.inputs, seed + 2, case.tables)
    auto, refr = autograd_side(model, batch), reference_side(model, batch)
    checks = []
    for what, a, b in (("loss", refr.loss, auto.loss), ("logits", refr.logits, auto.logits)):
        rel = rel_err(np.asarray(a), np.asarray(b))
        checks.append(Check(f"{what} {case.name}", _abs_err(a, b), rel, GRAD_REL_TOL, rel <= GRAD_REL_TOL))
    missing = sorted(set(auto.grads) ^ set(refr.grads))
    if missing:
        checks.append(Check(f"grad {case.name}: names", math.nan, math.nan, GRAD_REL_TOL, False,
                            detail=f"gradient names differ: {missing}"))
    for name, expected in auto.grads.items():
        if name not in refr.grads:
            continue
        got = refr.grads[name]
        if got.shape != expected.shape:
            checks.append(Check(f"grad {case.name}: {name}", math.nan, math.nan, GRAD_REL_TOL, False,
                                detail=f"shape {got.shape} != {expected.shape}"))
            continue
        rel = rel_err(got, expected)
        checks.append(Check(f"grad {case.name}: {name}", _abs_err(got, expected), rel, GRAD_REL_TOL,
                            rel <= GRAD_REL_TOL))
    return checks


def finite_difference_errors(case: Case, seed: int, entries: int = FD_ENTRIES) -> dict[str, tuple[float, float]]:
    """Per tensor: (max abs, max rel) error of the reference gradient against central
    differences (L(p + eps) - L(p - eps)) / 2 eps of the reference loss, on `entries`
    entries drawn per tensor (all entries of smaller tensors). rel uses the tensor's
    largest gradient entry as scale (see `rel_err`)."""
    model, batch = make_model(case, seed), make_inputs(case.inputs, seed + 2, case.tables)
    params = reference_params(model)
    idx, targets, position_ids, mask = batch.numpy()
    extra = batch.extra_numpy()

    def loss() -> float:
        return ref_model.forward(params, idx, targets, model.config, position_ids, mask, extra)[0]

    _, _, cache = ref_model.forward(params, idx, targets, model.config, position_ids, mask, extra)
    grads = ref_model.backward(cache)
    rng = np.random.default_rng(seed)
    errors = {}
    for name, grad in grads.items():
        array = params[name]  # perturbed in place; a tied array perturbs both of its uses
        picked = rng.choice(array.size, size=min(entries, array.size), replace=False)
        worst = 0.0
        for i in picked:
            original = array.flat[i]
            array.flat[i] = original + FD_EPS
            up = loss()
            array.flat[i] = original - FD_EPS
            down = loss()
            array.flat[i] = original
            worst = max(worst, abs((up - down) / (2 * FD_EPS) - grad.flat[i]))
        scale = float(np.abs(grad).max())
        errors[name] = (worst, worst / scale if scale > 0 else (0.0 if worst == 0 else math.inf))
    return errors


def finite_difference_check(case: Case, seed: int) -> Check:
    errors = finite_difference_errors(case, seed)
    worst = max(errors, key=lambda n: errors[n][1])
    max_abs = max(e[0] for e in errors.values())
    rel = errors[worst][1]
    return Check(f"fd {case.name}", max_abs, rel, FD_REL_TOL, rel <= FD_REL_TOL,
                 detail=f"{len(errors)} tensors, <= {FD_ENTRIES} entries each; worst {worst}")


def table_checks(recipe: str, seed: int) -> list[Check]:
    """dL/dP[k] = sum of dL/dh[b,t] over pos[b,t] = k, against autograd, and unused rows 0.0."""
    case = Case(f"table {recipe}", inputs=recipe)
    model, batch = make_model(case, seed), make_inputs(recipe, seed + 2)
    auto, refr = autograd_side(model, batch), reference_side(model, batch)
    ids = batch.ids()
    unused = np.setdiff1d(np.arange(L), ids)
    closed_form = table_gradient(auto.dh, ids, L)  # from autograd's own dL/dh
    dP = auto.grads["pos.weight"]
    dP_ref = refr.grads["pos.weight"]
    zero = {who: not np.any(g[unused] != 0.0) for who, g in
            (("autograd", dP), ("identity", closed_form), ("reference", dP_ref))}
    used = f"{L - len(unused)}/{L} rows used"
    abs_id = _abs_err(closed_form, dP)
    ok_id = abs_id <= TABLE_ABS_TOL and zero["autograd"] and zero["identity"]
    rel_ref = rel_err(dP_ref, dP)
    return [
        Check(f"table identity {recipe}", abs_id, rel_err(closed_form, dP), TABLE_ABS_TOL, ok_id, tol_on="abs",
              detail=f"{used}; unused rows exactly 0.0: autograd {zero['autograd']}, identity {zero['identity']}"),
        Check(f"table reference {recipe}", _abs_err(dP_ref, dP), rel_ref, GRAD_REL_TOL,
              rel_ref <= GRAD_REL_TOL and zero["reference"],
              detail=f"reference dL/dP vs autograd; unused rows exactly 0.0: {zero['reference']}"),
    ]


def named_table_checks(seed: int, case: Case = TABLES_CASE) -> list[Check]:
    """Every named table obeys the same closed form as P, with its own ids:
    dL/dT[k] = sum of dL/dh[b,t] over ids[b,t] = k; unused rows exactly 0.0."""
    model, batch = make_model(case, seed), make_inputs(case.inputs, seed + 2, case.tables)
    auto, refr = autograd_side(model, batch), reference_side(model, batch)
    checks = []
    for name, rows, *_ in case.tables:
        key = f"tables.{name}.weight"
        ids = batch.extra_ids[name].numpy()
        unused = np.setdiff1d(np.arange(rows), ids)
        closed_form = table_gradient(auto.dh, ids, rows)
        dT, dT_ref = auto.grads[key], refr.grads[key]
        zero = {who: not np.any(g[unused] != 0.0) for who, g in
                (("autograd", dT), ("identity", closed_form), ("reference", dT_ref))}
        abs_id, rel_ref = _abs_err(closed_form, dT), rel_err(dT_ref, dT)
        checks += [
            Check(f"tables {name}: identity", abs_id, rel_err(closed_form, dT), TABLE_ABS_TOL,
                  abs_id <= TABLE_ABS_TOL and zero["autograd"] and zero["identity"] and len(unused) > 0,
                  tol_on="abs", detail=f"{rows - len(unused)}/{rows} rows used; unused rows exactly 0.0: "
                                       f"autograd {zero['autograd']}, identity {zero['identity']}"),
            Check(f"tables {name}: reference", _abs_err(dT_ref, dT), rel_ref, GRAD_REL_TOL,
                  rel_ref <= GRAD_REL_TOL and zero["reference"],
                  detail=f"reference dL/dT vs autograd; unused rows exactly 0.0: {zero['reference']}"),
        ]
    return checks


def no_table_check(kind: str, seed: int) -> Check:
    """Fixed and absent encodings have nothing to learn: no `pos.weight` anywhere."""
    case = Case(kind, kind=kind)
    model, batch = make_model(case, seed), make_inputs("arange", seed + 2)
    refr = reference_side(model, batch)
    names = {n for n, _ in model.named_parameters()}
    ok = "pos.weight" not in names and "pos.weight" not in refr.grads and set(refr.grads) == names
    return Check(f"{kind}: no trainable table", 0.0, 0.0, EXACT, ok, tol_on="abs",
                 detail="no pos.weight in the model or the reference gradients")


def randomized_checks(seed: int) -> list[Check]:
    """Randomized positions (model.positional.randomize): in training the model reads rows of a
    sorted random subset of the table, in evaluation evenly spread rows. Either way dL/dP must
    be the plain table's gradient at those rows: the reference, given them as explicit ids."""
    plain = make_model(Case("randomized"), seed)
    cfg = model_config(Case("randomized"))
    cfg.positional = PositionalConfig(kind="learned", max_len=L, randomize=True)
    model = GPT(cfg).double()
    model.load_state_dict(plain.state_dict())
    batch = make_inputs("arange", seed + 2)
    checks = []
    for mode in ("train", "eval"):
        model.train(mode == "train")  # dropout is 0: the mode only picks the position rule
        torch.manual_seed(seed + 7)
        rows = model.pos.plan(None, 0, T, B)  # (B, T): what the forward below draws
        torch.manual_seed(seed + 7)
        auto = autograd_side(model, batch)
        explicit = Inputs(batch.idx, batch.targets, rows.expand(B, T).contiguous(), None, {})
        refr = reference_side(plain, explicit)
        rel = max(rel_err(auto.grads["pos.weight"], refr.grads["pos.weight"]), rel_err(auto.logits, refr.logits))
        increasing = bool((rows[:, 1:] > rows[:, :-1]).all())
        past = int(rows.max()) >= T  # rows past the sequence length are read (and trained)
        ok = rel <= GRAD_REL_TOL and increasing and (past or mode == "eval")
        checks.append(Check(f"randomized positions ({mode})", _abs_err(auto.grads["pos.weight"],
                                                                        refr.grads["pos.weight"]),
                            rel, GRAD_REL_TOL, ok, detail=f"rows {rows[0].tolist()} of {L}; increasing {increasing}; "
                                                          f"logits and dL/dP = the reference at those ids"))
    return checks


def _minus_lr_times(p: np.ndarray, lr: float, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p - lr*g in float64 both ways it may legitimately be evaluated: rounded once (a fused
    multiply-add, what PyTorch's CPU kernels do) and rounded twice (multiply, then subtract)."""
    twice = p - lr * g
    once = np.array([float(Fraction(float(a)) - Fraction(lr) * Fraction(float(b)))  # exact, then one rounding
                     for a, b in zip(p.reshape(-1), g.reshape(-1), strict=True)]).reshape(p.shape)
    return once, twice


def sgd_checks(seed: int, lr: float = 0.1, weight_decay: float = 0.1) -> list[Check]:
    """One step of torch.optim.SGD with the model's parameter groups vs `sgd_step`, and the
    seed formula P <- P - lr * dL/dP (P is not decayed by default)."""
    model, batch = make_model(Case("sgd"), seed), make_inputs("arange", seed + 2)
    params = reference_params(model)
    before = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    auto, refr = autograd_side(model, batch), reference_side(model, batch, params)
    torch.optim.SGD(param_groups(model, weight_decay), lr=lr).step()
    policy = weight_decay_policy({n: params[n] for n in refr.grads}, weight_decay, model.config)
    sgd_step(params, refr.grads, lr, weight_decay=policy)
    after = {n: p.detach().numpy() for n, p in model.named_parameters()}

    # Exact: each entry of torch's P equals P - lr*g (its own g) rounded once or rounded twice.
    once, twice = _minus_lr_times(before["pos.weight"], lr, auto.grads["pos.weight"])
    torch_P = after["pos.weight"]
    exact = (torch_P == once) | (torch_P == twice)
    abs_t = float(np.max(np.minimum(np.abs(torch_P - once), np.abs(torch_P - twice))))
    formula_ref = before["pos.weight"] - lr * refr.grads["pos.weight"]
    abs_r = _abs_err(params["pos.weight"], formula_ref)
    # Reference vs torch over every tensor; rel is relative to the size of the update itself
    # (relative to the parameters it would hide an update error behind their size).
    worst_abs = max(_abs_err(params[n], after[n]) for n in after)
    update_rel = {n: rel_err(params[n] - before[n], after[n] - before[n]) for n in after}
    worst_name = max(update_rel, key=update_rel.get)
    worst_rel = update_rel[worst_name]
    return [
        Check("sgd: torch step = P - lr*g", abs_t, rel_err(torch_P, once), EXACT, bool(exact.all()), tol_on="abs",
              detail=f"torch.optim.SGD on pos.weight, bit for bit ({int((torch_P == once).sum())}/{once.size} "
                     f"entries as one rounding)"),
        Check("sgd: sgd_step = P - lr*g", abs_r, rel_err(params["pos.weight"], formula_ref), EXACT,
              abs_r == EXACT, tol_on="abs", detail="reference sgd_step on pos.weight, bit for bit"),
        Check("sgd: sgd_step vs torch, all tensors", worst_abs, worst_rel, GRAD_REL_TOL,
              worst_rel <= GRAD_REL_TOL, detail=f"rel to the update size; worst {worst_name}"),
    ]


@dataclass
class AdamWRun:
    losses_torch: list[float]
    losses_ref: list[float]
    start: dict[str, np.ndarray]  # parameters before the first step, by name
    torch_final: dict[str, np.ndarray]
    ref_final: dict[str, np.ndarray]
    torch_decay: dict[str, float]  # weight decay of each parameter in learnpos.optim.param_groups
    ref_decay: dict[str, float]  # weight decay of each parameter in weight_decay_policy


def adamw_run(case: Case, seed: int, steps: int = 10, lr: float = 1e-2, betas=(0.9, 0.99),
              weight_decay: float = 0.1, reference_gradients: bool = True) -> AdamWRun:
    """`steps` steps of torch.optim.AdamW on the model's own parameter groups, side by side
    with `adamw_step` on a NumPy copy of the parameters, a new "arange" batch each step.
    reference_gradients: the NumPy side steps on the reference backward at its own
    parameters (end to end); False: on autograd's gradients (the optimizer alone)."""
    model = make_model(case, seed)
    params = reference_params(model)
    start = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    groups = param_groups(model, weight_decay)
    torch_decay = {n: g["weight_decay"] for g in groups for n, p in model.named_parameters()
                   if any(p is q for q in g["params"])}
    ref_decay = weight_decay_policy({n: params[n] for n in start}, weight_decay, model.config)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8)
    state: dict = {}
    losses_torch, losses_ref = [], []
    for step in range(steps):
        batch = make_inputs("arange", seed + 100 + step, case.tables)
        refr = reference_side(model, batch, params)  # at the NumPy side's own parameters
        auto = autograd_side(model, batch)
        optimizer.step()
        adamw_step(params, refr.grads if reference_gradients else auto.grads, state, lr, betas, 1e-8, ref_decay)
        losses_torch.append(auto.loss)
        losses_ref.append(refr.loss)
    torch_final = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    return AdamWRun(losses_torch, losses_ref, start, torch_final, {n: params[n] for n in start},
                    torch_decay, ref_decay)


def _final_params_check(name: str, run: AdamWRun, detail: str) -> Check:
    final_abs = max(_abs_err(run.ref_final[n], run.torch_final[n]) for n in run.start)
    final_rel = max(rel_err(run.ref_final[n] - run.start[n], run.torch_final[n] - run.start[n]) for n in run.start)
    return Check(name, final_abs, final_rel, OPTIM_ABS_TOL, final_abs <= OPTIM_ABS_TOL, tol_on="abs", detail=detail)


def adamw_checks(seed: int, steps: int = 10) -> list[Check]:
    """AdamW with the model's own parameter groups: torch.optim.AdamW vs `adamw_step`.

    The optimizer alone runs on the model with biases (all three parameter groups). End to
    end (reference forward/backward + adamw_step) runs without biases: the key slice of
    attn.qkv.bias has a gradient that is exactly 0 in exact arithmetic (softmax ignores a
    shift shared by all keys), so both sides return ~1e-17 of rounding noise there, and
    AdamW, which divides by sqrt(v) + eps, turns noise n into steps of lr*n/(|n| + eps),
    ~1e-10: a property of AdamW on a dead parameter, not an error of either side.
    """
    # one decayed named table and one not: the policy comes from each table's own entry
    alone = adamw_run(Case("adamw", tables=(("turn", 6, True), ("speaker", 3, False))), seed, steps,
                      reference_gradients=False)
    e2e = adamw_run(Case("adamw no-bias", bias=False), seed, steps, reference_gradients=True)
    policy_err = max(abs(alone.ref_decay[n] - alone.torch_decay[n]) for n in alone.torch_decay)
    abs_loss = _abs_err(np.array(e2e.losses_ref), np.array(e2e.losses_torch))
    unused = np.arange(T, L)  # "arange" batches use rows 0..T-1 only
    moved = max(_abs_err(run_final["pos.weight"][unused], run.start["pos.weight"][unused])
                for run in (alone, e2e) for run_final in (run.torch_final, run.ref_final))
    return [
        Check("adamw: decay policy = param_groups", policy_err, policy_err, EXACT,
              policy_err == 0.0 and set(alone.ref_decay) == set(alone.torch_decay)
              and alone.torch_decay["tables.turn.weight"] > 0 and alone.torch_decay["tables.speaker.weight"] == 0,
              tol_on="abs",
              detail=f"decay of pos / turn / speaker tables: {alone.ref_decay['pos.weight']} / "
                     f"{alone.ref_decay['tables.turn.weight']} / {alone.ref_decay['tables.speaker.weight']}"),
        _final_params_check(f"adamw: adamw_step, {steps} steps, same grads", alone,
                            "optimizer alone, all groups; rel to the distance travelled"),
        Check(f"adamw: {steps}-step loss trajectory", abs_loss,
              rel_err(np.array(e2e.losses_ref), np.array(e2e.losses_torch)), OPTIM_ABS_TOL,
              abs_loss <= OPTIM_ABS_TOL, tol_on="abs",
              detail=f"end to end, no biases; loss {e2e.losses_torch[0]:.4f} -> {e2e.losses_torch[-1]:.4f}"),
        _final_params_check(f"adamw: parameters after {steps} steps", e2e,
                            "end to end, no biases; rel to the distance travelled"),
        Check("adamw: unused rows of P unchanged", moved, moved, EXACT, moved == 0.0, tol_on="abs",
              detail=f"rows {T}..{L - 1} get no gradient and no decay"),
    ]


def run_checks(seed: int = 0) -> list[Check]:
    """Every check, in table order. A check that raises becomes a failed row naming the error."""
    groups: list[tuple[str, Callable[[], list[Check]]]] = []
    for case in GRAD_CASES:
        groups.append((f"grad {case.name}", lambda case=case: gradient_checks(case, seed)))
    for case in GRAD_CASES:
        groups.append((f"fd {case.name}", lambda case=case: [finite_difference_check(case, seed)]))
    for recipe in TABLE_RECIPES:
        groups.append((f"table {recipe}", lambda recipe=recipe: table_checks(recipe, seed)))
    groups.append(("tables", lambda: named_table_checks(seed)))
    groups.append(("sgd", lambda: sgd_checks(seed)))
    groups.append(("adamw", lambda: adamw_checks(seed)))
    groups.append(("randomized positions", lambda: randomized_checks(seed)))
    for kind in ("sinusoidal", "none"):
        groups.append((f"{kind}: no trainable table", lambda kind=kind: [no_table_check(kind, seed)]))
    checks: list[Check] = []
    for name, run in groups:
        try:
            checks.extend(run())
        except Exception as e:  # a crash in a check is a failed check, reported in the table
            checks.append(Check(name, math.nan, math.nan, math.nan, False, detail=f"{type(e).__name__}: {e}"))
    return checks


# ------------------------------------------------------------------------------- CLI


def format_table(checks: list[Check]) -> str:
    """The checks as an aligned text table, one line each, and a summary line."""
    width = max([len(c.name) for c in checks] + [5])
    lines = [f"{'check':<{width}}  {'max_abs_err':>11}  {'max_rel_err':>11}  {'tol':>13}  ok"]
    for c in checks:
        tol = f"{c.tol_on} {c.tol:.0e}" if c.tol != 0 else f"{c.tol_on} exact"
        status = "ok" if c.ok else "FAIL"
        line = f"{c.name:<{width}}  {c.max_abs_err:>11.2e}  {c.max_rel_err:>11.2e}  {tol:>13}  {status}"
        if c.detail:
            line += f"  ({c.detail})"
        lines.append(line)
    failed = [c.name for c in checks if not c.ok]
    lines.append(f"{len(checks)} checks, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    return "\n".join(lines)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no nan/inf


def main(argv: list[str] | None = None) -> int:
    """`learnpos verify [--json] [--seed N]`: print the table; exit 0 if every check passed, else 1."""
    parser = argparse.ArgumentParser(prog="learnpos verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random models and inputs")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    checks = run_checks(args.seed)
    ok = all(c.ok for c in checks)
    print(format_table(checks))
    print(f"{'all checks passed' if ok else 'VERIFY FAILED'} in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [
            {"name": c.name, "max_abs_err": _finite_or_none(c.max_abs_err),
             "max_rel_err": _finite_or_none(c.max_rel_err), "tol": _finite_or_none(c.tol), "ok": c.ok}
            for c in checks]}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
