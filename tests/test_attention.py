"""The attention kernels behind `model.attention` (learnpos/attention.py): the matmul kernel
against float64 SDPA, which kernel each mode picks, and that the choice does not change the model."""

import pytest
import torch
import torch.nn.functional as F

import learnpos.attention as A
from learnpos.config import ModelConfig, PositionalConfig
from learnpos.model import GPT
from learnpos.positional import position_ids_from_mask

# ------------------------------------------------------------------ the matmul kernel


def _attention_case(B, nh, T, S, hs, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, nh, n, hs, generator=g) for n in (T, S, S))
    dy = torch.randn(B, nh, T, hs, generator=g)
    return q, k, v, dy


def _grads(fn, q, k, v, dy, dtype):
    """[y, dq, dk, dv] in float64, with q, k, v, dy rounded to dtype and fn run in dtype."""
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    y = fn(*leaves)
    y.backward(dy.to(dtype))
    return [y.double()] + [t.grad.double() for t in leaves]


def _rel(x, exact):
    return ((x - exact).norm() / exact.norm()).item()


# The kernel's error may be at most this multiple of bf16 SDPA's error on the same inputs. Both
# round q, k, v, dy to bf16 and accumulate every matmul in fp32, so both carry the same input
# rounding; the kernel also rounds to bf16 intermediates that SDPA's fused CPU kernel keeps in
# fp32 buffers (the logits s before the softmax, dp - rowsum in the backward), each one more
# rounding of the same 2^-9 relative size, which adds to the input rounding rather than
# multiplying it. Measured: 1.0-1.5x bf16 SDPA's error (relative Frobenius norm, these five cases
# with ten seeds each). A real bug is far off: a lost scale, or one block's dk or dv assigned
# instead of summed, gives errors of 0.3-3 against bf16 SDPA's ~5e-3.
BF16_SDPA_ERROR_FACTOR = 2.0


@pytest.mark.parametrize("case", ["causal-3-blocks", "causal-cache", "bool-mask", "additive-mask",
                                  "causal-key-mask"])
def test_matmul_attention_matches_float64_sdpa(case):
    """The matmul kernel in bf16 (query blocks, fp32 dk/dv sums) against float64 SDPA: output
    and all three gradients as close as bf16 SDPA's own, within BF16_SDPA_ERROR_FACTOR."""
    B, nh, hs = 2, 3, 16
    T, S = (150, 150) if case != "causal-cache" else (70, 100)  # 150 = blocks of 64, 64, 22
    q, k, v, dy = _attention_case(B, nh, T, S, hs)
    mask, causal = None, case.startswith("causal")
    if case in ("bool-mask", "causal-key-mask"):  # right padding on the second row; (B, 1, 1, S)
        keep = torch.ones(B, S, dtype=torch.bool)  # broadcasts over queries, also when sliced per block
        keep[1, 120:] = False
        mask = keep.view(B, 1, 1, S)
    elif case == "additive-mask":  # an ALiBi-like distance bias plus causality
        dist = (torch.arange(T).view(T, 1) - torch.arange(S).view(1, S)).float()
        slopes = torch.tensor([0.5, 0.25, 0.125]).view(1, nh, 1, 1)
        mask = (-slopes * dist.abs()).masked_fill(dist < 0, float("-inf"))
    if case == "causal-cache":  # T new queries after S - T cached keys: query t sees keys <= S - T + t
        sd_mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)
    elif case == "causal-key-mask":
        sd_mask = mask & torch.ones(T, S, dtype=torch.bool).tril()
    else:
        sd_mask = mask

    def sdpa(dtype):
        m = sd_mask if sd_mask is None or sd_mask.dtype == torch.bool else sd_mask.to(dtype)
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=m,
                                                              is_causal=case == "causal-3-blocks")

    exact = _grads(sdpa(torch.float64), q, k, v, dy, torch.float64)
    bf16_sdpa = _grads(sdpa(torch.bfloat16), q, k, v, dy, torch.bfloat16)
    ours = _grads(lambda q, k, v: A.matmul_attention(q, k, v, mask, causal), q, k, v, dy, torch.bfloat16)
    for name, e, ref, o in zip(["y", "dq", "dk", "dv"], exact, bf16_sdpa, ours, strict=True):
        ref_err, err = _rel(ref, e), _rel(o, e)
        assert ref_err < 1e-2, f"{case}: bf16 SDPA's {name} is off by {ref_err:.2e}, not bf16 rounding"
        assert err <= BF16_SDPA_ERROR_FACTOR * ref_err, \
            f"{case}: {name} relative error {err:.2e} > {BF16_SDPA_ERROR_FACTOR} x bf16 SDPA's {ref_err:.2e}"


@pytest.mark.parametrize("causal", [True, False])
def test_matmul_attention_in_float64_equals_sdpa_for_any_query_block(causal):
    """In float64 the kernel is SDPA to rounding (dk/dv sums stay float64), whatever the block size."""
    q, k, v, dy = _attention_case(2, 3, 150, 150, 16, seed=1)
    exact = _grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                   q, k, v, dy, torch.float64)
    for block in (1, 16, A.QUERY_BLOCK, 150, 1000):
        ours = _grads(lambda q, k, v, block=block: A.matmul_attention(q, k, v, None, causal, query_block=block),
                      q, k, v, dy, torch.float64)
        for name, e, o in zip(["y", "dq", "dk", "dv"], exact, ours, strict=True):
            assert _rel(o, e) < 1e-13, (block, name, _rel(o, e))


def test_the_module_holds_no_mutable_state():
    """Constants only: nothing a call or a benchmark could change for the next caller."""
    mutable = [n for n, x in vars(A).items() if not n.startswith("__") and isinstance(x, (dict, list, set))]
    assert mutable == []
    assert (A.MAX_KEYS, A.QUERY_BLOCK, A.MODES) == (256, 64, ("auto", "sdpa", "matmul"))


# ---------------------------------------------------------------------- which kernel


def _qkv(dtype=torch.bfloat16, S=64, grad=True):
    q = torch.zeros(1, 2, 8, 4, dtype=dtype, requires_grad=grad)
    k = torch.zeros(1, 2, S, 4, dtype=dtype)
    return q, k, k.clone()


def test_auto_takes_the_matmul_kernel_only_where_it_was_measured_faster():
    """CPU bf16 with gradients, <= 256 keys, no dropout, constant mask; SDPA everywhere else."""
    def auto(q, k, v, mask=None, dropout_p=0.0):
        return A.use_matmul(q, k, v, mask, dropout_p, "auto")

    assert auto(*_qkv())
    assert auto(*_qkv(S=256))
    assert auto(*_qkv(), torch.zeros(8, 64))
    assert not auto(*_qkv(S=257))
    assert not auto(*_qkv(dtype=torch.float32))
    assert not auto(*_qkv(grad=False))
    assert not auto(*_qkv(), dropout_p=0.1)
    assert not auto(*_qkv(), torch.zeros(8, 64, requires_grad=True))
    q, k, v = _qkv()
    assert not auto(q, k.float(), v.float())  # fp32 cache under autocast


def test_sdpa_and_matmul_modes_and_what_the_kernel_cannot_do(monkeypatch):
    """sdpa: never the kernel. matmul: the kernel in any dtype, without gradients, at any length;
    SDPA only where the kernel does not apply (dropout, a mask with gradients, mixed dtypes,
    torch.compile), in every mode."""
    for args in (_qkv(), _qkv(S=4096), _qkv(dtype=torch.float32)):
        assert not A.use_matmul(*args, None, 0.0, "sdpa")
    for args in (_qkv(), _qkv(S=4096), _qkv(dtype=torch.float32), _qkv(dtype=torch.float64), _qkv(grad=False)):
        assert A.use_matmul(*args, None, 0.0, "matmul")
    q, k, v = _qkv()
    for mode in ("auto", "matmul"):
        assert not A.use_matmul(q, k, v, None, 0.1, mode)
        assert not A.use_matmul(q, k, v, torch.zeros(8, 64, requires_grad=True), 0.0, mode)
        assert not A.use_matmul(q, k.float(), v.float(), None, 0.0, mode)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not A.use_matmul(q, k, v, None, 0.0, "matmul") and not A.use_matmul(q, k, v, None, 0.0, "auto")
    with pytest.raises(ValueError, match="attention mode"):
        A.use_matmul(q, k, v, None, 0.0, "flash")
    with pytest.raises(ValueError, match="is_causal"):
        A.attend(q, k, v, None, True, 0.0, "sdpa")  # 8 queries, 64 keys: the alignments differ


def _count_kernel_calls(monkeypatch) -> list:
    """Count the calls `attend` makes to the matmul kernel (the module attribute it looks up)."""
    calls = []
    original = A.matmul_attention
    monkeypatch.setattr(A, "matmul_attention", lambda *a, **kw: calls.append(a[0].dtype) or original(*a, **kw))
    return calls


def _model(attention="auto", kind="learned", causal=True, T=130, n_layer=2, dropout=0.0):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, n_layer=n_layer, n_head=2, n_embd=32, dropout=dropout, causal=causal,
                      attention=attention, positional=PositionalConfig(kind=kind, max_len=T))
    return GPT(cfg)


def test_bf16_cpu_training_takes_the_matmul_attention_and_matches_fp32(monkeypatch):
    """Under bf16 autocast on CPU a training forward (model.attention=auto) uses the matmul
    kernel; its loss and gradients agree with the float32 SDPA model to bf16 accuracy."""
    model = _model()
    idx = torch.randint(0, 40, (3, 130))
    calls = _count_kernel_calls(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_bf16 = model(idx, targets=idx).loss
    loss_bf16.backward()
    assert calls == [torch.bfloat16] * 2  # one per layer
    g_bf16 = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss = model(idx, targets=idx).loss
    loss.backward()
    assert len(calls) == 2  # float32: SDPA
    assert abs(loss_bf16.item() - loss.item()) < 1e-2 * loss.item()
    for name in ("pos.weight", "blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight"):
        exact = dict(model.named_parameters())[name].grad
        rel = ((g_bf16[name] - exact).norm() / exact.norm()).item()
        assert rel < 5e-2, (name, rel)


def test_sdpa_mode_never_calls_the_matmul_kernel(monkeypatch):
    """model.attention=sdpa: SDPA even for bf16 CPU training, where auto takes the kernel."""
    model = _model("sdpa")
    calls = _count_kernel_calls(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randint(0, 40, (2, 130)), targets=torch.randint(0, 40, (2, 130))).loss
    loss.backward()
    with torch.no_grad():
        model.double()(torch.randint(0, 40, (2, 20)))
    assert calls == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matmul_mode_uses_the_kernel_in_float32_and_float64(monkeypatch, dtype):
    """model.attention=matmul: the kernel also where auto would not (wide dtypes, no gradients),
    SDPA only under dropout."""
    model = _model("matmul").to(dtype)
    idx = torch.randint(0, 40, (2, 20))
    calls = _count_kernel_calls(monkeypatch)
    model(idx, targets=idx).loss.backward()
    with torch.no_grad():
        model.eval()(idx)
    assert calls == [dtype] * 4
    dropped = _model("matmul", dropout=0.1).to(dtype).train()
    dropped(idx, targets=idx).loss.backward()
    assert len(calls) == 4


def _loss_and_grads(model, idx, attention_mask=None):
    model.zero_grad()
    pos = position_ids_from_mask(attention_mask) if attention_mask is not None else None
    loss = model(idx, targets=idx, position_ids=pos, attention_mask=attention_mask).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind,causal,padded", [("learned", True, False),  # is_causal: 3 query blocks
                                                ("alibi", True, False),  # additive mask
                                                ("rope", True, True),  # bool mask, left padding
                                                ("learned", False, True)])  # encoder, key padding
def test_float64_model_is_the_same_with_matmul_and_sdpa_attention(monkeypatch, kind, causal, padded):
    """A float64 model's loss and gradients do not depend on model.attention (to 1e-12 relative)."""
    torch.manual_seed(1)
    idx = torch.randint(0, 40, (3, 150))
    attention_mask = None
    if padded:
        attention_mask = torch.ones(3, 150, dtype=torch.long)
        attention_mask[1, :40] = 0  # left padding (decoder) or key padding (encoder)
        attention_mask[2, :7] = 0
    sdpa = _model("sdpa", kind, causal, T=150).double()
    loss_s, grads_s = _loss_and_grads(sdpa, idx, attention_mask)
    calls = _count_kernel_calls(monkeypatch)
    matmul = _model("matmul", kind, causal, T=150).double()
    loss_m, grads_m = _loss_and_grads(matmul, idx, attention_mask)
    assert calls == [torch.float64] * 2
    assert abs(loss_m - loss_s) <= 1e-12 * abs(loss_s)
    for name, g in grads_s.items():
        assert ((grads_m[name] - g).norm() / g.norm()).item() <= 1e-12, name


@pytest.mark.parametrize("kind", ["learned", "alibi"])
def test_kv_cache_decoding_with_the_matmul_kernel_matches_sdpa(kind):
    """Incremental decoding (causal masks offset by the cache, one-token steps) through the
    matmul kernel gives SDPA's full-recomputation logits (float64)."""
    torch.manual_seed(2)
    idx = torch.randint(0, 40, (3, 14))
    full = _model("sdpa", kind, T=14).double().eval()(idx).logits
    model = _model("matmul", kind, T=14).double().eval()
    cache = model.new_cache(14)
    with torch.no_grad():
        steps = [model(idx[:, :5], past_kv=cache).logits]
        steps += [model(idx[:, t:t + 1], past_kv=cache).logits for t in range(5, 9)]
        steps.append(model(idx[:, 9:], past_kv=cache).logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-12, rtol=1e-12)
