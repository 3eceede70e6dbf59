"""What the trainer knows about a task: `Batch` and the `Task` interface.

A task owns its data, its batches, its loss (and, where it needs one, an output head) and
its metrics. The trainer calls only `train_batch`, `loss` and `evaluate`, so it never needs
to know a task by name; the model has no task branches. The default loss is next-token
cross-entropy over the model's vocabulary head, with `IGNORE_INDEX` targets skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from learnpos.config import register_task
from learnpos.data.tokenizers import TOKENIZER_FILE, Tokenizer, load_tokenizer, train_tokenizer
from learnpos.errors import ConfigError
from learnpos.model import IGNORE_INDEX, cross_entropy
from learnpos.runs import kept_with_run


@dataclass
class Batch:
    idx: Tensor  # (B, T) token ids
    targets: Tensor  # (B, T) next-token / masked-token targets; IGNORE_INDEX = no loss
    position_ids: Tensor | None = None  # (B, T); None = 0..T-1
    attention_mask: Tensor | None = None  # (B, T); 1 = token, 0 = padding; None = no padding
    extra_ids: dict[str, Tensor] = field(default_factory=dict)  # table name -> (B, T) ids (model.tables)
    ids_checked: bool = False  # position and table ids were range-checked (`GPT.check_ids`) already

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return replace(self, idx=move(self.idx), targets=move(self.targets),
                       position_ids=move(self.position_ids), attention_mask=move(self.attention_mask),
                       extra_ids={k: move(v) for k, v in self.extra_ids.items()})

    def model_inputs(self) -> dict:
        """Keyword arguments of `GPT.forward` for this batch (everything but targets)."""
        return {"position_ids": self.position_ids, "attention_mask": self.attention_mask,
                "extra_ids": self.extra_ids or None, "check_ids": not self.ids_checked}


class Task:
    """Interface every task implements. Register a new task with `learnpos.tasks.register`.

    Class attributes:
        name            the `task` string of the config
        config_section  the name of the task's own config section (None = no settings),
        config_class    and its dataclass; the section appears as `cfg.<config_section>`
        causal          the model mode the task needs; None = either
        streams_text    `learnpos generate` streams the answer and samples at temperature 0.8
                        by default (else greedy, printed whole)
        fills_tables    names of the `model.tables` entries the task provides ids for; a
                        config with any other table is refused before anything is written
    """

    name: str = ""
    config_section: str | None = None
    config_class: type | None = None
    vocab_size: int
    causal: bool | None = None
    streams_text: bool = False  # `respond` produces free text worth streaming (and sampling at T > 0)
    fills_tables: tuple[str, ...] = ()  # the named tables (model.tables) whose ids the task's batches carry
    splits: tuple[str, ...] = ("valid",)  # what `evaluate(split=...)` accepts; the first is the default
    saves_scores: bool = False  # `evaluate(save_scores=PATH)` writes the score matrix
    data_fields: tuple[str, ...] = ()  # fields of the task's section that name data paths (e.g. "data")
    # Where `evaluate` writes its files (e.g. lm's loss by position); None = nowhere. The trainer
    # sets it to the run directory, `learnpos eval` to its --out: a reader never writes into a run.
    files_dir: Path | None = None

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ConfigError for configs this task cannot run with."""

    @classmethod
    def train_length(cls, cfg) -> int | None:
        """The length that `evaluate(length=...)` varies, as trained (synthetic: symbols per
        sequence; lm: tokens per window); None = the task has no such length."""
        return None

    @classmethod
    def positions_needed(cls, cfg, length: int) -> int:
        """Rows of a position table that sequences of `length` (in train_length's unit) need."""
        return length

    def heads(self, model_cfg) -> dict[str, nn.Module]:
        """Output modules of the task's own (e.g. an entity scorer), attached to the model as
        `model.heads[name]` so they are trained, checkpointed and loaded with it. Default: none
        (the model's vocabulary head is used)."""
        return {}

    def train_batch(self, step: int, batch_size: int) -> Batch:
        """The batch for optimizer step `step` (a pure function of seed and step, so resume is exact)."""
        raise NotImplementedError

    def loss(self, model, batch: Batch) -> Tensor:
        """The training loss of `batch` (a scalar). `model` may be the compiled model.
        Default: mean next-token cross-entropy over targets != IGNORE_INDEX."""
        logits = model(batch.idx, **batch.model_inputs()).logits
        return cross_entropy(logits, batch.targets)

    def loss_terms(self, batch: Batch) -> int:
        """How many terms `loss` averages over (default: targets != IGNORE_INDEX). Distributed
        training and gradient accumulation weight each micro-batch's mean by its share of these,
        so the step's gradient is the gradient of the whole batch's mean loss."""
        return int((batch.targets != IGNORE_INDEX).sum())

    def evaluate(self, model, device: torch.device, batch_size: int = 64, autocast=None,
                 length: int | None = None, split: str | None = None, tag: str = "") -> dict:
        """Held-out metrics, including `loss`. `length`: evaluate on sequences of another
        length where the task has that notion (raise ConfigError where it cannot). `split`:
        one of `splits` (None = the first). Files it writes go into `files_dir` (none when
        that is None). `tag`: names a model that is not the run's own (`learnpos compare`
        evaluates copies with the table grown by each extend method, tagged with the method):
        every file the evaluation writes carries it in its name, so evaluations of different
        models never overwrite each other."""
        raise NotImplementedError

    def data_sources(self) -> dict[str, dict]:
        """What the task read, for the run's data.json: {config key (e.g. "lm.data"): the
        `learnpos.data.sources.FileLog` record of the files read under it}. Default: nothing
        (the task makes its own data)."""
        return {}

    def figures(self, model, device: torch.device) -> list:
        """The task's own charts for `learnpos inspect`, as `learnpos.analysis.report.Figure`
        values (data, drawn by the report), from an evaluation of `model`. Default: none."""
        return []

    def ensemble(self, models: list[nn.Module], others: list[Task], names: list[str]) -> nn.Module:
        """One model standing for several runs of this task (`learnpos eval --run A --run B`):
        `models` in order, this task first, `others` the tasks of the rest, `names` their run
        directories for error messages. Raise ConfigError where the runs cannot be combined.
        Default: the task evaluates one run at a time."""
        raise ConfigError(f"task '{self.name}' evaluates one run at a time; give a single --run")

    def respond(self, model, prompt: str, max_new_tokens: int = 200, stream=None, **options) -> str:
        """Answer one text prompt (used by `learnpos generate`); `stream(text)` gets pieces as
        they are produced. `options`: sampling (temperature, top_k, top_p, generator) and
        task-specific flags."""
        raise ConfigError(f"task '{self.name}' does not answer text prompts (`learnpos generate`)")


class EpochOrder:
    """Batches that visit every one of n examples once per epoch, in an order that is a function
    of (seed, stream, epoch) only, so a batch is a pure function of the step (exact resume). The
    permutation of the current epoch is kept while in use (drawing one per step would cost more
    than the step on large datasets)."""

    def __init__(self, seed: int, stream: int):
        self.seed, self.stream, self._cached = seed, stream, None

    def order(self, epoch: int, n: int):
        if self._cached is None or self._cached[0] != (epoch, n):
            self._cached = ((epoch, n), np.random.default_rng([self.seed, self.stream, epoch]).permutation(n))
        return self._cached[1]

    def picks(self, step: int, batch_size: int, n: int):
        start, parts, taken = step * batch_size, [], 0
        while taken < batch_size:
            epoch, offset = divmod(start + taken, n)
            part = self.order(epoch, n)[offset:offset + batch_size - taken]
            parts.append(part)
            taken += len(part)
        return np.concatenate(parts)


TASKS: dict[str, type[Task]] = {}  # task name -> class, filled by `register`


def run_tokenizer(run_dir: Path, kind: str, vocab_size: int, training_text: Callable[[], str]) -> Tokenizer:
    """The run's tokenizer: its saved file, or for a new run one of `kind` learned from
    `training_text()` and kept with the run (`runs.kept_with_run`)."""
    return kept_with_run(run_dir, TOKENIZER_FILE, "token ids", load_tokenizer,
                         lambda: train_tokenizer(kind, training_text(), vocab_size), lambda tok, file: tok.save(file))


@contextlib.contextmanager
def eval_mode(model):
    """`model` in eval mode inside the block; its training mode is restored after, errors too."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def autocast_context(autocast):
    """The trainer's autocast (a callable giving a context manager), or nothing when it is None."""
    return autocast() if autocast else contextlib.nullcontext()


def register(task_cls: type[Task]) -> type[Task]:
    """Make `task_cls` available as `task = <task_cls.name>` and declare its config section
    (usable as a class decorator)."""
    if not task_cls.name:
        raise ValueError(f"{task_cls.__name__} has no `name`")
    TASKS[task_cls.name] = task_cls

    def check(cfg) -> None:
        if task_cls.causal is not None and cfg.model.causal != task_cls.causal:  # Task.causal, enforced here once
            mode = "decoder: set --model.causal=true" if task_cls.causal else \
                "bidirectional encoder: set --model.causal=false"
            raise ConfigError(f"task '{cfg.task}' needs a {mode}")
        unfilled = [t.name for t in cfg.model.tables if t.name not in task_cls.fills_tables]
        if unfilled:
            can = f"can fill the tables {', '.join(task_cls.fills_tables)}" if task_cls.fills_tables else \
                "fills no named tables"
            raise ConfigError(f"task '{cfg.task}' {can}, not {', '.join(map(repr, unfilled))}: its batches would "
                              f"have no ids for them; drop them from model.tables or use a task that provides them")
        task_cls.check_config(cfg)

    register_task(task_cls.name, task_cls.config_section, task_cls.config_class, check)
    return task_cls
