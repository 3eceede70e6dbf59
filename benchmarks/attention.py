"""CPU bf16 training attention: `learnpos.attention.matmul_attention` vs `F.scaled_dot_product_attention`.

    python benchmarks/attention.py [--json] [--keys 64,128,256,512,1024] [--repeats 7] [--threads 0]

One layer's attention forward + backward in bf16 at (B, nh, T, hs) = (16, 6, T, 64) (the large
training config's heads; B shrinks above 256 keys to keep the work per call comparable), causal,
inputs laid out as the model makes them (views of one fused qkv projection). Contenders alternate
in one process; medians. `matmul-1block` is the same code with one query block, to show what the
64-row causal blocks buy. This is the measurement behind `MAX_KEYS` in learnpos/attention.py:
with `model.attention=auto` the model uses the matmul kernel up to 256 keys and SDPA above.
"""

from __future__ import annotations

import argparse
import statistics

import _common as C
import torch
import torch.nn.functional as F

from learnpos import attention as A


def contenders(B: int, nh: int, T: int, hs: int) -> dict:
    C_ = nh * hs
    qkv = torch.randn(B, T, 3 * C_, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(B, T, C_, dtype=torch.bfloat16)

    def heads():
        q, k, v = qkv.split(C_, dim=2)
        return [t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v)]  # (B, nh, T, hs) views

    def run(attend):
        def step():
            qkv.grad = None
            y = attend(*heads())
            y.transpose(1, 2).reshape(B, T, C_).backward(dy)
        return step

    def matmul(block):
        return lambda q, k, v: A.matmul_attention(q, k, v, None, True, query_block=block)

    return {"sdpa": run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
            "matmul": run(matmul(A.QUERY_BLOCK)), "matmul-1block": run(matmul(T))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--keys", default="64,128,256,512,1024")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    args = ap.parse_args()
    C.set_threads(args.threads)
    print(f"# {C.cpu_info()}; torch {torch.__version__}; {C.thread_note()}; bf16, causal, fwd+bwd of one layer")
    result: dict = {"threads": torch.get_num_threads(), "ms": {}, "speedup_vs_sdpa": {}}
    for T in (int(t) for t in args.keys.split(",")):
        B, nh, hs = max(1, 16 * 256 // max(T, 256)), 6, 64
        times = C.interleaved(contenders(B, nh, T, hs), args.repeats, iters=3)
        ms = {name: round(statistics.median(t), 2) for name, t in times.items()}
        speedup = round(C.median_ratio(times["sdpa"], times["matmul"]), 2)
        result["ms"][T], result["speedup_vs_sdpa"][T] = ms, speedup
        used = "matmul" if T <= A.MAX_KEYS else "sdpa"
        print(f"attention T={T:5d} B={B:2d}: sdpa {ms['sdpa']:7.2f} ms  matmul {ms['matmul']:7.2f} ms  "
              f"matmul-1block {ms['matmul-1block']:7.2f} ms  sdpa/matmul {speedup:.2f}x  (model uses {used})",
              flush=True)
    C.emit(args.json, result)


if __name__ == "__main__":
    main()
