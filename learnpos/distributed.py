"""Data-parallel training across processes: what `train` needs from torch.distributed.

Started the standard way, `torchrun --nproc_per_node N -m learnpos train ...`: torchrun sets
WORLD_SIZE, RANK and LOCAL_RANK, and `Dist.from_env` joins the process group (gloo on CPU,
NCCL on CUDA, where each process takes the GPU of its LOCAL_RANK). Without torchrun it is a
world of one and nothing here touches torch.distributed.

How a step is split, so that N processes compute what one process computes:
    every rank draws the same global batch (a pure function of seed and step, as for one
    process), takes its contiguous share of the rows (`shard`), and splits that share into
    `train.grad_accum` micro-batches. Each micro-batch's mean loss is weighted by its share
    of the global batch's loss terms (`weight`), so the summed, all-reduced gradient is the
    gradient of the global batch's mean loss even when shards hold different numbers of
    targets (dialogue responses of different lengths). DDP all-reduces once per step: the
    micro-batches before the last run under `no_sync`.

Only rank 0 writes files, prints and evaluates; the others wait for its verdict (continue
or stop) at the end of each evaluation.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, fields, replace

import torch
import torch.distributed as torch_dist
import torch.nn as nn

from learnpos.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @staticmethod
    def from_env(device_type: str) -> Dist:
        """This process's place in a torchrun launch (or a world of one), with the process
        group joined."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return Dist()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not torch_dist.is_initialized():
            if device_type == "cuda":
                torch.cuda.set_device(local_rank)
            backend = "nccl" if device_type == "cuda" else "gloo"
            # evaluation runs on rank 0 while the others wait: allow for a long one
            torch_dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
        return Dist(rank, world, local_rank)

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: cuda:LOCAL_RANK under torchrun on GPUs."""
        if self.active and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    # ------------------------------------------------------------ collective steps
    def broadcast(self, value):
        """Rank 0's `value` on every rank (any picklable object)."""
        if not self.active:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.active:
            return [value]
        out = [None] * self.world
        torch_dist.all_gather_object(out, value)
        return out

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.active:
            x = x.clone()
            torch_dist.all_reduce(x, op=torch_dist.ReduceOp.SUM)
        return x

    def close(self) -> None:
        if self.active and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def check_split(batch_size: int, world: int, grad_accum: int) -> None:
    parts = world * grad_accum
    if grad_accum < 1:
        raise ConfigError(f"train.grad_accum={grad_accum}: it must be at least 1")
    if batch_size % parts:
        raise ConfigError(f"train.batch_size={batch_size} does not split into {world} process(es) x "
                          f"train.grad_accum={grad_accum} equal micro-batches; make it a multiple of {parts}")


def split_rows(batch, start: int, stop: int):
    """Rows start..stop-1 of every (B, ...) tensor of a `Batch` (tensors of one row, shared by
    every row, stay as they are)."""
    B = batch.idx.shape[0]
    cut = lambda t: t if t is None or t.shape[0] != B else t[start:stop]  # noqa: E731
    changes = {f.name: cut(getattr(batch, f.name)) for f in fields(batch)
               if isinstance(getattr(batch, f.name), torch.Tensor)}
    changes["extra_ids"] = {k: cut(v) for k, v in batch.extra_ids.items()}
    return replace(batch, **changes)


def micro_batches(batch, dist: Dist, grad_accum: int) -> list:
    """This rank's micro-batches of the global batch: its contiguous share of the rows, in
    `grad_accum` equal parts (the batch itself for one process and one part)."""
    if dist.world == 1 and grad_accum == 1:
        return [batch]
    B = batch.idx.shape[0]
    share = B // dist.world
    size = share // grad_accum
    first = dist.rank * share
    return [split_rows(batch, first + i * size, first + (i + 1) * size) for i in range(grad_accum)]


def no_sync(model, last: bool):
    """DDP's `no_sync` for every micro-batch but the last (one all-reduce per step)."""
    if last or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


class _TaskLoss(nn.Module):
    """The task's loss as a module, so DDP sees every parameter a step uses inside its
    forward (tasks apply their own heads to the model's hidden states)."""

    def __init__(self, model: nn.Module, task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch) -> torch.Tensor:
        return self.task.loss(self.model, batch)


def _unused_parameters(model: nn.Module, task, batch, device: torch.device) -> list[str]:
    """Parameters the task's loss never reaches (an untied vocabulary head under a task with
    its own head), from one row in eval mode (no dropout: the RNG is not touched)."""
    was_training = model.training
    model.eval()
    try:
        task.loss(model, split_rows(batch, 0, 1).to(device)).backward()
        return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def wrap_for_training(forward: nn.Module, task, dist: Dist, device: torch.device, probe_batch):
    """`loss(batch)` for the training step: the task's loss of `forward` (the model, or its
    compiled form), under DistributedDataParallel in a distributed run. `probe_batch()` gives
    a batch to find unused parameters with (called in a distributed run only)."""
    if not dist.active:
        return lambda batch: task.loss(forward, batch)
    from torch.nn.parallel import DistributedDataParallel

    unused = _unused_parameters(forward, task, probe_batch(), device)
    return DistributedDataParallel(_TaskLoss(forward, task), device_ids=[dist.local_rank] if device.type == "cuda"
                                   else None, find_unused_parameters=bool(unused))
