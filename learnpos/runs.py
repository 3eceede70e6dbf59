"""Run directories: the config, checkpoints as one atomic unit, and the metrics log.

    <run>/config.json                       the resolved Config (data paths absolute)
    <run>/data.json                         what it was trained on: each data path, and the name,
                                            size and sha256 of every file read under it
    <run>/.learnpos.lock                    held (flock) by the one process writing the run
    <run>/metrics.jsonl                     one JSON object per log/eval event (append-only)
    <run>/best/step-<N>/                    the best evaluation's weights (train.early_stop_metric)
    <run>/checkpoints/step-<N>/             one complete checkpoint:
        model.safetensors                   weights (tied head omitted), metadata {"step": N}
        trainer_state.pt                    optimizer state, step, RNG (loaded with weights_only=True)
        position_stats.safetensors          per-row statistics of every learned table (if recorded)
        manifest.json                       written last: the step and the sha256 of every file
    plus what the task keeps (e.g. tokenizer.json) and plots.

A checkpoint is written into a hidden temporary folder, every file fsynced, the manifest
written last, and the folder renamed into place in one step, so at any instant each
`step-<N>` folder is complete; the newest two are kept. Loading verifies the checksums and
falls back to the previous checkpoint (with a warning) if the newest is damaged.
This module knows files, not models: it imports neither the model nor any task.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as serialize

from learnpos import faults
from learnpos.errors import RunDirError, first_line, os_error_in
from learnpos.files import (
    append_line,
    atomic_write_text,
    dir_mode,
    fsync_dir,
    fsync_file,
    loads_json,
    sha256_file,
    write_bytes,
)

log = logging.getLogger(__name__)

CONFIG_FILE, METRICS_FILE, CHECKPOINTS_DIR, BEST_DIR = "config.json", "metrics.jsonl", "checkpoints", "best"
DATA_FILE = "data.json"
MODEL_FILE, STATE_FILE, STATS_FILE, MANIFEST_FILE = (
    "model.safetensors", "trainer_state.pt", "position_stats.safetensors", "manifest.json")
KEEP_CHECKPOINTS = 2


# ------------------------------------------------------------------------ checkpoints


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """state_dict without the tied head (safetensors stores each tensor once)."""
    sd = model.state_dict()
    if getattr(model.config, "tie_weights", False):
        sd.pop("head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def _step_dir(run_dir: Path, step: int, kind: str = CHECKPOINTS_DIR) -> Path:
    return Path(run_dir) / kind / f"step-{step:08d}"


def _move_aside(path: Path) -> Path:
    """Rename a folder out of a checkpoint's name (atomic) before deleting it, so a kill
    mid-delete never leaves a half-deleted folder under that name."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    return trash


def remove_leftovers(run_dir: str | Path) -> None:
    """Remove what killed writers of the run left: temporary checkpoint folders, trash of
    interrupted deletes, temporary files of atomic writes. Called only by the holder of the
    run's lock, which proves that no other writer is alive to own them."""
    run_dir = Path(run_dir)
    for kind in (CHECKPOINTS_DIR, BEST_DIR):
        for stale in (run_dir / kind).glob(".t*-step-*") if (run_dir / kind).is_dir() else ():
            shutil.rmtree(stale, ignore_errors=True)
    for stale in run_dir.glob(".*.tmp") if run_dir.is_dir() else ():
        stale.unlink(missing_ok=True)


def write_checkpoint(run_dir: str | Path, step: int, writers: dict[str, Callable[[Path], object]],
                     kind: str = CHECKPOINTS_DIR) -> Path:
    """Write one checkpoint: `writers[name](path)` writes file `name`. Returns its folder.
    kind: `checkpoints` (the newest two are kept) or `best` (the weights of the best
    evaluation under train.early_stop_metric; one is kept)."""
    root = Path(run_dir) / kind
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:08d}-{os.getpid()}-", dir=root))
    os.chmod(tmp, dir_mode())  # mkdtemp makes it private; a checkpoint is as readable as any folder the user makes
    try:
        files = {}
        for name, write in writers.items():
            write(tmp / name)
            fsync_file(tmp / name)
            files[name] = sha256_file(tmp / name)
            faults.point("checkpoint")  # crash tests: killed with a file written and no manifest
        (tmp / MANIFEST_FILE).write_text(json.dumps({"step": step, "files": files}, indent=1), encoding="utf-8")
        fsync_file(tmp / MANIFEST_FILE)
        fsync_dir(tmp)
        final = _step_dir(run_dir, step, kind)
        # the same step saved again: move the old one aside first, delete it after the new one is in
        trash = _move_aside(final) if final.exists() else None
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    for old in checkpoint_dirs(run_dir, kind)[:-(KEEP_CHECKPOINTS if kind == CHECKPOINTS_DIR else 1)]:
        shutil.rmtree(_move_aside(old), ignore_errors=True)
    return final


def checkpoint_dirs(run_dir: str | Path, kind: str = CHECKPOINTS_DIR) -> list[Path]:
    """Every complete checkpoint folder, oldest first."""
    root = Path(run_dir) / kind
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(folders, key=lambda p: int(p.name[5:]))


def verify_checkpoint(folder: Path) -> dict[str, Any]:
    """The manifest of `folder` after checking every file against its sha256."""
    manifest_path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{manifest_path} is missing or unreadable ({e})") from None
    for name, digest in manifest.get("files", {}).items():
        path = folder / name
        if not path.exists():
            raise RunDirError(f"{path} is missing (listed in {manifest_path})")
        if sha256_file(path) != digest:
            raise RunDirError(f"{path} is corrupted or truncated (its sha256 does not match {manifest_path})")
    return manifest


def has_checkpoint(run_dir: str | Path, kind: str = CHECKPOINTS_DIR) -> bool:
    return bool(checkpoint_dirs(run_dir, kind))


def kept_with_run(run_dir: str | Path, name: str, means: str, load: Callable[[Path], Any],
                  make: Callable[[], Any], save: Callable[[Any, Path], None]) -> Any:
    """What a run keeps in `run_dir/name` (its tokenizer, its speaker names): loaded from the
    file, or for a new run made and saved there. A trained run whose file is gone is refused,
    never remade: its `means` (e.g. "token ids") mean nothing without it."""
    run_dir = Path(run_dir)
    file = run_dir / name
    if file.exists():
        return load(file)
    if has_checkpoint(run_dir):
        raise RunDirError(f"{file} is missing but {run_dir} holds a trained model; its {means} mean "
                          f"nothing without it: restore the file (or train again)")
    value = make()
    run_dir.mkdir(parents=True, exist_ok=True)
    save(value, file)
    return value


def model_checkpoint(run_dir: str | Path) -> Path:
    """The weights a finished run is used with: the best evaluation's (`best/`, written when
    train.early_stop_metric is set), else the latest checkpoint."""
    return latest_checkpoint(run_dir, BEST_DIR) if has_checkpoint(run_dir, BEST_DIR) else latest_checkpoint(run_dir)


def latest_checkpoint(run_dir: str | Path, kind: str = CHECKPOINTS_DIR) -> Path:
    """The newest checkpoint whose files verify; an older one (with a warning) if the newest
    is damaged. RunDirError when there is none."""
    run_dir = Path(run_dir)
    folders = checkpoint_dirs(run_dir, kind)
    if not folders:
        raise RunDirError(f"{run_dir} has no checkpoint ({CHECKPOINTS_DIR}/step-*/); train it first, "
                          f"or is it a learnpos run directory?")
    errors = []
    for folder in reversed(folders):
        try:
            verify_checkpoint(folder)
        except RunDirError as e:
            errors.append(str(e))
            continue
        if errors:
            log.warning("%s; using the previous checkpoint %s", "; ".join(errors), folder.name)
        return folder
    raise RunDirError("no usable checkpoint: " + "; ".join(errors))


def save_weights(path: Path, model: torch.nn.Module, step: int) -> None:
    write_bytes(path, serialize(model_tensors(model), metadata={"step": str(step)}))


def weight_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(name -> shape, metadata) of a safetensors file, read from its header alone (nothing is
    allocated); RunDirError when the header is damaged."""
    try:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types (SafetensorError) with multi-line text
        raise os_error_in(e, path) or RunDirError(f"{path} is not a readable safetensors file ({first_line(e)})") \
            from None


def check_shapes(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], path: Path,
                 optional: set[str] = frozenset()) -> None:
    """RunDirError naming the first tensor whose presence or shape differs between a model
    (`expected`, e.g. built on the meta device) and a weights file's header (`found`)."""
    missing = [k for k in expected if k not in found and k not in optional]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if missing or unexpected or wrong:
        what = (f"{wrong[0]} is {list(found[wrong[0]])} there but {list(expected[wrong[0]])} in the config" if wrong
                else f"it lacks {missing[0]}" if missing else f"it has {unexpected[0]}, which the config's model lacks")
        n = len(missing) + len(unexpected) + len(wrong)
        raise RunDirError(f"{path} does not match its config.json ({what}; {n} tensor(s) differ): the weights and "
                          f"the config come from different runs")


def load_weights(model: torch.nn.Module, folder: Path) -> int:
    """Load `folder`/model.safetensors into `model`; return the step it was saved at. Names
    and shapes are checked against the file's header before any tensor is read."""
    path = Path(folder) / MODEL_FILE
    if not path.exists():
        raise RunDirError(f"{path} is missing")
    shapes, metadata = weight_shapes(path)
    optional = {"head.weight"} if getattr(model.config, "tie_weights", False) else set()
    check_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()}, shapes, path, optional)
    tensors = load_file(path, device=str(next(model.parameters()).device))
    model.load_state_dict(tensors, strict=False)
    try:
        return int(metadata.get("step", 0))
    except ValueError:
        raise RunDirError(f"{path}: its step metadata {metadata.get('step')!r} is not a number") from None


def save_trainer_state(path: Path, optimizer: torch.optim.Optimizer, step: int,
                       rng_ranks: list[torch.Tensor] | None = None,
                       trained: dict[str, torch.Tensor] | None = None) -> None:
    """rng_ranks: the CPU RNG state of every process of a distributed run, in rank order
    (rank 0's is also `rng_cpu`), so each rank resumes its own dropout stream. trained: the
    weights training goes on from, where model.safetensors holds their average (train.ema)."""
    state = {"step": step, "optimizer": optimizer.state_dict(), "rng_cpu": torch.get_rng_state()}
    if rng_ranks is not None:
        state["rng_ranks"] = rng_ranks
    if trained is not None:
        state["train_weights"] = trained
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getvalue())


def load_trainer_state(folder: Path) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    if not path.exists():
        raise RunDirError(f"cannot resume: {path} is missing")
    try:  # weights_only: tensors and plain containers; a pickle that would run code is refused
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        blocked = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]  # what weights_only refused
        raise RunDirError(f"{path} cannot be read as trainer state ({blocked[0] if blocked else first_line(e)}); "
                          f"it was not written by learnpos, or is damaged: resume from another checkpoint") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise RunDirError(f"{path} is not a learnpos trainer state (no step); resume from another checkpoint")
    return state


# ----------------------------------------------------------------------------- config


def write_config(run_dir: Path, text: str) -> None:
    atomic_write_text(Path(run_dir) / CONFIG_FILE, text)


def write_data_manifest(run_dir: Path, sources: dict[str, dict]) -> None:
    atomic_write_text(Path(run_dir) / DATA_FILE, json.dumps(sources, indent=1) + "\n")


def read_data_manifest(run_dir: str | Path) -> dict[str, dict] | None:
    """The run's data.json; None for a run without one (made before learnpos kept it, or a
    task that makes its own data)."""
    path = Path(run_dir) / DATA_FILE
    if not path.exists():
        return None
    try:
        data = loads_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} is damaged ({first_line(e)}); restore it, or remove it to stop checking the "
                          f"data") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and isinstance(v.get("files", []), list)
                                             for v in data.values()):
        raise RunDirError(f"{path} is not a data manifest; restore it, or remove it to stop checking the data")
    return data


# ---------------------------------------------------------------------------- metrics


def append_metrics(run_dir: Path, record: dict) -> None:
    append_line(Path(run_dir) / METRICS_FILE, json.dumps(record))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every record of metrics.jsonl. A cut-off last line (a kill mid-append) is dropped with
    a warning; a damaged line anywhere else is a RunDirError naming the line."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    raw = path.read_bytes().decode("utf-8", errors="replace")
    lines = raw.split("\n")
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):  # no newline after it: the last append was cut off
                log.warning("%s: dropped a cut-off last line (%d bytes)", path, len(line))
                continue
            raise RunDirError(f"{path} line {i} is not JSON; the metrics log is damaged") from None
        if not isinstance(record, dict):
            raise RunDirError(f"{path} line {i} is not a JSON object; the metrics log is damaged")
        records.append(record)
    return records


def truncate_metrics(run_dir: Path, after_step: int) -> list[dict]:
    """On resume: keep the records up to the checkpoint's step (and drop a cut-off last line);
    rewrite the log atomically. Returns the kept records."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    keep = [r for r in read_metrics(run_dir) if r.get("step", 0) <= after_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return keep
