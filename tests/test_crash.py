"""Crash safety: training killed with SIGKILL at chosen and at random instants, resumed each
time, ends bit-identical to an uninterrupted run; no checkpoint on disk is ever half-written;
a non-finite loss is skipped on request and counted. (Damaged checkpoint files are named and
skipped: tests/test_train.py::test_damaged_checkpoint_falls_back_to_the_previous_one.)"""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from learnpos.config import load_config
from learnpos.runs import BEST_DIR, CHECKPOINTS_DIR, checkpoint_dirs, latest_checkpoint, verify_checkpoint
from learnpos.train import train

# demo preset, small: 60 steps, an evaluation and a checkpoint every 10, a log line every 5,
# dropout and position statistics on (their RNG and counts must resume too), early stopping's
# best/ folder written too (patience 0: it never stops)
OVER = {"train.max_iters": "60", "train.eval_interval": "10", "train.log_interval": "5", "train.warmup_iters": "5",
        "train.batch_size": "32", "model.dropout": "0.1", "train.position_stats": "true", "train.device": "cpu",
        "train.early_stop_metric": "token_accuracy"}
# the instants the issue asks for, then kills at random times (seeded)
FAULTS = ["checkpoint:1", "eval:2", "append:5", "checkpoint:4", "append:2", "eval:1"]
RANDOM_KILLS = 5


def _command(run: Path) -> list[str]:
    if (run / "config.json").exists():
        return [sys.executable, "-m", "learnpos", "train", "--quiet", "--resume", str(run)]
    flags = [f"--{k}={v}" for k, v in OVER.items()]
    return [sys.executable, "-m", "learnpos", "train", "--quiet", *flags, f"--train.out_dir={run}"]


def _finished(run: Path) -> bool:
    return (run / CHECKPOINTS_DIR).exists() and any(d.name.endswith(f"{60:08d}") for d in checkpoint_dirs(run))


def _check_every_checkpoint_is_whole(run: Path) -> int:
    """Every step-N folder (the only names a reader looks at) passes its manifest's checksums."""
    n = 0
    for kind in (CHECKPOINTS_DIR, BEST_DIR):
        for folder in checkpoint_dirs(run, kind):
            verify_checkpoint(folder)  # raises RunDirError naming the file on any damage
            n += 1
    return n


def _records(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("random_kills", [1, pytest.param(RANDOM_KILLS, marks=pytest.mark.slow)])
def test_sigkill_at_any_instant_then_resume_is_bit_identical(tmp_path, random_kills):
    """SIGKILL at each named fault point, then at random instants (1; 5 under -m slow), each
    followed by a resume: every checkpoint stays whole and the run ends bit-identical to one
    made without interruption."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    done = subprocess.run(_command(straight), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

    run, rng, kills = tmp_path / "killed", random.Random(0), []
    plan = [("fault", f) for f in FAULTS] + [("timer", rng.uniform(1.5, 4.0)) for _ in range(random_kills)]
    for kind, what in plan:
        if _finished(run):
            break
        extra = {"LEARNPOS_FAULT": what} if kind == "fault" else {}
        proc = subprocess.Popen(_command(run), env={**env, **extra}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if kind == "timer":
            try:
                proc.wait(timeout=what)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        kills.append((what, proc.returncode))
        assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
        _check_every_checkpoint_is_whole(run)
    faulted = [w for w, rc in kills if rc == -signal.SIGKILL and isinstance(w, str)]
    assert len(faulted) == len(FAULTS), kills  # every chosen instant was reached and killed there
    while not _finished(run):  # the rest of the run, uninterrupted
        done = subprocess.run(_command(run), env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]

    assert _check_every_checkpoint_is_whole(run) >= 2
    assert _records(run) == _records(straight)
    for kind in (CHECKPOINTS_DIR, BEST_DIR):
        a, b = latest_checkpoint(straight, kind), latest_checkpoint(run, kind)
        assert a.name == b.name
        for name in sorted(p.name for p in a.iterdir() if p.suffix == ".safetensors"):
            wa, wb = load_file(a / name), load_file(b / name)
            assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), (kind, name)
    sa = torch.load(latest_checkpoint(straight) / "trainer_state.pt", weights_only=True)
    sb = torch.load(latest_checkpoint(run) / "trainer_state.pt", weights_only=True)
    assert torch.equal(sa["rng_cpu"], sb["rng_cpu"])
    for k, v in sa["optimizer"]["state"].items():
        assert all(torch.equal(v[s], sb["optimizer"]["state"][k][s]) for s in v if torch.is_tensor(v[s]))


def test_non_finite_batches_are_skipped_and_counted_on_request(tmp_path, monkeypatch):
    from learnpos.model import GPT

    real_forward = GPT.forward

    def poisoned(self, *args, **kwargs):  # training forwards 10, 11 and 12 give a NaN loss
        out = real_forward(self, *args, **kwargs)
        if self.training and 10 <= poisoned.calls <= 12:
            out = out._replace(logits=out.logits * float("nan"))
        poisoned.calls += self.training
        return out

    poisoned.calls = 0
    monkeypatch.setattr(GPT, "forward", poisoned)
    cfg = load_config("demo", {**OVER, "model.dropout": "0", "train.max_iters": "20",
                               "train.on_nonfinite": "skip", "train.out_dir": str(tmp_path)})
    result = train(cfg, quiet=True)
    assert result.step == 20
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    logged = [r for r in _records(tmp_path) if r["split"] == "train"]
    assert [(r["step"], r["skipped"]) for r in logged] == [(5, 0), (10, 0), (15, 3), (20, 3)]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logged)  # poisoned steps 11-13 are never logged
