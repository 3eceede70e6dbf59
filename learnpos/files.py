"""Writing files so that a reader (or a resumed run) never sees half of one, and one writer
per folder.

Bottom layer: imports nothing of learnpos but `faults` and `errors`, and neither torch nor NumPy.

    atomic_write(path, write)    write to a temp file beside `path`, fsync, rename over it,
                                 fsync the folder: after a crash `path` is the old file or the
                                 new one, never a mixture
    atomic_write_text            the same for a string
    fsync_dir                    make a rename or a new entry in a folder durable
    sha256_file                  a checksum, for manifests of checkpoint folders
    append_line                  one line appended to a log in a single write
    loads_json                   json.loads that refuses duplicate keys (which json.loads
                                 would resolve silently, keeping the last)
    lock_dir(folder, what)       an exclusive lock on a folder (flock on folder/.learnpos.lock),
                                 held until released or the process dies; a second writer gets
                                 a RunDirError naming the process that holds it
    user_cache_dir()             $LEARNPOS_CACHE, else $XDG_CACHE_HOME/learnpos, else ~/.cache/learnpos
    file_mode / dir_mode         what the user's umask gives a new file / folder
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from learnpos import faults
from learnpos.errors import RunDirError

LOCK_FILE = ".learnpos.lock"  # in every folder a learnpos writer holds (run directories, compare folders)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open()` would give a new file under the user's umask (mkstemp gives 0600)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode `mkdir` would give a new folder under the user's umask (mkdtemp gives 0700)."""
    return 0o777 & ~_umask()


def user_cache_dir() -> Path:
    """Where learnpos keeps what it can rebuild (token caches, fetched corpora): never a
    place a run's config.json names."""
    if os.environ.get("LEARNPOS_CACHE"):
        return Path(os.environ["LEARNPOS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "learnpos"


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
        os.chmod(tmp, file_mode())  # mkstemp makes files private; give them what the umask gives any file
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` with Python's own file I/O: a full disk or a read-only folder is then an
    OSError naming the path. (Libraries that write files themselves report it otherwise:
    safetensors as a SafetensorError, torch.save as a RuntimeError, tokenizers as Exception;
    so learnpos serializes to bytes and writes them here.)"""
    with open(path, "wb") as f:
        f.write(data)


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


# ------------------------------------------------------------------------------ locks


class DirLock:
    """An exclusive lock on a folder, held through an open file descriptor: `release()` (or
    the end of the process, however it ends) gives it up, so a killed writer never leaves a
    stale lock. The lock file itself stays (removing it would let two writers lock two
    different files of the same name)."""

    def __init__(self, folder: Path, fd: int, created: bool):
        self.folder, self.fd = folder, fd
        self.created = created  # this process made the folder (so a failed fresh run may remove it whole)

    def discard_written(self) -> None:
        """Undo what a fresh writer put here (it failed before anything worth keeping): the
        folder if this process made it, else everything in it but the lock file. Only the
        lock's holder may call this: the folder was empty, apart from the lock, when it checked."""
        if self.created:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        for child in self.folder.iterdir():
            if child.name != LOCK_FILE:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    """What the lock file says of the process holding it (written when it took the lock)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']}, `{info['command']}`, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said which yet"


def lock_dir(folder: str | Path, flag: str = "--train.out_dir") -> DirLock:
    """Take the exclusive lock of `folder` (created if missing) or raise RunDirError naming the
    holder; `flag` is the option the user can change to pick another folder."""
    import fcntl  # POSIX; learnpos runs where torch.distributed's file stores do

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"{folder} is a file, not a folder; choose another {flag}")
    while True:
        try:
            folder.mkdir(parents=True)
            created = True
        except FileExistsError:
            created = False
        path = folder / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder, waited = _holder(fd), 0
            while holder.startswith("a process that") and waited < 20:  # it took the lock an instant ago
                time.sleep(0.05)
                holder, waited = _holder(fd), waited + 1
            os.close(fd)
            raise RunDirError(f"{folder} is in use by another learnpos process ({holder}); wait for it to finish, "
                              f"or choose another {flag}") from None
        except BaseException:
            os.close(fd)
            raise
        # A writer that created the folder and failed removes it, lock file included: the file
        # locked here must still be the one at `path`, else lock again (a new file, a new folder).
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
              "command": " ".join(["learnpos", *sys.argv[1:]])[:200]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
    return DirLock(folder, fd, created)


def folder_contents(folder: Path) -> list[str]:
    """The names in `folder` other than its lock file, sorted: what makes a folder not empty."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name != LOCK_FILE)


def is_locked_folder(folder: Path) -> bool:
    """Whether `folder` is (or was) held by a learnpos writer: a run directory, never data."""
    return (folder / LOCK_FILE).exists()
