"""Fault injection for the crash-safety tests: the process kills itself (SIGKILL, as the OOM
killer or a preempted node would) the n-th time it reaches a named point.

Bottom layer: imports nothing of learnpos. Off unless LEARNPOS_FAULT is set, e.g.
LEARNPOS_FAULT=checkpoint:2 (the second checkpoint write, after its first file and before its
manifest), eval:1 (the first evaluation, computed but not logged), append:3 (the third
metrics line, half written). A point costs one dictionary lookup when off.
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def armed(name: str) -> bool:
    """Whether this visit of point `name` is the one LEARNPOS_FAULT asks to die at (counts the visit)."""
    spec = os.environ.get("LEARNPOS_FAULT")
    if not spec:
        return False
    point, _, nth = spec.partition(":")
    if point != name:
        return False
    _hits[name] = _hits.get(name, 0) + 1
    return _hits[name] == int(nth or 1)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def point(name: str) -> None:
    """Die here if LEARNPOS_FAULT names this visit."""
    if armed(name):
        die()
