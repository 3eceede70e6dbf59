"""Tokenizers: character level (any Unicode) and byte-level BPE (trained locally with the
`tokenizers` library). Both save to / load from one `tokenizer.json` in the run directory."""

from __future__ import annotations

import json
from pathlib import Path

from learnpos.errors import DataError, first_line
from learnpos.files import atomic_write_text

TOKENIZER_FILE = "tokenizer.json"


class CharTokenizer:
    """One token per Unicode code point seen in the training text.

    A character the tokenizer has never seen cannot be encoded: `encode` raises a
    `DataError` naming the characters, or drops them with `unknown="skip"`.
    """

    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, unknown: str = "error", fix: str = "remove them") -> list[int]:
        """Token ids of `text`; unknown="skip" drops characters never seen, else they are a
        DataError ending in `fix` (the caller knows what its user can do: a flag, an edit)."""
        ids = [self.index.get(c, -1) for c in text]
        if -1 in ids:
            missing = sorted({c for c, i in zip(text, ids, strict=True) if i < 0})
            if unknown != "skip":
                shown = ", ".join(repr(c) for c in missing[:10])
                raise DataError(f"the text has {len(missing)} character(s) this model never saw ({shown}); {fix}")
            ids = [i for i in ids if i >= 0]
        return ids

    def decode(self, ids: list[int]) -> str:
        n = len(self.chars)
        for i in ids:
            if not 0 <= i < n:  # a negative id would silently index from the end
                raise _id_error(i, n, "character tokenizer's", "symbols")
        return "".join(self.chars[i] for i in ids)

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps({"learnpos_tokenizer": "char", "chars": self.chars}, ensure_ascii=False))


class BPETokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenization), so every string is encodable."""

    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        chunk = 1 << 20  # the trainer takes an iterator of strings; feed it in 1 MiB pieces
        tok.train_from_iterator((text[i:i + chunk] for i in range(0, len(text), chunk)), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str, unknown: str = "error", fix: str = "") -> list[int]:
        return self.tok.encode(text).ids  # byte-level: every text is encodable

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]

    @property
    def cuts_like_gpt2(self) -> bool:
        """Whether a text may be encoded in pieces cut where `learnpos.data.text._encode`
        proves the tokens unchanged: GPT-2 byte-level regex pre-tokenization without a
        prefix space (as `train` sets up), and nothing that sees the text whole (no
        normalizer, post-processor or added tokens)."""
        from tokenizers import pre_tokenizers

        pre = self.tok.pre_tokenizer
        return (isinstance(pre, pre_tokenizers.ByteLevel) and getattr(pre, "use_regex", False)
                and not pre.add_prefix_space and self.tok.normalizer is None and self.tok.post_processor is None
                and not self.tok.get_added_tokens_decoder())

    def decode(self, ids: list[int]) -> str:
        n = self.vocab_size
        for i in ids:
            if not 0 <= i < n:  # the library silently drops ids >= n (and overflows on negative ones)
                raise _id_error(i, n, "BPE tokenizer's", "tokens")
        return self.tok.decode(ids)

    def save(self, path: Path) -> None:
        atomic_write_text(path, self.tok.to_str())


Tokenizer = CharTokenizer | BPETokenizer


def _id_error(i: int, n: int, whose: str, units: str) -> DataError:
    return DataError(f"token id {i} is outside this {whose} {n} {units} (ids 0..{n - 1}); it came from a model "
                     f"whose vocabulary (model.vocab_size) is larger than its tokenizer's: only ids below {n} "
                     f"can be decoded")


def train_tokenizer(kind: str, text: str, vocab_size: int) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size)
    raise DataError(f"unknown tokenizer '{kind}'; use char or bpe")


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.exists():
        raise DataError(f"no tokenizer at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not a tokenizer file (not UTF-8 JSON: {first_line(e)}); restore it from "
                        f"the run it came from") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a tokenizer file (a JSON {type(data).__name__}, not an object)")
    if data.get("learnpos_tokenizer") == "char":
        chars = data.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) and len(c) == 1 for c in chars) \
                or len(set(chars)) != len(chars):
            raise DataError(f"{path}: a character tokenizer's 'chars' must be a list of distinct single characters")
        return CharTokenizer(chars)
    from tokenizers import Tokenizer as HFTokenizer

    try:
        return BPETokenizer(HFTokenizer.from_file(str(path)))
    except Exception as e:  # the Rust library raises plain Exceptions with multi-line messages
        raise DataError(f"{path} is not a tokenizer file the tokenizers library can read ({first_line(e)})") from None


class StreamDecoder:
    """Streams decoded text. Pending ids are decoded together until they form whole
    characters (a multi-byte character may span byte-level BPE tokens), then emitted and
    dropped, so each token is decoded about once however long the generation."""

    def __init__(self, tokenizer, stream):
        self.tokenizer, self.stream = tokenizer, stream
        self.pending: list[int] = []

    def add(self, token: int) -> None:
        self.pending.append(token)
        piece = self.tokenizer.decode(self.pending)
        if not piece.endswith("\ufffd"):  # else: wait for the rest of the character
            self.stream(piece)
            self.pending.clear()

    def flush(self) -> None:
        if self.pending:
            self.stream(self.tokenizer.decode(self.pending))
            self.pending.clear()
