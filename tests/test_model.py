"""The model: KV cache equals recomputation, left padding equals prompts alone, encoder mode."""

import pytest
import torch

from learnpos.config import ModelConfig, PositionalConfig
from learnpos.errors import PositionOutOfRange
from learnpos.model import GPT
from learnpos.positional import position_ids_from_mask

KINDS = ["learned", "sinusoidal", "rope", "alibi", "none"]
V = 23


def make(kind="learned", causal=True, max_len=32, n_head=4, seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, n_layer=2, n_head=n_head, n_embd=32, causal=causal,
                      positional=PositionalConfig(kind=kind, max_len=max_len), **kw)
    model = GPT(cfg).eval()
    if kind == "learned":  # make positions matter as much as tokens in these checks
        with torch.no_grad():
            model.pos.weight.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("kind", KINDS)
def test_kv_cache_matches_full_recomputation(kind):
    model = make(kind)
    torch.manual_seed(1)
    idx = torch.randint(0, V, (3, 14))
    full = model(idx).logits  # (B, T, V)
    cache = model.new_cache(14)
    steps = [model(idx[:, :5], past_kv=cache).logits]  # prefill 5, then one token at a time,
    for t in range(5, 9):
        steps.append(model(idx[:, t:t + 1], past_kv=cache).logits)
    steps.append(model(idx[:, 9:], past_kv=cache).logits)  # then a chunk of 5 (offset causal mask)
    assert cache.length == 14
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=2e-5, rtol=1e-4)



@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal", [True, False])
def test_reading_some_positions_equals_the_full_forward_there(kind, causal):
    """forward(read=...) returns the outputs at the read positions: its hidden states, logits
    and the gradients of every parameter equal the full forward's at those positions, with and
    without a padding mask, and a last_only prefill fills the KV cache as the full one."""
    model = make(kind, causal=causal).double()  # float64: the two paths differ by rounding alone
    torch.manual_seed(2)
    idx = torch.randint(0, V, (3, 9))
    read = torch.tensor([[8, 2], [0, 5], [4, 4]])  # any positions, repeats allowed
    rows = torch.arange(3).unsqueeze(1)
    for mask in (None, torch.tensor([[1] * 9, [0, 0] + [1] * 7, [1] * 9])):
        full = model(idx, attention_mask=mask, return_hidden=True).hidden[rows, read]
        part = model(idx, attention_mask=mask, return_hidden=True, read=read).hidden
        assert part.shape == (3, 2, 32)
        torch.testing.assert_close(part, full, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(model(idx, read=read).logits, model(idx).logits[rows, read], atol=1e-12, rtol=1e-10)
    grads = []
    for use_read in (False, True):
        model.zero_grad()
        out = model(idx, read=read, return_hidden=True).hidden if use_read else \
            model(idx, return_hidden=True).hidden[rows, read]
        (out * torch.linspace(-1, 1, 32, dtype=out.dtype)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-12, rtol=1e-10, msg=name)
    if causal:
        a, b = model.new_cache(12), model.new_cache(12)
        torch.testing.assert_close(model(idx, past_kv=a, last_only=True).logits, model(idx, past_kv=b).logits[:, -1:])
        torch.testing.assert_close(a.k[1][:, :, :9], b.k[1][:, :, :9])
        torch.testing.assert_close(a.v[1][:, :, :9], b.v[1][:, :, :9])

@pytest.mark.parametrize("kind", KINDS)
def test_left_padded_batch_equals_each_prompt_alone(kind):
    model = make(kind)
    torch.manual_seed(2)
    prompts = [torch.randint(0, V, (n,)).tolist() for n in (7, 3, 11, 1)]
    T = max(map(len, prompts))
    idx = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros_like(idx)
    for b, p in enumerate(prompts):
        idx[b, T - len(p):] = torch.tensor(p)
        mask[b, T - len(p):] = 1
    batched = model(idx, position_ids=position_ids_from_mask(mask), attention_mask=mask).logits
    for b, p in enumerate(prompts):
        alone = model(torch.tensor([p])).logits[0]
        torch.testing.assert_close(batched[b, T - len(p):], alone, atol=2e-5, rtol=1e-4)
    # generation: greedy tokens per row equal the row alone (through the cache, with positions continuing)
    together = model.generate(prompts, 8, temperature=0)
    for b, p in enumerate(prompts):
        assert together[b] == model.generate([p], 8, temperature=0)[0]


def test_padding_without_position_ids_would_differ():
    """The check above can fail: left padding with default positions shifts every row."""
    model = make("learned")
    p = [3, 4, 5]
    idx = torch.tensor([[0, 0, *p]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    wrong = model(idx, attention_mask=mask).logits[0, 2:]
    alone = model(torch.tensor([p])).logits[0]
    assert not torch.allclose(wrong, alone, atol=1e-3)


def test_generate_respects_stop_token_and_sampling_controls():
    model = make("learned")
    prompt = [[1, 2, 3]]
    greedy = model.generate(prompt, 10, temperature=0)[0]
    stop = greedy[3]
    cut = model.generate(prompt, 10, temperature=0, stop_token=stop)[0]
    assert cut == greedy[:greedy.index(stop)]
    g = torch.Generator().manual_seed(0)
    top1 = model.generate(prompt, 10, temperature=1.0, top_k=1, generator=g)[0]
    assert top1 == greedy  # top-k=1 sampling is greedy
    tiny_p = model.generate(prompt, 10, temperature=1.0, top_p=1e-6, generator=g)[0]
    assert tiny_p == greedy  # nucleus with p -> 0 keeps only the top token
    a = model.generate(prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = model.generate(prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(5))
    assert a == b


def test_generate_checks_table_length_up_front():
    model = make("learned", max_len=10)
    assert len(model.generate([[1] * 4], 7, temperature=0)[0]) == 7  # needs positions 0..9
    with pytest.raises(PositionOutOfRange, match="max_len=10"):
        model.generate([[1] * 4], 8, temperature=0)


def test_encoder_without_positions_is_permutation_equivariant():
    """No positional encoding + no causal mask: permuting the input permutes the output."""
    model = make("none", causal=False)
    torch.manual_seed(3)
    idx = torch.randint(0, V, (2, 9))
    perm = torch.randperm(9)
    out, out_perm = model(idx).logits, model(idx[:, perm]).logits
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-5, rtol=1e-5)
    learned = make("learned", causal=False)  # and the check can fail: with positions it does not hold
    assert not torch.allclose(learned(idx[:, perm]).logits, learned(idx).logits[:, perm], atol=1e-3)


def test_encoder_sees_the_future_decoder_does_not():
    torch.manual_seed(4)
    idx = torch.randint(0, V, (1, 8))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % V
    dec, enc = make("learned"), make("learned", causal=False)
    assert torch.equal(dec(idx).logits[0, :-1], dec(changed).logits[0, :-1])
    assert not torch.allclose(enc(idx).logits[0, 0], enc(changed).logits[0, 0])


def test_encoder_padding_mask_hides_pad_tokens():
    model = make("learned", causal=False)
    idx = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])  # different pad tokens, same mask
    out = model(idx, attention_mask=mask).logits
    torch.testing.assert_close(out[0, :3], out[1, :3])
    torch.testing.assert_close(out[0, :3], model(idx[:1, :3]).logits[0], atol=2e-5, rtol=1e-4)


def test_loss_ignores_masked_targets():
    model = make("learned")
    idx = torch.randint(0, V, (2, 6))
    targets = torch.full_like(idx, -100)
    targets[:, -1] = 3
    out = model(idx, targets=targets)
    manual = torch.nn.functional.cross_entropy(out.logits[:, -1], targets[:, -1])
    torch.testing.assert_close(out.loss, manual)


def test_weight_tying_and_param_counts():
    model = make("learned", max_len=32)
    assert model.head.weight is model.tok_emb.weight
    assert model.num_params() - model.num_params(include_tables=False) == 32 * 32
    untied = make("learned", tie_weights=False)
    assert untied.num_params() == model.num_params() + V * 32
    assert make("sinusoidal").num_params() == model.num_params(include_tables=False)


def test_extend_positions_on_the_model_keeps_outputs_for_short_inputs():
    model = make("learned", max_len=16)
    idx = torch.randint(0, V, (2, 10))
    before = model(idx).logits
    model.extend_positions(24, "copy-last")
    assert model.config.positional.max_len == 24 and model.max_len == 24
    torch.testing.assert_close(model(idx).logits, before)
    model(torch.randint(0, V, (1, 24)))  # now fits
    with pytest.raises(ValueError, match="only a learned table"):
        make("rope").extend_positions(24)


def test_crop_positions_keeps_the_first_rows_and_refuses_beyond():
    model = make("learned", max_len=16)
    idx = torch.randint(0, V, (2, 8))
    before, rows = model(idx).logits, model.pos.weight[:8].detach().clone()
    model.crop_positions(8)
    assert model.config.positional.max_len == 8 and model.max_len == 8 and model.pos.weight.shape[0] == 8
    assert torch.equal(model.pos.weight.detach(), rows)
    torch.testing.assert_close(model(idx).logits, before)  # inputs within the kept rows: unchanged
    with pytest.raises(PositionOutOfRange, match="max_len=8"):
        model(torch.randint(0, V, (1, 9)))
    with pytest.raises(ValueError, match="only a learned table"):
        make("alibi").crop_positions(4)


def test_position_gradient_reaches_only_used_rows():
    model = make("learned", max_len=32).train()
    idx = torch.randint(0, V, (2, 7))
    model(idx, targets=idx).loss.backward()
    g = model.pos.weight.grad
    assert (g[:7].abs().sum(1) > 0).all() and (g[7:] == 0).all()


def test_loss_keeps_float64_for_a_float64_model():
    """The loss is computed in at least float32, never narrower than the logits (float64 checks need it)."""
    model = make("learned").double()
    idx = torch.randint(0, V, (2, 6))
    out = model(idx, targets=idx)
    assert out.loss.dtype == torch.float64
    manual = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), idx.flatten())
    assert abs(out.loss.item() - manual.item()) < 1e-14


def test_dropouts_are_configurable_one_by_one():
    """model.embd_dropout, attn_dropout and resid_dropout each override model.dropout."""
    cfg = ModelConfig(vocab_size=V, n_layer=1, n_head=2, n_embd=16, dropout=0.1, attn_dropout=0.3, resid_dropout=0.0)
    model = GPT(cfg)
    assert model.drop.p == 0.1 and model.blocks[0].attn.dropout == 0.3 and model.blocks[0].drop.p == 0.0
    import learnpos.tasks  # noqa: F401  (registers the demo preset's task; the file also runs alone)
    from learnpos.config import load_config
    from learnpos.errors import ConfigError

    with pytest.raises(ConfigError, match="model.attn_dropout must be in"):
        load_config("demo", {"model.attn_dropout": "1.5"})


def test_swiglu_mlp_is_the_gated_product_and_as_large_as_gelu():
    """model.mlp=swiglu: proj(silu(fc(x)) * gate(x)), 8C // 3 wide by default (three matrices with
    the weights of gelu's two, up to rounding), model.mlp_hidden sets the width of either."""
    import torch.nn.functional as F

    from learnpos.config import load_config
    from learnpos.errors import ConfigError

    gelu, swiglu = make("learned"), make("learned", mlp="swiglu")
    mlp = swiglu.blocks[0].mlp
    assert mlp.fc.out_features == mlp.gate.out_features == 8 * 32 // 3 and gelu.blocks[0].mlp.gate is None
    count = lambda m: sum(p.numel() for p in m.blocks[0].mlp.parameters())  # noqa: E731
    assert count(gelu) == 2 * 128 * 32 + 128 + 32 and count(swiglu) == 3 * 85 * 32 + 2 * 85 + 32  # within 0.2%
    assert swiglu.num_params() - gelu.num_params() == 2 * (count(swiglu) - count(gelu))  # the MLPs differ, nothing else
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(mlp(x), mlp.proj(F.silu(mlp.fc(x)) * mlp.gate(x)))
    assert not torch.allclose(mlp(x), mlp.proj(F.silu(mlp.fc(x))))  # the gate takes part
    assert make("learned", mlp="swiglu", mlp_hidden=48).blocks[1].mlp.gate.out_features == 48
    assert make("learned", mlp_hidden=48).blocks[1].mlp.fc.out_features == 48
    idx = torch.randint(0, V, (2, 6))
    swiglu.train()(idx, targets=idx).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mlp.parameters())
    import learnpos.tasks  # noqa: F401  (registers the demo preset's task)

    with pytest.raises(ConfigError, match="model.mlp='relu' is not one of: gelu, swiglu"):
        load_config("demo", {"model.mlp": "relu"})
    with pytest.raises(ConfigError, match="model.mlp_hidden must be >= 0"):
        load_config("demo", {"model.mlp_hidden": "-1"})


def test_recipe_switches_change_the_model_as_documented():
    """zero_init_proj: every output projection starts at zero, so each block starts as the
    identity and the logits are the embedding's alone; logit_softcap bounds the logits; relu2
    and qk_norm change the outputs; and the read= fast path agrees with the full forward under
    all of them (the formulas themselves are `learnpos verify`'s)."""
    idx = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(0))
    zero = make(zero_init_proj=True)
    assert all(not p.detach().any() for n, p in zero.named_parameters() if n.endswith("proj.weight"))
    with torch.no_grad():
        h = zero.embed(idx, None, 0, None)
        torch.testing.assert_close(zero(idx).logits, zero.head(zero.ln_f(h + sum(
            b.attn.proj.bias + b.mlp.proj.bias for b in zero.blocks))))
    capped, free = make(logit_softcap=0.5), make()
    with torch.no_grad():
        capped.head.weight.mul_(100), free.head.weight.mul_(100)
        assert float(capped(idx).logits.abs().max()) <= 0.5 < float(free(idx).logits.abs().max())
    for switch in ({"mlp": "relu2"}, {"qk_norm": True}):
        model = make(**switch, causal=False)
        assert not torch.allclose(model(idx).logits, make(causal=False)(idx).logits)
        read = torch.tensor([[1, 7], [0, 8]])
        full = model(idx, return_hidden=True).hidden[torch.arange(2)[:, None], read]
        torch.testing.assert_close(model(idx, return_hidden=True, read=read).hidden, full)

