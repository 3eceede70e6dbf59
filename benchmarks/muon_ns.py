"""What Muon costs on this machine: its Newton-Schulz iteration in bfloat16 (PyTorch's Muon) and in
float32 (`learnpos.optim.Muon`, `train.muon_precision=float32`), per matrix and per training step.

    python benchmarks/muon_ns.py [--json] [--preset shakespeare-char] [--repeats 7] [--iters 10] [--threads 0]

Per matrix shape of the preset's blocks: ms of one iteration (5 steps) each way, alternating in one
process (medians). Per training step of the preset (forward, backward, clip, optimizer): AdamW,
Muon with the bf16 iteration and Muon with the float32 one, on the same model and batches,
alternating (medians); `train.muon_precision=auto` picks bfloat16 only where bf16 matmuls are fast
(CUDA, CPUs with AMX).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import _common as C
import torch
import torch.optim._muon as torch_muon

from learnpos.config import load_config
from learnpos.hardware import cpu_has_amx_bf16
from learnpos.load import build_model
from learnpos.optim import build_optimizer, muon_matrices, newton_schulz
from learnpos.tasks import build_task
from learnpos.train import _resolve_vocab

COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--preset", default="shakespeare-char")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" /
                                          "tinyshakespeare" / "input.txt"))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    C.set_threads(args.threads)
    print(f"# {C.cpu_info()}; torch {torch.__version__}; {C.thread_note()}; AMX {cpu_has_amx_bf16()}", flush=True)
    cfg = load_config(args.preset, {"lm.data": args.data, "model.positional.init": "normal"})
    task = build_task(cfg, None)
    _resolve_vocab(cfg, task)
    torch.manual_seed(0)
    model = build_model(cfg, task)

    per_shape = {}
    for shape in sorted({tuple(p.shape) for p in muon_matrices(model)}):
        g = torch.randn(shape)
        ms = C.interleaved({"bfloat16": lambda g=g: torch_muon._zeropower_via_newtonschulz(g, COEFFICIENTS, 5, 1e-7),
                            "float32": lambda g=g: newton_schulz(g, COEFFICIENTS, 5, 1e-7)},
                           args.repeats, args.iters * 5)
        per_shape["x".join(map(str, shape))] = {k: round(statistics.median(v), 3) for k, v in ms.items()}
        print(f"newton-schulz {shape}: bf16 {per_shape['x'.join(map(str, shape))]['bfloat16']} ms, "
              f"fp32 {per_shape['x'.join(map(str, shape))]['float32']} ms", flush=True)

    step = iter(range(10**9))
    setups = {"adamw": {}, "muon bf16": {"train.optimizer": "muon", "train.muon_precision": "bfloat16"},
              "muon fp32": {"train.optimizer": "muon", "train.muon_precision": "float32"}}
    contenders = {}
    for name, over in setups.items():
        c = load_config(args.preset, {"lm.data": args.data, **over})
        torch.manual_seed(0)
        m = build_model(cfg, task)
        opt = build_optimizer(m, c.train, "cpu")

        def fn(m=m, opt=opt, c=c):
            loss = task.loss(m, task.train_batch(next(step), c.train.batch_size))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        contenders[name] = fn
    ms = C.interleaved(contenders, args.repeats, args.iters, warmup=2)
    steps = {k: round(statistics.median(v), 2) for k, v in ms.items()}
    print(f"training step ({args.preset}, batch {cfg.train.batch_size}): " +
          ", ".join(f"{k} {v} ms" for k, v in steps.items()), flush=True)
    C.emit(args.json, {"preset": args.preset, "newton_schulz_ms": per_shape, "step_ms": steps,
                       "amx_bf16": cpu_has_amx_bf16()})


if __name__ == "__main__":
    main()
