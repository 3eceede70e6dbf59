"""Writing files so that a reader (or a resumed run) never sees half of one.

Bottom layer: imports nothing of learnpos but `faults`, and neither torch nor NumPy.

    atomic_write(path, write)    write to a temp file beside `path`, fsync, rename over it,
                                 fsync the folder: after a crash `path` is the old file or the
                                 new one, never a mixture
    atomic_write_text            the same for a string
    fsync_dir                    make a rename or a new entry in a folder durable
    sha256_file                  a checksum, for manifests of checkpoint folders
    append_line                  one line appended to a log in a single write
    loads_json                   json.loads that refuses duplicate keys (which json.loads
                                 would resolve silently, keeping the last)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from learnpos import faults


def temp_path_beside(path: Path) -> Path:
    """A new empty file next to `path` (same filesystem, so a rename over `path` is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (new names, renames) to disk. A no-op where folders cannot
    be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)`, fsync it, then rename over `path`: readers see the old or the
    new file, never half of one, also after a power cut."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a run's files are as readable as any other
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def append_line(path: str | Path, line: str) -> None:
    """Append `line` + newline in one write call (a kill can cut at most this last line;
    readers of append-only logs drop a cut-off last line, see `learnpos.runs.read_metrics`)."""
    data = line.rstrip("\n") + "\n"
    with open(path, "a", encoding="utf-8") as f:
        if faults.armed("append"):  # a crash test: half the line reaches the disk, then the kill
            f.write(data[:len(data) // 2])
            f.flush()
            faults.die()
        f.write(data)
        f.flush()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise json.JSONDecodeError(f"duplicate key {dupes[0]!r}", "", 0)
    return dict(pairs)


def loads_json(text: str):
    """json.loads, except that an object with a key twice is a JSONDecodeError ("duplicate
    key 'x'") instead of silently keeping the last value."""
    return json.loads(text, object_pairs_hook=_unique_keys)
