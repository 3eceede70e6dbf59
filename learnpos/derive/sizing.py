"""Model size and tokenizer from a corpus's size, shared by the lm and dialogue derivations.

- Tokenizer: characters below CHAR_UNDER characters of training text (Tiny Shakespeare's
  1.1M, the known character-level CPU recipe) with an alphabet of at most MAX_ALPHABET
  characters (a Chinese text of a few thousand distinct characters stays character-level, as
  small Chinese LMs usually are), else byte-level BPE, its vocabulary growing with the text
  (4,096 at 10M characters, a power of two in 1,024..16,384).
- Size: non-embedding parameters 12 L C^2 at most min(T, N_compute): one parameter per
  training token (the nanoGPT shakespeare-char recipe: 0.8M parameters on 1.0M tokens, the
  largest that stays clear of overfitting there), and no more than the budget trains at
  TOKENS_PER_PARAM tokens per parameter: C = 6 N D with D = r N, so N = sqrt(C / 6r). r is 2,
  what the nanoGPT CPU recipe uses (0.8M parameters, 1.5M tokens); Hoffmann et al. (2022) found
  20 compute-optimal for large models, which at 10 CPU minutes would give a 0.3M-parameter
  model, smaller than that known-good recipe. C is this machine's measured float32
  matrix-multiply rate over the budget at an assumed 60 % utilisation (`benchmarks/mfu.py`
  measures a model's real share; this rule's value was not measured).
"""

from __future__ import annotations

import math
import time

CHAR_UNDER = 3_000_000
MAX_ALPHABET = 8192  # distinct characters a character vocabulary may hold
SHAPES = ((2, 64, 2), (2, 96, 3), (3, 128, 4), (4, 128, 4), (4, 192, 6), (6, 256, 8), (6, 384, 6), (8, 512, 8))
UTILISATION = 0.6
TOKENS_PER_PARAM = 2


def tokenizer_for(chars: int, alphabet: int) -> tuple[str, int]:
    """(tokenizer, BPE vocabulary size) for `chars` characters of training text holding
    `alphabet` distinct characters."""
    if chars < CHAR_UNDER and alphabet <= MAX_ALPHABET:
        return "char", 0
    vocab = 2 ** round(math.log2(4096 * chars / 10_000_000))
    return "bpe", min(16384, max(1024, vocab))


def matmul_flops(seconds: float = 0.3) -> float:
    """This machine's float32 matrix-multiply rate (FLOP/s) with torch's threads."""
    import torch

    a, b = torch.randn(512, 512), torch.randn(512, 512)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return n * 2 * 512**3 / (time.perf_counter() - t0)


def shape_for(tokens: int, budget_s: float, flops: float) -> tuple[tuple[int, int, int], str]:
    """(n_layer, n_embd, n_head) and why, for `tokens` training tokens and a budget."""
    compute = UTILISATION * flops * budget_s
    n_compute = math.sqrt(compute / (6 * TOKENS_PER_PARAM))
    target = min(tokens, n_compute)
    shape = SHAPES[0]
    for L, C, H in SHAPES:
        if 12 * L * C * C <= target:
            shape = (L, C, H)
    L, C, _ = shape
    bound = f"the {tokens:,} training tokens" if tokens <= n_compute else \
        f"compute ({flops / 1e9:.0f} GFLOP/s measured x {budget_s / 60:g} min)"
    which = (f"the largest at most {target / 1e6:.2f}M" if 12 * L * C * C <= target else
             f"the smallest shape, although {target / 1e6:.3f}M would do")
    return shape, f"model: {L} layers x {C} wide ({12 * L * C * C / 1e6:.2f}M parameters in the blocks): {which}, " \
                  f"set by {bound}"
