"""Model FLOPs utilisation of the learnpos training step, against a matmul peak measured here.

    python benchmarks/mfu.py [--json] [--config large] [--precision default] [--iters 3]
        [--repeats 5] [--threads 0] [--peak-size 2048]

FLOPs counted per training step (forward + backward; the PaLM / nanoGPT convention):

    flops_per_token = 6 * N + 12 * n_layer * n_embd * T
    flops_per_step  = flops_per_token * B * T

    N = n_layer * 12 * n_embd**2 + vocab * n_embd
        the weights of every matrix product: per layer qkv (3 C^2), attention output
        projection (C^2), MLP (4 C^2 + 4 C^2); plus the output head (V x C; tied to the
        token embedding, but the head is a real matmul). Biases, LayerNorm gains and the
        two embedding lookups (token and position rows) are not matmuls and are left out.
    6 N   = 2 N multiply-adds forward + 4 N backward (input and weight gradients).
    12 L C T: attention scores q.k and the weighted sum of v, 2 * 2 * T * C FLOPs per token
        and layer forward, x3 with backward; counted as if dense. A causal kernel skips
        about half of it, so this slightly flatters MFU for long blocks (for the large
        config it is 10% of the total).

Peak: the best of several timed (n x n) @ (n x n) matmuls in the same process, with the same
threads, in fp32 and in bf16; the peak of the precision the step runs in is `peak_flops`.
`mfu = achieved_flops / peak_flops`, achieved = flops_per_step / median step time. The step
is the one `learnpos.train` runs: forward + loss, backward, clip 1.0, AdamW (built by
`learnpos.optim.build_optimizer`), zero_grad, in learnpos's default CPU precision unless
--precision says otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common as C
import torch

from learnpos.config import TrainConfig
from learnpos.optim import build_optimizer


def flops_per_token(spec: dict) -> int:
    L, Cd, V, T = spec["n_layer"], spec["n_embd"], spec["vocab"], spec["block"]
    n_matmul = L * 12 * Cd * Cd + V * Cd
    return 6 * n_matmul + 12 * L * Cd * T


def matmul_peak(dtype: torch.dtype, n: int, repeats: int = 20) -> float:
    """Best FLOP/s of an (n x n) @ (n x n) product in `dtype` over `repeats` timed runs."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b  # warm up (oneDNN/MKL kernel selection, page faults)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--config", default="large", choices=list(C.CONFIGS))
    ap.add_argument("--precision", default="default", choices=["default", "float32", "bfloat16"])
    ap.add_argument("--iters", type=int, default=2, help="training steps per timed round")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--peak-size", type=int, default=2048, help="n of the n x n peak matmul")
    args = ap.parse_args()

    C.set_threads(args.threads)
    precision = C.default_cpu_precision() if args.precision == "default" else args.precision
    spec = C.CONFIGS[args.config]
    print(f"# {C.cpu_info()}; torch {torch.__version__}; {C.thread_note()}; precision {precision}")

    peaks = {"float32": matmul_peak(torch.float32, args.peak_size)}
    if precision == "bfloat16" or args.precision == "default":
        peaks["bfloat16"] = matmul_peak(torch.bfloat16, args.peak_size)

    torch.manual_seed(0)
    model = C.learnpos_gpt(spec).train()
    opt = build_optimizer(model, TrainConfig(lr=1e-3, beta2=0.99, weight_decay=0.1), "cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, spec["vocab"], (spec["batch"], spec["block"]), generator=g)
    y = torch.randint(0, spec["vocab"], (spec["batch"], spec["block"]), generator=g)
    autocast = C.autocast_ctx(precision)

    def step() -> None:
        with autocast():
            loss = model(x, targets=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = C.interleaved({"step": step}, args.repeats, args.iters)["step"]
    # measure the peak again after the steps and keep the best: load from other processes
    # on a shared machine only ever lowers a measured peak
    peaks = {p: max(v, matmul_peak(torch.float32 if p == "float32" else torch.bfloat16, args.peak_size))
             for p, v in peaks.items()}
    ms = statistics.median(times)
    flops_step = flops_per_token(spec) * spec["batch"] * spec["block"]
    achieved = flops_step / (ms / 1e3)
    peak = peaks[precision]
    result = {
        "config": args.config, "precision": precision, "threads": torch.get_num_threads(),
        "mfu": round(achieved / peak, 4), "peak_flops": round(peak), "achieved_flops": round(achieved),
        "flops_per_step": flops_step, "ms_per_iter": round(ms, 2),
        "peak_flops_by_dtype": {p: round(v) for p, v in peaks.items()},
        "mfu_vs_fp32_peak": round(achieved / peaks["float32"], 4),
    }
    print(f"mfu {args.config} {precision}: {ms:.1f} ms/step, {flops_step / 1e9:.1f} GFLOP/step -> "
          f"{achieved / 1e9:.1f} GFLOP/s = {100 * result['mfu']:.1f}% of the measured {precision} matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s (fp32 peak {peaks['float32'] / 1e9:.1f} GFLOP/s"
          + (f", bf16 peak {peaks['bfloat16'] / 1e9:.1f} GFLOP/s" if "bfloat16" in peaks else "") + f"); "
          f"{C.thread_note()}")
    C.emit(args.json, result)


if __name__ == "__main__":
    main()
