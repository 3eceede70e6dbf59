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
    random offsets (train|eval) a table trained with shifted ids (model.positional.offset):
                               dL/dP = the closed form and the reference at the shifted ids,
                               unreached rows exactly 0.0; evaluation unshifted
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

import numpy as np
import torch

import learnpos.reference.model as ref_model
from learnpos.config import PositionalConfig
from learnpos.fixtures import (
    EXACT,
    FD_ENTRIES,
    FD_EPS,
    FD_REL_TOL,
    GRAD_CASES,
    GRAD_REL_TOL,
    TABLE_ABS_TOL,
    TABLE_RECIPES,
    TABLES_CASE,
    B,
    Case,
    Check,
    Inputs,
    L,
    T,
    abs_err,
    autograd_side,
    make_inputs,
    make_model,
    model_config,
    reference_params,
    reference_side,
    rel_err,
)
from learnpos.model import GPT
from learnpos.reference.layers import table_gradient
from learnpos.verify_optim import adamw_checks, muon_checks, sgd_checks

# ---------------------------------------------------------------------------- checks


def gradient_checks(case: Case, seed: int) -> list[Check]:
    """Loss, logits and every parameter gradient: reference vs autograd."""
    model, batch = make_model(case, seed), make_inputs(case.inputs, seed + 2, case.tables)
    auto, refr = autograd_side(model, batch), reference_side(model, batch)
    checks = []
    for what, a, b in (("loss", refr.loss, auto.loss), ("logits", refr.logits, auto.logits)):
        rel = rel_err(np.asarray(a), np.asarray(b))
        checks.append(Check(f"{what} {case.name}", abs_err(a, b), rel, GRAD_REL_TOL, rel <= GRAD_REL_TOL))
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
        checks.append(Check(f"grad {case.name}: {name}", abs_err(got, expected), rel, GRAD_REL_TOL,
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
    abs_id = abs_err(closed_form, dP)
    ok_id = abs_id <= TABLE_ABS_TOL and zero["autograd"] and zero["identity"]
    rel_ref = rel_err(dP_ref, dP)
    return [
        Check(f"table identity {recipe}", abs_id, rel_err(closed_form, dP), TABLE_ABS_TOL, ok_id, tol_on="abs",
              detail=f"{used}; unused rows exactly 0.0: autograd {zero['autograd']}, identity {zero['identity']}"),
        Check(f"table reference {recipe}", abs_err(dP_ref, dP), rel_ref, GRAD_REL_TOL,
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
        abs_id, rel_ref = abs_err(closed_form, dT), rel_err(dT_ref, dT)
        checks += [
            Check(f"tables {name}: identity", abs_id, rel_err(closed_form, dT), TABLE_ABS_TOL,
                  abs_id <= TABLE_ABS_TOL and zero["autograd"] and zero["identity"] and len(unused) > 0,
                  tol_on="abs", detail=f"{rows - len(unused)}/{rows} rows used; unused rows exactly 0.0: "
                                       f"autograd {zero['autograd']}, identity {zero['identity']}"),
            Check(f"tables {name}: reference", abs_err(dT_ref, dT), rel_ref, GRAD_REL_TOL,
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
        checks.append(Check(f"randomized positions ({mode})", abs_err(auto.grads["pos.weight"],
                                                                        refr.grads["pos.weight"]),
                            rel, GRAD_REL_TOL, ok, detail=f"rows {rows[0].tolist()} of {L}; increasing {increasing}; "
                                                          f"logits and dL/dP = the reference at those ids"))
    return checks


def offset_checks(seed: int) -> list[Check]:
    """Random offsets (model.positional.offset = K): a table of L rows, training positions
    0..T-1 with T = L - K, each sequence shifted by k ~ U{0..K}. In training dL/dP must be
    the closed form at the shifted ids (rows no shifted id reaches exactly 0.0) and equal the
    reference given those ids; in evaluation the ids are not shifted."""
    K = L - T
    plain = make_model(Case("offset"), seed)
    cfg = model_config(Case("offset"))
    cfg.positional = PositionalConfig(kind="learned", max_len=T, offset=K)
    model = GPT(cfg).double()
    model.load_state_dict(plain.state_dict())  # the same L rows
    batch = make_inputs("arange", seed + 2)
    checks = []
    for mode in ("train", "eval"):
        model.train(mode == "train")  # dropout is 0: the mode only picks the position rule
        torch.manual_seed(seed + 7)
        ids = model.pos.plan(None, 0, T, B).expand(B, T)  # what the forward below draws
        torch.manual_seed(seed + 7)
        auto = autograd_side(model, batch)
        refr = reference_side(plain, Inputs(batch.idx, batch.targets, ids.contiguous(), None, {}))
        shifts = (ids[:, 0]).tolist()
        unused = np.setdiff1d(np.arange(L), ids.numpy())
        dP = auto.grads["pos.weight"]
        closed = table_gradient(auto.dh, ids.numpy(), L)
        zero = not np.any(dP[unused] != 0.0) and not np.any(closed[unused] != 0.0)
        rel = max(rel_err(dP, refr.grads["pos.weight"]), rel_err(auto.logits, refr.logits))
        consecutive = bool((ids[:, 1:] - ids[:, :-1] == 1).all())
        if mode == "train":  # some sequence shifted, all inside the table, some row left unreached
            shape_ok = consecutive and max(shifts) > 0 and max(shifts) <= K and len(unused) > 0
        else:
            shape_ok = shifts == [0] * B and consecutive
        ok = rel <= GRAD_REL_TOL and abs_err(closed, dP) <= TABLE_ABS_TOL and zero and shape_ok
        checks.append(Check(f"random offsets ({mode})", abs_err(dP, refr.grads["pos.weight"]), rel, GRAD_REL_TOL, ok,
                            detail=f"shifts {shifts} (0..{K}), {L - len(unused)}/{L} rows used; closed form and "
                                   f"reference at the shifted ids; unused rows exactly 0.0: {zero}"))
    return checks


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
    groups.append(("muon", lambda: muon_checks(seed)))
    groups.append(("randomized positions", lambda: randomized_checks(seed)))
    groups.append(("random offsets", lambda: offset_checks(seed)))
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
