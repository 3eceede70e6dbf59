"""Per-row training statistics of every learned table (positions, turns, speakers, ...).

For every row k of a table W, over the steps of a run:
    grad_norm_sum[k]   sum over steps of ||dL/dW[k]||      (mean = sum / steps)
    grad_norm_max[k]   largest ||dL/dW[k]|| seen
    nonzero_steps[k]   steps in which row k received a non-zero gradient
    displacement[k]    ||W[k] - W_init[k]||: how far training moved the row
Rows that no training sequence reaches keep nonzero_steps = 0; whether they still move
(displacement > 0) shows the weight-decay policy at work. Saved as
`position_stats.safetensors` in each checkpoint, keys `<table>.<statistic>` (the position
table is `pos`); resumed runs continue the counts.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as serialize
from torch import Tensor

from learnpos.errors import RunDirError
from learnpos.files import write_bytes
from learnpos.runs import STATS_FILE, latest_checkpoint

STATISTICS = ("init", "grad_norm_sum", "grad_norm_max", "nonzero_steps", "displacement")


class TableStats:
    """The statistics of one table."""

    def __init__(self, table: Tensor):
        L, dev = table.shape[0], table.device  # accumulate on the table's device: no sync per step
        self.init = table.detach().float().clone()  # (L, C)
        self.grad_norm_sum = torch.zeros(L, dtype=torch.float64, device=dev)
        self.grad_norm_max = torch.zeros(L, dtype=torch.float64, device=dev)
        self.nonzero_steps = torch.zeros(L, dtype=torch.int64, device=dev)

    @torch.no_grad()
    def update(self, grad: Tensor | None) -> None:
        if grad is None:
            return
        norms = grad.detach().float().norm(dim=1).double()  # (L,)
        self.grad_norm_sum += norms
        torch.maximum(self.grad_norm_max, norms, out=self.grad_norm_max)
        self.nonzero_steps += (norms > 0).long()

    def tensors(self, table: Tensor) -> dict[str, Tensor]:
        displacement = (table.detach().float() - self.init).norm(dim=1)
        return {"init": self.init, "grad_norm_sum": self.grad_norm_sum, "grad_norm_max": self.grad_norm_max,
                "nonzero_steps": self.nonzero_steps, "displacement": displacement}


class PositionStats:
    """Statistics of every learned table of a model: `tables` maps a name to its weight."""

    def __init__(self, tables: dict[str, Tensor]):
        self.tables = dict(tables)
        self.stats = {name: TableStats(w) for name, w in self.tables.items()}
        self.steps = 0

    def update(self) -> None:
        """Record one step's gradients (call after backward, before clipping)."""
        self.steps += 1
        for name, stats in self.stats.items():
            stats.update(self.tables[name].grad)

    def tensors(self) -> dict[str, Tensor]:
        out = {f"{name}.{k}": v for name, s in self.stats.items() for k, v in s.tensors(self.tables[name]).items()}
        out["steps"] = torch.tensor([self.steps], dtype=torch.int64)
        return out

    def save(self, path: Path) -> None:
        write_bytes(path, serialize({k: v.detach().cpu().contiguous() for k, v in self.tensors().items()}))

    @classmethod
    def load(cls, path: Path, tables: dict[str, Tensor]) -> PositionStats:
        stats = cls(tables)
        dev = str(next(iter(tables.values())).device)
        data = load_file(path, device=dev)
        for name, w in tables.items():
            if f"{name}.init" not in data:
                raise RunDirError(f"{path} has no statistics for table '{name}'")
            if data[f"{name}.init"].shape != w.shape:
                raise RunDirError(f"{path}: statistics of '{name}' are for a {tuple(data[f'{name}.init'].shape)} "
                                  f"table, not {tuple(w.shape)}")
            s = stats.stats[name]
            s.init = data[f"{name}.init"]
            s.grad_norm_sum, s.grad_norm_max = data[f"{name}.grad_norm_sum"], data[f"{name}.grad_norm_max"]
            s.nonzero_steps = data[f"{name}.nonzero_steps"]
        stats.steps = int(data["steps"][0])
        return stats


def load_position_stats(path: str | Path) -> dict[str, dict[str, Tensor]]:
    """Saved statistics by table name (`pos` for positions), each with `grad_norm_mean` added.
    `path` is a stats file, a checkpoint folder or a run directory (its latest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        folder = path if (path / STATS_FILE).exists() else latest_checkpoint(path)
        path = folder / STATS_FILE
    if not path.exists():
        raise RunDirError(f"{path} does not exist: train with --train.position_stats=true to record it")
    data = load_file(path)
    steps = int(data["steps"][0])
    out: dict[str, dict[str, Tensor]] = {}
    for key, value in data.items():
        if key == "steps":
            continue
        name, stat = key.rsplit(".", 1)
        out.setdefault(name, {})[stat] = value
    for table in out.values():
        table["grad_norm_mean"] = table["grad_norm_sum"] / max(1, steps)
        table["steps"] = torch.tensor([steps])
    return out
