"""Settings for multi-turn dialogue derived from the corpus.

From the training utterances: the tokenizer (`sizing.tokenizer_for` on their characters),
the model (`sizing.shape_for`), and

- history: at most the 90th percentile of the dialogues' turns before a response, 1..8;
- block: room for that history and the response at the 90th-percentile utterance length in
  tokens (characters / chars-per-token of the script), a power of two in 32..128 (whole turns
  are dropped from the left when a window is longer);
- positions token+turn+speaker (learned token positions, a turn table of max_turns + 1 rows,
  a speaker table of one row per speaker): the scheme of the dailydialog preset;
- batch 32 examples, learning rate 2e-3 cosine to a tenth, dropout 0 (the DailyDialog preset's),
  at most 20 epochs, early stopping on validation loss.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

import learnpos.derive.sizing as sizing
from learnpos.data.dialogue import load_dialogues
from learnpos.derive.lm import _chars_per_token
from learnpos.derive.space import LOGITS, RECIPE, Param

EPOCHS = 20
WARMUP_SHARE = 0.05  # of the steps (at most 200): the dailydialog preset warms up 50 of 700
SPACE = (  # what `learnpos tune --task dialogue` searches
    Param("train.lr", "float", 3e-4, 4e-3, log=True),
    Param("model.dropout", "float", 0.0, 0.3),
    Param("model.n_layer", "int", 1, 6, stage=2),
    Param("model.n_embd", "choice", choices=(64, 128, 192, 256), stage=2),
    Param("train.batch_size", "choice", choices=(16, 32, 64)),
    Param("train.weight_decay", "float", 1e-3, 0.3, log=True),
    Param("model.mlp", "choice", choices=("gelu", "relu2"), stage=2),
    *RECIPE, *LOGITS,
)
MAX_TURNS = 8


def derive(data: str, val_data: str | None = None, budget_s: float = 600.0) -> tuple[dict, list[str], int]:
    d = load_dialogues(data)
    train = d.split("train")
    utterances = [t.text for dialogue in train for t in dialogue]
    chars = sum(len(u) for u in utterances)
    kind, vocab = sizing.tokenizer_for(chars, len(set("".join(utterances))))
    per_token = 1.0 if kind == "char" else _chars_per_token("\n".join(utterances[:5000]))
    tokens = max(1, round((chars + len(utterances)) / per_token))  # + an end-of-utterance token each
    (L, C, H), size_why = sizing.shape_for(tokens, budget_s, sizing.matmul_flops())
    turns = np.array([len(dialogue) for dialogue in train]) if train else np.array([2])
    max_turns = int(min(MAX_TURNS, max(1, np.percentile(turns - 1, 90))))
    utt = np.percentile([len(u) / per_token + 1 for u in utterances], 90) if utterances else 16
    need = utt * (max_turns + 1)
    block = int(min(128, max(32, 2 ** math.ceil(math.log2(need)))))
    n_speakers = len(d.speakers)
    examples = sum(len(dialogue) - 1 for dialogue in train)
    settings = {
        "_name": Path(data).name or "dialogue", "dialogue.data": data,
        "dialogue.positions": "token+turn+speaker", "dialogue.tokenizer": kind,
        "dialogue.bpe_vocab_size": vocab or 4096, "dialogue.block_size": block, "dialogue.max_turns": max_turns,
        "dialogue.eval_examples": 2000,
        "model.n_layer": L, "model.n_embd": C, "model.n_head": H, "model.dropout": 0.0,
        "model.positional.kind": "learned", "model.positional.max_len": block,
        "model.tables": json.dumps([{"name": "turn", "rows": max_turns + 1}, {"name": "speaker", "rows": n_speakers}]),
        "train.lr": 2e-3, "train.min_lr": 2e-4, "train.beta2": 0.99, "train.weight_decay": 0.1,
        "train.grad_clip": 1.0, "train.batch_size": 32,
        "train.early_stop_metric": "loss", "train.early_stop_mode": "min",
    }
    most = math.ceil(EPOCHS * max(examples, 1) / 32)
    why = [f"corpus: {len(train):,} training dialogues, {len(utterances):,} utterances, {chars:,} characters, "
           f"{n_speakers} speakers",
           f"tokenizer: {kind}" + (f", {vocab:,} tokens" if vocab else f" (under {sizing.CHAR_UNDER:,} characters)"),
           size_why,
           f"history: up to {max_turns} turns (90th percentile); block {block} tokens (90th-percentile utterance "
           f"{utt:.0f} tokens x {max_turns + 1})",
           f"positions token+turn+speaker; batch 32, lr 2e-3; at most {EPOCHS} epochs = {most:,} steps"]
    return settings, why, most
