"""Multi-turn dialogue: a decoder answers the last turn of a conversation, and the positional
scheme (`dialogue.positions`) decides what it knows about where each token sits.

An example is a (history, response) window of one dialogue: whole history turns, oldest
dropped first (never cut mid-utterance), at most `dialogue.max_turns` of them, and the
response, each utterance followed by an end-of-utterance token EOU (id = the tokenizer's
vocabulary size), in at most `dialogue.block_size` + 1 tokens (the model reads all but the
last: inputs and targets are shifted by one). The loss covers the response
tokens and its EOU only. Per token the batch carries

    positions   `token`: 0..T-1 over history + response (GPT-2 / DialoGPT); `utterance`: the
                position restarts at 0 in every utterance (PLATO)
    speaker     the speaker id of the token's utterance (named table `speaker`)
    turn        the turn counted back from the response: the response is 0, the utterance
                before it 1, ... (named table `turn`), so "the previous turn" has one
                embedding whatever the history length

    dialogue.positions        table P     named tables
    token                     token       -
    token+speaker             token       speaker        (TransferTransfo-style)
    token+turn+speaker        token       turn, speaker
    utterance+turn+speaker    utterance   turn, speaker  (PLATO)

Evaluation: response perplexity per token (EOU included) and bits per character (the
response's characters plus one for its end, so tokenizers compare) on the valid or test
split; on test also distinct-1/2 (Li et al. 2016: distinct n-grams / all n-grams of
`dialogue.distinct_samples` sampled responses) over words, or characters in scripts written
without spaces (`learnpos.analysis.diversity`; `distinct_unit` says which).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from learnpos.analysis.diversity import distinct_n, unit_name
from learnpos.analysis.report import Figure
from learnpos.data.dialogue import (
    SPLITS,
    DialogueData,
    Examples,
    Turn,
    build_examples,
    history_layout,
    layout,
    load_dialogues,
)
from learnpos.data.tokenizers import StreamDecoder
from learnpos.errors import ConfigError, DataError
from learnpos.files import atomic_write_text
from learnpos.model import IGNORE_INDEX
from learnpos.runs import kept_with_run
from learnpos.tasks.base import Batch, EpochOrder, Task, autocast_context, eval_mode, register, run_tokenizer

log = logging.getLogger(__name__)
SPEAKERS_FILE = "speakers.json"

# scheme -> (token positions restart in every utterance, named tables it fills)
SCHEMES = {
    "token": (False, ()),
    "token+speaker": (False, ("speaker",)),
    "token+turn+speaker": (False, ("turn", "speaker")),
    "utterance+turn+speaker": (True, ("turn", "speaker")),
}


def scheme_tables(scheme: str, max_turns: int, speakers: int = 2) -> list[dict]:
    """The `model.tables` entries `scheme` needs (e.g. for --model.tables='<this as JSON>')."""
    rows = {"turn": max_turns + 1, "speaker": speakers}
    return [{"name": name, "rows": rows[name]} for name in SCHEMES[scheme][1]]


@dataclass
class DialogueConfig:
    """Multi-turn dialogue (task = "dialogue"): `cfg.dialogue`."""

    data: str = ""  # a DailyDialog folder or one with train/valid/test.jsonl (learnpos.data.dialogue)
    positions: str = "token+turn+speaker"  # token | token+speaker | token+turn+speaker | utterance+turn+speaker
    tokenizer: str = "bpe"  # bpe | char, trained on the training utterances
    bpe_vocab_size: int = 4096
    block_size: int = 128  # tokens of one example (history + response + EOUs)
    max_turns: int = 8  # history turns kept at most; the turn table needs max_turns + 1 rows
    eval_examples: int = 0  # examples per evaluation, evenly spaced; 0 = all
    distinct_samples: int = 200  # test responses sampled for distinct-1/2 (0 = skip)
    sample_top_p: float = 0.9  # nucleus sampling for distinct-n and chat replies
    sample_temperature: float = 1.0
    CHOICES = {"positions": tuple(SCHEMES), "tokenizer": ("bpe", "char")}


@register
class DialogueTask(Task):
    name = "dialogue"
    config_section, config_class = "dialogue", DialogueConfig
    causal = True
    streams_text = True
    fills_tables = ("speaker", "turn")
    splits = ("valid", "test")
    data_fields = ("data",)

    def __init__(self, cfg, run_dir: str | Path | None = None):
        self.dlg, self.seed = cfg.dialogue, cfg.train.seed
        self.epochs = EpochOrder(self.seed, 3)
        self.restart, self.tables = SCHEMES[self.dlg.positions]
        self.run_dir = Path(run_dir if run_dir is not None else cfg.train.out_dir)
        self._data: DialogueData | None = None
        self._examples: dict[str, Examples] = {}
        self.speaker_rows = next((t.rows for t in cfg.model.tables if t.name == "speaker"), None)
        self.tokenizer = run_tokenizer(self.run_dir, self.dlg.tokenizer, self.dlg.bpe_vocab_size,
                                       self._tokenizer_text)
        self.speakers  # noqa: B018  (a new run writes speakers.json next to its tokenizer)
        self.EOU = self.tokenizer.vocab_size
        self.vocab_size = self.EOU + 1

    def _tokenizer_text(self) -> str:
        # BPE learns from the training text only (bytes cover any other text); a character
        # tokenizer sees every split, as for task lm, so no held-out character is dropped
        splits = ("train",) if self.dlg.tokenizer == "bpe" else SPLITS
        return "\n".join(t.text for split in splits for d in self.data.split(split) for t in d)

    @classmethod
    def check_config(cls, cfg) -> None:
        d, m = cfg.dialogue, cfg.model
        if d.tokenizer == "bpe" and d.bpe_vocab_size < 257:
            raise ConfigError(f"dialogue.bpe_vocab_size must be > 256 (the byte alphabet), got {d.bpe_vocab_size}")
        if d.block_size < 4 or d.max_turns < 1 or d.eval_examples < 0 or d.distinct_samples < 0:
            raise ConfigError("dialogue.block_size must be >= 4, dialogue.max_turns >= 1, eval_examples and "
                              "distinct_samples >= 0")
        if not (0 < d.sample_top_p <= 1 and d.sample_temperature >= 0):
            raise ConfigError("dialogue.sample_top_p must be in (0, 1] and dialogue.sample_temperature >= 0")
        p = m.positional
        if SCHEMES[d.positions][0] and p.kind in ("rope", "alibi"):
            raise ConfigError(f"dialogue.positions='{d.positions}' restarts positions in every utterance; a relative "
                              f"encoding ({p.kind}) would then see tokens of different turns as neighbours: use "
                              f"model.positional.kind=learned (or sinusoidal), or a token+... scheme")
        if p.kind == "learned" and d.block_size > p.max_len:
            raise ConfigError(f"dialogue.block_size={d.block_size} exceeds the learned table (model.positional."
                              f"max_len={p.max_len}); set --model.positional.max_len={d.block_size}")
        needed = SCHEMES[d.positions][1]
        have = {t.name: t for t in m.tables}
        for name in needed:
            if name not in have:
                rows = d.max_turns + 1 if name == "turn" else 2
                raise ConfigError(f"dialogue.positions='{d.positions}' needs a named table '{name}': add "
                                  f"[[model.tables]] name = \"{name}\", rows = {rows} (or use a dailydialog preset)")
        extra = sorted(set(have) - set(needed))
        if extra:
            raise ConfigError(f"dialogue.positions='{d.positions}' uses no table {', '.join(map(repr, extra))}: "
                              f"drop it from model.tables (e.g. --model.tables='[]' for `token`)")
        if "turn" in have and have["turn"].rows < d.max_turns + 1:
            raise ConfigError(f"the turn table has {have['turn'].rows} rows; dialogue.max_turns={d.max_turns} "
                              f"needs {d.max_turns + 1} (turn 0 is the response)")

    # ------------------------------------------------------------------------ data
    @property
    def data(self) -> DialogueData:
        if self._data is None:
            self._data = load_dialogues(self.dlg.data)
            n = len(self._data.speakers)
            if self.speaker_rows is not None and n > self.speaker_rows:
                raise DataError(f"{self.dlg.data} has {n} speakers but the speaker table has {self.speaker_rows} "
                                f"rows; set the speaker table's rows to at least {n}")
        return self._data

    def data_sources(self) -> dict[str, dict]:
        return {"dialogue.data": self.data.files}

    def encode(self, texts: list[str]) -> list[list[int]]:
        if hasattr(self.tokenizer, "encode_batch"):
            return self.tokenizer.encode_batch(texts)
        return [self.tokenizer.encode(t, unknown="skip") for t in texts]

    def layout(self, utterances: list[list[int]], speakers: list[int]) -> tuple[list[int], ...]:
        """(tokens, positions, speakers, turns) of consecutive utterances, the last being turn 0."""
        return layout(utterances, speakers, self.EOU, self.restart)

    def examples(self, split: str) -> Examples:
        if split not in self._examples:
            ex = build_examples(self.data.split(split), self.encode, self.EOU, self.restart, self.dlg.block_size,
                                self.dlg.max_turns)
            if not len(ex):
                raise DataError(f"no {split} example fits dialogue.block_size={self.dlg.block_size} tokens; "
                                f"raise it")
            if ex.dropped:
                log.warning("%s: %d responses do not fit dialogue.block_size=%d with their previous turn; left out",
                            split, ex.dropped, self.dlg.block_size)
            self._examples[split] = ex
        return self._examples[split]

    def batch(self, ex: Examples, picks: np.ndarray) -> Batch:
        """Right-padded examples `picks` (pads come after every real token, so causal
        attention never sees them; their targets are IGNORE_INDEX)."""
        lengths = ex.starts[picks + 1] - ex.starts[picks]
        L = int(lengths.max()) - 1
        B = len(picks)
        out = {k: np.zeros((B, L + 1), dtype=np.int64) for k in ("tok", "pos", "speaker", "turn")}
        targets = np.full((B, L), IGNORE_INDEX, dtype=np.int64)
        for b, (i, n) in enumerate(zip(picks, lengths, strict=True)):
            s = slice(ex.starts[i], ex.starts[i] + n)
            out["tok"][b, :n], out["pos"][b, :n] = ex.tokens[s], ex.positions[s]
            out["speaker"][b, :n], out["turn"][b, :n] = ex.speakers[s], ex.turns[s]
            c = ex.context[i]
            targets[b, c - 1:n - 1] = ex.tokens[s][c:]  # the response and its EOU, predicted from the token before
        extra = {name: torch.from_numpy(out[name][:, :-1]) for name in self.tables}
        pos = torch.from_numpy(out["pos"][:, :-1]) if self.restart else None
        return Batch(torch.from_numpy(out["tok"][:, :-1]), torch.from_numpy(targets), position_ids=pos,
                     extra_ids=extra)

    def train_batch(self, step: int, batch_size: int) -> Batch:
        """Every training example once per epoch in a seeded order (a function of (seed, epoch))."""
        ex = self.examples("train")
        return self.batch(ex, self.epochs.picks(step, batch_size, len(ex)))

    def response_logits(self, model, batch: Batch) -> tuple[Tensor, Tensor]:
        """(N, V) logits and (N,) targets of the N response tokens of `batch` only: about 15%
        of a DailyDialog batch's tokens carry a target, so the vocabulary head runs on those
        alone (a third of a step's time at 2x128), not on the history and the padding."""
        hidden = model(batch.idx, **batch.model_inputs(), return_hidden=True).hidden
        keep = batch.targets != IGNORE_INDEX
        return model.head(hidden[keep]), batch.targets[keep]

    def loss(self, model, batch: Batch) -> Tensor:
        """Mean cross-entropy over response tokens: the base task's loss, without the head's
        work on positions that have no target."""
        logits, targets = self.response_logits(model, batch)
        return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets)

    # --------------------------------------------------------------- evaluation
    def eval_picks(self, ex: Examples, limit: int) -> np.ndarray:
        if limit and limit < len(ex):
            return np.linspace(0, len(ex) - 1, limit).round().astype(np.int64)
        return np.arange(len(ex), dtype=np.int64)

    @torch.no_grad()
    def evaluate(self, model, device, batch_size: int = 64, autocast=None, length: int | None = None,
                 split: str | None = None, tag: str = "") -> dict:
        if length is not None:
            raise ConfigError("task 'dialogue'' evaluates whole (history, response) examples; --length does not apply")
        split = split or self.splits[0]
        ex = self.examples(split)
        picks = self.eval_picks(ex, self.dlg.eval_examples)
        picks = picks[np.argsort(ex.starts[picks + 1] - ex.starts[picks], kind="stable")]  # similar lengths together
        with eval_mode(model):
            nll, tokens = 0.0, 0
            for i in range(0, len(picks), batch_size):
                b = self.batch(ex, picks[i:i + batch_size]).to(device)
                with autocast_context(autocast):
                    logits, targets = self.response_logits(model, b)
                nll += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
                tokens += len(targets)
        loss = nll / tokens
        metrics = {"loss": loss, "perplexity": math.exp(loss),
                   "bits_per_char": nll / math.log(2) / int(ex.response_chars[picks].sum()),
                   "examples": len(picks), "response_tokens": tokens, "eval_split": split}
        if split == "test" and self.dlg.distinct_samples:
            metrics.update(self.distinct(model, ex, self.dlg.distinct_samples))
        return metrics

    @torch.no_grad()
    def figures(self, model, device, batch_size: int = 64) -> list:
        """Validation response perplexity by the number of history turns the example has, and
        response loss by token position within the response."""
        ex = self.examples("valid")
        picks = self.eval_picks(ex, self.dlg.eval_examples)
        with eval_mode(model):
            turn_nll, turn_n = np.zeros(self.dlg.max_turns + 1), np.zeros(self.dlg.max_turns + 1)
            pos_nll, pos_n = np.zeros(self.dlg.block_size + 1), np.zeros(self.dlg.block_size + 1)
            for i in range(0, len(picks), batch_size):
                chunk = picks[i:i + batch_size]
                b = self.batch(ex, chunk).to(device)
                logits, targets = self.response_logits(model, b)
                nll = F.cross_entropy(logits.float(), targets, reduction="none").double().cpu().numpy()
                keep = (b.targets != IGNORE_INDEX).cpu()
                rows = keep.nonzero()[:, 0].numpy()
                within = (keep.long().cumsum(1) - 1)[keep].numpy()  # 0 = the response's first token
                history = ex.turns[ex.starts[chunk]][rows]  # the first token's turn index = history turns
                np.add.at(turn_nll, history, nll)
                np.add.at(turn_n, history, 1)
                np.add.at(pos_nll, within, nll)
                np.add.at(pos_n, within, 1)
        turns = [k for k in range(1, len(turn_n)) if turn_n[k]]
        upto = int(np.flatnonzero(pos_n >= 20).max()) + 1 if (pos_n >= 20).any() else 0  # 20+ tokens: not noise
        return [Figure("perplexity_by_history_turns", "validation response perplexity by history length", turns,
                       {"perplexity": [math.exp(turn_nll[k] / turn_n[k]) for k in turns]}, "history turns",
                       "perplexity", kind="bar",
                       note=f"{len(picks)} validation examples; history cut at dialogue.max_turns="
                            f"{self.dlg.max_turns} and the {self.dlg.block_size}-token block"),
                Figure("loss_by_response_position", "validation loss by token position in the response",
                       list(range(upto)), {"cross-entropy": (pos_nll[:upto] / pos_n[:upto]).tolist()},
                       "token position within the response", "loss (nats/token)",
                       note="positions reached by at least 20 responses")]

    def distinct(self, model, ex: Examples, n_samples: int, batch_size: int = 32) -> dict:
        """distinct-1/2 of responses sampled (seeded) for `n_samples` evenly spaced test examples."""
        picks = self.eval_picks(ex, n_samples)
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(self.seed)
        replies = []
        for i in range(0, len(picks), batch_size):
            histories = []
            for p in picks[i:i + batch_size]:
                s, c = ex.starts[p], ex.context[p]
                histories.append(tuple(col[s:s + c].tolist() for col in (ex.tokens, ex.positions, ex.speakers,
                                                                          ex.turns)))
            responder = [int(ex.speakers[ex.starts[p] + ex.context[p]]) for p in picks[i:i + batch_size]]
            replies += self.sample(model, histories, responder, generator=gen)
        out = {f"distinct_{n}": distinct_n(replies, n) for n in (1, 2)}
        out["distinct_unit"] = unit_name(replies)
        out["sampled_responses"] = len(replies)
        return out

    def sample(self, model, histories, responders: list[int], max_new_tokens: int | None = None, generator=None,
               on_token=None, temperature: float | None = None, top_k: int | None = None,
               top_p: float | None = None) -> list[str]:
        """Replies (text) to laid-out histories (tokens, positions, speakers, turns per row,
        the turns counted with the reply as turn 0); the reply's tokens continue the layout:
        turn 0, the responder's speaker id, and positions restarting at 0 (utterance) or
        continuing (token)."""
        T = self.dlg.block_size
        longest = max(len(h[0]) for h in histories)
        room = T + 1 - longest  # fed: history + all new tokens but the last, at most block_size (as in training)
        if room < 1:
            raise DataError(f"the history holds {longest} tokens, the whole block ({T}); drop older turns")
        n_new = room if max_new_tokens is None else min(max_new_tokens, room)
        extra, nxt = {}, {}
        if "speaker" in self.tables:
            extra["speaker"], nxt["speaker"] = [h[2] for h in histories], list(responders)
        if "turn" in self.tables:
            extra["turn"], nxt["turn"] = [h[3] for h in histories], 0
        kwargs = {}
        if self.restart:
            kwargs = {"position_ids": [h[1] for h in histories], "next_position": 0}
        out = model.generate([h[0] for h in histories], n_new, stop_token=self.EOU, vocab_limit=self.vocab_size,
                             temperature=self.dlg.sample_temperature if temperature is None else temperature,
                             top_k=top_k, top_p=self.dlg.sample_top_p if top_p is None else top_p,
                             generator=generator, on_token=on_token, extra_ids=extra or None,
                             next_extra_ids=nxt or None, **kwargs)
        return [self.tokenizer.decode([t for t in row if t < self.EOU]) for row in out]

    # ------------------------------------------------------------------ chatting
    def fit_history(self, turns: list[Turn], reply_room: int) -> tuple[tuple[list[int], ...], int]:
        """The layout of the newest whole turns of `turns` (at most dialogue.max_turns) that
        leave `reply_room` tokens for the reply, and how many older turns were dropped."""
        try:
            return history_layout(self.encode([t.text for t in turns]), [t.speaker for t in turns], self.EOU,
                                  self.restart, self.dlg.block_size, self.dlg.max_turns, reply_room)
        except ValueError as e:
            raise DataError(str(e)) from None

    @property
    def speakers(self) -> list[str]:
        """Speaker names in id order, kept with the run (speakers.json) so a trained run
        chats without its data."""
        return kept_with_run(self.run_dir, SPEAKERS_FILE, "speaker ids",
                             lambda file: json.loads(file.read_text(encoding="utf-8")), lambda: self.data.speakers,
                             lambda names, file: atomic_write_text(file, json.dumps(names, ensure_ascii=False) + "\n"))

    def speaker_id(self, name: str) -> int:
        names = self.speakers
        if name not in names:
            raise DataError(f"unknown speaker '{name}'; the speakers of this run: {', '.join(names)}")
        return names.index(name)

    def respond(self, model, prompt: str, max_new_tokens: int | None = None, stream=None, **sampling) -> str:
        """The reply of speaker 1 to one utterance of speaker 0 (`learnpos generate`)."""
        if not prompt.strip():
            raise DataError("the prompt is empty; say something")
        history, _ = self.fit_history([Turn(0, prompt.strip())], reply_room=min(max_new_tokens or 48,
                                                                               self.dlg.block_size // 2))
        on_token = None
        if stream is not None:
            stream(prompt.strip() + "\n")
            streamer = self.streamer(stream)
            on_token = streamer.on_token
        sampling.pop("sliding", None), sampling.pop("skip_unknown", None)
        reply = self.sample(model, [history], [1], max_new_tokens, on_token=on_token, **sampling)[0]
        if stream is not None:
            streamer.flush()
        return prompt.strip() + "\n" + reply

    def streamer(self, stream) -> StreamDecoder:
        """A stream of the reply's text that ends at its end-of-utterance token."""
        return StreamDecoder(self.tokenizer, stream, stop=self.EOU)


__all__ = ["SPLITS", "SCHEMES", "DialogueConfig", "DialogueTask", "scheme_tables"]
