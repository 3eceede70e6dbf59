"""Shared pieces of the side-by-side benchmarks: thread setup, the learnpos <-> HF GPT-2
weight mapping, interleaved timing and the one-JSON-line output convention.

Import this module before torch: it sets OMP_WAIT_POLICY=PASSIVE (unless already set),
which only takes effect if it is in the environment when OpenMP starts.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from learnpos.config import ModelConfig, PositionalConfig  # noqa: E402
from learnpos.model import GPT  # noqa: E402

# The two configurations every comparison uses (vocab 65 = tinyshakespeare's characters).
CONFIGS = {
    "small": dict(n_layer=4, n_head=4, n_embd=128, block=64, batch=12, vocab=65),  # nanoGPT shakespeare-char CPU
    "large": dict(n_layer=6, n_head=6, n_embd=384, block=256, batch=16, vocab=65),
}


def set_threads(n: int) -> int:
    """Use n intra-op threads (0 = torch's default); returns the number in use."""
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def thread_note() -> str:
    return f"threads={torch.get_num_threads()} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"


def learnpos_gpt(spec: dict) -> GPT:
    """learnpos GPT at `spec`: learned positions with exactly `block` rows, no dropout, tied head."""
    cfg = ModelConfig(vocab_size=spec["vocab"], n_layer=spec["n_layer"], n_head=spec["n_head"],
                      n_embd=spec["n_embd"], dropout=0.0, bias=True, tie_weights=True,
                      positional=PositionalConfig(kind="learned", max_len=spec["block"]))
    return GPT(cfg)


def hf_gpt2(spec: dict, activation: str = "gelu_new"):
    """HF `GPT2LMHeadModel` at the same config (SDPA attention, all dropouts 0, tied head).

    activation: GPT-2's tanh GELU as HF computes it: `gelu_new` (the GPT2Config default, eight
    element-wise ops) or `gelu_pytorch_tanh` (the same function as one fused PyTorch kernel,
    which is what learnpos calls)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = GPT2Config(vocab_size=spec["vocab"], n_positions=spec["block"], n_embd=spec["n_embd"],
                     n_layer=spec["n_layer"], n_head=spec["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, layer_norm_epsilon=1e-5, activation_function=activation,
                     bos_token_id=None, eos_token_id=None, pad_token_id=0, attn_implementation="sdpa")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GPT2LMHeadModel(cfg)
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    return model


@torch.no_grad()
def copy_to_hf(lp: GPT, hf) -> None:
    """Copy learnpos weights into an HF GPT-2 of the same shape.

    HF stores its Linear layers as `Conv1D` with weight (in, out), the transpose of
    `nn.Linear`'s (out, in); the fused q|k|v layout (q, k, v stacked along the output
    dimension) is the same in both.
    """
    sd = lp.state_dict()
    t = hf.transformer
    t.wte.weight.copy_(sd["tok_emb.weight"])
    t.wpe.weight.copy_(sd["pos.weight"])
    for i, h in enumerate(t.h):
        p = f"blocks.{i}."
        for ours, theirs in [("ln1", h.ln_1), ("ln2", h.ln_2)]:
            theirs.weight.copy_(sd[p + ours + ".weight"])
            theirs.bias.copy_(sd[p + ours + ".bias"])
        for ours, theirs in [("attn.qkv", h.attn.c_attn), ("attn.proj", h.attn.c_proj),
                             ("mlp.fc", h.mlp.c_fc), ("mlp.proj", h.mlp.c_proj)]:
            theirs.weight.copy_(sd[p + ours + ".weight"].t())
            theirs.bias.copy_(sd[p + ours + ".bias"])
    t.ln_f.weight.copy_(sd["ln_f.weight"])
    t.ln_f.bias.copy_(sd["ln_f.bias"])
    hf.lm_head.weight.copy_(sd["head.weight"])  # tied to wte in both models


@torch.no_grad()
def max_logit_diff(lp: GPT, hf, spec: dict, batch: int = 2, seed: int = 0) -> float:
    """Largest |logit difference| of the two models on one random (batch, block) input, in fp32."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, spec["vocab"], (batch, spec["block"]), generator=g)
    lp_mode, hf_mode = lp.training, hf.training
    lp.eval()
    hf.eval()
    diff = (lp(idx).logits - hf(input_ids=idx).logits).abs().max().item()
    lp.train(lp_mode)
    hf.train(hf_mode)
    return diff


def interleaved(contenders: dict[str, Callable[[], None]], repeats: int, iters: int,
                warmup: int = 1) -> dict[str, list[float]]:
    """Time each contender's `fn()` as ms per call, alternating contenders within every repeat
    (and reversing their order on odd repeats) so slow drifts in machine load hit both alike.
    Returns name -> one ms/call figure per repeat."""
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = contenders[name]
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            out[name].append((time.perf_counter() - t0) * 1e3 / iters)
    return out


def minor_faults_per_call(fn: Callable[[], None], calls: int = 2) -> int | None:
    """Minor page faults per `fn()` call, over `calls` calls (None where getrusage is missing)."""
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // calls


def median_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over repeats of slow/fast (each repeat's pair was timed back to back)."""
    return statistics.median(s / f for s, f in zip(slow, fast, strict=True))


def default_cpu_precision() -> str:
    """What learnpos trains in on this CPU by default (`train.dtype=auto`): 'bfloat16' when its
    policy turns on bf16 autocast here, else 'float32'. Read from learnpos itself so this
    benchmark follows the policy wherever it is defined."""
    from learnpos.hardware import autocast_for

    ctx = autocast_for(torch.device("cpu"), "auto")()
    return "bfloat16" if isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16 else "float32"


def autocast_ctx(precision: str) -> Callable:
    """Zero-argument context factory for a precision name, as learnpos's trainer uses it."""
    import contextlib

    if precision == "bfloat16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def machine() -> dict:
    """Where and on what a figure was measured: CPU, torch, threads, the learnpos commit."""
    import datetime
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    from learnpos.hardware import cpu_has_amx_bf16

    return {"cpu": cpu_info(), "amx_bf16": cpu_has_amx_bf16(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "learnpos")),
            "date": datetime.date.today().isoformat()}


def kg_overrides(dataset: str, seed: str | int, out_dir: str, data: str = "", sets: Sequence[str] = (),
                 steps: int = 0) -> dict[str, str]:
    """The overrides a KG benchmark run puts on the `kg-<dataset>` preset: its seed and run
    directory, the dataset (`data`: its folder; "" = PyKEEN's copy), then `sets` ("key=value"),
    then train.max_iters where `steps` is given."""
    over = {"train.seed": str(seed), "train.out_dir": out_dir, "kg.dataset": dataset, "kg.data": data,
            **dict(s.split("=", 1) for s in sets)}
    if steps:
        over["train.max_iters"] = str(steps)
    return over


def emit(as_json: bool, result: dict) -> None:
    """The benchmark convention: with --json, one JSON object is the last line of stdout; it
    carries `machine` (see `machine()`), so every saved figure says where it was measured."""
    if as_json:
        print(json.dumps({**result, "machine": machine()}), flush=True)


def cpu_info() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
