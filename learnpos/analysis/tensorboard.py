"""TensorBoard logging of a run (`--train.tensorboard=true`), into RUN/tensorboard/.

Scalars: train/loss and train/lr at every log step, train/grad_norm/<table> (the gradient
norm of each learned table, before clipping) at the same steps, val/<metric> for every
number evaluate() returns. Images: at each evaluation, each learned table's cosine-
similarity heatmap (val/similarity/<table>), the picture `learnpos inspect` draws at the end,
so one sees the table take shape. A resumed run discards the events written after its
checkpoint (TensorBoard's purge_step), so the curves have no doubled segment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from learnpos.analysis.plots import cosine_similarity_matrix
from learnpos.errors import ConfigError

FOLDER = "tensorboard"
MIN_PIXELS = 256  # heatmaps are scaled up to at least this many pixels a side


def similarity_image(table: torch.Tensor) -> np.ndarray:
    """(H, W, 3) uint8: the table's row similarities in [-1, 1] through matplotlib's RdBu_r
    (red = similar, blue = opposite), each cell a square of pixels."""
    from matplotlib import colormaps

    sim = cosine_similarity_matrix(table).numpy()
    rgb = colormaps["RdBu_r"]((sim + 1) / 2)[..., :3]
    scale = max(1, -(-MIN_PIXELS // len(sim)))
    return (np.kron(rgb, np.ones((scale, scale, 1))) * 255).round().astype(np.uint8)


class TensorBoardLog:
    def __init__(self, run_dir: Path, start_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard=true needs TensorBoard: pip install 'learnpos[tensorboard]'") from None
        self.writer = SummaryWriter(str(Path(run_dir) / FOLDER), purge_step=start_step or None)

    def train(self, step: int, loss: float, lr: float, grad_norms: dict[str, float]) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)
        for name, norm in grad_norms.items():
            self.writer.add_scalar(f"train/grad_norm/{name}", norm, step)

    def eval(self, step: int, metrics: dict, tables: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"val/{key}", value, step)
        for name, weight in tables.items():
            self.writer.add_image(f"val/similarity/{name}", similarity_image(weight), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
