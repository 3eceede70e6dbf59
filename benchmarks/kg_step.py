"""What `forward(read=)`'s faster path buys a KG training step: the last block at the MASK
position only (`learnpos.model._block_at`) vs the full forward and a gather after it.

    python benchmarks/kg_step.py [--json] [--graphs umls,fb15k-237] [--shared ../shared/data]
        [--repeats 7] [--iters 5] [--threads 0]

A KG query is three tokens ([h, r, MASK]) and the task reads one of them, so the faster path
skips two thirds of the last block's queries, attention output and MLP. Each graph trains its
`kg-<graph>` preset's model (the preset's batch, negatives and loss: `KGTask.loss`); the two
contenders share the model and optimizer and alternate in one process (medians; ratio > 1 =
the faster path is faster). The step is the trainer's: loss -> backward -> AdamW -> zero_grad,
in the precision `train.dtype=auto` picks on this CPU.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import _common as C
import torch

from learnpos.config import load_config
from learnpos.load import build_model
from learnpos.model import _rows
from learnpos.tasks import build_task
from learnpos.train import _resolve_vocab


def gather_after(model):
    """The model's forward without the faster path: every position through every block, then
    the rows `read` asks for."""
    full = type(model).forward.__get__(model)

    def forward(idx, read=None, **kw):
        out = full(idx, **kw)
        return out._replace(hidden=_rows(out.hidden, read))

    return forward


def measure(graph: str, shared: Path, repeats: int, iters: int, precision: str) -> dict:
    cfg = load_config(f"kg-{graph}", {"kg.data": str(shared / graph), "train.seed": "0"})
    task = build_task(cfg, None)
    _resolve_vocab(cfg, task)
    torch.manual_seed(0)
    model = build_model(cfg, task).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = C.autocast_ctx(precision)
    step = iter(range(10**9))

    def train_step(faster: bool):
        def fn():
            if faster:
                model.__dict__.pop("forward", None)
            else:
                model.forward = gather_after(model)
            with autocast():
                loss = task.loss(model, task.train_batch(next(step), cfg.train.batch_size))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return fn

    ms = C.interleaved({"read": train_step(True), "gather": train_step(False)}, repeats, iters, warmup=2)
    model.__dict__.pop("forward", None)
    return {"batch": cfg.train.batch_size, "n_layer": cfg.model.n_layer, "n_embd": cfg.model.n_embd,
            "ms_read": round(statistics.median(ms["read"]), 2), "ms_gather": round(statistics.median(ms["gather"]), 2),
            "ratio": round(C.median_ratio(ms["gather"], ms["read"]), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--graphs", default="umls,fb15k-237")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"),
                    help="the folder holding the graphs")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--iters", type=int, default=5, help="training steps per round")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    args = ap.parse_args()
    C.set_threads(args.threads)
    precision = C.default_cpu_precision()
    print(f"# {C.cpu_info()}; torch {torch.__version__}; {C.thread_note()}; precision {precision}", flush=True)
    out = {}
    for graph in args.graphs.split(","):
        r = out[graph] = measure(graph, Path(args.shared), args.repeats, args.iters, precision)
        print(f"kg step {graph:10s} batch {r['batch']:4d} {r['n_layer']}x{r['n_embd']}: read (last block at MASK) "
              f"{r['ms_read']:7.2f} ms  gather after {r['ms_gather']:7.2f} ms  ratio {r['ratio']:.3f}x", flush=True)
    C.emit(args.json, {"precision": precision, "graphs": out})


if __name__ == "__main__":
    main()
