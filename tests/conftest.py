"""Shared test settings."""

import os
import tempfile
from pathlib import Path

# Before any test module imports torch: OpenMP threads wait passively, so a busy second core
# (CI, another process) does not make every step 25-50x slower. Subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The user's cache folder (token caches) is the test session's own: tests write nothing in ~.
os.environ["LEARNPOS_CACHE"] = tempfile.mkdtemp(prefix="learnpos-test-cache-")


def shared_data_dir() -> Path:
    """The project's benchmark data (never copied into the repo): $LEARNPOS_SHARED_DATA, else
    ../shared/data next to the checkout, else /work/shared/data. Tests that need it skip
    when none exists."""
    candidates = [os.environ.get("LEARNPOS_SHARED_DATA", ""),
                  Path(__file__).resolve().parents[2] / "shared" / "data", "/work/shared/data"]
    for c in candidates:
        if c and Path(c, "MANIFEST.md").exists():
            return Path(c)
    return Path(candidates[1])
