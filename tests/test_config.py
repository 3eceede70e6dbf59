"""Config: presets, typed overrides, and clear errors for impossible settings."""

import json

import pytest

import learnpos.tasks  # noqa: F401  (registers the task sections; config itself imports no task)
from learnpos.config import Config, from_dict, list_presets, load_config, set_override
from learnpos.errors import ConfigError


def test_every_preset_loads_and_validates():
    assert {"demo", "index-encoder"} <= set(list_presets())
    for name in list_presets():
        assert isinstance(load_config(name), Config)


def test_overrides_are_typed():
    cfg = load_config("demo", {"model.n_layer": "3", "train.lr": "1e-2", "model.positional.weight_decay": "true",
                               "model.positional.kind": "rope", "task": "copy"})
    assert cfg.model.n_layer == 3 and cfg.train.lr == 1e-2 and cfg.model.positional.weight_decay is True
    assert cfg.model.positional.kind == "rope" and cfg.task == "copy"


@pytest.mark.parametrize("key,value,match", [
    ("model.n_lyer", "3", "did you mean 'n_layer'"),
    ("modle.n_layer", "3", "unknown config key 'modle'"),
    ("model.n_layer", "three", "model.n_layer must be int"),
    ("train.lr", "fast", "train.lr must be float"),
    ("model.bias", "maybe", "model.bias must be bool"),
    ("model", "3", "is a section"),
    ("model.n_layer.x", "3", "is a value, not a section"),
])
def test_bad_override_messages(key, value, match):
    with pytest.raises(ConfigError, match=match):
        set_override(Config(), key, value)


@pytest.mark.parametrize("overrides,match", [
    ({"model.n_embd": "30", "model.n_head": "4"}, "not divisible"),
    ({"model.positional.kind": "learnt"}, "is not one of"),
    ({"model.positional.max_len": "20"}, "max_len=20 is shorter than the 33 positions"),
    ({"task": "translate"}, "task='translate'"),
    ({"train.warmup_iters": "5000"}, "warmup_iters"),
    ({"train.min_lr": "1"}, "min_lr"),
    ({"model.causal": "false"}, "needs a decoder"),
    ({"task": "index", "synthetic.length": "20", "model.positional.max_len": "64"}, "distinct symbols"),
    ({"train.device": "tpu"}, "train.device"),
    ({"model.n_head": "0"}, "must be positive"),
    ({"model.positional.kind": "rope", "model.positional.offset": "4"}, "offset.*kind='rope'"),
    ({"model.positional.offset": "-1"}, "offset.*>= 0"),
    ({"synthetic.positions": "absolute"}, "synthetic.positions"),
    ({"task": "index", "synthetic.positions": "task"}, "defines no position ids of its own"),
    ({"train.ema": "1"}, r"train.ema .* must be in \[0, 1\)"),
])
def test_impossible_configs_are_rejected(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("demo", overrides)


def test_round_trip_through_json():
    cfg = load_config("index-encoder", {"train.seed": "7"})
    again = from_dict(json.loads(cfg.to_json()))
    assert again == cfg


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="known presets: .*demo"):
        load_config("nope")


def test_an_unknown_key_with_a_newline_is_named_on_one_line():
    """A key read from a damaged config.json may hold any character; the error stays one line."""
    with pytest.raises(ConfigError) as e:
        from_dict({"task": "reverse", "model": {"n_layer\n2": 3}})
    assert "\n" not in str(e.value) and "n_layer\\n2" in str(e.value)
