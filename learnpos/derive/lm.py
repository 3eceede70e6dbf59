"""Settings for language modelling derived from the text.

From the training text's size (characters) and alphabet: the tokenizer and its vocabulary
(`sizing.tokenizer_for`), the model (`sizing.shape_for`: T tokens, the time budget), and

- block: 64 tokens for a small character model (the CPU recipe's), 128 for BPE or a model of
  2M+ parameters, 256 from 10M parameters, and a power of two below each split's length when
  the text is that short; the learned table has exactly that many rows;
- batch: about 1,024 tokens a step for characters, 2,048 for BPE (at least 8 sequences);
- learning rate 1e-3 below 5M parameters, 6e-4 above (nanoGPT's small and GPT-2-small
  rates), cosine to a tenth; AdamW beta2 0.99, weight decay 0.1, clipping at 1;
- dropout 0.1 when the text is shorter than 20 tokens per parameter (it will repeat), else 0;
- at most 20 epochs; early stopping on validation loss keeps the best weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import learnpos.derive.sizing as sizing
from learnpos.data.text import load_corpus
from learnpos.derive.space import LOGITS, RECIPE, Param

EPOCHS = 20
WARMUP_SHARE = 0.05  # of the steps (at most 200): the nanoGPT CPU recipe warms up 100 of 2,000
SPACE = (  # what `learnpos tune --task lm` searches
    Param("train.lr", "float", 2e-4, 3e-3, log=True),
    Param("model.dropout", "float", 0.0, 0.3),
    Param("model.n_layer", "int", 2, 8, stage=2),
    Param("model.n_embd", "choice", choices=(64, 128, 192, 256, 384), stage=2),
    Param("model.positional.init", "choice", choices=("normal", "sinusoidal"), stage=2),
    Param("train.batch_size", "choice", choices=(8, 12, 16, 32)),
    Param("train.weight_decay", "float", 1e-3, 0.3, log=True),
    Param("model.mlp", "choice", choices=("gelu", "relu2"), stage=2),
    *RECIPE, *LOGITS,
)


def derive(data: str, val_data: str | None = None, budget_s: float = 600.0) -> tuple[dict, list[str], int]:
    corpus = load_corpus(data, val_data or "")
    chars, alphabet = len(corpus.train_text), len(set(corpus.train_text))
    kind, vocab = sizing.tokenizer_for(chars, alphabet)
    tokens = chars if kind == "char" else max(1, round(chars / _chars_per_token(corpus.train_text)))
    (L, C, H), size_why = sizing.shape_for(tokens, budget_s, sizing.matmul_flops())
    params = 12 * L * C * C
    block = 64 if kind == "char" and params < 2e6 else 128 if params < 10e6 else 256
    shortest = min(tokens, round(len(corpus.val_text) / (1 if kind == "char" else _chars_per_token(corpus.val_text))))
    if shortest <= block and shortest > 8:  # a short text: a window must fit in each split
        block = 2 ** int(math.log2(shortest - 1))
    batch = max(8, (1024 if kind == "char" else 2048) // block)
    lr = 1e-3 if params < 5e6 else 6e-4
    dropout = 0.1 if tokens < 20 * params else 0.0
    settings = {
        "_name": Path(data).stem or "text", "lm.data": data, "lm.val_data": val_data or "",
        "lm.tokenizer": kind, "lm.bpe_vocab_size": vocab or 4096, "lm.block_size": block, "lm.eval_windows": 200,
        "model.n_layer": L, "model.n_embd": C, "model.n_head": H, "model.dropout": dropout,
        "model.positional.kind": "learned", "model.positional.max_len": block,
        "train.lr": lr, "train.min_lr": lr / 10, "train.beta2": 0.99, "train.weight_decay": 0.1,
        "train.grad_clip": 1.0, "train.batch_size": batch,
        "train.early_stop_metric": "loss", "train.early_stop_mode": "min",
    }
    most = math.ceil(EPOCHS * tokens / (batch * block))
    why = [f"text: {chars:,} characters, {alphabet:,} distinct",
           f"tokenizer: {kind}" + (f", {vocab:,} tokens (about {tokens:,} training tokens)" if vocab else
                                   f" (under {sizing.CHAR_UNDER:,} characters, {alphabet:,} of them distinct)"),
           size_why,
           f"block {block}, batch {batch}, lr {lr:g} cosine to {lr / 10:g}, dropout {dropout:g}",
           f"at most {EPOCHS} epochs = {most:,} steps; early stopping on validation loss"]
    return settings, why, most


def _chars_per_token(text: str) -> float:
    """Characters per byte-level BPE token, estimated from the text's script: about 4 where
    words are separated by spaces (English with GPT-2-style BPE), 1.5 where they are not."""
    sample = text[:200_000]
    spaces = sample.count(" ") + sample.count("\n")
    return 4.0 if spaces > len(sample) / 20 else 1.5
