"""Language modelling on real text: next-token prediction over windows of `lm.block_size`.

Training batches are random windows of the training tokens, drawn from (seed, step).
Evaluation runs over evenly spaced non-overlapping windows of the validation split and
reports mean loss (nats per token), perplexity, bits per character (comparable across
tokenizers), and the mean loss at each position 0..T-1 (`loss_by_position.json`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from learnpos.analysis.report import Figure
from learnpos.data.text import Corpus, TokenData, load_corpus, tokenize_cached
from learnpos.data.tokenizers import TOKENIZER_FILE, StreamDecoder
from learnpos.errors import ConfigError, DataError, PositionOutOfRange
from learnpos.files import atomic_write_text, user_cache_dir
from learnpos.tasks.base import Batch, Task, autocast_context, eval_mode, register, run_tokenizer


def loss_by_position_file(length: int | None = None, tag: str = "") -> str:
    """The file `evaluate` writes into the run: loss_by_position.json at the training length,
    loss_by_position_<length>.json at another, with `_<tag>` before .json for a tagged model."""
    return "loss_by_position" + (f"_{length}" if length else "") + (f"_{tag}" if tag else "") + ".json"


@dataclass
class LMConfig:
    """Language modelling on any UTF-8 text (task = "lm"): `cfg.lm`."""

    data: str = ""  # a UTF-8 text file or folder (every file under it, sorted)
    val_data: str = ""  # a separate validation file/folder; "" = the last val_fraction of data
    val_fraction: float = 0.1
    tokenizer: str = "char"  # char | bpe (byte-level BPE trained on the training text)
    bpe_vocab_size: int = 4096
    block_size: int = 64  # training sequence length; a learned table needs max_len >= this
    eval_windows: int = 0  # val windows of block_size per evaluation, evenly spaced; 0 = all
    # the token cache lives in the user's cache folder ($LEARNPOS_CACHE/tokens or ~/.cache/learnpos/tokens),
    # never where a config says: `cache_dir` of older configs is ignored
    RETIRED = ("cache_dir",)
    CHOICES = {"tokenizer": ("char", "bpe")}


@register
class LMTask(Task):
    name = "lm"
    config_section, config_class = "lm", LMConfig
    causal = True
    streams_text = True
    data_fields = ("data", "val_data")

    def __init__(self, cfg, run_dir: str | Path | None = None):
        self.lm, self.seed, self.T = cfg.lm, cfg.train.seed, cfg.lm.block_size
        self.run_dir = Path(run_dir if run_dir is not None else cfg.train.out_dir)
        self._data: TokenData | None = None
        self._corpus_read: Corpus | None = None
        self.tokenizer = run_tokenizer(self.run_dir, self.lm.tokenizer, self.lm.bpe_vocab_size, self._tokenizer_text)
        self.vocab_size = self.tokenizer.vocab_size

    @classmethod
    def train_length(cls, cfg) -> int:
        return cfg.lm.block_size

    def _tokenizer_text(self) -> str:
        # a character tokenizer sees the validation text too, so no held-out character is dropped
        corpus = self._corpus()
        return corpus.train_text + corpus.val_text if self.lm.tokenizer == "char" else corpus.train_text

    @classmethod
    def check_config(cls, cfg) -> None:
        lm, p = cfg.lm, cfg.model.positional
        if lm.block_size <= 0 or lm.eval_windows < 0:
            raise ConfigError("lm.block_size must be positive and lm.eval_windows >= 0")
        if p.kind == "learned" and lm.block_size > p.max_len:
            raise ConfigError(f"lm.block_size={lm.block_size} exceeds the learned table (model.positional.max_len="
                              f"{p.max_len}); set --model.positional.max_len={lm.block_size} or a smaller block")
        if not 0 < lm.val_fraction < 1:
            raise ConfigError(f"lm.val_fraction must be in (0, 1), got {lm.val_fraction}")
        if lm.tokenizer == "bpe" and lm.bpe_vocab_size < 257:
            raise ConfigError(f"lm.bpe_vocab_size must be > 256 (the byte alphabet), got {lm.bpe_vocab_size}")

    # ------------------------------------------------------------------------ data
    def _corpus(self) -> Corpus:
        if not self.lm.data:
            raise DataError("task 'lm' needs text: pass --data PATH (a UTF-8 file or folder); "
                            "e.g. `learnpos data fetch tinyshakespeare` prints a path to use")
        if self._corpus_read is None:
            self._corpus_read = load_corpus(self.lm.data, self.lm.val_data, self.lm.val_fraction)
            self._sources = {f"lm.{name}": record for name, record in self._corpus_read.sources.items()}
        return self._corpus_read

    def data_sources(self) -> dict[str, dict]:
        if not hasattr(self, "_sources"):
            self._corpus()
        return self._sources

    @property
    def data(self) -> TokenData:
        if self._data is None:
            cache = user_cache_dir() / "tokens"
            self._data = tokenize_cached(self._corpus(), self.tokenizer, self.run_dir / TOKENIZER_FILE, cache)
            self._corpus_read = None  # the tokens are what training and evaluation read from now on
            for split, arr in (("train", self._data.train), ("val", self._data.val)):
                if arr.size <= self.T:
                    raise DataError(f"the {split} split has {arr.size} tokens, not more than lm.block_size="
                                    f"{self.T}; give more text or a smaller --lm.block_size")
        return self._data

    def train_batch(self, step: int, batch_size: int) -> Batch:
        tokens = self.data.train
        starts = np.random.default_rng([self.seed, 0, step]).integers(0, tokens.size - self.T, size=batch_size)
        windows = np.stack([tokens[s:s + self.T + 1] for s in starts]).astype(np.int64)  # (B, T + 1)
        return Batch(torch.from_numpy(windows[:, :-1]), torch.from_numpy(windows[:, 1:]))

    def eval_starts(self, T: int | None = None) -> np.ndarray:
        T = T or self.T
        n = (self.data.val.size - 1) // T  # non-overlapping windows that have a next token
        if n <= 0:
            raise DataError(f"the validation split has {self.data.val.size} tokens: no window of {T} + 1 fits")
        if self.lm.eval_windows and self.lm.eval_windows < n:
            return np.linspace(0, n - 1, self.lm.eval_windows).round().astype(np.int64) * T
        return np.arange(n, dtype=np.int64) * T

    @torch.no_grad()
    def evaluate(self, model, device, batch_size: int = 64, autocast=None, length: int | None = None,
                 split: str | None = None, tag: str = "") -> dict:
        """Loss over windows of `length` tokens (default lm.block_size). Past a learned table
        there is nothing to look up: `length` > max_len is a ConfigError naming the remedies.
        The loss at each position goes into `files_dir` (`loss_by_position_file`), if set."""
        T = length or self.T
        L = model.max_len
        if L is not None and T > L:
            raise ConfigError(f"--length {T} is past the learned position table ({L} rows, trained on "
                              f"windows of {self.T}); evaluate at most {L}, or extend the table "
                              f"(model.extend_positions) and fine-tune")
        starts = self.eval_starts(T)
        loss_by_pos = self._loss_by_position(model, device, T, starts, batch_size, autocast)
        loss = float(loss_by_pos.mean())
        tokens_per_char = self.data.val.size / self.data.val_chars
        if self.files_dir is not None:
            name = loss_by_position_file(T if T != self.T else None, tag)
            Path(self.files_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(self.files_dir) / name, "[" + ", ".join(f"{x:.6f}" for x in loss_by_pos.tolist())
                              + "]\n")
        return {"loss": loss, "perplexity": math.exp(loss), "bits_per_char": loss / math.log(2) * tokens_per_char,
                "eval_tokens": len(starts) * T}

    @torch.no_grad()
    def _loss_by_position(self, model, device, T: int, starts: np.ndarray, batch_size: int = 64,
                          autocast=None) -> torch.Tensor:
        """Mean validation cross-entropy (T,) at each position of the windows at `starts`."""
        val = self.data.val
        with eval_mode(model):
            loss_by_pos = torch.zeros(T, dtype=torch.float64)
            for i in range(0, len(starts), batch_size):
                windows = np.stack([val[s:s + T + 1] for s in starts[i:i + batch_size]]).astype(np.int64)
                w = torch.from_numpy(windows).to(device)
                with autocast_context(autocast):
                    logits = model(w[:, :-1]).logits  # (B, T, V)
                nll = F.cross_entropy(logits.float().transpose(1, 2), w[:, 1:], reduction="none")  # (B, T)
                loss_by_pos += nll.sum(0).double().cpu()
        return loss_by_pos / len(starts)

    def figures(self, model, device) -> list:
        starts = self.eval_starts(self.T)
        by_pos = self._loss_by_position(model, device, self.T, starts).tolist()  # writes nothing to the run
        return [Figure("loss_by_position", "validation loss by position in the window", list(range(len(by_pos))),
                       {"cross-entropy": by_pos}, "position", "loss (nats/token)",
                       note=f"{len(starts) * self.T} validation tokens in windows of {self.T}; mean loss "
                            f"{sum(by_pos) / len(by_pos):.4f}. Early positions see little context, so their loss is "
                            f"higher")]

    # ------------------------------------------------------------------ generation
    def respond(self, model, prompt: str, max_new_tokens: int | None = None, stream=None, sliding: bool = False,
                skip_unknown: bool = False, **sampling) -> str:  # sampling: temperature, top_k, top_p, generator
        """The prompt followed by its continuation; `stream(text)` receives the prompt, then
        decoded text as it is produced. max_new_tokens=None: as many as the learned table
        leaves room for (200 for encodings without a table)."""
        ids = self.tokenizer.encode(prompt, unknown="skip" if skip_unknown else "error",
                                    fix="remove them or pass --skip-unknown to drop them")
        if not ids:
            raise DataError("the prompt is empty after tokenization; give at least one known character")
        L = model.max_len
        if max_new_tokens is None:
            max_new_tokens = 200 if L is None else L - len(ids) + 1
            if max_new_tokens <= 0:
                raise PositionOutOfRange(f"the prompt has {len(ids)} tokens; the learned table holds {L}. "
                                         f"Shorten it or pass --sliding with --max-new-tokens")
        fits = L is None or len(ids) + max_new_tokens - 1 <= L
        V = self.tokenizer.vocab_size  # a model.vocab_size padded beyond it never samples the extra ids
        if not fits and not sliding:  # checked before anything is printed
            raise PositionOutOfRange(
                f"prompt ({len(ids)} tokens) + {max_new_tokens} new tokens needs {len(ids) + max_new_tokens - 1} "
                f"positions but the learned table has {L}; pass --sliding to keep only the last tokens as "
                f"context, or ask for at most {max(0, L - len(ids) + 1)} new tokens")
        prompt_text = self.tokenizer.decode(ids)
        printer = on_token = None
        if stream is not None:  # only then pay a host sync per token
            stream(prompt_text)
            printer = StreamDecoder(self.tokenizer, stream)
            on_token = printer.on_token
        if fits:
            out = model.generate([ids], max_new_tokens, on_token=on_token, vocab_limit=V, **sampling)[0]
        else:
            # Sliding window: generate in chunks, each conditioned on the most recent tokens
            # that leave room for the chunk inside the table (a longer prompt keeps its tail).
            chunk = max(1, L // 2)
            context, out = list(ids), []
            while len(out) < max_new_tokens:
                n = min(chunk, max_new_tokens - len(out))
                window = context[-(L - n + 1):]
                new = model.generate([window], n, on_token=on_token, vocab_limit=V, **sampling)[0]
                out += new
                context += new
                if len(new) < n:  # stop token
                    break
        if printer is not None:
            printer.flush()
        return prompt_text + self.tokenizer.decode(out)
