"""How much slower the NumPy float64 reference is than the PyTorch model, per training step.

    python benchmarks/reference_speed.py [--json] [--reps N] [--n-embd C --n-layer N --batch B --seq T]

One step = forward with targets + backward to every parameter gradient (no optimizer).
Both sides run the same small model as `learnpos verify` (V 30, C 16, 2 heads, 2 layers,
learned table of 16 rows, B 3 by T 8): the reference in NumPy float64, PyTorch in float32
on the CPU with its default threads (the flags scale the model up). Prints the median
time of each and their ratio (reference / torch). Threads: OMP_WAIT_POLICY=PASSIVE (set by learnpos unless already set).
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common
import torch

import learnpos.reference as ref
from learnpos.config import ModelConfig, PositionalConfig
from learnpos.fixtures import N_HEAD, N_LAYER, B, C, L, T, V, reference_params
from learnpos.model import GPT


def median_ms(step, reps: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--n-embd", type=int, default=C)
    ap.add_argument("--n-head", type=int, default=N_HEAD)
    ap.add_argument("--n-layer", type=int, default=N_LAYER)
    ap.add_argument("--batch", type=int, default=B)
    ap.add_argument("--seq", type=int, default=T)
    args = ap.parse_args()

    cfg = ModelConfig(vocab_size=V, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                      positional=PositionalConfig(kind="learned", max_len=max(L, args.seq)))
    torch.manual_seed(0)
    model = GPT(cfg)  # float32
    params = reference_params(model)  # the same weights as float64 NumPy copies
    gen = torch.Generator().manual_seed(1)
    shape = (args.batch, args.seq)
    idx, targets = torch.randint(0, V, shape, generator=gen), torch.randint(0, V, shape, generator=gen)
    idx_np, targets_np = idx.numpy(), targets.numpy()

    def reference_step() -> None:
        _, _, cache = ref.forward(params, idx_np, targets_np, cfg)
        ref.backward(cache)

    def torch_step() -> None:
        model.zero_grad(set_to_none=True)
        model(idx, targets).loss.backward()

    reference_ms = median_ms(reference_step, args.reps)
    torch_ms = median_ms(torch_step, args.reps)
    ratio = reference_ms / torch_ms
    print(f"one forward+backward step, V={V} C={cfg.n_embd} n_head={cfg.n_head} n_layer={cfg.n_layer} "
          f"B={args.batch} T={args.seq}, median of {args.reps}")
    print(f"reference (NumPy float64):  {reference_ms:8.3f} ms")
    print(f"PyTorch (float32, {torch.get_num_threads()} threads): {torch_ms:8.3f} ms")
    print(f"ratio reference / torch:    {ratio:8.2f}x")
    _common.emit(args.json, {"reference_ms": round(reference_ms, 4), "torch_ms": round(torch_ms, 4),
                             "ratio": round(ratio, 3)})


if __name__ == "__main__":
    main()
