"""Text corpora: read UTF-8 files or folders, split train/val, tokenize once into a
memory-mapped token array cached on disk under a fingerprint of (text, tokenizer).

Cache layout: <cache_dir>/<fingerprint>/{train.bin, val.bin, meta.json}. The fingerprint
hashes the bytes of every input file, the split settings and the tokenizer file, so an
edited corpus or a different tokenizer is tokenized again; an unchanged one never is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from learnpos.errors import DataError
from learnpos.runs import atomic_write, atomic_write_text


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"{path} is a folder with no files in it")
        return files
    raise DataError(f"{path} does not exist; pass --data PATH to a UTF-8 text file or folder "
                    f"(or fetch one: learnpos data fetch tinyshakespeare)")


def read_text(path: str | Path) -> tuple[str, str]:
    """All text under `path` (a file, or every file under a folder in sorted order, joined by
    newlines) and a sha256 of the bytes read. Rejects empty, binary and non-UTF-8 input."""
    path = Path(path)
    digest = hashlib.sha256()
    parts = []
    for f in _files(path):
        raw = f.read_bytes()
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0" + raw)
        if b"\0" in raw:
            raise DataError(f"{f} looks binary (it contains NUL bytes); give a UTF-8 text file")
        try:
            parts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{f} is not UTF-8 (invalid byte at offset {e.start}); convert it first, "
                            f"e.g. iconv -f latin1 -t utf-8") from None
    text = "\n".join(parts)
    if not text.strip():
        raise DataError(f"{path} holds no text (empty or whitespace only)")
    return text, digest.hexdigest()


@dataclass
class Corpus:
    train_text: str
    val_text: str
    fingerprint: str  # of the raw inputs and split settings (not the tokenizer)


def load_corpus(data: str, val_data: str = "", val_fraction: float = 0.1) -> Corpus:
    """Train/val text: from two paths, or the last `val_fraction` of one (as nanoGPT splits)."""
    text, digest = read_text(data)
    if val_data:
        val_text, val_digest = read_text(val_data)
        return Corpus(text, val_text, hashlib.sha256(f"{digest}|{val_digest}".encode()).hexdigest())
    cut = int(len(text) * (1 - val_fraction))
    if cut <= 0 or cut >= len(text):
        raise DataError(f"val_fraction={val_fraction} leaves an empty split of {len(text)} characters")
    return Corpus(text[:cut], text[cut:], hashlib.sha256(f"{digest}|frac={val_fraction}".encode()).hexdigest())


def _dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def _encode(tokenizer, text: str) -> list[int]:
    """Encode a long text; BPE in pieces of 1000 lines, encoded in parallel. BPE merges
    never cross a pre-token (word) boundary, so this equals encoding the whole string
    except where a run of blank lines spans a piece boundary."""
    if getattr(tokenizer, "kind", "") != "bpe":
        return tokenizer.encode(text)
    lines = text.splitlines(keepends=True)
    pieces = ["".join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)]
    return [t for ids in tokenizer.encode_batch(pieces) for t in ids]


@dataclass
class TokenData:
    train: np.ndarray  # (N_train,) token ids, memory-mapped
    val: np.ndarray  # (N_val,)
    val_chars: int  # characters of text behind `val` (for bits per character)
    cache: Path


def tokenize_cached(corpus: Corpus, tokenizer, tokenizer_file: Path, cache_dir: Path) -> TokenData:
    """Token arrays for both splits, memory-mapped from the cache (built on first use)."""
    key = hashlib.sha256(corpus.fingerprint.encode() + Path(tokenizer_file).read_bytes()).hexdigest()[:20]
    folder = Path(cache_dir) / key
    dtype = _dtype(tokenizer.vocab_size)
    if not (folder / "meta.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        counts = {}
        for split, text in (("train", corpus.train_text), ("val", corpus.val_text)):
            ids = np.asarray(_encode(tokenizer, text), dtype=dtype)
            atomic_write(folder / f"{split}.bin", lambda tmp, ids=ids: ids.tofile(tmp))
            counts[split] = {"tokens": int(ids.size), "chars": len(text)}
        atomic_write_text(folder / "meta.json", json.dumps({"dtype": np.dtype(dtype).name, **counts}))
    meta = json.loads((folder / "meta.json").read_text())
    train, val = (np.memmap(folder / f"{split}.bin", dtype=meta["dtype"], mode="r") for split in ("train", "val"))
    return TokenData(train, val, meta["val"]["chars"], folder)
