"""`learnpos verify`: passes on the real code, fails (exit 1) on every kind of planted bug."""

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest

import learnpos.fixtures as fixtures
import learnpos.reference.layers as ref_layers
import learnpos.reference.model as ref_model
import learnpos.verify as verify
import learnpos.verify_optim as verify_optim
from learnpos.fixtures import Case, Check, rel_err
from learnpos.verify import format_table, main, run_checks


@pytest.fixture(scope="module")
def checks(verify_checks):
    return verify_checks


def by_name(rows: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in rows}


def test_every_check_passes_and_every_tensor_is_covered(checks):
    rows = by_name(checks)
    assert len(rows) == len(checks)  # names are unique
    assert [c.name for c in checks if not c.ok] == []
    for case in fixtures.GRAD_CASES:
        model = fixtures.make_model(case, 0)
        for name, _ in model.named_parameters():
            assert f"grad {case.name}: {name}" in rows
        assert f"fd {case.name}" in rows and f"loss {case.name}" in rows
    for recipe in fixtures.TABLE_RECIPES:
        assert rows[f"table identity {recipe}"].max_abs_err <= 1e-12
        assert f"table reference {recipe}" in rows
    for name in ("sgd: torch step = P - lr*g", "sgd: sgd_step = P - lr*g", "adamw: 10-step loss trajectory",
                 "adamw: parameters after 10 steps", "adamw: unused rows of P unchanged",
                 "sinusoidal: no trainable table", "none: no trainable table"):
        assert name in rows
    grad_rows = [c for c in checks if c.name.startswith("grad ")]
    assert all(c.tol == 1e-9 and c.tol_on == "rel" for c in grad_rows)
    assert max(c.max_rel_err for c in grad_rows) < 1e-12  # far inside the tolerance, not just under it


def test_a_slightly_wrong_layernorm_backward_fails_verify(monkeypatch, capsys):
    def wrong(dout, cache):  # dx off by one part in a million
        dx, dweight, dbias = ref_layers.layernorm_backward(dout, cache)
        return dx * (1 + 1e-6), dweight, dbias

    monkeypatch.setattr(ref_model, "layernorm_backward", wrong)
    for rows in ("sgd_checks", "adamw_checks", "muon_checks"):  # the optimizer rows: asserted elsewhere
        monkeypatch.setattr(verify, rows, lambda *a, **kw: [])
    assert main(["--json"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    record = json.loads(out[-1])
    assert record["ok"] is False
    status = {c["name"]: c["ok"] for c in record["checks"]}
    assert status["grad learned causal: ln_f.weight"] is True  # computed before the first wrong dx
    assert status["grad learned causal: blocks.1.mlp.proj.weight"] is False  # everything upstream of ln_f
    assert status["grad learned causal: tok_emb.weight"] is False
    assert status["table reference arange"] is False
    assert status["loss learned causal"] is True  # the forward is untouched
    assert "VERIFY FAILED" in "\n".join(out)


def test_finite_differences_catch_a_wrong_reference_without_autograd(monkeypatch):
    def forgets_the_variance_term(dout, cache):  # a classic layer-norm derivation slip
        g = dout * cache.weight
        dx = cache.rstd * (g - g.mean(-1, keepdims=True))
        _, dweight, dbias = ref_layers.layernorm_backward(dout, cache)
        return dx, dweight, dbias

    assert verify.finite_difference_check(Case("fd"), 0).ok
    monkeypatch.setattr(ref_model, "layernorm_backward", forgets_the_variance_term)
    check = verify.finite_difference_check(Case("fd"), 0)
    assert not check.ok and check.max_rel_err > 1e-3


def _last_write_wins(dh, position_ids, L):  # fancy assignment instead of scatter-add
    B, T, C = dh.shape
    dP = np.zeros((L, C))
    dP[np.broadcast_to(position_ids, (B, T)).reshape(-1)] = dh.reshape(-1, C)
    return dP


def test_a_table_gradient_that_drops_repeated_ids_fails(monkeypatch):
    monkeypatch.setattr(verify, "table_gradient", _last_write_wins)
    monkeypatch.setattr(ref_layers, "table_gradient", _last_write_wins)
    rows = by_name(verify.table_checks("repeated", 0))
    assert not rows["table identity repeated"].ok
    assert not rows["table reference repeated"].ok


def test_wrong_optimizers_fail(monkeypatch):
    real_sgd = verify_optim.sgd_step

    def decays_everything(params, grads, lr, momentum=0.0, weight_decay=0.0, state=None):  # P included
        return real_sgd(params, grads, lr, momentum, 0.1, state)

    def no_bias_correction(params, grads, state, lr, betas, eps, weight_decay):
        for name, g in grads.items():
            s = state.setdefault(name, {"m": np.zeros_like(g), "v": np.zeros_like(g)})
            s["m"] = betas[0] * s["m"] + (1 - betas[0]) * g
            s["v"] = betas[1] * s["v"] + (1 - betas[1]) * g * g
            params[name] -= lr * s["m"] / (np.sqrt(s["v"]) + eps)
        return state

    monkeypatch.setattr(verify_optim, "sgd_step", decays_everything)
    rows = by_name(verify_optim.sgd_checks(0))
    assert not rows["sgd: sgd_step = P - lr*g"].ok and rows["sgd: torch step = P - lr*g"].ok
    monkeypatch.setattr(verify_optim, "adamw_step", no_bias_correction)
    rows = by_name(verify_optim.adamw_checks(0, steps=3))
    assert not rows["adamw: adamw_step, 3 steps, same grads"].ok
    assert not rows["adamw: parameters after 3 steps"].ok


def test_a_check_that_crashes_is_a_failed_row_not_a_traceback(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise IndexError("planted")

    monkeypatch.setattr(ref_model, "attention_forward", broken)
    rows = run_checks(0)
    crashed = [c for c in rows if "IndexError: planted" in c.detail]
    assert crashed and not any(c.ok for c in crashed)
    assert main([]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_relative_error_is_measured_against_the_tensors_scale():
    expected = np.array([[1.0, 0.0], [1e-17, -2.0]])
    assert rel_err(expected + np.array([[0, 0], [1e-16, 0]]), expected) == pytest.approx(1e-16 / 2.0)
    assert rel_err(np.zeros(3), np.zeros(3)) == 0.0
    assert math.isinf(rel_err(np.array([1e-30]), np.zeros(1)))  # a gradient where none should be


def test_format_table_marks_failures_and_counts_them():
    rows = [Check("good", 1e-16, 1e-15, 1e-9, True), Check("bad", 1.0, 0.5, 1e-12, False, tol_on="abs")]
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[1].endswith("ok") and "FAIL" in lines[2] and "abs 1e-12" in lines[2]
    assert lines[-1] == "2 checks, 1 failed: bad"


def test_learnpos_verify_command_prints_the_table_then_json_last():
    """`learnpos verify --json` as a user runs it, with another seed than the `checks` fixture
    (other models, other batches): all pass, exit 0, the table, then JSON last, < 60 s."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "learnpos.cli", "verify", "--json", "--seed", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["check", "max_abs_err", "max_rel_err", "tol"]
    assert any(line.startswith("grad learned causal: pos.weight") and line.split()[-1] == "ok" for line in lines)
    summary = json.loads(lines[-1])
    assert summary["ok"] is True and len(summary["checks"]) > 100
    assert all(set(c) >= {"name", "max_abs_err", "max_rel_err", "ok"} for c in summary["checks"])
    assert all(c["ok"] is True for c in summary["checks"])
    assert time.perf_counter() - t0 < 60


@pytest.mark.parametrize("wrong", ["no nesterov", "no shape scale", "four iterations", "float64 iteration",
                                   "decay with the scaled lr"])
def test_a_wrong_muon_fails_verify(monkeypatch, wrong):
    """Each plausible slip in the hand-written Muon fails its row, and so does running its
    iteration in float64: the tolerance is tighter than what PyTorch's bf16 rounding moves."""
    from learnpos.reference import optim as ref_optim

    real = ref_optim.muon_step

    def slipped(params, grads, state, lr, momentum, nesterov, weight_decay, ns_steps=5, **kw):
        if wrong == "no nesterov":
            return real(params, grads, state, lr, momentum, False, weight_decay, ns_steps=ns_steps, **kw)
        if wrong == "four iterations":
            return real(params, grads, state, lr, momentum, nesterov, weight_decay, ns_steps=ns_steps - 1, **kw)
        if wrong == "float64 iteration":
            return real(params, grads, state, lr, momentum, nesterov, weight_decay, ns_steps=ns_steps, bf16=False)
        before = {n: params[n].copy() for n in grads}
        real(params, grads, state, lr, momentum, nesterov, weight_decay, ns_steps=ns_steps, **kw)
        for n in grads:
            A, B = params[n].shape
            scale = (A / B) ** 0.5 if A > B else 1.0
            if wrong == "no shape scale":
                decayed = before[n] * (1 - lr * weight_decay)
                params[n][...] = decayed + (params[n] - decayed) / scale
            else:  # decay with lr * scale instead of lr
                params[n] -= before[n] * lr * weight_decay * (scale - 1)
        return state

    monkeypatch.setattr(verify_optim, "muon_step", slipped)
    row = by_name(verify_optim.muon_checks(0, precisions=("bfloat16",)))["muon: muon_step, 5 steps, same grads"]
    assert not row.ok, (wrong, row.max_rel_err)
