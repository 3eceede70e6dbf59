"""Errors a user can cause and fix. The CLI turns every `LearnposError`, and every failure
of the operating system (`OSError`: disk full, read-only, permission, ...; see
`os_error_message`), into one line on stderr and exit code 2; anything else is a bug and
keeps its traceback."""

import errno
import os
import re


class LearnposError(Exception):
    """Base class for problems in the user's input (config, data, positions, run dirs)."""


class ConfigError(LearnposError, ValueError):
    """An unknown key, a wrong type or an impossible combination in a config."""


class DataError(LearnposError, ValueError):
    """Missing, empty, binary or non-UTF-8 data, or text a tokenizer cannot encode."""


class PositionOutOfRange(LearnposError, ValueError):
    """A position id that the positional encoding cannot represent."""


class RunDirError(LearnposError):
    """A run directory that is missing, incomplete or would be overwritten."""


class TrainingDiverged(LearnposError):
    """The loss became NaN or infinite."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (libraries raise multi-line ones), for
    wrapping it in a one-line LearnposError."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


# What to do about each failure of the operating system a user can meet (errno -> advice).
_OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free space there, or write somewhere else (--out, --train.out_dir)",
    errno.EDQUOT: "the disk quota is used up: free space there, or write somewhere else (--out, --train.out_dir)",
    errno.EFBIG: "the file would be larger than this system allows (ulimit -f): raise the limit or write elsewhere",
    errno.EROFS: "it is on a read-only file system: write somewhere else (--out, --train.out_dir)",
    errno.EACCES: "permission denied: check the permissions, or write somewhere else (--out, --train.out_dir)",
    errno.EPERM: "the operation is not permitted: check the permissions, or use another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: give a path whose folders are folders",
    errno.EISDIR: "it is a folder where a file is needed: give a file path",
    errno.ENOENT: "it does not exist: check the path",
    errno.EEXIST: "it already exists: choose another path",
    errno.ENOTEMPTY: "the folder is not empty: choose another path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n 4096) or close other programs",
    errno.ENFILE: "the system has too many open files: close other programs and try again",
    errno.ENOMEM: "out of memory: use a smaller model or batch, or close other programs",
    errno.ENAMETOOLONG: "the path is too long: use a shorter one",
    errno.ELOOP: "the path has a symbolic-link loop: fix the link",
    errno.EIO: "an input/output error on the device: check the disk",
}


def os_error_in(e: Exception, path) -> OSError | None:
    """The OSError behind a library's own error type, when its message carries one (the Rust
    libraries say "No space left on device (os error 28)"), so it can be reported as one."""
    text = str(e)
    for m in re.finditer(r"\((?:os error )?(\d+)\)", text):
        code = int(m.group(1))
        if code in _OS_ADVICE and os.strerror(code) in text:
            return OSError(code, os.strerror(code), str(path))
    return None


def os_error_message(e: OSError) -> str:
    """One line for a failure of the operating system: what failed, on which path, what to do."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    what = e.strerror or first_line(e)
    advice = _OS_ADVICE.get(e.errno, "check the path and the system, then try again")
    return f"{where + ': ' if where else ''}{what} ({advice})"
