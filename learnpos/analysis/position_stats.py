"""Per-row training statistics of the learned position table.

For every row k of P, over the steps of a run:
    grad_norm_sum[k]   sum over steps of ||dL/dP[k]||      (mean = sum / steps)
    grad_norm_max[k]   largest ||dL/dP[k]|| seen
    nonzero_steps[k]   steps in which row k received a non-zero gradient
    displacement[k]    ||P[k] - P_init[k]||: how far training moved the row
Rows that no training sequence reaches keep nonzero_steps = 0; whether they still move
(displacement > 0) shows the weight-decay policy at work. Saved as
`position_stats.safetensors` in the run directory; resumed runs continue the counts.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from learnpos.runs import atomic_write

STATS_FILE = "position_stats.safetensors"


class PositionStats:
    def __init__(self, table: Tensor):
        L, dev = table.shape[0], table.device  # accumulate on the table's device: no sync per step
        self.init = table.detach().float().clone()  # (L, C)
        self.grad_norm_sum = torch.zeros(L, dtype=torch.float64, device=dev)
        self.grad_norm_max = torch.zeros(L, dtype=torch.float64, device=dev)
        self.nonzero_steps = torch.zeros(L, dtype=torch.int64, device=dev)
        self.steps = 0

    @torch.no_grad()
    def update(self, grad: Tensor | None) -> None:
        """Record one step's gradient of the table (call after backward, before clipping)."""
        self.steps += 1
        if grad is None:
            return
        norms = grad.detach().float().norm(dim=1).double()  # (L,)
        self.grad_norm_sum += norms
        torch.maximum(self.grad_norm_max, norms, out=self.grad_norm_max)
        self.nonzero_steps += (norms > 0).long()

    def tensors(self, table: Tensor) -> dict[str, Tensor]:
        displacement = (table.detach().float() - self.init).norm(dim=1)
        return {"init": self.init, "grad_norm_sum": self.grad_norm_sum, "grad_norm_max": self.grad_norm_max,
                "nonzero_steps": self.nonzero_steps, "displacement": displacement,
                "steps": torch.tensor([self.steps], dtype=torch.int64)}

    def save(self, run_dir: Path, table: Tensor) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors(table).items()}
        atomic_write(Path(run_dir) / STATS_FILE, lambda tmp: save_file(tensors, tmp))

    @classmethod
    def load(cls, run_dir: Path, table: Tensor) -> PositionStats:
        data = load_file(Path(run_dir) / STATS_FILE, device=str(table.device))
        stats = cls(data["init"])
        if data["init"].shape != table.shape:
            raise ValueError(f"position stats are for a {tuple(data['init'].shape)} table, not {tuple(table.shape)}")
        stats.grad_norm_sum, stats.grad_norm_max = data["grad_norm_sum"], data["grad_norm_max"]
        stats.nonzero_steps, stats.steps = data["nonzero_steps"], int(data["steps"][0])
        return stats


def load_position_stats(run_dir: str | Path) -> dict[str, Tensor]:
    """The saved statistics of a run, with `grad_norm_mean` added."""
    data = load_file(Path(run_dir) / STATS_FILE)
    data["grad_norm_mean"] = data["grad_norm_sum"] / max(1, int(data["steps"][0]))
    return data
