"""The learned table and its siblings: shapes, limits, padding-aware ids, crop/extend, inits."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learnpos.config import PositionalConfig
from learnpos.errors import PositionOutOfRange
from learnpos.positional import (
    ALiBiPositionalEncoding,
    LearnedPositionalEmbedding,
    PositionalEncoding,
    build_positional,
    position_ids_from_mask,
    sinusoid_table,
)

L, C = 12, 8


def table(init="normal") -> LearnedPositionalEmbedding:
    torch.manual_seed(0)
    return LearnedPositionalEmbedding(L, C, init=init)


def test_default_ids_are_a_broadcast_slice_for_any_T_below_max_len():
    pe = table()
    for T in (1, 5, L):  # T < max_len is the tutorial `.repeat` bug
        out = pe.embed(None, 0, T)
        assert out.shape == (1, T, C)
        assert torch.equal(out[0], pe.weight[:T])
        assert out.data_ptr() == pe.weight.data_ptr()  # a view: no copy of the table


def test_offset_continues_positions():
    pe = table()
    assert torch.equal(pe.embed(None, 4, 3)[0], pe.weight[4:7])


def test_explicit_ids_gather_per_token():
    pe = table()
    ids = torch.tensor([[0, 0, 3], [11, 2, 5]])
    out = pe.embed(ids, 0, 3)
    assert out.shape == (2, 3, C)
    assert torch.equal(out[1, 0], pe.weight[11]) and torch.equal(out[0, 1], pe.weight[0])


def test_too_long_raises_before_indexing_with_remedies():
    pe = table()
    with pytest.raises(PositionOutOfRange) as e:
        pe.embed(None, 0, L + 1)
    msg = str(e.value)
    assert f"max_len={L}" in msg and f"needs {L + 1} positions" in msg
    assert "crop" in msg.lower() and "extend_positions" in msg and "rope" in msg
    with pytest.raises(ValueError, match=f"position {L} "):
        pe.embed(torch.tensor([[0, L]]), 0, 2)
    with pytest.raises(ValueError, match="offset|position 12"):
        pe.embed(None, L - 1, 2)  # cached decoding running off the end
    with pytest.raises(ValueError, match=">= 0"):
        pe.embed(torch.tensor([[-1, 0]]), 0, 2)


def test_ids_from_mask_left_and_right_padding():
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(left).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert position_ids_from_mask(right).tolist() == [[0, 1, 2, 0, 0], [0, 1, 2, 3, 4]]
    assert position_ids_from_mask(left, offset=torch.tensor([3, 5])).tolist() == [[0, 0, 3, 4, 5], [5, 6, 7, 8, 9]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 9), st.booleans()), min_size=1, max_size=5))
def test_ids_from_mask_property(rows):
    """For any mix of left/right padded rows: real tokens get 0..n-1 in order, pads get 0."""
    T = max(pad + n for pad, n, _ in rows)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, (_, n, left) in enumerate(rows):
        start = T - n if left else 0
        mask[b, start:start + n] = 1
    ids = position_ids_from_mask(mask)
    for b, (_, n, _) in enumerate(rows):
        assert ids[b][mask[b] == 1].tolist() == list(range(n))
        assert (ids[b][mask[b] == 0] == 0).all()
    assert ids.max() < T and ids.min() >= 0


@settings(max_examples=40, deadline=None)
@given(st.integers(1, L), st.integers(0, L))
def test_embed_accepts_exactly_the_positions_in_the_table(T, offset):
    pe = table()
    if offset + T <= L:
        out = pe.embed(None, offset, T)
        assert torch.equal(out[0], pe.weight[offset:offset + T])
    else:
        with pytest.raises(PositionOutOfRange):
            pe.embed(None, offset, T)


def test_crop_and_extend_keep_trained_rows():
    for method in ("copy-last", "init"):
        pe = table()
        old = pe.weight.detach().clone()
        pe.extend(20, method)
        assert pe.weight.shape == (20, C) and pe.max_len == 20
        assert torch.equal(pe.weight[:L], old)
        if method == "copy-last":
            assert torch.equal(pe.weight[L:], old[-1:].expand(20 - L, C))
        else:
            assert pe.weight[L:].std() < 0.1 and not torch.equal(pe.weight[L:], old[-1:].expand(20 - L, C))
        pe.crop(5)
        assert torch.equal(pe.weight, old[:5]) and pe.max_len == 5
        pe.embed(None, 0, 5)
        with pytest.raises(PositionOutOfRange):
            pe.embed(None, 0, 6)


def test_interpolate_resamples_linearly_along_positions():
    pe = table()
    old = pe.weight.detach().clone()
    pe.extend(2 * L - 1, "interpolate")  # new row 2i = old row i, row 2i+1 = their midpoint
    assert torch.allclose(pe.weight[0::2], old, atol=1e-6)
    assert torch.allclose(pe.weight[1::2], (old[:-1] + old[1:]) / 2, atol=1e-6)


def test_resize_rejects_nonsense():
    pe = table()
    with pytest.raises(ValueError):
        pe.extend(L - 1)
    with pytest.raises(ValueError):
        pe.extend(L + 2, "nearest")
    with pytest.raises(ValueError):
        pe.crop(0)


def test_inits():
    torch.manual_seed(0)
    normal = LearnedPositionalEmbedding(512, 64).weight
    assert abs(normal.std().item() - 0.02) < 0.002
    randn = LearnedPositionalEmbedding(512, 64, init="randn").weight
    assert abs(randn.std().item() - 1.0) < 0.05  # ~50x the token-embedding scale
    assert LearnedPositionalEmbedding(8, 4, init="zeros").weight.abs().sum() == 0
    sin = LearnedPositionalEmbedding(8, 4, init="sinusoidal").weight  # scaled to RMS init_std
    expected = torch.tensor([math.sin(3), math.cos(3), math.sin(3 / 100), math.cos(3 / 100)]) * 0.02 * math.sqrt(2)
    assert sin.requires_grad and torch.allclose(sin[3], expected, atol=1e-7)
    assert abs(LearnedPositionalEmbedding(512, 64, init="sinusoidal").weight.pow(2).mean().sqrt() - 0.02) < 1e-3


def test_sinusoid_table_formula():
    t = sinusoid_table(torch.tensor([0, 5]), 6)
    w = [10000 ** (-2 * i / 6) for i in range(3)]
    expected = [[f(5 * wi) for wi in w for f in (math.sin, math.cos)]]
    assert torch.allclose(t[1], torch.tensor(expected[0]), atol=1e-6)
    assert torch.equal(t[0], torch.tensor([0.0, 1.0] * 3))


def test_registry_and_null_object():
    kinds = {"learned": LearnedPositionalEmbedding, "none": PositionalEncoding, "alibi": ALiBiPositionalEncoding}
    for kind, cls in kinds.items():
        assert type(build_positional(PositionalConfig(kind=kind, max_len=8), 16, 4)) is cls
    none = build_positional(PositionalConfig(kind="none"), 16, 4)
    assert none.embed(None, 0, 3) is None and none.rotary(torch.zeros(1, 3)) is None
    assert list(none.parameters()) == []
    with pytest.raises(ValueError, match="unknown positional kind"):
        build_positional(PositionalConfig(kind="bogus"), 16, 4)


def test_alibi_slopes_match_paper():
    assert torch.allclose(ALiBiPositionalEncoding._slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    s6 = ALiBiPositionalEncoding._slopes(6)  # 4 from 2^(-2i), then 2 odd ones of the 8-head set
    assert torch.allclose(s6, torch.tensor([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]))


# ------------------------------------------------------------------ randomized positions


def randomized(rows=L):
    from learnpos.positional import RandomizedPositionalEmbedding

    torch.manual_seed(0)
    return RandomizedPositionalEmbedding(rows, C)


def test_randomized_training_ids_are_sorted_random_subsets_mapped_per_sequence():
    pe = randomized().train()
    ids = pe.plan(None, 0, 5, batch=64)  # the default ids 0..4 of 64 sequences
    assert ids.shape == (64, 5) and (ids[:, 1:] > ids[:, :-1]).all()  # increasing: order is kept
    assert ids.min() >= 0 and ids.max() < L
    assert len({tuple(r) for r in ids.tolist()}) > 32  # drawn per sequence
    assert set(ids.flatten().tolist()) == set(range(L))  # rows past the length 5 are used too
    # explicit logical ids (positions that restart per utterance) go through the same subset
    out = pe.plan(torch.tensor([[0, 1, 2, 0, 1, 0]]), 0, 6)[0]
    assert out[0] == out[3] == out[5] and out[1] == out[4] and out[0] < out[1] < out[2]
    with pytest.raises(PositionOutOfRange, match="position 12 is past the learned position table"):
        pe.plan(torch.arange(13)[None], 0, 13)
    with pytest.raises(PositionOutOfRange, match=">= 0"):
        pe.plan(torch.tensor([[-1, 0]]), 0, 2)


def test_randomized_evaluation_spreads_each_row_over_the_table():
    pe = randomized().eval()
    assert pe.plan(None, 0, 4).tolist() == [[0, 4, 7, 11]]  # round(p * 11 / 3)
    assert pe.plan(None, 0, L).tolist() == [list(range(L))]
    # decoding in pieces, the whole length planned (4 positions): the rows of one pass
    planned = torch.tensor([4])
    pieces = [pe.plan(None, 0, 2, 1, planned), pe.plan(None, 2, 1, 1, planned), pe.plan(None, 3, 1, 1, planned)]
    assert torch.cat(pieces, 1).tolist() == [[0, 4, 7, 11]]
    # a padded row spreads over its own real tokens, as it would alone
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pe.plan(position_ids_from_mask(mask), 0, 4, 2, None, mask).tolist() == [[0, 0, 0, 11], [0, 4, 7, 11]]
    # restarting positions spread over the positions they use (0..2), not over the token count
    assert pe.plan(torch.tensor([[0, 1, 2, 0, 1, 0]]), 0, 6).tolist() == [[0, 6, 11, 0, 6, 0]]
    with pytest.raises(PositionOutOfRange):
        pe.plan(None, 0, L + 1)
    with pytest.raises(ValueError, match="resizing"):
        pe.extend(2 * L)


def randomized_gpt(max_len=16):
    from learnpos.config import ModelConfig
    from learnpos.model import GPT

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                      positional=PositionalConfig(kind="learned", max_len=max_len, randomize=True))
    return GPT(cfg).eval()


def test_randomized_model_decodes_with_a_cache_as_one_forward_pass():
    model = randomized_gpt(32)
    idx = torch.randint(0, 11, (2, 9))
    full = model(idx).logits  # 9 tokens spread over 32 rows
    cache = model.new_cache(9)
    parts = [model(idx[:, :5], past_kv=cache).logits]
    parts += [model(idx[:, t:t + 1], past_kv=cache).logits for t in range(5, 9)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    model.train()
    a, b = model(idx).logits, model(idx).logits  # training: a new subset per call
    assert not torch.allclose(a, b)


def test_randomized_generation_reads_the_rows_of_one_pass_up_to_the_last_row():
    from learnpos.generate import generate

    model = randomized_gpt(16)
    prompt = [3, 1, 4, 1, 5]
    new = generate(model, [prompt], max_new_tokens=12, temperature=0)[0]  # 5 + 12 - 1 = 16 fed: every row
    seq = torch.tensor([prompt + new[:-1]])
    greedy = model(seq).logits[0, len(prompt) - 1:].argmax(-1).tolist()  # one pass over what was fed
    assert new == greedy
    # a left-padded batch: each row continues as it would alone
    short = [2, 7]
    together = generate(model, [prompt, short], max_new_tokens=6, temperature=0)
    assert together == [generate(model, [p], max_new_tokens=6, temperature=0)[0] for p in (prompt, short)]


def test_randomize_needs_a_learned_table():
    import learnpos.tasks  # noqa: F401  (registers the demo's task when this file runs alone)
    from learnpos.config import load_config
    from learnpos.errors import ConfigError

    with pytest.raises(ConfigError, match="randomize draws rows of a learned table; kind='rope'"):
        load_config("demo", {"model.positional.kind": "rope", "model.positional.randomize": "true"})
