"""Run directories: atomic writes, checkpoints, loading a trained model back.

    <run>/config.json        the resolved Config
    <run>/model.safetensors  weights (tied head omitted), metadata {"step": ...}
    <run>/trainer_state.pt   optimizer state, step, RNG states (loaded with weights_only=True)
    <run>/metrics.jsonl      one JSON object per log/eval event
    <run>/pos_similarity.png cosine similarity of the learned table's rows
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from learnpos.config import Config, load_run_config
from learnpos.errors import RunDirError
from learnpos.model import GPT

MODEL_FILE, STATE_FILE, CONFIG_FILE, METRICS_FILE = (
    "model.safetensors", "trainer_state.pt", "config.json", "metrics.jsonl")


def temp_path_beside(path: Path) -> Path:
    """A new empty file next to `path` (same filesystem, so a rename over `path` is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)`, then rename over `path`: readers see the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def model_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """state_dict without the tied head (safetensors stores each tensor once)."""
    sd = model.state_dict()
    if model.config.tie_weights:
        sd.pop("head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_checkpoint(run_dir: Path, model: GPT, optimizer: torch.optim.Optimizer | None, step: int) -> None:
    meta = {"step": str(step)}
    atomic_write(run_dir / MODEL_FILE, lambda tmp: save_file(model_tensors(model), tmp, metadata=meta))
    if optimizer is not None:
        state = {"step": step, "optimizer": optimizer.state_dict(), "rng_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        atomic_write(run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))


def load_weights(model: GPT, run_dir: Path) -> int:
    """Load model.safetensors into `model`; return the step it was saved at."""
    path = run_dir / MODEL_FILE
    if not path.exists():
        raise RunDirError(f"{run_dir} has no {MODEL_FILE}; is it a learnpos run directory?")
    tensors = load_file(path, device=str(next(model.parameters()).device))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    allowed_missing = {"head.weight"} if model.config.tie_weights else set()
    if set(missing) - allowed_missing or unexpected:
        raise RunDirError(f"{path} does not match its config: missing {missing}, unexpected {unexpected}")
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return int((f.metadata() or {}).get("step", 0))


def load_trainer_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.exists():
        raise RunDirError(f"cannot resume: {path} is missing")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Config]:
    """Rebuild the model of a finished (or checkpointed) run, in eval mode."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise RunDirError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); train one with `learnpos train`")
    cfg = load_run_config(run_dir / CONFIG_FILE)
    model = GPT(cfg.model).to(device)
    load_weights(model, run_dir)
    model.eval()
    return model, cfg


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(run_dir: Path, after_step: int) -> None:
    """On resume, drop records written after the checkpoint we resume from."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= after_step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))
