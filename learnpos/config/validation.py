"""Validation: a config the code cannot run is refused with a message that says how to fix it.
Allowed values are declared as data (`CHOICES`, and a section's own `CHOICES` class attribute:
field name -> allowed values) and checked by one function."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from learnpos.config.schema import TASK_SPECS, Config, TableConfig, new_config
from learnpos.errors import ConfigError

SEED_MAX = 2**63 - 1  # what torch.Generator.manual_seed and NumPy's SeedSequence both take


def is_device_name(name: str) -> bool:
    """auto | cpu | cuda | cuda:N: the device names learnpos takes (whether the machine has the
    device is `learnpos.hardware.resolve_device`'s question)."""
    return name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())


POSITIONAL_KINDS = ("learned", "sinusoidal", "rope", "alibi", "none")
LEARNED_INITS = ("normal", "zeros", "sinusoidal", "randn")
MLP_KINDS = ("gelu", "swiglu", "relu2")


# Every key with a closed set of values, and the values: one table, one check. A task's section
# declares its own the same way, as a class attribute `CHOICES = {field: allowed}`.
CHOICES = {
    "model.positional.kind": POSITIONAL_KINDS,
    "model.positional.init": LEARNED_INITS,
    "model.attention": ("auto", "sdpa", "matmul"),
    "model.mlp": MLP_KINDS,
    "train.optimizer": ("adamw", "sgd", "muon"),
    "train.schedule": ("cosine", "wsd"),
    "train.muon_precision": ("auto", "bfloat16", "float32"),
    "train.dtype": ("auto", "float32", "bfloat16"),
    "train.early_stop_mode": ("max", "min"),
    "train.on_nonfinite": ("stop", "skip"),
}


def check_choice(value: Any, allowed: tuple, key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}='{value}' is not one of: {', '.join(map(str, allowed))}")


def _check_choices(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        check_choice(obj, allowed, key)
    for name, section in cfg.sections.items():
        for fld, allowed in getattr(type(section), "CHOICES", {}).items():
            check_choice(getattr(section, fld), tuple(allowed), f"{name}.{fld}")


def validate(cfg: Config) -> None:
    """Reject impossible configurations with a message that says how to fix them."""
    m, p, t = cfg.model, cfg.model.positional, cfg.train
    if cfg.task not in TASK_SPECS:
        new_config(cfg.task)  # raises the error naming the known tasks
    _check_choices(cfg)
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
    if p.offset < 0 or (p.offset and p.kind != "learned"):
        raise ConfigError(f"model.positional.offset shifts the rows a learned table reads and must be >= 0 with "
                          f"kind='learned'; got offset={p.offset} with kind='{p.kind}' (relative encodings and "
                          f"sinusoids need no offsets: set --model.positional.offset=0)")
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
    if t.muon_lr < 0 or t.muon_weight_decay < 0 or not 0 <= t.muon_momentum < 1 or not 1 <= t.muon_ns_steps < 100:
        raise ConfigError(f"train.muon_lr and muon_weight_decay must be >= 0, muon_momentum in [0, 1) and "
                          f"muon_ns_steps in 1..99; got {t.muon_lr}, {t.muon_weight_decay}, {t.muon_momentum}, "
                          f"{t.muon_ns_steps}")
    if not 0 <= t.ema < 1:
        raise ConfigError(f"train.ema is the weight average's decay and must be in [0, 1) (0 = off; 0.99 averages "
                          f"about the last 100 steps), got {t.ema}")
    if not 0 < t.decay_frac <= 1:
        raise ConfigError(f"train.decay_frac must be in (0, 1] (the share of max_iters the wsd schedule decays "
                          f"over), got {t.decay_frac}")
    if m.logit_softcap < 0 or p.lr_scale <= 0:
        raise ConfigError(f"model.logit_softcap must be >= 0 (0 = off) and model.positional.lr_scale > 0; got "
                          f"{m.logit_softcap}, {p.lr_scale}")
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
        check_choice(tb.init, LEARNED_INITS, f"{key}.init")
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
