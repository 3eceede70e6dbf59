"""The optimizer rows of `learnpos verify`: hand-written SGD, AdamW and Muon
(learnpos.reference.optim) against torch.optim, with the model's own parameter groups, in float64."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from learnpos.config import TrainConfig
from learnpos.fixtures import (
    EXACT,
    GRAD_REL_TOL,
    OPTIM_ABS_TOL,
    Case,
    Check,
    L,
    T,
    abs_err,
    autograd_side,
    make_inputs,
    make_model,
    reference_params,
    reference_side,
    rel_err,
)
from learnpos.optim import build_optimizer, muon_matrices, param_groups
from learnpos.reference.optim import adamw_step, muon_step, sgd_step, weight_decay_policy

# Muon runs its Newton-Schulz iteration in bfloat16 (torch.optim.Muon casts the update; so does the
# reference with bf16=True, rounding at the same places). Its products are summed in float32 there
# and exactly here, so now and then a sum lands on the other side of a rounding boundary: that entry
# is one bf16 ulp (at most 2^-7 of its size) apart, and the next steps carry it. Measured (seed 0,
# 5 steps, rel to the distance travelled): 7e-4; the same rule with a float64 iteration 0.035, and
# a wrong rule (no Nesterov, no shape scale, 4 iterations, decay with the scaled lr) 0.12 to 0.42
# (tests/test_verify.py::test_a_wrong_muon_fails_verify).
MUON_REL_TOL = 2.0**-6


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
    abs_r = abs_err(params["pos.weight"], formula_ref)
    # Reference vs torch over every tensor; rel is relative to the size of the update itself
    # (relative to the parameters it would hide an update error behind their size).
    worst_abs = max(abs_err(params[n], after[n]) for n in after)
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
    final_abs = max(abs_err(run.ref_final[n], run.torch_final[n]) for n in run.start)
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
    abs_loss = abs_err(np.array(e2e.losses_ref), np.array(e2e.losses_torch))
    unused = np.arange(T, L)  # "arange" batches use rows 0..T-1 only
    moved = max(abs_err(run_final["pos.weight"][unused], run.start["pos.weight"][unused])
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


def _muon_run(seed: int, steps: int, precision: str) -> tuple:
    """`train.optimizer=muon` as the trainer builds it (`learnpos.optim.build_optimizer`: Muon with
    the given precision for the block matrices, AdamW for the rest) and `muon_step` + `adamw_step`
    in float64 (the iteration rounded like PyTorch's for bfloat16, exact for float32), fed the same
    (autograd) gradients each step. Returns (Muon's names, the names it should have, AdamW's
    names, the rest, the parameters before, the reference's after, the optimizer's after)."""
    t = TrainConfig(optimizer="muon", lr=1e-2, muon_lr=0.05, weight_decay=0.1, muon_weight_decay=0.1,
                    beta1=0.9, beta2=0.99, muon_precision=precision)
    model = make_model(Case("muon", mlp="swiglu"), seed)
    params = reference_params(model)
    names = {id(p): n for n, p in model.named_parameters()}
    matrices = [names[id(p)] for p in muon_matrices(model)]
    expected = [n for n, p in model.named_parameters() if n.startswith("blocks.") and n.endswith(".weight")
                and p.dim() == 2]
    start = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, t, "cpu")
    adamw_names = {names[id(p)] for g in optimizer.adamw.param_groups for p in g["params"]}
    rest = [n for n in start if n not in matrices]
    decay = weight_decay_policy({n: params[n] for n in rest}, t.weight_decay, model.config)
    muon_state, adamw_state = {}, {}
    for step in range(steps):
        auto = autograd_side(model, make_inputs("arange", seed + 200 + step))
        optimizer.step()
        muon_step(params, {n: auto.grads[n] for n in matrices}, muon_state, t.muon_lr, t.muon_momentum,
                  t.muon_nesterov, t.muon_weight_decay, ns_steps=t.muon_ns_steps, bf16=precision == "bfloat16")
        adamw_step(params, {n: auto.grads[n] for n in rest}, adamw_state, t.lr, (t.beta1, t.beta2), 1e-8, decay)
    after = {n: p.detach().numpy() for n, p in model.named_parameters()}
    return matrices, expected, adamw_names, rest, start, params, after


def muon_checks(seed: int, steps: int = 5, precisions: tuple[str, ...] = ("bfloat16", "float32")) -> list[Check]:
    """Muon as the trainer builds it against the hand-written update, in both precisions of its
    iteration (bfloat16: PyTorch's Muon as it is; float32: learnpos.optim.Muon, here in float64),
    and which parameters each optimizer updates. `precisions`: which iterations to check."""
    rows = {}
    for precision in precisions:
        matrices, expected, adamw_names, rest, start, params, after = _muon_run(seed, steps, precision)
        travelled = {n: rel_err(params[n] - start[n], after[n] - start[n]) for n in after}
        worst = max(matrices, key=travelled.get)
        rows[precision] = (max(abs_err(params[n], after[n]) for n in matrices), travelled[worst], worst)
    checks = []
    if "bfloat16" in rows:
        err_abs, err_rel, worst = rows["bfloat16"]
        checks.append(Check(f"muon: muon_step, {steps} steps, same grads", err_abs, err_rel, MUON_REL_TOL,
                            err_rel <= MUON_REL_TOL, detail=f"vs torch.optim.Muon (bf16 iteration); rel to the "
                                                            f"distance travelled; worst {worst}"))
    if "float32" in rows:
        err_abs, err_rel, worst = rows["float32"]
        checks.append(Check(f"muon: muon_step, {steps} steps, same grads (float32 iteration)", err_abs, err_rel,
                            GRAD_REL_TOL, err_rel <= GRAD_REL_TOL, detail=f"vs learnpos.optim.Muon, float32 "
                            f"iteration (float64 here); rel to the distance travelled; worst {worst}"))
    worst_adamw = max(rest, key=travelled.get)
    split_ok = matrices == expected and adamw_names == set(rest) and not adamw_names & set(matrices)
    return [
        Check("muon: matrices = the blocks' 2-D weights", 0.0 if split_ok else 1.0, 0.0 if split_ok else 1.0,
              EXACT, split_ok, tol_on="abs",
              detail=f"{len(matrices)} to Muon (qkv, proj, fc, gate, proj per block), {len(rest)} to AdamW"),
        *checks,
        Check(f"muon: the rest by adamw_step, {steps} steps", max(abs_err(params[n], after[n]) for n in rest),
              travelled[worst_adamw], GRAD_REL_TOL, travelled[worst_adamw] <= GRAD_REL_TOL,
              detail=f"rel to the distance travelled; worst {worst_adamw}"),
    ]
