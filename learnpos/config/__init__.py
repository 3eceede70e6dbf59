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

    schema.py       the dataclasses, `Config`, the task-section registry
    overrides.py    typed coercion and dotted-key overrides
    validation.py   what a runnable config is (choices declared as data)
    (here)          presets (read and written), loading (defaults <- preset <- overrides),
                    config.json, diffs
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from learnpos.config.overrides import _apply_config_dict, _apply_dict, _coerce, set_override
from learnpos.config.schema import (
    TASK_SPECS,
    Config,
    ModelConfig,
    PositionalConfig,
    TableConfig,
    TaskSpec,
    TrainConfig,
    mlp_width,
    new_config,
    register_task,
)
from learnpos.config.validation import (
    _MODULE_ATTRIBUTES,
    LEARNED_INITS,
    MLP_KINDS,
    POSITIONAL_KINDS,
    RESERVED_TABLE_NAMES,
    SEED_MAX,
    is_device_name,
    validate,
)
from learnpos.errors import ConfigError
from learnpos.files import loads_json

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"

__all__ = ["TASK_SPECS", "Config", "ModelConfig", "PositionalConfig", "TableConfig", "TaskSpec", "TrainConfig",
           "mlp_width", "new_config", "register_task", "set_override", "validate", "is_device_name", "SEED_MAX",
           "POSITIONAL_KINDS", "LEARNED_INITS", "MLP_KINDS", "RESERVED_TABLE_NAMES", "_MODULE_ATTRIBUTES",
           "_apply_dict", "_coerce", "PRESET_DIR", "preset_path", "list_presets", "read_preset", "to_toml", "from_dict",
           "load_config", "load_run_config", "config_diff"]


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


def to_toml(data: dict, header: str = "") -> str:
    """A config dict (as config.json holds it) as a TOML preset: scalars, sections, and lists
    of tables (`[[model.tables]]`); None (a setting left to its default) is omitted."""
    lines = [f"# {header}"] if header else []

    def scalar(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list) and not any(isinstance(x, dict) for x in v):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    def section(name: str, d: dict) -> None:
        simple = {k: v for k, v in d.items() if not isinstance(v, dict) and not (
            isinstance(v, list) and v and all(isinstance(x, dict) for x in v)) and v is not None}
        if name:
            lines.extend(["", f"[{name}]"])
        lines.extend(f"{k} = {scalar(v)}" for k, v in simple.items())
        for k, v in d.items():
            if isinstance(v, dict):
                section(f"{name}.{k}" if name else k, v)
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                for item in v:
                    lines.extend(["", f"[[{name}.{k}]]" if name else f"[[{k}]]"])
                    lines.extend(f"{ik} = {scalar(iv)}" for ik, iv in item.items() if iv is not None)

    section("", data)
    return "\n".join(lines) + "\n"


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
