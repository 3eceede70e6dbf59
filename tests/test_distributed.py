"""Data-parallel training (torchrun, DDP over gloo) and gradient accumulation compute what one
process computes on the whole batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from learnpos.config import load_config
from learnpos.errors import ConfigError
from learnpos.runs import latest_checkpoint
from learnpos.train import train

STEPS = {"train.max_iters": "12", "train.warmup_iters": "2", "train.eval_interval": "6", "train.log_interval": "1",
         "train.batch_size": "16", "train.device": "cpu", "train.position_stats": "true"}


def _cli_train(out: Path, nproc: int = 1, **over) -> None:
    """`learnpos train` of the demo preset in fresh processes with one thread each (so both
    sides run the same kernels), through torchrun when nproc > 1."""
    flags = [f"--{k}={v}" for k, v in {**STEPS, "model.dropout": "0", **over, "train.out_dir": str(out)}.items()]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
              "--standalone"] if nproc > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launch, "-m", "learnpos", "train", "--quiet", *flags], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def _records(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(latest_checkpoint(run) / name)


def test_two_processes_equal_one_process_with_the_same_micro_batches(tmp_path):
    """torchrun with 2 processes against one process with train.grad_accum=2: the same rows per
    micro-batch, each weighted 1/2 (exact in floating point), summed in the same order, so the
    loss trajectory, the evaluations, the weights and the position statistics must be equal
    bit for bit. Any slip in sharding, weighting, the all-reduce or rank 0's bookkeeping
    (a duplicated or missing log line, a second writer) breaks that equality."""
    _cli_train(tmp_path / "two", nproc=2)
    _cli_train(tmp_path / "one", **{"train.grad_accum": "2"})
    a, b = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert len([r for r in a if r["split"] == "train"]) == 12 and len([r for r in a if r["split"] == "val"]) == 2
    assert a == b
    for name in ("model.safetensors", "position_stats.safetensors"):
        wa, wb = _weights(tmp_path / "one", name), _weights(tmp_path / "two", name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)


def test_grad_accum_tracks_the_whole_batch(tmp_path):
    """Two micro-batches of 8 against one batch of 16: the same gradient up to float32
    rounding of the sums (~1e-7 relative per element). Adam turns that into ~1e-5 in the
    weights over 12 steps (7e-6 measured); 1e-4 leaves margin and is still 30x below one step's
    update (lr 3e-3), so an accumulation that used the wrong gradient would fail."""
    runs = {}
    for accum in ("1", "2"):
        cfg = load_config("demo", {**STEPS, "model.dropout": "0", "train.grad_accum": accum,
                                   "train.out_dir": str(tmp_path / accum)})
        train(cfg, quiet=True)
        runs[accum] = tmp_path / accum
    wa, wb = _weights(runs["1"]), _weights(runs["2"])
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    la = [r["loss"] for r in _records(runs["1"]) if r["split"] == "train"]
    lb = [r["loss"] for r in _records(runs["2"]) if r["split"] == "train"]
    assert la == pytest.approx(lb, rel=1e-5)


def test_micro_batches_are_weighted_by_their_targets(tmp_path):
    """Dialogue rows carry different numbers of response tokens. One SGD step with 4
    micro-batches of one row each must move the weights as the whole batch does (weights
    n_i / N), not as the mean of the four per-row means would."""
    from test_dialogue import config, write_jsonl

    data = write_jsonl(tmp_path / "data")
    moved = {}
    for accum in ("1", "4"):
        cfg = config(data, tmp_path / accum, **{"train.optimizer": "sgd", "train.lr": "1.0", "train.max_iters": "1",
                                                "train.eval_interval": "1", "train.grad_clip": "0",
                                                "model.dropout": "0", "train.grad_accum": accum,
                                                "train.weight_decay": "0", "train.min_lr": "1.0"})
        moved[accum] = train(cfg, quiet=True).model.state_dict()

    from learnpos.load import build_model
    from learnpos.tasks import build_task

    cfg = config(data, tmp_path / "naive", **{"model.dropout": "0"})
    task = build_task(cfg, tmp_path / "naive")
    cfg.model.vocab_size = task.vocab_size
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, task)
    batch = task.train_batch(0, 4)
    counts = (batch.targets != -100).sum(1)
    assert len(set(counts.tolist())) > 1, "the fixture must give rows of different response lengths"
    from learnpos.distributed import split_rows

    def sgd_step(loss) -> dict[str, torch.Tensor]:  # the weights after one SGD step (lr 1) on `loss`
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.detach() - 1.0 * p.grad for n, p in model.named_parameters() if p.grad is not None}

    whole = sgd_step(task.loss(model, batch))  # the same init as the runs: equal to moved["1"] below
    naive = sgd_step(sum(task.loss(model, split_rows(batch, i, i + 1)) for i in range(4)) / 4)
    differ = lambda a, b: max((a[k] - b[k]).abs().max().item() for k in naive)  # noqa: E731

    # float32 sums over micro-batches instead of one batch: ~1e-7 relative per gradient element,
    # times lr 1.0; the mean of means differs from the exact weighting by ~1e-3 here
    assert differ(moved["1"], whole) < 1e-6  # this reconstruction is the runs' step
    assert differ(moved["1"], moved["4"]) < 1e-6 < differ(moved["1"], naive) / 100


def test_a_batch_that_does_not_split_is_refused(tmp_path):
    cfg = load_config("demo", {**STEPS, "train.batch_size": "10", "train.grad_accum": "4",
                               "train.out_dir": str(tmp_path / "r")})
    with pytest.raises(ConfigError, match=r"train.batch_size=10 does not split .* multiple of 4"):
        train(cfg, quiet=True)
    assert not (tmp_path / "r").exists()
