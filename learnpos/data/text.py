"""Text corpora: read UTF-8 files or folders, split train/val, tokenize once into a
memory-mapped token array cached on disk under a fingerprint of (text, tokenizer).

Cache layout: <cache_dir>/<fingerprint>/{train.bin, val.bin, meta.json}, the cache folder
being the user's (`learnpos.files.user_cache_dir()/tokens`), never one a run's config names.
The fingerprint hashes the bytes of every input file, the split settings and the tokenizer
file, so an edited corpus or a different tokenizer is tokenized again; an unchanged one never
is. meta.json, written last, holds the sha256 of each token file: a cache whose files do not
match it (damaged, overwritten, cut short) is rebuilt with a warning, never used. A cache
folder that cannot be written (read-only, full) is skipped with a warning: the tokens are
then kept in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from learnpos.data.sources import FileLog
from learnpos.errors import DataError
from learnpos.files import atomic_write, atomic_write_text, is_locked_folder, sha256_file

log = logging.getLogger(__name__)


def not_regular(path: Path, wanted: str) -> DataError:
    """The error for a path that exists but is neither a regular file nor a folder."""
    return DataError(f"{path} is not a regular file or folder (a device, pipe or socket); give {wanted}")


def _skipped(folder: Path, root: Path) -> bool:
    """Folders never read as data: hidden ones, and run directories (a run made inside its own
    data folder must not read its tokenizer.json, checkpoints or logs as text)."""
    rel = folder.relative_to(root)
    return any(part.startswith(".") for part in rel.parts) or is_locked_folder(folder) or \
        ((folder / "config.json").is_file() and (folder / "checkpoints").is_dir())


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = []
        for top, subfolders, names in os.walk(path):
            folder = Path(top)
            subfolders[:] = sorted(d for d in subfolders if not _skipped(folder / d, path))
            files += [folder / n for n in names if not n.startswith(".") and (folder / n).is_file()]
        if not files:
            raise DataError(f"{path} is a folder with no files in it")
        return sorted(files)
    if path.exists():
        raise not_regular(path, "a UTF-8 text file or folder")
    raise DataError(f"{path} does not exist; pass --data PATH to a UTF-8 text file or folder "
                    f"(or fetch one: learnpos data fetch tinyshakespeare)")


def decode_utf8(raw: bytes, source: str, wanted: str = "UTF-8 text") -> str:
    """`raw` as text, or a DataError naming `source` when it is binary or not UTF-8 (every
    reader of user data decodes through here, so they refuse bad bytes alike)."""
    if b"\0" in raw:
        raise DataError(f"{source} looks binary (it contains NUL bytes); give {wanted}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{source} is not UTF-8 (invalid byte at offset {e.start}); convert it first, "
                        f"e.g. iconv -f latin1 -t utf-8") from None


def read_text(path: str | Path, files: FileLog | None = None) -> tuple[str, str]:
    """All text under `path` (a file, or every file under a folder in sorted order, joined by
    newlines, run directories and hidden entries left out) and a sha256 of the bytes read.
    Rejects empty, binary and non-UTF-8 input. `files` records each file read."""
    path = Path(path)
    digest = hashlib.sha256()
    parts = []
    for f in _files(path):
        raw = f.read_bytes()
        if files is not None:
            files.add(f, raw)
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0" + raw)
        parts.append(decode_utf8(raw, str(f), "a UTF-8 text file"))
    text = "\n".join(parts)
    if not text.strip():
        raise DataError(f"{path} holds no text (empty or whitespace only)")
    return text, digest.hexdigest()


@dataclass
class Corpus:
    train_text: str
    val_text: str
    fingerprint: str  # of the raw inputs and split settings (not the tokenizer)
    sources: dict[str, dict] = field(default_factory=dict)  # "data" / "val_data" -> FileLog.record()


def load_corpus(data: str, val_data: str = "", val_fraction: float = 0.1) -> Corpus:
    """Train/val text: from two paths, or the last `val_fraction` of one (as nanoGPT splits)."""
    files = FileLog(data)
    text, digest = read_text(data, files)
    sources = {"data": files.record()}
    if val_data:
        val_files = FileLog(val_data)
        val_text, val_digest = read_text(val_data, val_files)
        sources["val_data"] = val_files.record()
        return Corpus(text, val_text, hashlib.sha256(f"{digest}|{val_digest}".encode()).hexdigest(), sources)
    cut = int(len(text) * (1 - val_fraction))
    if cut <= 0 or cut >= len(text):
        raise DataError(f"val_fraction={val_fraction} leaves an empty split of {len(text)} characters")
    return Corpus(text[:cut], text[cut:], hashlib.sha256(f"{digest}|frac={val_fraction}".encode()).hexdigest(),
                  sources)


ENCODING = b"pieces-at-pretoken-boundaries-v2|"


def _dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


# A safe cut (see `_encode`): just before an ASCII whitespace character (" \t\n\r", which
# every regex engine counts as \s) whose predecessor no engine counts as whitespace: not
# Python's str.isspace (a superset of Unicode White_Space: it adds U+001C..U+001F) and not
# a character that was, or is in some engines, a space (U+180E, U+200B, U+2060, U+FEFF).
# Python's re `\s` on str is exactly str.isspace.
_CUT = re.compile(r"[^\s\u180e\u200b\u2060\ufeff](?=[ \t\n\r])")


def _pieces(text: str, piece_chars: int) -> list[str]:
    """`text` cut at the first safe cut at or after every `piece_chars` characters (pieces
    join back to `text`; a stretch without a safe cut stays whole)."""
    pieces, start = [], 0
    while start < len(text):
        m = _CUT.search(text, start + max(1, piece_chars) - 1)
        if m is None:
            break
        pieces.append(text[start:m.end()])
        start = m.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _encode(tokenizer, text: str, piece_chars: int = 1 << 14) -> list[int]:
    r"""`tokenizer.encode(text)`, exactly; BPE in pieces of about `piece_chars` characters
    encoded in parallel (`encode_batch`).

    Why the pieces give the same tokens. Byte-level BPE merges never cross a pre-token, so
    cutting at a position p gives the same tokens if p is a pre-token boundary of the whole
    text and pre-tokenizing each side alone gives the same pre-tokens as in the whole text.
    The GPT-2 pre-tokenizer splits with, leftmost alternative first,
        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    and every character is matched by one alternative, so the matches tile the text. We cut
    only where text[p-1] is non-whitespace and text[p] is whitespace (see `_CUT`: characters
    on which every regex engine's \s agrees, so the Rust regex sees them the same way):
    - Whitespace (\s) is consumed only by the two \s+ alternatives and by the optional
      leading " " of a match. The \s+ alternatives cannot consume text[p-1]; the other
      alternatives' bodies (letters, digits, [^\s...], the contraction letters) cannot
      consume text[p]. So the match holding text[p-1] ends exactly at p: p is a boundary.
    - Right side: a match depends only on the text from where it starts (the regex has no
      lookbehind), so matching text[p:] alone is matching the whole text from p.
    - Left side: text[:p] differs from the whole text only in what follows p (end of text
      instead of a whitespace character). A match starting before p could only tell the
      difference by trying to consume position p in a body that has already consumed
      text[p-1], i.e. a non-whitespace body, which fails on whitespace and on the end of
      text alike; the lookahead (?!\S) follows \s+ only, which cannot reach p from before
      p. So the matches of text[:p] are those of the whole text before p.
    The usual cut "after a newline before a non-space" is NOT safe: in "a \nb" and "a\r\nb"
    the whole text gives " ", "\n" and "\r", "\n" but the left piece alone gives " \n" and
    "\r\n" (\s+(?!\S) succeeds at the end of the text); nor is a cut before indentation:
    "\n  b" gives "\n ", " b" but "\n" | " ", " b" when cut. The argument holds only for
    that pre-tokenizer without a prefix space and with nothing that sees the whole text
    (normalizer, post-processor, added tokens): `BPETokenizer.cuts_like_gpt2`; any other
    set-up is encoded whole."""
    if getattr(tokenizer, "kind", "") != "bpe" or not tokenizer.cuts_like_gpt2:
        return tokenizer.encode(text, fix="the run's character tokenizer knows only the characters of the text it "
                                          "was trained on: evaluate on text made of those, or train a new run")
    return [t for ids in tokenizer.encode_batch(_pieces(text, piece_chars)) for t in ids]


@dataclass
class TokenData:
    train: np.ndarray  # (N_train,) token ids, memory-mapped
    val: np.ndarray  # (N_val,)
    val_chars: int  # characters of text behind `val` (for bits per character)
    cache: Path | None  # None: the cache could not be written, the arrays are in memory


def _cached(folder: Path) -> dict | None:
    """The meta.json of a cache folder whose token files match their checksums, else None
    (with a warning when a cache was there but damaged)."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        ok = all(sha256_file(folder / f"{split}.bin") == meta[split]["sha256"] for split in ("train", "val"))
        np.dtype(meta["dtype"])
    except FileNotFoundError:
        if not (folder / "meta.json").exists():
            return None  # not built yet
        ok = False
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        log.warning("the token cache %s does not match its checksums (damaged or changed); tokenizing again", folder)
        return None
    return meta


def tokenize_cached(corpus: Corpus, tokenizer, tokenizer_file: Path, cache_dir: Path) -> TokenData:
    """Token arrays for both splits, memory-mapped from the cache (built on first use, checked
    against its checksums on every use)."""
    # ENCODING names the way text is split for encoding: caches made by an earlier, different
    # split (which did not always equal tokenizer.encode) are not reused.
    key = hashlib.sha256(ENCODING + corpus.fingerprint.encode() + Path(tokenizer_file).read_bytes()).hexdigest()[:20]
    folder = Path(cache_dir) / key
    meta = _cached(folder)
    if meta is None:
        dtype = _dtype(tokenizer.vocab_size)
        arrays, meta = {}, {"dtype": np.dtype(dtype).name}
        for split, text in (("train", corpus.train_text), ("val", corpus.val_text)):
            arrays[split] = np.asarray(_encode(tokenizer, text), dtype=dtype)
            meta[split] = {"tokens": int(arrays[split].size), "chars": len(text),
                           "sha256": hashlib.sha256(arrays[split].tobytes()).hexdigest()}
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for split, ids in arrays.items():
                atomic_write(folder / f"{split}.bin", lambda tmp, ids=ids: ids.tofile(tmp))
            atomic_write_text(folder / "meta.json", json.dumps(meta))  # last: it vouches for the files
        except OSError as e:
            log.warning("cannot write the token cache in %s (%s); keeping the tokens in memory", cache_dir,
                        e.strerror or e)
            return TokenData(arrays["train"], arrays["val"], meta["val"]["chars"], None)
    train, val = (np.memmap(folder / f"{split}.bin", dtype=meta["dtype"], mode="r") for split in ("train", "val"))
    return TokenData(train, val, meta["val"]["chars"], folder)
