"""Shared test settings."""

import contextlib
import io
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

# Before any test module imports torch: OpenMP threads wait passively, so a busy second core
# (CI, another process) does not make every step 25-50x slower. Subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Under pytest-xdist (`-n 2`, the README's command) each of the two workers, and every process a
# test starts, computes on one thread: two workers on two cores, none waiting for the other's.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
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


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    """`learnpos ARGS` run in this process from `cwd`, its stdout, stderr and exit code captured
    as a CompletedProcess: no interpreter start and no torch import per call (about 2 s each).
    For what a command computes and says; what a real process does (exit status, signals, pipes,
    locks between processes) is tested through subprocesses (test_cli.py, test_robust.py)."""
    from learnpos.cli import main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level, here = root.handlers[:], root.level, os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            root.handlers = []  # main's logging.basicConfig then writes to the captured stderr
            code = main([str(a) for a in args])
    finally:
        root.handlers, root.level = handlers, level
        os.chdir(here)
    return subprocess.CompletedProcess(["learnpos", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def verify_checks():
    """`learnpos verify`'s checks at seed 0, computed once per test process (test_verify.py and
    test_docs.py both read them)."""
    from learnpos.verify import run_checks

    return run_checks(seed=0)

