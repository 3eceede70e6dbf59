"""Named extra learned tables (`model.tables`): config, model, generation, training, resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from learnpos.config import ModelConfig, PositionalConfig, TableConfig, load_config
from learnpos.errors import ConfigError, PositionOutOfRange
from learnpos.model import GPT
from learnpos.runs import latest_checkpoint
from learnpos.train import train

FAST = {"train.eval_interval": "10", "train.log_interval": "5", "train.warmup_iters": "4"}
V = 20


def model_with_tables(**kw) -> GPT:
    cfg = ModelConfig(vocab_size=V, n_layer=2, n_head=2, n_embd=16,
                      positional=PositionalConfig(kind="learned", max_len=12),
                      tables=[TableConfig(name="turn", rows=4), TableConfig(name="speaker", rows=2)], **kw)
    torch.manual_seed(0)
    return GPT(cfg).eval()


def ids(B=2, T=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, V, (B, T), generator=g),
            {"turn": torch.randint(0, 4, (B, T), generator=g), "speaker": torch.randint(0, 2, (B, T), generator=g)})


def test_tables_are_summed_into_the_embedding():
    model = model_with_tables()
    idx, extra = ids()
    h = model.embed(idx, None, 0, extra)
    T = idx.shape[1]
    expected = (model.tok_emb(idx) + model.pos.weight[:T] + model.tables.turn.weight[extra["turn"]]
                + model.tables.speaker.weight[extra["speaker"]])
    torch.testing.assert_close(h, expected, rtol=0, atol=0)
    names = [n for n, _ in model.named_parameters()]
    assert "tables.turn.weight" in names and "tables.speaker.weight" in names
    assert model.num_params() - model.num_params(include_tables=False) == (12 + 4 + 2) * 16


def test_each_table_checks_its_own_ids_and_names_itself():
    model = model_with_tables()
    idx, extra = ids()
    extra["turn"][0, 3] = 4
    with pytest.raises(PositionOutOfRange, match="turn id 4 is past the learned 'turn' table .rows=4") as e:
        model(idx, extra_ids=extra)
    assert "model.tables.turn.rows" in str(e.value) and "position table" not in str(e.value)
    extra["turn"][0, 3] = -1
    with pytest.raises(PositionOutOfRange, match="'turn' table ids must be >= 0"):
        model(idx, extra_ids=extra)
    with pytest.raises(ValueError, match="extra_ids must hold"):
        model(idx)  # the tables need their ids
    with pytest.raises(PositionOutOfRange, match="past the learned position table"):
        model(torch.zeros(1, 13, dtype=torch.long), extra_ids={k: torch.zeros(1, 13, dtype=torch.long)
                                                               for k in ("turn", "speaker")})


def test_generation_continues_table_ids_like_full_recomputation():
    """Cached greedy decoding with per-row constant and callback ids = the argmax of full
    forwards over the same ids; left-padded rows give what each row gives alone."""
    model = model_with_tables()
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8]]
    turn = [[1, 1, 1, 0, 0], [2, 1, 0]]
    speaker = [[0, 0, 1, 1, 1], [1, 0, 0]]
    nxt = {"turn": [0, 3], "speaker": lambda step, tokens: (tokens[:, -1] % 2)}
    both = model.generate(prompts, 4, temperature=0, extra_ids={"turn": turn, "speaker": speaker},
                          next_extra_ids=nxt)
    for b, prompt in enumerate(prompts):
        seq, t_ids, s_ids = list(prompt), list(turn[b]), list(speaker[b])
        for _ in range(4):
            out = model(torch.tensor([seq]), extra_ids={"turn": torch.tensor([t_ids]),
                                                        "speaker": torch.tensor([s_ids])}).logits
            tok = int(out[0, -1].argmax())
            seq.append(tok)
            t_ids.append(nxt["turn"][b])
            s_ids.append(tok % 2)
        assert both[b] == seq[len(prompt):], b
    with pytest.raises(PositionOutOfRange, match="turn id 9"):
        model.generate(prompts, 2, extra_ids={"turn": turn, "speaker": speaker}, next_extra_ids={"turn": 9})
    with pytest.raises(ValueError, match="pass extra_ids"):
        model.generate(prompts, 2)


def test_config_tables_from_toml_and_overrides(tmp_path):
    cfg = load_config("reverse-tables", {"model.tables.symbol_index.init": "zeros",
                                         "model.tables.segment.weight_decay": "true"})
    assert [t.name for t in cfg.model.tables] == ["segment", "symbol_index"]
    assert cfg.model.tables[1].init == "zeros" and cfg.model.tables[0].weight_decay is True
    with pytest.raises(ConfigError, match="has no entry named 'turn'"):
        load_config("reverse-tables", {"model.tables.turn.rows": "3"})
    with pytest.raises(ConfigError, match="two tables named"):
        load_config("demo", {"model.tables": '[{"name": "segment", "rows": 2}, {"name": "segment", "rows": 2}]'})
    with pytest.raises(ConfigError, match="can fill the tables segment, symbol_index, not 'turn'"):
        load_config("demo", {"model.tables": '[{"name": "turn", "rows": 2}]'})
    with pytest.raises(ConfigError, match="symbol_index.rows=5 is too small"):
        load_config("reverse-tables", {"model.tables.symbol_index.rows": "5"})
    with pytest.raises(ConfigError, match="must be a Python identifier"):
        load_config("demo", {"model.tables": '[{"name": "a b", "rows": 2}]'})


def test_two_tables_train_resume_bit_exactly_and_record_stats(tmp_path):
    over = {**FAST, "train.max_iters": "30", "model.dropout": "0.1"}
    a = train(load_config("reverse-tables", {**over, "train.out_dir": str(tmp_path / "a")}), quiet=True)
    b = load_config("reverse-tables", {**over, "train.out_dir": str(tmp_path / "b")})
    assert train(b, quiet=True, stop_after=15).step == 15
    b = load_config("reverse-tables", {**over, "train.out_dir": str(tmp_path / "b")})
    assert train(b, resume=True, quiet=True).step == 30
    for name in ("model.safetensors", "position_stats.safetensors"):
        wa = load_file(latest_checkpoint(tmp_path / "a") / name)
        wb = load_file(latest_checkpoint(tmp_path / "b") / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    from learnpos.analysis.position_stats import load_position_stats

    stats = load_position_stats(tmp_path / "a")
    assert set(stats) == {"pos", "segment", "symbol_index"}
    # reverse-16 inputs: segment ids 0 and 1 both used; symbol_index 0..16 all used (17 rows)
    assert (stats["segment"]["nonzero_steps"] == 30).all()
    assert (stats["symbol_index"]["nonzero_steps"] == 30).all()
    assert (stats["pos"]["nonzero_steps"][33:] == 0).all()
    torch.testing.assert_close(stats["segment"]["displacement"],
                               (a.model.tables.segment.weight.detach() - stats["segment"]["init"]).norm(dim=1))
    assert (tmp_path / "a/segment_similarity.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "a/config.json").read_text())
    assert [t["name"] for t in saved["model"]["tables"]] == ["segment", "symbol_index"]


def test_reserved_table_names_are_refused():
    import torch.nn as nn

    from learnpos.config import _MODULE_ATTRIBUTES

    public = {a for a in dir(nn.ModuleDict()) if not a.startswith("_")}
    assert public <= _MODULE_ATTRIBUTES  # the config layer's list (it imports no torch) is complete
    for name in ("pos", "position", "type", "keys", "to", "_hidden"):
        with pytest.raises(ConfigError, match="reserved"):
            load_config("demo", {"model.tables": f'[{{"name": "{name}", "rows": 2}}]'})


def test_nan_in_a_config_is_refused():
    with pytest.raises(ConfigError, match="train.lr must be a finite number"):
        load_config("demo", {"train.lr": "nan"})
    with pytest.raises(ConfigError, match="model.positional.init_std must be a finite number"):
        load_config("demo", {"model.positional.init_std": "inf"})


def test_table_ids_of_the_wrong_shape_or_type_name_the_table():
    model = model_with_tables()
    idx, extra = ids()
    for bad, match in ((extra["turn"][:, :1], r"ids of table 'turn' have shape \(2, 1\)"),
                       (extra["turn"][:1, :5], r"ids of table 'turn' have shape \(1, 5\)"),
                       (extra["turn"].float(), "ids of table 'turn' must be integers")):
        with pytest.raises(ValueError, match=match):
            model(idx, extra_ids={**extra, "turn": bad})
    model(idx, extra_ids={**extra, "turn": extra["turn"][:1]})  # (1, T) broadcasts over the batch


def test_training_checks_ids_on_the_host_batch_not_in_the_step(tmp_path, monkeypatch):
    """The trainer range-checks the CPU batch (GPT.check_ids), so the training forward runs
    with check_ids=False: no host sync per table per step, and no graph break under compile."""
    seen = []
    real = GPT.forward

    def spy(self, *args, **kwargs):
        if self.training:
            seen.append(kwargs.get("check_ids", True))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", spy)
    over = {**FAST, "train.max_iters": "6", "train.eval_interval": "6", "train.out_dir": str(tmp_path)}
    train(load_config("reverse-tables", over), quiet=True)
    assert seen == [False] * 6
    from learnpos.tasks import build_task

    cfg = load_config("reverse-tables", {**over, "train.out_dir": str(tmp_path / "x")})
    task = build_task(cfg)
    cfg.model.vocab_size = task.vocab_size
    batch = task.train_batch(0, 2)
    batch.extra_ids["symbol_index"] = batch.extra_ids["symbol_index"] + 1  # 17 is past the 17 rows
    with pytest.raises(PositionOutOfRange, match="symbol_index id 17"):
        GPT(cfg.model).check_ids(batch.position_ids, batch.extra_ids, batch.idx.shape[1])
