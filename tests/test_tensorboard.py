"""--train.tensorboard=true: the event files hold what metrics.jsonl holds, the tables'
gradient norms and similarity heatmaps, read back with TensorBoard's own reader."""

from __future__ import annotations

import json

import pytest

from learnpos.config import load_config
from learnpos.train import train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _read(run_dir):
    acc = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_events_hold_the_metrics_norms_and_heatmaps(tmp_path):
    out = tmp_path / "run"
    cfg = load_config("demo", {"train.out_dir": str(out), "train.max_iters": "20", "train.eval_interval": "10",
                               "train.log_interval": "5", "train.warmup_iters": "2", "train.tensorboard": "true"})
    train(cfg, quiet=True)
    acc = _read(out)
    tags = acc.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm/pos", "val/exact_match", "val/loss"} <= set(tags["scalars"])
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["loss"] for r in records if r["split"] == "train"}
    events = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert events.keys() == logged.keys() and all(abs(events[k] - logged[k]) < 1e-5 for k in logged)
    assert all(e.value > 0 for e in acc.Scalars("train/grad_norm/pos"))
    val = {r["step"]: r["exact_match"] for r in records if r["split"] == "val"}
    got = {e.step: round(e.value, 6) for e in acc.Scalars("val/exact_match")}
    assert got == {k: round(v, 6) for k, v in val.items()}
    images = acc.Images("val/similarity/pos")
    assert [i.step for i in images] == [10, 20] and images[0].width >= 256


def test_a_resumed_run_has_no_doubled_segment(tmp_path):
    out = tmp_path / "run"
    over = {"train.out_dir": str(out), "train.max_iters": "20", "train.eval_interval": "10", "train.log_interval": "5",
            "train.warmup_iters": "2", "train.tensorboard": "true"}
    train(load_config("demo", over), quiet=True, stop_after=14)  # checkpoint at 10, events up to 14
    train(load_config("demo", over), resume=True, quiet=True)  # from step 10: events 15.. replaced
    steps = [e.step for e in _read(out).Scalars("train/loss")]
    assert steps == [5, 10, 15, 20]


def test_tensorboard_missing_is_one_clear_line(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    from learnpos.errors import ConfigError

    cfg = load_config("demo", {"train.out_dir": str(tmp_path / "r"), "train.max_iters": "2",
                               "train.warmup_iters": "0", "train.tensorboard": "true"})
    with pytest.raises(ConfigError, match="pip install 'learnpos\\[tensorboard\\]'"):
        train(cfg, quiet=True)
