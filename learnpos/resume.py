"""Starting or resuming a run in its directory: what the directory must hold, the config it
may be resumed with, the checkpoint to resume from, and loading it into model and optimizer."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from learnpos.config import Config, config_diff, load_run_config
from learnpos.distributed import Dist
from learnpos.errors import RunDirError, first_line
from learnpos.files import folder_contents
from learnpos.load import data_keys
from learnpos.optim import load_trained
from learnpos.runs import (
    CONFIG_FILE,
    MODEL_FILE,
    has_checkpoint,
    latest_checkpoint,
    load_trainer_state,
    load_weights,
    read_metrics,
    write_config,
)

log = logging.getLogger(__name__)


def check_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / CONFIG_FILE).exists():
            raise RunDirError(f"cannot resume: {run_dir} has no {CONFIG_FILE}")
    elif has_checkpoint(run_dir):
        raise RunDirError(f"{run_dir} already holds a trained model; pass --resume to continue it "
                          f"or choose another --train.out_dir")
    elif run_dir.exists() and (held := ", ".join(folder_contents(run_dir)[:5])):
        raise RunDirError(f"{run_dir} is not empty ({held}) but holds no checkpoint: files of an interrupted "
                          f"or another run. Remove it or choose another --train.out_dir (a fresh run never "
                          f"mixes with old files), or --resume it if it is this run")


def write_run_config(cfg: Config, run_dir: Path, resume: bool) -> None:
    if resume:
        saved = load_run_config(run_dir / CONFIG_FILE)
        # data paths may change (data that moved): its content is checked against data.json instead
        changed = config_diff(saved, cfg, ignore=("train", *data_keys(cfg)))
        if changed:
            raise RunDirError(f"cannot resume {run_dir}: {', '.join(changed)} differ from its config.json "
                              f"(only train.* settings, and where the data is, may change on resume)")
        if saved.train.optimizer != cfg.train.optimizer:
            raise RunDirError(f"cannot resume {run_dir} with train.optimizer={cfg.train.optimizer}: its optimizer "
                              f"state is {saved.train.optimizer}'s; start a new run to switch optimizers")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, cfg.to_json() + "\n")


def resume_point(run_dir: Path, t) -> Path | None:
    """The checkpoint to resume from; None for a run that stopped before its first checkpoint
    was complete (killed in its first steps, evaluation or checkpoint write: it starts again
    at step 0, which gives the same run since every batch is a function of the step). A run
    whose log goes past its first checkpoint but has none left is refused."""
    if has_checkpoint(run_dir):
        return latest_checkpoint(run_dir)
    if (run_dir / MODEL_FILE).exists():
        raise RunDirError(f"{run_dir} was made by an older learnpos ({MODEL_FILE} at the top, no checkpoints/); "
                          f"this version cannot resume it: train it again")
    first = min(t.eval_interval, t.max_iters)  # where the first checkpoint is written
    if any(r.get("step", 0) > first for r in read_metrics(run_dir)):
        raise RunDirError(f"cannot resume {run_dir}: its metrics.jsonl records training steps but no checkpoint "
                          f"is left (checkpoints/ was removed?); train it again in a new directory")
    return None


def load_checkpoint(folder: Path, model, optimizer, device: torch.device, dist: Dist, average=None) -> int:
    """Weights, optimizer state and RNG of `folder`; returns its step. Where the run averages
    its weights (train.ema), model.safetensors is the average and the trained weights are in
    the trainer state: `average` (a WeightAverage) takes both; without one the model goes on
    from the trained weights. The optimizer's
    hyper-parameters (weight decay, betas, momentum: what `load_state_dict` would bring back
    from the checkpoint) are the current config's, so a resumed run trains with what its
    config.json says; only its moments come from the checkpoint."""
    state = load_trainer_state(folder)
    weights_step = load_weights(model, folder)
    if weights_step != state["step"]:
        raise RunDirError(f"{folder}: weights are from step {weights_step} but optimizer state from "
                          f"step {state['step']}; cannot resume exactly")
    trained = state.get("train_weights")
    names, params = zip(*model.named_parameters(), strict=True)
    try:
        if average is not None:
            average.resume(trained)
        elif trained is not None:
            load_trained(list(names), list(params), trained)
    except (ValueError, RuntimeError) as e:  # names or shapes that are not this model's
        raise RunDirError(f"{folder}: {first_line(e)}; cannot resume from it") from None
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, current in zip(optimizer.param_groups, settings, strict=True):
        if group.get("name") != current.get("name"):
            raise RunDirError(f"{folder}: parameter group '{group.get('name')}' where this model has "
                              f"'{current.get('name')}'; cannot resume")
        group.update(current)
    ranks = state.get("rng_ranks")
    if dist.active and (ranks is None or len(ranks) != dist.world):
        log.warning("%s was saved by %s process(es), this run has %d: the dropout streams of ranks > 0 restart, "
                    "so the run continues correctly but not bit-identically", folder,
                    len(ranks) if ranks else 1, dist.world)
        ranks = None
    torch.set_rng_state(ranks[dist.rank] if ranks is not None else state["rng_cpu"])
    if "rng_cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return state["step"]
