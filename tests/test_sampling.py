"""Sampling rules and the cost of the decoding loop."""

import torch

from learnpos.config import ModelConfig, PositionalConfig
from learnpos.generate import sample_next
from learnpos.model import GPT
from learnpos.positional import LearnedPositionalEmbedding


def kept_by_top_p(probs: list[float], top_p: float) -> set[int]:
    """Which tokens top-p sampling can return, found by sampling many times."""
    logits = torch.tensor([probs]).log().expand(4000, -1)
    g = torch.Generator().manual_seed(0)
    return set(sample_next(logits, 1.0, top_p=top_p, generator=g).tolist())


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    """HF transformers' convention: the kept set is the smallest whose mass is >= top_p. The
    probabilities are binary fractions, so the cumulative sums are exact and the boundary
    (mass exactly equal to top_p) is tested, not rounded away."""
    probs = [0.5, 0.25, 0.125, 0.125]
    assert kept_by_top_p(probs, 0.5) == {0}  # 0.5 reaches 0.5: one token
    assert kept_by_top_p(probs, 0.5 + 2 ** -20) == {0, 1}  # just above: the next one is needed
    assert kept_by_top_p(probs, 0.75) == {0, 1}
    assert kept_by_top_p(probs, 0.875) == {0, 1, 2}
    assert kept_by_top_p(probs, 0.9) == {0, 1, 2, 3}
    assert kept_by_top_p(probs, 1e-9) == {0}  # the most likely token always stays


def test_padded_generation_checks_positions_once_not_per_token(monkeypatch):
    """Range checks read ids back to the host (two syncs per check on CUDA); generation checks
    the whole length once up front, so the loop must not check again per token."""
    cfg = ModelConfig(vocab_size=30, n_layer=1, n_head=2, n_embd=16,
                      positional=PositionalConfig(kind="learned", max_len=40))
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    calls = []
    real = LearnedPositionalEmbedding.check
    monkeypatch.setattr(LearnedPositionalEmbedding, "check", lambda self, *a: calls.append(a) or real(self, *a))
    out = model.generate([[1, 2, 3], [4, 5, 6, 7, 8]], 20, temperature=0)  # left-padded: explicit ids
    assert len(out[0]) == 20
    assert len(calls) == 1 and calls[0][0] is None  # the up-front check of 0..T+19, no tensor ids

