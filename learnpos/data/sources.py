"""What a run was trained on: each data path with the size and sha256 of every file read
under it, so that `eval` and `train --resume` can say when the data changed since.

    record(root, files)         {"path": absolute root, "files": [{"name", "size", "sha256"}]}
    FileLog                     collects (file, bytes) as a loader reads them
    describe_change(saved, now) one line naming what differs, or None

Files are named relative to the path the user gave, so data that moved (same files, same
bytes, another folder) is the same data; only content, names and sizes count.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class FileLog:
    """The files a loader read under `root`, with their sizes and checksums."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.files: list[dict] = []

    def add(self, file: Path, raw: bytes) -> bytes:
        """Record `file` (read as `raw`) by its name under the root; "" when it is the root
        itself (a single file: renamed or moved, it is still the same data)."""
        try:
            name = str(Path(file).relative_to(self.root)) if self.root.is_dir() else ""
        except ValueError:
            name = Path(file).name
        self.files.append({"name": name, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()})
        return raw

    def record(self) -> dict:
        return {"path": os.path.abspath(self.root), "files": sorted(self.files, key=lambda f: f["name"])}


def describe_change(saved: dict, now: dict) -> str | None:
    """None when every data path holds the same files with the same bytes as `saved` (both
    {config key: record}); else one line saying what changed, first difference per key."""
    changes = []
    for key in sorted(set(saved) | set(now)):
        before, after = saved.get(key), now.get(key)
        if before is None or after is None:
            changes.append(f"{key} was {'not ' if before is None else ''}used in training"
                           f"{' but is now' if before is None else ' and is now not'}")
            continue
        old = {f["name"]: f for f in before.get("files", [])}
        new = {f["name"]: f for f in after.get("files", [])}
        where = after.get("path", "")
        for name in sorted(set(old) | set(new)):
            a, b = old.get(name), new.get(name)
            what = f"{name} in {where}" if name else where
            if a is None:
                changes.append(f"{key}: {what} is new" if name else f"{key}: {where} is a file, it was a folder")
            elif b is None:
                changes.append(f"{key}: {what} is gone" if name else f"{key}: {where} is a folder, it was a file")
            elif a.get("sha256") != b["sha256"]:
                changes.append(f"{key}: {what} changed ({a.get('size')} -> {b['size']} bytes, sha256 "
                               f"{str(a.get('sha256'))[:12]} -> {b['sha256'][:12]})")
            else:
                continue
            break
    return "; ".join(changes) or None
