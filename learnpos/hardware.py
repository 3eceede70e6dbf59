"""What this CPU does fast: small probes that defaults (e.g. `train.dtype=auto`) can rely on.

Measured on a 2-core Intel Xeon with AMX (torch 2.13, see benchmarks/train_throughput.py):
a bf16 matmul runs ~5x faster than an fp32 one, and bf16 autocast training of the
shakespeare-char model ends 2000 steps within 0.003 of the fp32 validation loss.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch

from learnpos.config import is_device_name
from learnpos.errors import ConfigError


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """CPU feature names as torch reports them (e.g. 'amx_bf16', 'avx512_bf16')."""
    try:
        caps = torch.cpu.get_capabilities()  # torch >= 2.6
        return frozenset(k for k, v in caps.items() if v is True)
    except (AttributeError, RuntimeError):
        pass
    try:  # Linux fallback: /proc/cpuinfo spells the same flags the same way
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_amx_bf16() -> bool:
    """True if the CPU has AMX bf16 tile instructions (Intel Sapphire Rapids and later)."""
    return "amx_bf16" in _cpu_flags()


def resolve_device(name: str, flag: str = "--train.device") -> torch.device:
    """auto | cpu | cuda | cuda:N as a torch.device, or a ConfigError naming `flag` (the
    option the user set it with) when it is not one, or not here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not is_device_name(name):
        raise ConfigError(f"{flag}={name} is not one of: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{flag}={name} but CUDA is not available here; use {flag}=cpu or auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"{flag}={name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def resolve_dtype(device: torch.device, dtype: str) -> str:
    """`auto` = bf16 autocast where it is fast and measured to keep quality: CUDA with bf16
    support, and CPUs with AMX-BF16 (there a training step of the large benchmark config is
    ~1.8x faster and shakespeare-char ends within 0.003 of the fp32 val loss;
    `benchmarks/time_to_quality.py --variants nanogpt --dtype bfloat16` against `--dtype float32`).
    Elsewhere (e.g. AVX512-BF16 without AMX, not measured) fp32."""
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device.type == "cpu" and cpu_has_amx_bf16() else "float32"


def autocast_for(device: torch.device, dtype: str):
    """A zero-argument context factory: bf16 autocast, or nothing for float32."""
    if resolve_dtype(device, dtype) == "bfloat16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
