"""A new task is an addition: defined here, outside the package, with its own config section,
its own output head and its own loss; trained by the same `train()`, saved, loaded back and
resumed, without any file of learnpos knowing it."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from learnpos.config import config_diff, load_config
from learnpos.errors import ConfigError, RunDirError
from learnpos.load import load_run
from learnpos.tasks import Batch, Task, register
from learnpos.train import train


@dataclass
class ParityConfig:
    length: int = 6
    smoothing: float = 0.1  # label smoothing of the task's own loss


class ParityHead(nn.Module):
    """Scores two classes from the hidden state at the last token: a head that is not the
    vocabulary head (like an entity scorer for KG completion)."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.proj = nn.Linear(n_embd, 2)
        nn.init.zeros_(self.proj.weight)  # the task's own init: the model must not replace it
        nn.init.constant_(self.proj.bias, 0.5)

    def forward(self, hidden):  # (B, T, C) -> (B, 2)
        return self.proj(hidden[:, -1])


@register
class ParityTask(Task):
    """Is the number of ones in a bit string odd? Bits are tokens 0/1, answered by a 2-way head."""

    name = "test-parity"
    config_section, config_class = "parity", ParityConfig
    causal = None

    @classmethod
    def check_config(cls, cfg):
        if not 0 <= cfg.parity.smoothing < 1:
            raise ConfigError(f"parity.smoothing must be in [0, 1), got {cfg.parity.smoothing}")
        if cfg.model.positional.kind == "learned" and cfg.parity.length > cfg.model.positional.max_len:
            raise ConfigError("parity.length exceeds the position table")

    def __init__(self, cfg, run_dir=None):
        self.p, self.seed, self.vocab_size = cfg.parity, cfg.train.seed, 2

    def heads(self, model_cfg):
        return {"parity": ParityHead(model_cfg.n_embd)}

    def _make(self, rng, count):
        bits = rng.integers(0, 2, size=(count, self.p.length))
        return Batch(torch.from_numpy(bits), torch.from_numpy(bits.sum(1) % 2))

    def train_batch(self, step, batch_size):
        return self._make(np.random.default_rng([self.seed, step]), batch_size)

    def loss(self, model, batch):
        hidden = model(batch.idx, return_hidden=True).hidden
        scores = model.heads["parity"](hidden)
        return F.cross_entropy(scores.float(), batch.targets, label_smoothing=self.p.smoothing)

    @torch.no_grad()
    def evaluate(self, model, device, batch_size=64, autocast=None, length=None):
        b = self._make(np.random.default_rng([99]), 256).to(device)
        scores = model.heads["parity"](model(b.idx, return_hidden=True).hidden)
        return {"loss": float(F.cross_entropy(scores, b.targets)),
                "accuracy": float((scores.argmax(-1) == b.targets).float().mean())}


OVER = {"task": "test-parity", "train.max_iters": "20", "train.eval_interval": "10", "train.log_interval": "5",
        "train.warmup_iters": "2", "model.positional.max_len": "8"}


def test_a_task_section_works_like_a_built_in_one(tmp_path):
    cfg = load_config("demo", {**OVER, "parity.length": "5"})  # the demo's synthetic section is dropped
    assert cfg.parity.length == 5 and "synthetic" not in cfg.to_dict()
    with pytest.raises(ConfigError, match="unknown config key 'parity.lenght' .did you mean 'length'"):
        load_config("demo", {**OVER, "parity.lenght": "5"})
    with pytest.raises(ConfigError, match="parity.smoothing must be in"):
        load_config("demo", {**OVER, "parity.smoothing": "1.5"})
    with pytest.raises(ConfigError, match="parity.length must be int"):
        load_config("demo", {**OVER, "parity.length": "many"})
    with pytest.raises(ConfigError, match="settings of task test-parity, but this config's task is 'reverse'"):
        load_config("demo", {"parity.length": "5"})
    with pytest.raises(ConfigError, match="settings of task copy / reverse / index"):
        load_config("demo", {**OVER, "synthetic.length": "5"})  # another task's section: said, not ignored
    a, b = load_config("demo", OVER), load_config("demo", {**OVER, "parity.length": "4", "train.lr": "1e-2"})
    assert config_diff(a, b, ignore=("train",)) == ["parity.length"]


def test_a_task_owns_its_head_and_loss_and_runs_through_the_same_loop(tmp_path):
    over = {**OVER, "train.out_dir": str(tmp_path / "a")}
    result = train(load_config("demo", over), quiet=True)
    assert "heads.parity.proj.weight" in dict(result.model.named_parameters())
    saved = json.loads((tmp_path / "a/config.json").read_text())
    assert saved["task"] == "test-parity" and saved["parity"] == {"length": 6, "smoothing": 0.1}
    model, cfg, task = load_run(tmp_path / "a")  # the head comes back with the weights
    for name, p in result.model.state_dict().items():
        assert torch.equal(p, model.state_dict()[name]), name
    assert task.evaluate(model, torch.device("cpu")) == result.metrics
    # resume is exact for the task's head too, and refuses a change of the task's section
    b = {**OVER, "train.out_dir": str(tmp_path / "b")}
    train(load_config("demo", b), quiet=True, stop_after=10)
    resumed = train(load_config("demo", b), resume=True, quiet=True)
    for name, p in result.model.state_dict().items():
        assert torch.equal(p, resumed.model.state_dict()[name]), name
    with pytest.raises(RunDirError, match="parity.length differ"):
        train(load_config("demo", {**b, "parity.length": "5"}), resume=True, quiet=True)


def test_the_model_keeps_the_init_a_task_gives_its_head():
    from learnpos.model import GPT

    cfg = load_config("demo", OVER)
    cfg.model.vocab_size = 2
    model = GPT(cfg.model, heads=ParityTask(cfg).heads(cfg.model))
    assert (model.heads["parity"].proj.weight == 0).all() and (model.heads["parity"].proj.bias == 0.5).all()


def test_the_default_loss_is_next_token_cross_entropy():
    from learnpos.model import GPT
    from learnpos.tasks import build_task

    cfg = load_config("demo", {"synthetic.length": "4", "model.positional.max_len": "9"})
    task = build_task(cfg)
    cfg.model.vocab_size = task.vocab_size
    model = GPT(cfg.model)
    batch = task.train_batch(0, 8)
    logits = model(batch.idx).logits.detach().double()
    # by hand, not with F.cross_entropy: the mean of -log softmax at the target, over answer slots only
    answers = [(b, t) for b in range(batch.idx.shape[0]) for t in range(batch.idx.shape[1])
               if batch.targets[b, t] != -100]
    assert 0 < len(answers) < batch.targets.numel()  # the prompt slots are really ignored
    logp = logits - logits.exp().sum(-1, keepdim=True).log()
    expected = -sum(logp[b, t, batch.targets[b, t]] for b, t in answers) / len(answers)
    torch.testing.assert_close(task.loss(model, batch).double(), expected, rtol=1e-5, atol=1e-6)
