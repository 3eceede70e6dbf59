"""Tokenizers: character level (any Unicode) and byte-level BPE (trained locally with the
`tokenizers` library). Both save to / load from one `tokenizer.json` in the run directory."""

from __future__ import annotations

import codecs
import json
from functools import cached_property
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

    def token_bytes(self, i: int) -> bytes:
        return self.chars[i].encode("utf-8", "surrogatepass")

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
        """The text of `ids`. With a byte-level decoder the tokens' bytes are joined and read
        as UTF-8 with byte sequences that are not UTF-8 dropped (a sampled model can emit a
        lone continuation byte or stop inside a character): no U+FFFD is ever made up."""
        n = self.vocab_size
        for i in ids:
            if not 0 <= i < n:  # the library silently drops ids >= n (and overflows on negative ones)
                raise _id_error(i, n, "BPE tokenizer's", "tokens")
        if self._bytes is None:
            return self.tok.decode(ids)
        return b"".join(self._bytes[i] for i in ids).decode("utf-8", "ignore")

    def token_bytes(self, i: int) -> bytes:
        return self._bytes[i] if self._bytes is not None else self.tok.decode([i]).encode("utf-8", "surrogatepass")

    @cached_property
    def _bytes(self) -> list[bytes] | None:
        """Each token's bytes when the decoder is byte-level (GPT-2's: a token is a string over
        256 stand-in characters, one per byte); special tokens decode to nothing, as the
        library's decode (skip_special_tokens) does. None for any other decoder."""
        from tokenizers import decoders

        if not isinstance(self.tok.decoder, decoders.ByteLevel):
            return None
        to_byte = {c: b for b, c in enumerate(byte_level_alphabet())}
        special = {i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}
        out = []
        for i in range(self.vocab_size):
            token = self.tok.id_to_token(i)
            if i in special or token is None:
                out.append(b"")
            elif all(c in to_byte for c in token):
                out.append(bytes(to_byte[c] for c in token))
            else:  # an added (non-special) token written as plain text
                out.append(token.encode("utf-8", "surrogatepass"))
        return out

    def save(self, path: Path) -> None:
        atomic_write_text(path, self.tok.to_str())


Tokenizer = CharTokenizer | BPETokenizer


def byte_level_alphabet() -> list[str]:
    """The character that stands for each byte value 0..255 in byte-level BPE (GPT-2's
    convention): printable Latin-1 bytes stand for themselves, the other 68 bytes take the
    code points from U+0100 upward, in byte order."""
    keeps = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    out, extra = [], 0
    for b in range(256):
        if b in keeps:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


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
    """Streams decoded text, token by token, as the bytes of whole characters: a character
    split across byte-level tokens is held until its last byte arrives, bytes that cannot be
    UTF-8 are dropped, and an unfinished character at the end is dropped by `flush`, so the
    stream never shows U+FFFD and equals `tokenizer.decode` of all the tokens."""

    def __init__(self, tokenizer, stream, stop: int | None = None):
        self.tokenizer, self.stream, self.stop = tokenizer, stream, stop
        self.utf8 = codecs.getincrementaldecoder("utf-8")("ignore")
        self.stopped = False

    def add(self, token: int) -> None:
        """Stream `token`'s text; nothing from `stop` (an id past the vocabulary, e.g. an end of
        utterance) on."""
        self.stopped = self.stopped or token == self.stop
        if self.stopped:
            return
        piece = self.utf8.decode(self.tokenizer.token_bytes(token))
        if piece:
            self.stream(piece)

    def on_token(self, tokens) -> None:
        """The `on_token` callback of generation: the new token of its first (only) row."""
        self.add(int(tokens[0]))

    def flush(self) -> None:
        piece = self.utf8.decode(b"", final=True)
        if piece:
            self.stream(piece)
