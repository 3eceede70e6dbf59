"""The config's schema: the typed sections of a run (model, positional, tables, train), the
`Config` that holds them and the task's own section, and the registry through which a task
declares its section (`register_task`). No torch, no task, no I/O."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from learnpos.errors import ConfigError


@dataclass
class PositionalConfig:
    """How positions enter the model (see `learnpos.positional` for each kind)."""

    kind: str = "learned"  # learned | sinusoidal | rope | alibi | none
    max_len: int = 64  # rows of the learned table (positions 0..max_len-1); other kinds have no limit
    init: str = "normal"  # learned only: normal | zeros | sinusoidal | randn
    init_std: float = 0.02  # std of the `normal` init (GPT-2 uses 0.02); also the RMS of sinusoids
    # Decoupled weight decay shrinks *every* row of the table each step, including rows
    # that never receive a gradient (positions longer than any training sequence), so
    # the default is no decay on P. Set true to treat P like the other matrices.
    weight_decay: bool = False
    rope_base: float = 10000.0  # rope only: wavelength base
    # learned only: train on sorted random subsets of the max_len rows (Ruoss et al. 2023), so
    # rows past the training length are trained too; evaluation spreads a sequence's positions
    # evenly over the table (learnpos.positional.RandomizedPositionalEmbedding)
    randomize: bool = False
    # learned only: random offsets (Abacus, McLeish et al. 2024). The table gets max_len + offset
    # rows; training shifts each sequence's positions by k ~ U{0..offset}, so every row is
    # trained by sequences of at most max_len positions; evaluation uses offset 0 and accepts
    # sequences of up to max_len + offset positions
    offset: int = 0
    # learned only: the table's own learning rate, as a multiple of train.lr (its AdamW group's
    # rate follows the schedule times this)
    lr_scale: float = 1.0


@dataclass
class TableConfig:
    """A named learned table added to the embedding sum next to the positions, e.g. turn or
    speaker ids: h[b,t] = E[x[b,t]] + P[pos[b,t]] + sum over tables of T_name[ids[name][b,t]].
    Its ids come with every batch (`Batch.extra_ids[name]`, (B, T) in 0..rows-1)."""

    name: str = ""  # a Python identifier; the parameter is `tables.<name>.weight`
    rows: int = 0  # ids 0..rows-1
    init: str = "normal"  # normal | zeros | sinusoidal | randn (as model.positional.init)
    init_std: float = 0.02
    weight_decay: bool = False  # decoupled decay also shrinks rows no id reaches; off by default


@dataclass
class ModelConfig:
    vocab_size: int = 0  # 0 = take it from the task
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0  # every dropout below that is not set on its own
    embd_dropout: float | None = None  # on the embedding sum h (None = dropout)
    attn_dropout: float | None = None  # on the attention probabilities (None = dropout)
    resid_dropout: float | None = None  # on each block's attention and MLP outputs (None = dropout)
    bias: bool = True  # biases in Linear and LayerNorm (GPT-2 has them)
    # gelu: GPT-2's proj(gelu(fc(x))); swiglu: proj(silu(fc(x)) * gate(x)) (Shazeer 2020, as in
    # LLaMA), whose product multiplies features of the tokens attention mixed (the kg-kinships preset)
    mlp: str = "gelu"  # gelu | swiglu | relu2 (proj(relu(fc(x))^2), modded-nanogpt's)
    mlp_hidden: int = 0  # inner width; 0 = 4 * n_embd (gelu, relu2), 8 * n_embd // 3 (swiglu: as many weights)
    tie_weights: bool = True  # share the token embedding with the output head
    causal: bool = True  # false = bidirectional encoder (masked-token tasks, KG completion)
    # auto: the CPU bf16 matmul kernel where it was measured faster (learnpos.attention), SDPA
    # elsewhere; sdpa: always F.scaled_dot_product_attention; matmul: the matmul kernel
    # wherever it applies (no dropout, not under torch.compile), any device and dtype.
    attention: str = "auto"
    # Recipe switches of the small-GPT speedruns (benchmarks/time_to_quality.py measures each):
    zero_init_proj: bool = False  # attention and MLP output projections start at zero (each block starts as identity)
    qk_norm: bool = False  # RMS-normalise each head's queries and keys (no gain) before attention
    logit_softcap: float = 0.0  # > 0: logits = c * tanh(logits / c), bounded by c; 0 = off
    positional: PositionalConfig = field(default_factory=PositionalConfig)
    tables: list[TableConfig] = field(default_factory=list)  # extra learned tables, summed into h


def mlp_width(m: ModelConfig) -> int:
    """The MLP's inner width: model.mlp_hidden, or 4C (gelu, relu2) / 8C // 3 (swiglu, whose three
    matrices then hold as many weights as gelu's two)."""
    return m.mlp_hidden or (8 * m.n_embd // 3 if m.mlp == "swiglu" else 4 * m.n_embd)


@dataclass
class TrainConfig:
    # adamw | sgd (sgd is the seed formula P <- P - lr * dL/dP) | muon (torch.optim.Muon for the
    # matrices inside the blocks, AdamW with lr, betas and weight_decay for everything else:
    # embeddings, every learned table, norms, biases and heads)
    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-4  # floor of the decay
    # cosine: warmup, then cosine from lr to min_lr at max_iters. wsd (warmup-stable-decay, a
    # trapezoid): warmup, lr held, then linear to min_lr over the last decay_frac of max_iters
    schedule: str = "cosine"
    decay_frac: float = 0.2
    warmup_iters: int = 100
    max_iters: int = 1000  # also the end of the cosine schedule
    # Minutes of wall time the run may take (data loading, steps and evaluations, summed over
    # resumes); 0 = no bound. When it is spent the run evaluates, checkpoints and ends at that
    # step. Data-derived settings (`learnpos train --task T --data PATH`) size max_iters to fit it.
    time_budget: float = 0.0
    weight_decay: float = 0.1  # on matrices; each learned table has its own switch (positional/tables)
    beta1: float = 0.9
    beta2: float = 0.99
    momentum: float = 0.0  # sgd only
    # muon: its learning rate (peak; the schedule scales it like lr), momentum, Nesterov, Newton-Schulz
    # steps and decoupled weight decay, for the block matrices only
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    muon_ns_steps: int = 5
    muon_weight_decay: float = 0.0
    # precision of Muon's Newton-Schulz iteration: bfloat16 (PyTorch's Muon as it is), float32 (the
    # same iteration in the parameters' precision, at least float32), or auto: bfloat16 where bf16
    # matmuls are fast (CUDA, AMX CPUs), float32 elsewhere (1.5-2x faster there: benchmarks/muon_ns.py)
    muon_precision: str = "auto"
    grad_clip: float = 1.0  # 0 = off
    # Decay of an exponential moving average of the weights (0 = off): the average is what is
    # evaluated, kept as best/ and saved as model.safetensors; training goes on from the trained
    # weights (kept in trainer_state.pt). It covers about the last 1 / (1 - ema) steps.
    ema: float = 0.0
    batch_size: int = 64  # the global batch: split over torchrun's processes and grad_accum micro-batches
    grad_accum: int = 1  # micro-batches per step and process (one gradient all-reduce per step)
    # A NaN/inf loss or gradient: "stop" (an error; the last checkpoint is kept; checked at each
    # log and eval, no per-step host sync) or "skip" (checked every step: the batch is dropped,
    # no update, and the skips are counted in metrics.jsonl)
    on_nonfinite: str = "stop"
    eval_interval: int = 250
    log_interval: int = 50
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto | float32 | bfloat16 (autocast); auto = bf16 on CUDA and AMX CPUs. A run saves the
    # precision `auto` chose, so a resumed run keeps it on any machine.
    dtype: str = "auto"
    compile: bool = False  # torch.compile the model (worth it on CUDA)
    # Track the best evaluation by this metric of the task's evaluate() (e.g. "mrr" for kg,
    # "loss" for lm); "" = off. Its weights are kept in <run>/best/ and are what eval,
    # generate and predict load. With patience > 0, stop after that many evaluations
    # without improvement.
    early_stop_metric: str = ""
    early_stop_mode: str = "max"  # max | min: which direction is better
    early_stop_patience: int = 0
    position_stats: bool = False  # record per-row gradient norms/counts/displacement of every learned table
    # TensorBoard event files in RUN/tensorboard/: losses, lr, each learned table's gradient norm,
    # every metric, and each table's similarity heatmap at every evaluation (learnpos[tensorboard])
    tensorboard: bool = False
    out_dir: str = "runs/default"


@dataclass
class Config:
    task: str = "reverse"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sections: dict[str, Any] = field(default_factory=dict)  # the task's section(s), by name

    def __post_init__(self):
        spec = TASK_SPECS.get(self.task)
        if spec is not None and spec.section and spec.section not in self.sections:
            self.sections[spec.section] = spec.section_cls()

    def __getattr__(self, name: str) -> Any:  # cfg.lm, cfg.synthetic, ...: the task's section
        sections = self.__dict__.get("sections")
        if sections is None:
            raise AttributeError(name)
        spec = TASK_SPECS.get(self.__dict__.get("task"))
        if name not in sections and spec is not None and spec.section == name:
            sections[name] = spec.section_cls()  # a Config made before its task was registered
        if name in sections:
            return sections[name]
        raise AttributeError(f"config has no section '{name}' (task '{self.__dict__.get('task')}' has "
                             f"{', '.join(sections) or 'none'})")

    def to_dict(self) -> dict[str, Any]:
        out = {"task": self.task, "model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)}
        out.update({name: dataclasses.asdict(section) for name, section in self.sections.items()})
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


# --------------------------------------------------------------------- task sections


@dataclass(frozen=True)
class TaskSpec:
    """What the config layer knows of a task: its name, its section and a check."""

    name: str
    section: str | None  # e.g. "lm"; None = the task has no settings of its own
    section_cls: type | None
    check: Callable[[Config], None] | None  # raises ConfigError for configs the task cannot run


TASK_SPECS: dict[str, TaskSpec] = {}  # filled by `register_task` as task modules are imported


def register_task(name: str, section: str | None = None, section_cls: type | None = None,
                  check: Callable[[Config], None] | None = None) -> None:
    """Declare a task and its config section. Several tasks may share one section (copy,
    reverse and index share `synthetic`); a section name is bound to one dataclass."""
    if section in ("task", "model", "train", "sections"):
        raise ValueError(f"'{section}' is a built-in part of Config, not a task section name")
    if section is not None:
        for other in TASK_SPECS.values():
            if other.section == section and other.section_cls is not section_cls:
                raise ValueError(f"section '{section}' is already bound to {other.section_cls.__name__}")
        if not dataclasses.is_dataclass(section_cls):
            raise ValueError(f"the section of task '{name}' must be a dataclass, got {section_cls!r}")
    TASK_SPECS[name] = TaskSpec(name, section, section_cls, check)


def new_config(task: str) -> Config:
    """Defaults for `task`: the model and train defaults plus the task's own section."""
    if not isinstance(task, str) or task not in TASK_SPECS:
        known = ", ".join(TASK_SPECS) or "none registered: import learnpos.tasks (or your task's module) first"
        raise ConfigError(f"task={task!r} is not one of: {known}")
    return Config(task=task)


def _owners(section: str) -> list[str]:
    return [s.name for s in TASK_SPECS.values() if s.section == section]
