"""The override engine: values from TOML, config.json or the command line coerced to the
schema's types and set by dotted key (`--model.positional.kind=rope`), with a close-match hint
for a misspelt key."""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from typing import Any

from learnpos.config.schema import Config, _owners
from learnpos.errors import ConfigError
from learnpos.files import loads_json


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
    shown = key if key.isprintable() else key.encode("unicode_escape").decode("ascii")  # one line, whatever the key
    return ConfigError(f"unknown config key '{shown}'{hint}; known here: {', '.join(known)}")


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
