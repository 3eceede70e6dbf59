"""The NumPy float64 reference against PyTorch autograd, finite differences and torch.optim.

The models and batches come from `learnpos.fixtures` (small random float64 GPTs: V 30, C 16,
2 heads, 2 layers, L 16, B 3, T 8); every comparison here is written out directly.
"""

import ast
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import learnpos.reference as ref
from learnpos.config import ModelConfig, PositionalConfig
from learnpos.errors import PositionOutOfRange
from learnpos.fixtures import Case, L, T, make_inputs, make_model, reference_params
from learnpos.model import GPT
from learnpos.optim import param_groups
from learnpos.positional import sinusoid_scale, sinusoid_table
from learnpos.reference import layers
from learnpos.verify_optim import adamw_run

REFERENCE_DIR = Path(layers.__file__).parent
GRAD_TOL = 1e-9  # relative to each tensor's largest entry (see learnpos.fixtures.rel_err)

CASES = {
    "learned causal": Case("learned causal"),
    "learned encoder": Case("learned encoder", causal=False, inputs="right-padded"),
    "sinusoidal": Case("sinusoidal", kind="sinusoidal", inputs="left-padded"),
    "none": Case("none", kind="none"),
    "untied head": Case("untied head", tie_weights=False, inputs="offset"),
    "no bias": Case("no bias", bias=False, inputs="repeated"),
    "swiglu": Case("swiglu", mlp="swiglu", inputs="left-padded"),
    "swiglu no bias": Case("swiglu no bias", mlp="swiglu", bias=False, causal=False, inputs="right-padded"),
}
TABLE_RECIPES = ["arange", "offset", "left-padded", "repeated", "random ids per row"]


def rel(actual, expected) -> float:
    """max|a - e| / max|e| over the tensor (element-wise ratios blow up at exact zeros)."""
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-300))


def autograd(model, batch, dlogits=None):
    """(loss, logits, grads by name, dL/dh) from PyTorch, the loss taken in float64."""
    captured = []

    def keep_h(module, inputs):  # h = tok_emb(idx) + pos.embed(...) enters model.drop; returns None
        inputs[0].retain_grad()
        captured.append(inputs[0])

    handle = model.drop.register_forward_pre_hook(keep_h)
    model.zero_grad(set_to_none=True)
    logits = model(batch.idx, position_ids=batch.position_ids, attention_mask=batch.attention_mask).logits
    handle.remove()
    if dlogits is None:
        out = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=-100)
    else:
        out = (logits * torch.from_numpy(dlogits)).sum()  # the random upstream gradient trick
    out.backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    return out.item(), logits.detach().numpy(), grads, captured[0].grad.numpy()


def reference(model, batch, params=None, **kw):
    params = reference_params(model) if params is None else params
    idx, targets, position_ids, mask = batch.numpy()
    loss, logits, cache = ref.forward(params, idx, targets, model.config, position_ids, mask)
    grads, dh = ref.backward(cache, return_dh=True, **kw)
    return loss, logits, grads, dh


# ----------------------------------------------------------------- torch-free package


def test_no_reference_file_mentions_or_imports_torch():
    files = sorted(REFERENCE_DIR.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "layers.py", "model.py", "optim.py"}
    allowed_roots = {"__future__", "math", "dataclasses", "numpy", "learnpos"}
    for f in files:
        source = f.read_text(encoding="utf-8")
        assert "torch" not in source, f"{f.name} mentions torch"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
                if (node.module or "").startswith("learnpos") and not (
                        node.module.startswith("learnpos.reference") or node.module == "learnpos.errors"):
                    pytest.fail(f"{f.name} imports {node.module}, which may pull in torch")
            else:
                continue
            assert roots <= allowed_roots, f"{f.name} imports {roots - allowed_roots}"


def test_reference_runs_with_torch_unimportable():
    """Load the package without learnpos/__init__ (which imports torch) and with torch blocked."""
    pkg = REFERENCE_DIR.parent
    code = f"""
import sys, types
sys.modules["torch"] = None  # any `import torch` now raises ImportError
stub = types.ModuleType("learnpos"); stub.__path__ = [{str(pkg)!r}]
sys.modules["learnpos"] = stub
import numpy as np
import learnpos.reference as ref
from types import SimpleNamespace as NS
cfg = NS(vocab_size=11, n_layer=1, n_head=2, n_embd=8, bias=True, tie_weights=True, causal=True,
         positional=NS(kind="learned", max_len=6, init_std=0.02))
rng = np.random.default_rng(0)
params = {{n: rng.normal(size=s) for n, s in ref.parameter_shapes(cfg).items()}}
params["head.weight"] = params["tok_emb.weight"]
loss, logits, cache = ref.forward(params, rng.integers(0, 11, (2, 5)), rng.integers(0, 11, (2, 5)), cfg)
grads = ref.backward(cache)
assert np.isfinite(loss) and set(grads) == set(ref.trainable_names(cfg))
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules if sys.modules[m] is not None)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ------------------------------------------------------------ the whole model vs autograd


@pytest.mark.parametrize("name", CASES)
def test_every_parameter_gradient_matches_autograd(name):
    case = CASES[name]
    model, batch = make_model(case, seed=3), make_inputs(case.inputs, seed=4)
    t_loss, t_logits, t_grads, t_dh = autograd(model, batch)
    r_loss, r_logits, r_grads, r_dh = reference(model, batch)
    assert abs(r_loss - t_loss) <= 1e-12
    assert rel(r_logits, t_logits) <= 1e-12
    assert list(r_grads) == list(t_grads)  # same names, named_parameters() order
    for n, expected in t_grads.items():
        assert r_grads[n].shape == expected.shape, n
        assert rel(r_grads[n], expected) <= GRAD_TOL, n
    assert rel(r_dh, t_dh) <= GRAD_TOL


@pytest.mark.parametrize("name", ["learned causal", "learned encoder", "untied head"])
def test_backward_from_an_arbitrary_upstream_gradient(name):
    """No targets: backprop a random dL/dlogits (the `(out * dout).sum()` trick)."""
    case = CASES[name]
    model, batch = make_model(case, seed=5), make_inputs(case.inputs, seed=6)
    dlogits = np.random.default_rng(0).normal(size=(batch.idx.shape[0], T, 30))
    _, _, t_grads, _ = autograd(model, batch, dlogits)
    idx, _, position_ids, mask = batch.numpy()
    loss, _, cache = ref.forward(reference_params(model), idx, None, model.config, position_ids, mask)
    assert loss is None
    r_grads = ref.backward(cache, dlogits)
    for n, expected in t_grads.items():
        assert rel(r_grads[n], expected) <= GRAD_TOL, n
    with pytest.raises(ValueError, match="dlogits"):
        ref.backward(cache)


@pytest.mark.parametrize("name", CASES)
def test_finite_differences_agree_with_the_reference(name):
    case = CASES[name]
    model, batch = make_model(case, seed=7), make_inputs(case.inputs, seed=8)
    params = reference_params(model)
    idx, targets, position_ids, mask = batch.numpy()
    loss = lambda: ref.forward(params, idx, targets, model.config, position_ids, mask)[0]  # noqa: E731
    grads = ref.backward(ref.forward(params, idx, targets, model.config, position_ids, mask)[2])
    rng, eps = np.random.default_rng(1), 1e-5
    for n, g in grads.items():
        array = params[n]
        for i in rng.choice(array.size, size=min(4, array.size), replace=False):
            original = array.flat[i]
            array.flat[i] = original + eps
            up = loss()
            array.flat[i] = original - eps
            down = loss()
            array.flat[i] = original
            fd = (up - down) / (2 * eps)
            assert abs(fd - g.flat[i]) <= 1e-6 * np.abs(g).max(), (n, i, fd, g.flat[i])


def test_backward_returns_fresh_gradients_and_tied_is_the_sum_of_both_uses():
    tied_model = make_model(Case("t"), seed=9)
    batch = make_inputs("arange", seed=10)
    params = reference_params(tied_model)
    idx, targets, _, _ = batch.numpy()
    _, _, cache = ref.forward(params, idx, targets, tied_model.config)
    first, second = ref.backward(cache), ref.backward(cache)
    for n in first:  # no hidden accumulation between calls
        assert np.array_equal(first[n], second[n])
    untied_cfg = ModelConfig(**{**vars(tied_model.config), "tie_weights": False})
    untied = dict(params)
    untied["head.weight"] = params["tok_emb.weight"].copy()  # same values, separate parameter
    _, _, cache = ref.forward(untied, idx, targets, untied_cfg)
    split = ref.backward(cache)
    assert "head.weight" not in first
    np.testing.assert_allclose(first["tok_emb.weight"], split["tok_emb.weight"] + split["head.weight"],
                               rtol=0, atol=1e-15)


# ----------------------------------------------------------------- the table gradient


def _capture(recipe, seed=11):
    model, batch = make_model(Case("table", inputs=recipe), seed), make_inputs(recipe, seed + 1)
    _, _, t_grads, t_dh = autograd(model, batch)
    ids = np.arange(T)[None] if batch.position_ids is None else batch.position_ids.numpy()
    return model, batch, t_grads["pos.weight"], t_dh, ids


@pytest.mark.parametrize("recipe", TABLE_RECIPES)
def test_table_gradient_identity_is_exact_and_unused_rows_are_zero(recipe):
    model, batch, dP, dh, ids = _capture(recipe)
    closed_form = ref.table_gradient(dh, ids, L)
    assert np.abs(closed_form - dP).max() <= 1e-12
    unused = np.setdiff1d(np.arange(L), ids)
    assert len(unused) > 0  # every recipe leaves rows that no position reaches
    assert np.all(dP[unused] == 0.0) and np.all(closed_form[unused] == 0.0)
    _, _, r_grads, _ = reference(model, batch)
    assert rel(r_grads["pos.weight"], dP) <= GRAD_TOL
    assert np.all(r_grads["pos.weight"][unused] == 0.0)
    used = np.unique(ids)
    assert np.all(np.abs(dP[used]).max(axis=1) > 0)  # used rows really receive gradient


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 7), st.booleans(), st.integers(0, 2**31 - 1))
def test_table_gradient_is_the_scatter_sum_by_position(B, T_, L_, broadcast, seed):
    rng = np.random.default_rng(seed)
    dh = rng.normal(size=(B, T_, 3))
    ids = rng.integers(0, L_, size=(1 if broadcast else B, T_))
    expected = np.zeros((L_, 3))
    full = np.broadcast_to(ids, (B, T_))
    for b in range(B):
        for t in range(T_):
            expected[full[b, t]] += dh[b, t]
    got = ref.table_gradient(dh, ids, L_)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert np.all(got[np.setdiff1d(np.arange(L_), full)] == 0.0)


# ------------------------------------------------------------------------ single layers


def _t(x):
    return torch.tensor(x, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("with_bias", [True, False])
def test_layernorm_pair_matches_torch(with_bias):
    rng = np.random.default_rng(0)
    x, w, b, dout = rng.normal(size=(2, 3, 6)), rng.normal(size=6), rng.normal(size=6), rng.normal(size=(2, 3, 6))
    y, cache = layers.layernorm_forward(x, w, b if with_bias else None)
    dx, dw, db = layers.layernorm_backward(dout, cache)
    tx, tw, tb = _t(x), _t(w), _t(b)
    ty = F.layer_norm(tx, (6,), tw, tb if with_bias else None, eps=1e-5)
    (ty * torch.from_numpy(dout)).sum().backward()
    assert rel(y, ty.detach().numpy()) <= 1e-14
    assert rel(dx, tx.grad.numpy()) <= 1e-13 and rel(dw, tw.grad.numpy()) <= 1e-14
    assert (db is None) if not with_bias else rel(db, tb.grad.numpy()) <= 1e-14


def test_gelu_linear_and_embedding_pairs_match_torch():
    rng = np.random.default_rng(1)
    x, dout = rng.normal(size=(2, 3, 5)) * 3, rng.normal(size=(2, 3, 5))
    y, cache = layers.gelu_forward(x)
    tx = _t(x)
    ty = F.gelu(tx, approximate="tanh")
    (ty * torch.from_numpy(dout)).sum().backward()
    assert rel(y, ty.detach().numpy()) <= 1e-14 and rel(layers.gelu_backward(dout, cache), tx.grad.numpy()) <= 1e-14

    g = rng.normal(size=(2, 3, 5))
    y, cache = layers.swiglu_forward(x, g)
    tx, tg = _t(x), _t(g)
    ty = F.silu(tx) * tg
    (ty * torch.from_numpy(dout)).sum().backward()
    da, db = layers.swiglu_backward(dout, cache)
    assert rel(y, ty.detach().numpy()) <= 1e-14
    assert max(rel(da, tx.grad.numpy()), rel(db, tg.grad.numpy())) <= 1e-14

    w, b, dout = rng.normal(size=(4, 5)), rng.normal(size=4), rng.normal(size=(2, 3, 4))
    y, cache = layers.linear_forward(x, w, b)
    dx, dw, db = layers.linear_backward(dout, cache)
    tx, tw, tb = _t(x), _t(w), _t(b)
    (F.linear(tx, tw, tb) * torch.from_numpy(dout)).sum().backward()
    assert rel(y, F.linear(tx, tw, tb).detach().numpy()) <= 1e-14
    assert max(rel(dx, tx.grad.numpy()), rel(dw, tw.grad.numpy()), rel(db, tb.grad.numpy())) <= 1e-14

    table, idx, dout = rng.normal(size=(7, 3)), np.array([[1, 1, 6], [0, 1, 1]]), rng.normal(size=(2, 3, 3))
    out, cache = layers.embedding_forward(idx, table)
    tt = _t(table)
    (F.embedding(torch.from_numpy(idx), tt) * torch.from_numpy(dout)).sum().backward()
    assert np.array_equal(out, table[idx])
    dtable = layers.embedding_backward(dout, cache)
    assert rel(dtable, tt.grad.numpy()) <= 1e-15  # row 1 is looked up four times
    assert np.all(dtable[[2, 3, 4, 5]] == 0.0)


def test_cross_entropy_pair_matches_torch_with_ignored_targets():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 4, 6)) * 4
    targets = np.array([[1, -100, 5, 0], [-100, -100, 2, 3]])
    loss, cache = layers.cross_entropy_forward(logits, targets)
    tl = _t(logits)
    t_loss = F.cross_entropy(tl.flatten(0, 1), torch.from_numpy(targets).flatten(), ignore_index=-100)
    t_loss.backward()
    assert abs(loss - t_loss.item()) <= 1e-14
    dlogits = layers.cross_entropy_backward(1.0, cache)
    assert rel(dlogits, tl.grad.numpy()) <= 1e-14
    assert np.all(dlogits[targets == -100] == 0.0)
    loss, cache = layers.cross_entropy_forward(logits, np.full((2, 4), -100))  # nothing to predict
    assert math.isnan(loss) and np.all(layers.cross_entropy_backward(1.0, cache) == 0.0)  # as PyTorch


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("padding", [None, "left", "right"])
def test_attention_mask_and_layer_match_the_model(causal, padding):
    cfg = ModelConfig(vocab_size=30, n_layer=1, n_head=2, n_embd=16, causal=causal,
                      positional=PositionalConfig(kind="none"))
    torch.manual_seed(0)
    model = GPT(cfg).double().eval()
    attn = model.blocks[0].attn
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.4)
    B, T_ = 3, 6
    mask = None
    if padding is not None:
        mask = torch.ones(B, T_, dtype=torch.long)
        if padding == "left":
            mask[1, :2], mask[2, :4] = 0, 0
        else:
            mask[1, 4:], mask[2, 2:] = 0, 0
    positions = torch.arange(T_).view(1, T_)
    t_mask, is_causal = model._attention_mask(positions, mask, None, T_)
    if t_mask is None:
        t_allowed = torch.ones(T_, T_, dtype=torch.bool).tril() if is_causal else torch.ones(T_, T_, dtype=torch.bool)
        t_allowed = t_allowed.view(1, 1, T_, T_)
    else:
        t_allowed = t_mask
    allowed = layers.attention_allowed(T_, causal, None if mask is None else mask.numpy())
    if allowed is None:
        assert not causal and mask is None and bool(t_allowed.all())
    else:
        assert np.array_equal(np.broadcast_to(allowed, t_allowed.shape), t_allowed.numpy())

    rng = np.random.default_rng(3)
    x, dout = rng.normal(size=(B, T_, 16)), rng.normal(size=(B, T_, 16))
    tx = _t(x)
    ty = attn(tx, None, t_mask, is_causal, None, 0)
    (ty * torch.from_numpy(dout)).sum().backward()
    w = {n: p.detach().numpy() for n, p in attn.named_parameters()}
    y, cache = layers.attention_forward(x, w["qkv.weight"], w["qkv.bias"], w["proj.weight"], w["proj.bias"],
                                        2, allowed)
    dx, grads = layers.attention_backward(dout, cache)
    assert rel(y, ty.detach().numpy()) <= 1e-13
    assert rel(dx, tx.grad.numpy()) <= GRAD_TOL
    for n, p in attn.named_parameters():
        assert rel(grads[n], p.grad.numpy()) <= GRAD_TOL, n


def test_sinusoids_equal_the_models_table():
    positions = np.arange(0, 70)
    scale = sinusoid_scale(0.02)
    theirs = sinusoid_table(torch.from_numpy(positions), 16, scale, dtype=torch.float64).numpy()
    assert layers.sinusoid_scale(0.02) == scale
    assert np.abs(layers.sinusoid_table(positions, 16, scale) - theirs).max() <= 1e-15  # same float64 formula


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_a_clear_error():
    model, batch = make_model(Case("e"), seed=12), make_inputs("arange", seed=13)
    params = reference_params(model)
    idx, targets, _, _ = batch.numpy()
    cfg = model.config
    with pytest.raises(PositionOutOfRange, match="max_len=16"):
        ref.forward(params, idx, targets, cfg, position_ids=np.arange(T)[None] + 9)
    with pytest.raises(PositionOutOfRange):
        ref.forward(params, idx, targets, cfg, position_ids=np.arange(T)[None] - 1)
    for kind in ("rope", "alibi"):
        other = ModelConfig(**{**vars(cfg), "positional": PositionalConfig(kind=kind, max_len=L)})
        with pytest.raises(NotImplementedError, match="learned, sinusoidal, none"):
            ref.forward({}, idx, targets, other)
    with pytest.raises(NotImplementedError, match="model.mlp gelu, swiglu and relu2, not 'relu'"):
        ref.forward(params, idx, targets, ModelConfig(**{**vars(cfg), "mlp": "relu"}))
    with pytest.raises(ValueError, match=r"missing \['blocks.0.mlp.gate.weight'"):  # gelu weights, swiglu config
        ref.forward(params, idx, targets, ModelConfig(**{**vars(cfg), "mlp": "swiglu", "mlp_hidden": 64}))
    wrong = dict(params, **{"blocks.0.attn.qkv.weight": np.zeros((16, 16))})
    with pytest.raises(ValueError, match=r"blocks.0.attn.qkv.weight has shape \(16, 16\)"):
        ref.forward(wrong, idx, targets, cfg)
    with pytest.raises(ValueError, match="missing"):
        ref.forward({k: v for k, v in params.items() if k != "ln_f.bias"}, idx, targets, cfg)
    with pytest.raises(ValueError, match="tie_weights"):
        ref.forward(dict(params, **{"head.weight": params["tok_emb.weight"] + 1}), idx, targets, cfg)


# --------------------------------------------------------------------------- optimizers


def _fused_or_not(p, lr, g):
    once = np.array([float(Fraction(float(a)) - Fraction(lr) * Fraction(float(b)))
                     for a, b in zip(p.reshape(-1), g.reshape(-1), strict=True)]).reshape(p.shape)
    return once, p - lr * g


def test_one_sgd_step_is_exactly_p_minus_lr_g():
    rng = np.random.default_rng(4)
    P, g, lr = rng.normal(size=(16, 8)), rng.normal(size=(16, 8)), 0.1
    params = {"pos.weight": P.copy()}
    ref.sgd_step(params, {"pos.weight": g}, lr)
    assert np.array_equal(params["pos.weight"], P - lr * g)  # bit for bit
    tp = torch.tensor(P, requires_grad=True)
    tp.grad = torch.tensor(g)
    torch.optim.SGD([tp], lr=lr).step()
    once, twice = _fused_or_not(P, lr, g)
    got = tp.detach().numpy()
    assert np.all((got == once) | (got == twice))  # torch: the same formula, fused or not


def test_sgd_with_momentum_and_weight_decay_tracks_torch():
    rng = np.random.default_rng(5)
    shapes = {"a": (4, 3), "b": (3,), "pos.weight": (6, 3)}
    decay = {"a": 0.1, "b": 0.0, "pos.weight": 0.0}
    params = {n: rng.normal(size=s) for n, s in shapes.items()}
    tparams = {n: torch.tensor(v, requires_grad=True) for n, v in params.items()}
    opt = torch.optim.SGD([{"params": [tparams[n]], "weight_decay": decay[n]} for n in shapes], lr=0.05,
                          momentum=0.9)
    state = None
    for _ in range(5):
        grads = {n: rng.normal(size=s) for n, s in shapes.items()}
        for n, g in grads.items():
            tparams[n].grad = torch.tensor(g)
        opt.step()
        state = ref.sgd_step(params, grads, 0.05, momentum=0.9, weight_decay=decay, state=state)
    for n in shapes:
        assert np.abs(params[n] - tparams[n].detach().numpy()).max() <= 1e-14, n


def test_adamw_ten_steps_on_given_gradients_match_torch():
    rng = np.random.default_rng(6)
    shapes = {"w": (5, 4), "b": (4,), "pos.weight": (8, 4)}
    decay = {"w": 0.1, "b": 0.0, "pos.weight": 0.0}
    params = {n: rng.normal(size=s) for n, s in shapes.items()}
    tparams = {n: torch.tensor(v, requires_grad=True) for n, v in params.items()}
    opt = torch.optim.AdamW([{"params": [tparams[n]], "weight_decay": decay[n]} for n in shapes], lr=1e-2,
                            betas=(0.9, 0.99), eps=1e-8)
    state: dict = {}
    for step in range(10):
        grads = {n: rng.normal(size=s) * 10.0 ** -step for n, s in shapes.items()}  # shrinking: eps matters
        grads["pos.weight"][5:] = 0.0  # rows no sequence reaches
        for n, g in grads.items():
            tparams[n].grad = torch.tensor(g)
        opt.step()
        ref.adamw_step(params, grads, state, 1e-2, (0.9, 0.99), 1e-8, decay)
    for n in shapes:
        assert np.abs(params[n] - tparams[n].detach().numpy()).max() <= 1e-10, n
    assert state["w"]["step"] == 10
    assert np.array_equal(params["pos.weight"][5:], tparams["pos.weight"].detach().numpy()[5:])


@pytest.mark.parametrize("end_to_end", [False, True])
def test_adamw_ten_steps_with_the_models_parameter_groups_match_torch(end_to_end):
    """Optimizer alone (autograd's gradients, all three groups) and end to end (reference
    gradients; no biases, see `learnpos.verify_optim.adamw_checks` for why)."""
    case = Case("adamw no-bias", bias=False) if end_to_end else Case("adamw")
    run = adamw_run(case, seed=14, steps=10, reference_gradients=end_to_end)
    assert max(abs(a - b) for a, b in zip(run.losses_ref, run.losses_torch, strict=True)) <= 1e-10
    for n in run.start:
        assert np.abs(run.ref_final[n] - run.torch_final[n]).max() <= 1e-10, n
        assert np.abs(run.torch_final[n] - run.start[n]).max() > 1e-4, n  # every tensor really moved
    assert run.ref_decay == run.torch_decay


@pytest.mark.parametrize("decay_positions", [False, True])
def test_weight_decay_policy_is_the_models_parameter_groups(decay_positions):
    model = make_model(Case("groups", tables=(("turn", 5, True), ("speaker", 3))), seed=15)
    model.config.positional.weight_decay = model.pos.weight_decay = decay_positions
    groups = param_groups(model, 0.1)
    torch_decay = {n: g["weight_decay"] for g in groups for n, p in model.named_parameters()
                   if any(p is q for q in g["params"])}
    params = reference_params(model)
    policy = ref.weight_decay_policy({n: params[n] for n in ref.trainable_names(model.config)}, 0.1, model.config)
    assert policy == torch_decay
    assert policy["pos.weight"] == (0.1 if decay_positions else 0.0)
    assert policy["tables.turn.weight"] == 0.1 and policy["tables.speaker.weight"] == 0.0
