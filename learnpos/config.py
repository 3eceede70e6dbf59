"""Typed configuration: the single source of truth for a run.

A `Config` is built from defaults, then a preset (a TOML file in `learnpos/configs/` or
any path), then `--section.key=value` overrides, and is finally validated. The resolved
config is saved as `config.json` in every run directory and is all that is needed to
rebuild the model and the task.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from learnpos.errors import ConfigError

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


@dataclass
class ModelConfig:
    vocab_size: int = 0  # 0 = take it from the task
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm (GPT-2 has them)
    tie_weights: bool = True  # share the token embedding with the output head
    causal: bool = True  # false = bidirectional encoder (masked-token tasks, KG completion)
    positional: PositionalConfig = field(default_factory=PositionalConfig)


@dataclass
class SyntheticConfig:
    """Position-probing tasks generated from a seed (copy, reverse, index)."""

    length: int = 16  # number of symbols per training sequence
    eval_length: int = 0  # 0 = same as `length`; set larger for length generalisation
    n_symbols: int = 16  # alphabet size
    n_eval: int = 512  # held-out sequences
    eval_seed: int = 1234  # held-out sequences come from their own seed


@dataclass
class LMConfig:
    """Language modelling on any UTF-8 text (task = "lm")."""

    data: str = ""  # a UTF-8 text file or folder (every file under it, sorted)
    val_data: str = ""  # a separate validation file/folder; "" = the last val_fraction of data
    val_fraction: float = 0.1
    tokenizer: str = "char"  # char | bpe (byte-level BPE trained on the training text)
    bpe_vocab_size: int = 4096
    block_size: int = 64  # training sequence length; a learned table needs max_len >= this
    eval_windows: int = 0  # val windows of block_size per evaluation, evenly spaced; 0 = all
    cache_dir: str = ""  # token cache; "" = <parent of train.out_dir>/.cache/tokens


@dataclass
class TrainConfig:
    optimizer: str = "adamw"  # adamw | sgd (sgd is the seed formula P <- P - lr * dL/dP)
    lr: float = 1e-3
    min_lr: float = 1e-4  # floor of the cosine decay
    warmup_iters: int = 100
    max_iters: int = 1000  # also the end of the cosine schedule
    weight_decay: float = 0.1  # on matrices; see positional.weight_decay for the table
    beta1: float = 0.9
    beta2: float = 0.99
    momentum: float = 0.0  # sgd only
    grad_clip: float = 1.0  # 0 = off
    batch_size: int = 64
    eval_interval: int = 250
    log_interval: int = 50
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 (autocast); auto = bf16 on CUDA and AMX CPUs
    compile: bool = False  # torch.compile the model (worth it on CUDA)
    position_stats: bool = False  # record per-row gradient norms/counts/displacement of P
    out_dir: str = "runs/default"


@dataclass
class Config:
    task: str = "reverse"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    lm: LMConfig = field(default_factory=LMConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


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
    raise ConfigError(f"{key} must be {typ.__name__}, got {value!r}")


def _unknown_key(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}; known here: {', '.join(known)}")


def _apply_dict(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    hints = _field_types(type(obj))
    for name, value in data.items():
        key = prefix + name
        if name not in hints:
            raise _unknown_key(key, list(hints))
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} is a section; set its fields as {key}.<field>=value")
            _apply_dict(current, value, key + ".")
        else:
            setattr(obj, name, _coerce(value, hints[name], key))


def set_override(cfg: Config, key: str, value: str) -> None:
    """Set one dotted key from a command-line string, with type checks."""
    obj: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        hints = _field_types(type(obj))
        path = ".".join(parts[: i + 1])
        if part not in hints:
            raise _unknown_key(path, list(hints))
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise ConfigError(f"{path} is a section; set one of its fields, e.g. {path}.<field>=value")
            setattr(obj, part, _coerce(value, hints[part], path))
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"{path} is a value, not a section; use --{path}=value")


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


def from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    _apply_dict(cfg, data)
    return cfg


def load_config(preset: str | None = None, overrides: dict[str, str] | None = None) -> Config:
    """Defaults <- preset file <- overrides, then `validate`."""
    cfg = Config()
    if preset is not None:
        path = preset_path(preset)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        _apply_dict(cfg, data)
    for key, value in (overrides or {}).items():
        set_override(cfg, key, value)
    validate(cfg)
    return cfg


def load_run_config(path: str | Path) -> Config:
    cfg = from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    validate(cfg)
    return cfg


# -------------------------------------------------------------------------- validation

POSITIONAL_KINDS = ("learned", "sinusoidal", "rope", "alibi", "none")
LEARNED_INITS = ("normal", "zeros", "sinusoidal", "randn")


def _choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}='{value}' is not one of: {', '.join(allowed)}")


def validate(cfg: Config) -> None:
    """Reject impossible configurations with a message that says how to fix them."""
    m, p, t, s = cfg.model, cfg.model.positional, cfg.train, cfg.synthetic
    from learnpos.tasks import TASKS  # the task registry; tasks import nothing from here

    _choice(cfg.task, tuple(TASKS), "task")
    _choice(p.kind, POSITIONAL_KINDS, "model.positional.kind")
    _choice(p.init, LEARNED_INITS, "model.positional.init")
    _choice(t.optimizer, ("adamw", "sgd"), "train.optimizer")
    _choice(t.dtype, ("auto", "float32", "bfloat16"), "train.dtype")
    for key, value in [("model.n_layer", m.n_layer), ("model.n_head", m.n_head), ("model.n_embd", m.n_embd),
                       ("model.positional.max_len", p.max_len), ("train.batch_size", t.batch_size),
                       ("train.max_iters", t.max_iters), ("train.eval_interval", t.eval_interval),
                       ("train.log_interval", t.log_interval), ("synthetic.length", s.length),
                       ("synthetic.n_symbols", s.n_symbols), ("synthetic.n_eval", s.n_eval)]:
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if m.vocab_size < 0:
        raise ConfigError(f"model.vocab_size must be >= 0 (0 = from the task), got {m.vocab_size}")
    if m.n_embd % m.n_head != 0:
        raise ConfigError(
            f"model.n_embd={m.n_embd} is not divisible by model.n_head={m.n_head}; "
            f"pick n_head from the divisors of n_embd or change n_embd")
    head_dim = m.n_embd // m.n_head
    if p.kind == "rope" and head_dim % 2 != 0:
        raise ConfigError(f"rope needs an even head size, got n_embd/n_head={head_dim}")
    if p.kind in ("sinusoidal",) or (p.kind == "learned" and p.init == "sinusoidal"):
        if m.n_embd % 2 != 0:
            raise ConfigError(f"sinusoidal positions need an even model.n_embd, got {m.n_embd}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    if p.init_std <= 0:
        raise ConfigError(f"model.positional.init_std must be positive, got {p.init_std}")
    if t.lr <= 0 or t.min_lr < 0 or t.min_lr > t.lr:
        raise ConfigError(f"need 0 <= train.min_lr <= train.lr and lr > 0, got lr={t.lr}, min_lr={t.min_lr}")
    if t.warmup_iters < 0 or t.warmup_iters > t.max_iters:
        raise ConfigError(f"train.warmup_iters={t.warmup_iters} must be in [0, max_iters={t.max_iters}]; "
                          f"set --train.warmup_iters to at most {t.max_iters}")
    if t.grad_clip < 0 or t.weight_decay < 0 or t.momentum < 0:
        raise ConfigError("train.grad_clip, train.weight_decay and train.momentum must be >= 0")
    if not (0 <= t.beta1 < 1 and 0 <= t.beta2 < 1):
        raise ConfigError(f"train.beta1/beta2 must be in [0, 1), got {t.beta1}, {t.beta2}")
    if not (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:")):
        raise ConfigError(f"train.device='{t.device}' is not one of: auto, cpu, cuda, cuda:N")
    if s.eval_length < 0:
        raise ConfigError(f"synthetic.eval_length must be >= 0 (0 = same as length), got {s.eval_length}")
    TASKS[cfg.task].check_config(cfg)
