"""Typed configuration: the single source of truth for a run.

A `Config` is built from defaults, then a preset (a TOML file in `learnpos/configs/` or
any path), then `--section.key=value` overrides, and is finally validated. The resolved
config is saved as `config.json` in every run directory and is all that is needed to
rebuild the model and the task.

    Config.task       the task's name
    Config.model      ModelConfig (with .positional and .tables)
    Config.train      TrainConfig
    Config.<section>  the task's own section, e.g. `cfg.lm` or `cfg.synthetic`

Bottom layer: this module imports no task, no model and no torch. A task declares its
section (a dataclass) with `register_task(name, section, SectionClass, check)` when its
module is imported (`import learnpos.tasks` registers the built-in ones), and from then on
presets, overrides, validation and `config.json` work for it like for any other section.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from learnpos.errors import ConfigError
from learnpos.files import loads_json

PRESET_DIR = Path(__file__).parent / "configs"


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
    mlp: str = "gelu"
    mlp_hidden: int = 0  # the MLP's inner width; 0 = 4 * n_embd (gelu), 8 * n_embd // 3 (swiglu: same parameters)
    tie_weights: bool = True  # share the token embedding with the output head
    causal: bool = True  # false = bidirectional encoder (masked-token tasks, KG completion)
    # auto: the CPU bf16 matmul kernel where it was measured faster (learnpos.attention), SDPA
    # elsewhere; sdpa: always F.scaled_dot_product_attention; matmul: the matmul kernel
    # wherever it applies (no dropout, not under torch.compile), any device and dtype.
    attention: str = "auto"
    positional: PositionalConfig = field(default_factory=PositionalConfig)
    tables: list[TableConfig] = field(default_factory=list)  # extra learned tables, summed into h


def mlp_width(m: ModelConfig) -> int:
    """The MLP's inner width: model.mlp_hidden, or 4C (gelu) / 8C // 3 (swiglu, whose three
    matrices then hold as many weights as gelu's two)."""
    return m.mlp_hidden or (4 * m.n_embd if m.mlp == "gelu" else 8 * m.n_embd // 3)


@dataclass
class TrainConfig:
    optimizer: str = "adamw"  # adamw | sgd (sgd is the seed formula P <- P - lr * dL/dP)
    lr: float = 1e-3
    min_lr: float = 1e-4  # floor of the cosine decay
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
    grad_clip: float = 1.0  # 0 = off
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


# ---------------------------------------------------------------------------- building


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert `value` (from TOML, JSON or a command-line string) to `typ`, or fail."""
    if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if typing.get_origin(typ) is list:
        (item,) = typing.get_args(typ)
        if isinstance(value, str):
            try:
                value = loads_json(value)
            except json.JSONDecodeError:
                raise ConfigError(f"{key} must be a JSON list, e.g. --{key}='[{{\"name\": \"turn\", "
                                  f"\"rows\": 16}}]', got {value!r}") from None
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table of {', '.join(_field_types(typ))}, got {value!r}")
        obj = typ()
        _apply_dict(obj, value, key + ".")
        return obj
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} must be {getattr(typ, '__name__', typ)}, got {value!r}")


def _unknown_key(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}; known here: {', '.join(known)}")


def _apply_dict(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    hints = _field_types(type(obj))
    for name, value in data.items():
        key = prefix + name
        if name in getattr(type(obj), "RETIRED", ()):  # a setting older configs hold and this version ignores
            continue
        if name not in hints:
            raise _unknown_key(key, list(hints))
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} is a section; set its fields as {key}.<field>=value")
            _apply_dict(current, value, key + ".")
        else:
            setattr(obj, name, _coerce(value, hints[name], key))


def _section_of(cfg: Config, name: str, skip_other_tasks: bool = False) -> Any:
    """The object behind a top-level name of `cfg` ("model", "train" or the task's section);
    None when the name is another task's section and `skip_other_tasks`."""
    if name in ("model", "train"):
        return getattr(cfg, name)
    if name in cfg.sections:
        return cfg.sections[name]
    owners = _owners(name)
    if owners:
        if skip_other_tasks:
            return None
        raise ConfigError(f"{name}.* are settings of task {' / '.join(owners)}, but this config's task is "
                          f"'{cfg.task}'; set --task={owners[0]} or drop the {name}.* settings")
    raise _unknown_key(name, ["task", "model", "train", *cfg.sections])


def _apply_config_dict(cfg: Config, data: dict[str, Any], skip_other_tasks: bool = False) -> None:
    for name, value in data.items():
        if name == "task":
            if value != cfg.task:
                raise ConfigError(f"task='{value}' conflicts with the config's task '{cfg.task}'")
            continue
        section = _section_of(cfg, name, skip_other_tasks)
        if section is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{name} is a section; set its fields as {name}.<field>=value")
        _apply_dict(section, value, name + ".")


def set_override(cfg: Config, key: str, value: str) -> None:
    """Set one dotted key from a command-line string, with type checks.
    `model.tables.<name>.<field>` reaches the extra table called <name>."""
    if key == "task":
        if value != cfg.task:
            raise ConfigError(f"--task={value}: the task is chosen when the config is built "
                              f"(load_config(..., {{'task': ...}})), not changed afterwards")
        return
    parts = key.split(".")
    obj: Any = _section_of(cfg, parts[0])
    if len(parts) == 1:
        raise ConfigError(f"{key} is a section; set one of its fields, e.g. --{key}.<field>=value")
    i = 1
    while i < len(parts):
        part, path = parts[i], ".".join(parts[: i + 1])
        hints = _field_types(type(obj))
        if part not in hints:
            raise _unknown_key(path, list(hints))
        current = getattr(obj, part)
        last = i == len(parts) - 1
        if last:
            if dataclasses.is_dataclass(current):
                raise ConfigError(f"{path} is a section; set one of its fields, e.g. {path}.<field>=value")
            setattr(obj, part, _coerce(value, hints[part], path))
            return
        if isinstance(current, list):  # a list of named entries: the next part is a name
            names = [getattr(e, "name", None) for e in current]
            name = parts[i + 1]
            if name not in names:
                raise ConfigError(f"{path} has no entry named '{name}' (has: {', '.join(map(str, names)) or 'none'}); "
                                  f"add one with --{path}='[{{\"name\": \"{name}\", \"rows\": N}}]' "
                                  f"or in the preset")
            obj = current[names.index(name)]
            i += 2
            if i >= len(parts):
                raise ConfigError(f"{path}.{name} is an entry; set one of its fields, e.g. {path}.{name}.rows=8")
            continue
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"{path} is a value, not a section; use --{path}=value")
        obj = current
        i += 1


def preset_path(name: str) -> Path:
    path = Path(name)
    if path.suffix == ".toml" and path.exists():
        return path
    candidate = PRESET_DIR / f"{name}.toml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in PRESET_DIR.glob("*.toml"))
    raise ConfigError(f"no preset '{name}'; known presets: {', '.join(known)} (or give a path to a .toml file)")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def read_preset(name: str) -> dict[str, Any]:
    path = preset_path(name)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def from_dict(data: dict[str, Any], skip_other_tasks: bool = False) -> Config:
    """A Config from `to_dict()` output. skip_other_tasks: ignore sections of other
    registered tasks (run directories written before sections belonged to their task held
    every section)."""
    cfg = new_config(data.get("task", Config.task))
    _apply_config_dict(cfg, data, skip_other_tasks)
    return cfg


def load_config(preset: str | None = None, overrides: dict[str, str] | None = None) -> Config:
    """Defaults <- preset file <- overrides, then `validate`. An override `task` picks the
    task (and its section) before anything else is applied; a preset's section of another
    task is then ignored (e.g. `--task=copy` on the reverse demo preset)."""
    data = read_preset(preset) if preset is not None else {}
    overrides = dict(overrides or {})
    task = overrides.pop("task", None)
    cfg = new_config(task or data.get("task", Config.task))
    _apply_config_dict(cfg, {k: v for k, v in data.items() if k != "task"}, skip_other_tasks=task is not None)
    for key, value in overrides.items():
        set_override(cfg, key, value)
    validate(cfg)
    return cfg


def load_run_config(path: str | Path) -> Config:
    try:
        data = loads_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a readable config ({e}); is it a learnpos run directory?") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a config (a JSON {type(data).__name__}, not an object); is it a learnpos "
                          f"run directory?")
    cfg = from_dict(data, skip_other_tasks=True)
    validate(cfg)
    return cfg


def config_diff(a: Config, b: Config, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between `a` and `b`, except under `ignore` prefixes."""
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict):
            out = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: d}

    fa, fb = flat(a.to_dict()), flat(b.to_dict())
    keys = sorted(set(fa) | set(fb))
    return [k for k in keys if fa.get(k) != fb.get(k) and not any(k == p or k.startswith(p + ".") for p in ignore)]


# -------------------------------------------------------------------------- validation

SEED_MAX = 2**63 - 1  # what torch.Generator.manual_seed and NumPy's SeedSequence both take


def is_device_name(name: str) -> bool:
    """auto | cpu | cuda | cuda:N: the device names learnpos takes (whether the machine has the
    device is `learnpos.train.resolve_device`'s question)."""
    return name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())


POSITIONAL_KINDS = ("learned", "sinusoidal", "rope", "alibi", "none")
LEARNED_INITS = ("normal", "zeros", "sinusoidal", "randn")
MLP_KINDS = ("gelu", "swiglu")


def _choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}='{value}' is not one of: {', '.join(allowed)}")


def validate(cfg: Config) -> None:
    """Reject impossible configurations with a message that says how to fix them."""
    m, p, t = cfg.model, cfg.model.positional, cfg.train
    if cfg.task not in TASK_SPECS:
        new_config(cfg.task)  # raises the error naming the known tasks
    _choice(p.kind, POSITIONAL_KINDS, "model.positional.kind")
    _choice(p.init, LEARNED_INITS, "model.positional.init")
    _choice(m.attention, ("auto", "sdpa", "matmul"), "model.attention")
    _choice(m.mlp, MLP_KINDS, "model.mlp")
    _choice(t.optimizer, ("adamw", "sgd"), "train.optimizer")
    _choice(t.dtype, ("auto", "float32", "bfloat16"), "train.dtype")
    _choice(t.early_stop_mode, ("max", "min"), "train.early_stop_mode")
    _choice(t.on_nonfinite, ("stop", "skip"), "train.on_nonfinite")
    if t.early_stop_patience < 0:
        raise ConfigError(f"train.early_stop_patience must be >= 0 (0 = never stop early), got {t.early_stop_patience}")
    if t.early_stop_patience and not t.early_stop_metric:
        raise ConfigError("train.early_stop_patience needs train.early_stop_metric "
                          "(e.g. --train.early_stop_metric=mrr)")
    for key, value in [("model.n_layer", m.n_layer), ("model.n_head", m.n_head), ("model.n_embd", m.n_embd),
                       ("model.positional.max_len", p.max_len), ("train.batch_size", t.batch_size),
                       ("train.grad_accum", t.grad_accum), ("train.max_iters", t.max_iters),
                       ("train.eval_interval", t.eval_interval), ("train.log_interval", t.log_interval)]:
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if m.mlp_hidden < 0:
        raise ConfigError(f"model.mlp_hidden must be >= 0 (0 = the width model.mlp implies), got {m.mlp_hidden}")
    if m.vocab_size < 0:
        raise ConfigError(f"model.vocab_size must be >= 0 (0 = from the task), got {m.vocab_size}")
    if m.n_embd % m.n_head != 0:
        raise ConfigError(
            f"model.n_embd={m.n_embd} is not divisible by model.n_head={m.n_head}; "
            f"pick n_head from the divisors of n_embd or change n_embd")
    head_dim = m.n_embd // m.n_head
    if p.kind == "rope" and head_dim % 2 != 0:
        raise ConfigError(f"rope needs an even head size, got n_embd/n_head={head_dim}")
    sinusoid_inits = [p.kind == "sinusoidal" or (p.kind == "learned" and p.init == "sinusoidal")]
    sinusoid_inits += [tb.init == "sinusoidal" for tb in m.tables]
    if any(sinusoid_inits) and m.n_embd % 2 != 0:
        raise ConfigError(f"sinusoidal positions need an even model.n_embd, got {m.n_embd}")
    for key in ("dropout", "embd_dropout", "attn_dropout", "resid_dropout"):
        value = getattr(m, key)
        if value is not None and not 0.0 <= value < 1.0:
            raise ConfigError(f"model.{key} must be in [0, 1), got {value}")
    if p.init_std <= 0:
        raise ConfigError(f"model.positional.init_std must be positive, got {p.init_std}")
    if p.randomize and p.kind != "learned":
        raise ConfigError(f"model.positional.randomize draws rows of a learned table; kind='{p.kind}' has none "
                          f"(use --model.positional.kind=learned with a max_len larger than the training length)")
    _validate_tables(m.tables)
    _check_finite(cfg)
    if t.lr <= 0 or t.min_lr < 0 or t.min_lr > t.lr:
        raise ConfigError(f"need 0 <= train.min_lr <= train.lr and lr > 0, got lr={t.lr}, min_lr={t.min_lr}")
    if t.warmup_iters < 0 or t.warmup_iters > t.max_iters:
        raise ConfigError(f"train.warmup_iters={t.warmup_iters} must be in [0, max_iters={t.max_iters}]; "
                          f"set --train.warmup_iters to at most {t.max_iters}")
    if t.time_budget < 0:
        raise ConfigError(f"train.time_budget is in minutes and must be >= 0 (0 = no bound), got {t.time_budget}")
    if t.grad_clip < 0 or t.weight_decay < 0 or t.momentum < 0:
        raise ConfigError("train.grad_clip, train.weight_decay and train.momentum must be >= 0")
    if not (0 <= t.beta1 < 1 and 0 <= t.beta2 < 1):
        raise ConfigError(f"train.beta1/beta2 must be in [0, 1), got {t.beta1}, {t.beta2}")
    if not is_device_name(t.device):
        raise ConfigError(f"train.device='{t.device}' is not one of: auto, cpu, cuda, cuda:N")
    if not 0 <= t.seed <= SEED_MAX:
        raise ConfigError(f"train.seed must be in 0..{SEED_MAX}, got {t.seed}")
    check = TASK_SPECS[cfg.task].check
    if check is not None:
        check(cfg)


# Names a table cannot take: the position table's own, and attributes of the torch.nn.ModuleDict
# that holds the tables (`type`, `keys`, `to`, `eval`, ...), which would shadow them.
RESERVED_TABLE_NAMES = ("pos", "position")


def _validate_tables(tables: list[TableConfig]) -> None:
    seen = set()
    for i, tb in enumerate(tables):
        key = f"model.tables[{tb.name or i}]"
        if not tb.name.isidentifier():
            raise ConfigError(f"{key}.name must be a Python identifier (it names the parameter "
                              f"tables.<name>.weight), got {tb.name!r}")
        if tb.name in RESERVED_TABLE_NAMES or tb.name.startswith("_") or tb.name in _MODULE_ATTRIBUTES:
            raise ConfigError(f"{key}.name '{tb.name}' is reserved (the position table is 'pos'; names like "
                              f"'type', 'keys' or 'to' are methods of the module that holds the tables); "
                              f"pick another name")
        if tb.name in seen:
            raise ConfigError(f"model.tables has two tables named '{tb.name}'; names must be unique")
        seen.add(tb.name)
        if tb.rows <= 0:
            raise ConfigError(f"{key}.rows must be positive (ids 0..rows-1), got {tb.rows}")
        _choice(tb.init, LEARNED_INITS, f"{key}.init")
        if tb.init_std <= 0:
            raise ConfigError(f"{key}.init_std must be positive, got {tb.init_std}")


# Attribute names of torch.nn.ModuleDict, written out so this module needs no torch import
# (tests/test_tables.py checks the list against torch's).
_MODULE_ATTRIBUTES = frozenset((  # smart_apply: what transformers adds to nn.Module once imported
    "smart_apply", "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children",
    "clear", "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr", "float", "forward", "get_buffer",
    "get_extra_state", "get_parameter", "get_submodule", "half", "ipu", "items", "keys", "load_state_dict",
    "modules", "mtia", "named_buffers", "named_children", "named_modules", "named_parameters", "parameters",
    "pop", "register_backward_hook", "register_buffer", "register_forward_hook", "register_forward_pre_hook",
    "register_full_backward_hook", "register_full_backward_pre_hook", "register_load_state_dict_post_hook",
    "register_load_state_dict_pre_hook", "register_module", "register_parameter",
    "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_", "set_extra_state",
    "set_submodule", "share_memory", "state_dict", "to", "to_empty", "train", "training", "type", "update",
    "values", "xpu", "zero_grad",
))


def _check_finite(obj: Any, prefix: str = "") -> None:
    """No NaN or infinite float anywhere in the config (they pass every `<` check silently)."""
    if isinstance(obj, Config):
        for name, section in (("model", obj.model), ("train", obj.train), *obj.sections.items()):
            _check_finite(section, name + ".")
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, list):
            for item in value:
                if dataclasses.is_dataclass(item):
                    _check_finite(item, f"{prefix}{f.name}.{getattr(item, 'name', '')}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{f.name} must be a finite number, got {value}")
