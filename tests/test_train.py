"""Training: schedule, exact resume, and science checks that can fail."""

import json

import pytest
import torch
from safetensors.torch import load_file

from learnpos.config import load_config
from learnpos.errors import RunDirError
from learnpos.optim import lr_at, param_groups
from learnpos.runs import checkpoint_dirs, latest_checkpoint
from learnpos.train import train

FAST = {"train.eval_interval": "10", "train.log_interval": "5", "train.warmup_iters": "4"}


def test_lr_schedule_warms_up_then_decays_to_min():
    t = load_config("demo", {"train.warmup_iters": "10", "train.max_iters": "110"}).train
    assert lr_at(0, t) == pytest.approx(t.lr / 10) and lr_at(9, t) == pytest.approx(t.lr)
    assert lr_at(60, t) == pytest.approx((t.lr + t.min_lr) / 2)
    assert lr_at(110, t) == pytest.approx(t.min_lr)
    assert all(lr_at(s, t) >= lr_at(s + 1, t) for s in range(10, 110))


def test_wsd_schedule_holds_then_decays_linearly_over_its_last_share():
    t = load_config("demo", {"train.warmup_iters": "10", "train.max_iters": "110", "train.schedule": "wsd",
                             "train.decay_frac": "0.2"}).train
    assert lr_at(9, t) == pytest.approx(t.lr) and lr_at(10, t) == lr_at(87, t) == t.lr  # held until step 88
    assert lr_at(88, t) == t.lr and lr_at(99, t) == pytest.approx(t.lr + 11 / 22 * (t.min_lr - t.lr))
    assert lr_at(110, t) == pytest.approx(t.min_lr)
    assert all(lr_at(s, t) >= lr_at(s + 1, t) for s in range(10, 110))


def test_the_tables_own_learning_rate_follows_the_schedule(tmp_path):
    """model.positional.lr_scale: the position table's group runs at the schedule's lr times it,
    every other group at the schedule's lr."""
    seen = []
    real = torch.optim.AdamW.step

    def step(self, *a, **kw):
        seen.append({g["name"]: g["lr"] for g in self.param_groups})
        return real(self, *a, **kw)

    cfg = load_config("demo", {"train.max_iters": "12", "train.eval_interval": "12", "train.warmup_iters": "4",
                               "model.positional.lr_scale": "0.25", "train.out_dir": str(tmp_path)})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", step)
        train(cfg, quiet=True)
    assert len(seen) == 12
    for i, lrs in enumerate(seen):
        assert lrs["decay"] == lr_at(i, cfg.train) and lrs["table pos"] == pytest.approx(0.25 * lrs["decay"])


def test_every_learned_table_has_its_own_decay_group():
    """The policy of each table comes from its own config entry, not from its parameter name."""
    from learnpos.model import GPT

    tables = '[{"name": "symbol_index", "rows": 17, "weight_decay": true}, {"name": "segment", "rows": 2}]'
    for decay in (False, True):
        cfg = load_config("demo", {"model.positional.weight_decay": str(decay), "model.tables": tables})
        cfg.model.vocab_size = 20
        model = GPT(cfg.model)
        groups = {g["name"]: g for g in param_groups(model, 0.1)}
        assert groups["table pos"]["params"] == [model.pos.weight]
        assert groups["table pos"]["weight_decay"] == (0.1 if decay else 0.0)
        assert groups["table symbol_index"]["params"] == [model.tables.symbol_index.weight]
        assert groups["table symbol_index"]["weight_decay"] == 0.1 and groups["table segment"]["weight_decay"] == 0.0
        assert groups["no_decay"]["weight_decay"] == 0.0
        grouped = [p for g in groups.values() for p in g["params"]]
        assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))


@pytest.mark.parametrize("randomize,optimizer,offset,ema", [("false", "adamw", "0", "0"), ("true", "adamw", "8", "0.9"),
                                                           ("false", "muon", "0", "0")])
def test_resume_is_bit_exact(tmp_path, randomize, optimizer, offset, ema):
    """Train 2N steps straight; train N, stop, resume to 2N: identical weights and optimizer state
    (Muon's momentum buffers and AdamW's moments alike; with train.ema the average and the
    trained weights)."""
    # dropout, randomized rows and random offsets: the RNG state must resume too; position stats must
    # continue their counts
    over = {**FAST, "train.max_iters": "30", "model.dropout": "0.1", "train.position_stats": "true",
            "model.positional.randomize": randomize, "model.positional.offset": offset, "train.optimizer": optimizer,
            "train.ema": ema}
    a = load_config("demo", {**over, "train.out_dir": str(tmp_path / "a")})
    train(a, quiet=True)
    b = load_config("demo", {**over, "train.out_dir": str(tmp_path / "b")})
    first = train(b, quiet=True, stop_after=15)
    assert first.step == 15
    b = load_config("demo", {**over, "train.out_dir": str(tmp_path / "b")})
    assert train(b, resume=True, quiet=True).step == 30
    for name in ("model.safetensors", "position_stats.safetensors"):
        wa = load_file(latest_checkpoint(tmp_path / "a") / name)
        wb = load_file(latest_checkpoint(tmp_path / "b") / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)
    sa, sb = (torch.load(latest_checkpoint(tmp_path / r) / "trainer_state.pt", weights_only=True) for r in "ab")
    ta, tb = sa.get("train_weights", {}), sb.get("train_weights", {})
    assert ("train_weights" in sa) == (ema != "0") and ta.keys() == tb.keys()
    assert all(torch.equal(w, tb[k]) for k, w in ta.items())
    ma = (tmp_path / "a/metrics.jsonl").read_text().splitlines()
    mb = (tmp_path / "b/metrics.jsonl").read_text().splitlines()
    records = lambda lines, split: [{k: v for k, v in json.loads(x).items() if k != "time_s"}  # noqa: E731
                                    for x in lines if json.loads(x)["split"] == split]
    assert records(ma, "train") == records(mb, "train")
    val_b = records(mb, "val")  # b also evaluated at the stop (step 15)
    assert records(ma, "val") == [r for r in val_b if r["step"] != 15] and len(val_b) == 4


def test_the_weight_average_is_evaluated_and_saved_and_leaves_training_alone(tmp_path):
    """train.ema=D: the trained weights follow the same path as without it (kept in the trainer
    state); model.safetensors and the evaluation hold avg_1 = 0.1 w_0 + 0.9 w_1, then
    avg_2 = d avg_1 + (1 - d) w_2 with d = min(D, 2/11), w_k the weights after k steps."""
    from learnpos.load import build_model
    from learnpos.tasks import build_task

    over = {**FAST, "train.max_iters": "2", "train.warmup_iters": "1", "train.eval_interval": "1"}
    plain = load_config("demo", {**over, "train.out_dir": str(tmp_path / "plain")})
    train(plain, quiet=True)
    w = [None, *(load_file(d / "model.safetensors") for d in checkpoint_dirs(tmp_path / "plain"))]  # steps 1, 2
    torch.manual_seed(plain.train.seed)
    w[0] = {k: v.detach() for k, v in build_model(plain, build_task(plain)).state_dict().items()}
    averaged = load_config("demo", {**over, "train.ema": "0.5", "train.out_dir": str(tmp_path / "avg")})
    result = train(averaged, quiet=True)
    state = torch.load(latest_checkpoint(tmp_path / "avg") / "trainer_state.pt", weights_only=True)
    saved = load_file(latest_checkpoint(tmp_path / "avg") / "model.safetensors")
    d = min(0.5, 2 / 11)
    for k, trained in state["train_weights"].items():
        assert torch.equal(trained, w[2][k]), k  # the average never feeds back into training
        expected = d * (0.1 * w[0][k] + 0.9 * w[1][k]) + (1 - d) * w[2][k]
        torch.testing.assert_close(saved[k], expected, rtol=1e-6, atol=1e-7)  # float32 rounding of two lerps
        assert not torch.equal(saved[k], w[2][k]) or torch.equal(w[1][k], w[2][k])
        assert torch.equal(dict(result.model.named_parameters())[k].detach(), saved[k])


def test_the_weight_average_switched_on_then_off_at_resume_leaves_the_trained_path_alone(tmp_path):
    """train.ema off for 5 steps, on for 5 (the average starts from the checkpoint), off again to
    20: the trained weights end bit-identical to a run without it throughout."""
    over = {**FAST, "train.max_iters": "20", "train.eval_interval": "5"}
    train(load_config("demo", {**over, "train.out_dir": str(tmp_path / "plain")}), quiet=True)
    run = str(tmp_path / "toggled")
    train(load_config("demo", {**over, "train.out_dir": run}), quiet=True, stop_after=5)
    train(load_config("demo", {**over, "train.ema": "0.9", "train.out_dir": run}), resume=True, quiet=True,
          stop_after=5)
    state = torch.load(latest_checkpoint(tmp_path / "toggled") / "trainer_state.pt", weights_only=True)
    averaged = load_file(latest_checkpoint(tmp_path / "toggled") / "model.safetensors")
    assert state["step"] == 10 and any(not torch.equal(averaged[k], w) for k, w in state["train_weights"].items())
    assert train(load_config("demo", {**over, "train.out_dir": run}), resume=True, quiet=True).step == 20
    a, b = (load_file(latest_checkpoint(tmp_path / r) / "model.safetensors") for r in ("plain", "toggled"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_muon_takes_the_block_matrices_and_follows_the_schedule_at_its_own_lr(tmp_path):
    """train.optimizer=muon: Muon's group holds exactly the 2-D weights inside the blocks, AdamW's
    groups the rest (tables included, each with its own decay policy); at every step Muon's lr is
    the schedule's times muon_lr / lr; and the run learns."""
    from learnpos.optim import MuonWithAdamW, build_optimizer, lr_at

    cfg = load_config("demo", {**FAST, "train.max_iters": "40", "train.optimizer": "muon", "train.muon_lr": "0.03",
                               "train.out_dir": str(tmp_path)})
    seen = []
    real_step = MuonWithAdamW.step

    def step(self):
        seen.append({g["name"]: g["lr"] for g in self.param_groups})
        real_step(self)

    result = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MuonWithAdamW, "step", step)
        result = train(cfg, quiet=True)
    model = result.model
    opt = build_optimizer(model, cfg.train)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for p in opt.muon.param_groups[0]["params"]}
    assert muon == {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert adamw == set(names.values()) - muon and "pos.weight" in adamw
    assert [g["name"] for g in opt.param_groups][:2] == ["muon", "decay"]
    for i, lrs in enumerate(seen):
        assert lrs["decay"] == lr_at(i, cfg.train)
        assert lrs["muon"] == pytest.approx(lr_at(i, cfg.train) * 0.03 / cfg.train.lr, rel=1e-12)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["split"] == "train"]
    assert losses[-1] < 0.8 * losses[0]


def test_resume_can_fail_if_state_is_not_restored(tmp_path, monkeypatch):
    """Guard for the test above: resuming the weights without the optimizer state diverges."""
    over = {**FAST, "train.max_iters": "30"}
    a = load_config("demo", {**over, "train.out_dir": str(tmp_path / "a")})
    train(a, quiet=True)
    b = load_config("demo", {**over, "train.out_dir": str(tmp_path / "b")})
    train(b, quiet=True, stop_after=15)
    monkeypatch.setattr(torch.optim.AdamW, "load_state_dict", lambda self, state: None)
    train(b, resume=True, quiet=True)
    wa = load_file(latest_checkpoint(tmp_path / "a") / "model.safetensors")
    wb = load_file(latest_checkpoint(tmp_path / "b") / "model.safetensors")
    assert not all(torch.equal(wa[k], wb[k]) for k in wa)


def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    """Checkpoints carry checksums: a truncated file is detected by name, the previous complete
    checkpoint is used, and with none left the error names the file."""
    over = {**FAST, "train.max_iters": "30", "train.out_dir": str(tmp_path / "b")}
    b = load_config("demo", over)
    train(b, quiet=True, stop_after=15)  # checkpoints at steps 10 and 15
    newest, older = latest_checkpoint(tmp_path / "b"), tmp_path / "b/checkpoints/step-00000010"
    assert newest.name == "step-00000015" and older.is_dir()
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    with caplog.at_level("WARNING"):
        assert latest_checkpoint(tmp_path / "b") == older
    assert "model.safetensors is corrupted or truncated" in caplog.text and "step-00000010" in caplog.text
    assert train(load_config("demo", over), resume=True, quiet=True).step == 30  # resumed from step 10
    for folder in (tmp_path / "b/checkpoints").iterdir():
        (folder / "trainer_state.pt").write_bytes(b"garbage")
    with pytest.raises(RunDirError, match="trainer_state.pt is corrupted or truncated"):
        latest_checkpoint(tmp_path / "b")


def test_existing_run_is_never_overwritten(tmp_path):
    cfg = load_config("demo", {**FAST, "train.max_iters": "5", "train.out_dir": str(tmp_path)})
    train(cfg, quiet=True)
    before = (latest_checkpoint(tmp_path) / "model.safetensors").read_bytes()
    with pytest.raises(RunDirError, match="already holds"):
        train(cfg, quiet=True)
    assert (latest_checkpoint(tmp_path) / "model.safetensors").read_bytes() == before


def test_run_directory_contents(tmp_path):
    cfg = load_config("demo", {**FAST, "train.max_iters": "10", "train.out_dir": str(tmp_path)})
    train(cfg, quiet=True)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "checkpoints", "metrics.jsonl", "pos_similarity.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000010"]  # at most 2 kept
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["vocab_size"] == 20 and saved["model"]["positional"]["kind"] == "learned"
    folder = latest_checkpoint(tmp_path)
    # the demo preset records per-row statistics of its table (for `learnpos inspect`)
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "trainer_state.pt", "manifest.json",
                                                  "position_stats.safetensors"}
    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    assert state["step"] == 10


def test_sgd_step_is_the_seed_formula(tmp_path):
    """With SGD (no momentum, no clipping), one step moves P by exactly -lr * dL/dP."""
    from learnpos.model import GPT
    from learnpos.optim import build_optimizer
    from learnpos.tasks import build_task

    cfg = load_config("demo", {"train.optimizer": "sgd", "train.grad_clip": "0", "train.lr": "0.5"})
    task = build_task(cfg)
    cfg.model.vocab_size = task.vocab_size
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = build_optimizer(model, cfg.train)
    batch = task.train_batch(0, 8)
    model(batch.idx, targets=batch.targets).loss.backward()
    before, grad = model.pos.weight.detach().clone(), model.pos.weight.grad.clone()
    opt.step()
    assert torch.equal(model.pos.weight.detach(), before - 0.5 * grad)
    assert (grad[33:] == 0).all() and torch.equal(model.pos.weight[33:], before[33:])


def _run(tmp_path, name, preset, overrides):
    cfg = load_config(preset, {**overrides, "train.out_dir": str(tmp_path / name)})
    return train(cfg, quiet=True).metrics


@pytest.mark.slow
def test_reverse_learned_table_solves_it(tmp_path):
    """Science check: on reverse (16 symbols) the learned table reaches >= 0.99 exact-match in
    400 steps (the other encodings at this budget: `learnpos compare`, docs/results.md). Slow:
    the default suite checks the same claim at the demo's full length (test_cli.py's
    test_demo_as_in_the_readme)."""
    budget = {"train.max_iters": "400", "train.eval_interval": "400"}
    learned = _run(tmp_path, "learned", "demo", budget)
    assert learned["exact_match"] >= 0.99


def test_index_encoder_none_is_at_chance_learned_solves_it(tmp_path):
    """Without positions the encoder is permutation-equivariant, so it cannot tell which of
    the 8 distinct symbols sits at the queried position: accuracy stays at chance (1/8).
    A positional leak anywhere in the encoder would let it beat chance. The learned run stops
    at the first evaluation that solves it (step 100 here); none then gets the steps learned
    needed, enough for a leak to show: sinusoids in its place reach 0.22 and RoPE 1.0 there."""
    cfg = load_config("index-encoder", {"train.eval_interval": "100", "train.out_dir": str(tmp_path / "learned")})
    solved = train(cfg, quiet=True, on_eval=lambda step, m: m["exact_match"] >= 0.95)
    assert solved.metrics["exact_match"] >= 0.95
    none = _run(tmp_path, "none", "index-encoder", {"model.positional.kind": "none",
                                                    "train.max_iters": str(solved.step),
                                                    "train.eval_interval": str(solved.step)})
    sigma = (0.125 * 0.875 / 512) ** 0.5
    assert abs(none["exact_match"] - 0.125) < 4 * sigma


def test_synthetic_batches_mask_everything_but_the_answer():
    from learnpos.tasks import build_task

    task = build_task(load_config("demo", {"synthetic.length": "4", "model.positional.max_len": "9"}))
    b = task.train_batch(0, 3)
    assert b.idx.shape == (3, 9)
    x = b.idx[:, 1:5]
    assert (b.idx[:, 0] == task.BOS).all() and (b.idx[:, 5] == task.SEP).all()
    assert (b.targets[:, :5] == -100).all()  # inputs and SEP carry no loss
    assert torch.equal(b.targets[:, 5:], x.flip(1))  # answer = reversed input
    assert torch.equal(task.train_batch(0, 3).idx, b.idx) and not torch.equal(task.train_batch(1, 3).idx, b.idx)
    enc = build_task(load_config("index-encoder"))
    e = enc.train_batch(0, 64)
    k = e.idx[:, -1] - enc.Q0
    assert torch.equal(e.targets[:, -1], e.idx[torch.arange(64), k])
    assert all(len(set(row[:-1].tolist())) == 8 for row in e.idx)  # distinct symbols


def test_min_length_draws_one_length_per_step_and_off_changes_nothing():
    from learnpos.errors import ConfigError
    from learnpos.tasks import build_task

    fixed = build_task(load_config("study-copy"))
    varied = build_task(load_config("study-copy", {"synthetic.min_length": "1"}))  # lengths 1..16 (min_length = 1)
    lengths = [varied.train_batch(step, 4).idx.shape[1] for step in range(200)]
    assert {(T - 1) // 2 for T in lengths} == set(range(1, 17))  # copy of n symbols: 2n + 1 tokens
    assert [varied.train_batch(step, 4).idx.shape[1] for step in range(200)] == lengths  # a function of the step
    b = varied.train_batch(7, 4)
    n = (b.idx.shape[1] - 1) // 2
    assert torch.equal(b.targets[:, n + 1:], b.idx[:, 1:n + 1])  # still a copy at the drawn length
    # off: the batches of a fixed-length run are those it had before the option existed
    demo = build_task(load_config("demo", {"task": "copy"}))
    assert all(fixed.train_batch(s, 4).idx.shape[1] == 33 for s in range(20))
    assert torch.equal(demo.train_batch(3, 4).idx, fixed.train_batch(3, 4).idx)
    with pytest.raises(ConfigError, match="min_length must be between 0"):
        load_config("study-copy", {"synthetic.min_length": "17"})


def test_position_stats_record_which_rows_learn(tmp_path):
    from learnpos.analysis.position_stats import load_position_stats

    over = {**FAST, "train.max_iters": "20", "train.position_stats": "true", "train.out_dir": str(tmp_path)}
    result = train(load_config("demo", over), quiet=True)
    s = load_position_stats(tmp_path)["pos"]
    used = 33  # reverse-16 inputs are 33 tokens: rows 0..32 get gradients, 33..39 never
    assert int(s["steps"][0]) == 20
    assert (s["nonzero_steps"][:used] == 20).all() and (s["nonzero_steps"][used:] == 0).all()
    assert (s["grad_norm_mean"][:used] > 0).all() and (s["grad_norm_max"][used:] == 0).all()
    # no weight decay on P (the default): unused rows do not move at all; used rows do
    assert (s["displacement"][used:] == 0).all() and (s["displacement"][:used] > 0).all()
    expected = (result.model.pos.weight.detach() - s["init"]).norm(dim=1)
    torch.testing.assert_close(s["displacement"], expected)


def test_weight_decay_on_p_moves_rows_that_get_no_gradient(tmp_path):
    from learnpos.analysis.position_stats import load_position_stats

    over = {**FAST, "train.max_iters": "20", "train.position_stats": "true", "train.out_dir": str(tmp_path),
            "model.positional.weight_decay": "true"}
    cfg = load_config("demo", over)
    train(cfg, quiet=True)
    s = load_position_stats(tmp_path)["pos"]
    assert (s["nonzero_steps"][33:] == 0).all()
    # AdamW moments of an unused row stay 0, so only the decay acts: P_n = P_0 * prod_t (1 - lr_t * wd)
    from learnpos.optim import lr_at

    shrink = 1.0
    for step in range(20):
        shrink *= 1 - lr_at(step, cfg.train) * cfg.train.weight_decay
    expected = (1 - shrink) * s["init"][33:].norm(dim=1)
    torch.testing.assert_close(s["displacement"][33:], expected, rtol=1e-4, atol=1e-9)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from learnpos.errors import TrainingDiverged
    from learnpos.model import GPT

    cfg = load_config("demo", {**FAST, "train.max_iters": "30", "train.out_dir": str(tmp_path)})
    real_forward = GPT.forward

    def poisoned(self, *args, **kwargs):  # from step 20 on the loss is NaN
        out = real_forward(self, *args, **kwargs)
        if self.training and poisoned.calls >= 20:
            out = out._replace(logits=out.logits * float("nan"))
        poisoned.calls += self.training
        return out

    poisoned.calls = 0
    monkeypatch.setattr(GPT, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 25"):
        train(cfg, quiet=True)
    state = torch.load(latest_checkpoint(tmp_path) / "trainer_state.pt", weights_only=True)
    assert state["step"] == 20  # the last good checkpoint is intact


def test_bf16_autocast_tracks_float32_on_cpu(tmp_path):
    over = {**FAST, "train.max_iters": "60", "train.eval_interval": "60"}
    fp32 = train(load_config("demo", {**over, "train.dtype": "float32", "train.out_dir": str(tmp_path / "a")}),
                 quiet=True)
    bf16 = train(load_config("demo", {**over, "train.dtype": "bfloat16", "train.out_dir": str(tmp_path / "b")}),
                 quiet=True)
    assert fp32.metrics["loss"] < 2.75  # it is learning (chance: ln 16 = 2.77)
    assert bf16.metrics["loss"] == pytest.approx(fp32.metrics["loss"], rel=0.01)
    assert bf16.metrics["loss"] != fp32.metrics["loss"]  # autocast really ran in bf16
    assert bf16.model.pos.weight.dtype == torch.float32  # master weights stay float32


def _eager_and_compiled(tmp_path, dtype: str):
    """Ten demo steps eager and with train.compile=true; returns (eager run, loss lists)."""
    over = {**FAST, "train.max_iters": "10", "train.dtype": dtype}
    eager = train(load_config("demo", {**over, "train.out_dir": str(tmp_path / "e")}), quiet=True)
    compiled = train(load_config("demo", {**over, "train.compile": "true", "train.out_dir": str(tmp_path / "c")}),
                     quiet=True)
    losses = [[json.loads(x)["loss"] for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
              for run in (eager, compiled)]
    return eager, losses


@pytest.mark.slow
def test_torch_compile_matches_eager(tmp_path):
    """train.compile=true: the same losses as eager (float32; Adam amplifies rounding in
    near-zero gradients, so weights are compared through the losses they produce)."""
    eager, (eager_losses, compiled_losses) = _eager_and_compiled(tmp_path, "float32")
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    idx = torch.randint(0, 20, (4, 33))
    torch.testing.assert_close(torch.compile(eager.model)(idx).logits, eager.model(idx).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_torch_compile_trains_in_bf16_on_cpu(tmp_path):
    """train.compile=true with bf16 autocast (the CPU default on AMX machines): eager bf16 takes
    the hand-written matmul attention, the compiled model SDPA; both train to the same losses
    within bf16 accuracy."""
    _, (eager_losses, compiled_losses) = _eager_and_compiled(tmp_path, "bfloat16")
    assert compiled_losses == pytest.approx(eager_losses, rel=2e-2)
