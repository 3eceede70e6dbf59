"""Run directories: everything comes from the directory given, checkpoints are one atomic
unit, a cut-off metrics line is repaired, stale files never mix with a new run, and the
precision `auto` chose is kept."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from learnpos.config import load_config
from learnpos.errors import RunDirError
from learnpos.runs import checkpoint_dirs, latest_checkpoint, read_metrics
from learnpos.train import train

FAST = {"train.eval_interval": "10", "train.log_interval": "5", "train.warmup_iters": "4"}


cli = run_cli  # in this process: these tests are about what the commands compute and say


def tiny_lm(tmp_path, name="run"):
    text = "".join(f"line {i}: the quick brown fox {i % 7}\n" for i in range(400))
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    cfg = load_config("shakespeare-char", {
        "lm.data": str(tmp_path / "text.txt"), "train.out_dir": str(tmp_path / name), "train.max_iters": "10",
        "train.eval_interval": "10", "train.warmup_iters": "2", "model.n_layer": "1", "model.n_embd": "32",
        "lm.block_size": "16", "model.positional.max_len": "16", "lm.eval_windows": "20"})
    train(cfg, quiet=True)
    return tmp_path / name


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_eval_of_a_moved_run_reads_only_that_directory_and_writes_only_to_out(tmp_path):
    """The saved train.out_dir is where the run *was*: eval must use the directory it is given
    (its tokenizer), even after the original is gone or replaced by another run; it writes
    nothing into any run, and its loss by position only where --out says."""
    run = tiny_lm(tmp_path)
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved.parent / "run")
    shutil.rmtree(run)
    (tmp_path / "other").mkdir()
    run.mkdir()  # a different run now lives at the old place, with another tokenizer
    (run / "tokenizer.json").write_text(json.dumps({"learnpos_tokenizer": "char", "chars": list("xyz")}))
    before = _snapshot(moved)
    r = cli("eval", "--run", str(moved), "--json", "--out", str(tmp_path / "eval-out"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["loss"] > 0
    by_pos = json.loads((tmp_path / "eval-out" / "loss_by_position.json").read_text())
    assert len(by_pos) == 16 and all(x > 0 for x in by_pos)
    assert _snapshot(moved) == before  # a reader never modifies a run
    assert sorted(p.name for p in run.iterdir()) == ["tokenizer.json"]  # nothing written at the old place


def test_a_checkpoint_is_one_atomic_unit(tmp_path, monkeypatch):
    """A kill in the middle of writing a checkpoint (here: an exception after the weights were
    written, before the optimizer state) leaves the previous checkpoint complete, and the run
    resumes from it to the same result as an uninterrupted one."""
    import learnpos.runs as runs

    over = {**FAST, "train.max_iters": "20"}
    full = train(load_config("demo", {**over, "train.out_dir": str(tmp_path / "full")}), quiet=True)
    cfg = load_config("demo", {**over, "train.out_dir": str(tmp_path / "cut")})
    real = runs.save_trainer_state

    def dies_at_step_20(path, optimizer, step, *rest):
        if step == 20:
            raise KeyboardInterrupt("killed while saving")
        real(path, optimizer, step, *rest)

    monkeypatch.setattr("learnpos.train.save_trainer_state", dies_at_step_20)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, quiet=True)
    monkeypatch.undo()
    assert [p.name for p in checkpoint_dirs(tmp_path / "cut")] == ["step-00000010"]
    assert not [p for p in (tmp_path / "cut/checkpoints").iterdir() if p.name.startswith(".")]
    assert latest_checkpoint(tmp_path / "cut").name == "step-00000010"
    resumed = train(load_config("demo", {**over, "train.out_dir": str(tmp_path / "cut")}), resume=True, quiet=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cut_off_metrics_line_is_repaired_on_resume(tmp_path, caplog):
    over = {**FAST, "train.max_iters": "20", "train.out_dir": str(tmp_path)}
    train(load_config("demo", over), quiet=True, stop_after=10)
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 15, "split": "tra')  # killed mid-append
    with caplog.at_level("WARNING"):
        assert train(load_config("demo", over), resume=True, quiet=True).step == 20
    assert "cut-off last line" in caplog.text
    records = read_metrics(tmp_path)  # every line parses
    assert [r["step"] for r in records if r["split"] == "val"] == [10, 20]
    damaged = tmp_path / "metrics.jsonl"
    lines = damaged.read_text().splitlines()
    damaged.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    with pytest.raises(RunDirError, match="metrics.jsonl line 2 is not JSON"):
        read_metrics(tmp_path)


def test_fresh_train_refuses_a_directory_with_stale_files(tmp_path):
    stale = tmp_path / "run"
    stale.mkdir()
    (stale / "metrics.jsonl").write_text('{"step": 5, "split": "train", "loss": 9.0}\n')
    (stale / "tokenizer.json").write_text("{}")
    r = cli("train", "--preset", "demo", f"--train.out_dir={stale}", "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "is not empty" in r.stderr and "Traceback" not in r.stderr
    assert (stale / "metrics.jsonl").read_text().count("\n") == 1  # untouched
    d = cli("demo", "--quiet", "--out", str(stale), "--json", "--train.max_iters=10", "--train.warmup_iters=2",
            cwd=tmp_path)  # demo picks a fresh folder
    assert d.returncode == 0, d.stderr
    assert json.loads(d.stdout.strip().splitlines()[-1])["run_dir"] == str(tmp_path / "run-2")


def test_auto_precision_is_recorded_and_kept_on_resume(tmp_path, monkeypatch):
    from learnpos import hardware

    over = {**FAST, "train.max_iters": "20", "train.out_dir": str(tmp_path), "train.dtype": "auto"}
    monkeypatch.setattr(hardware, "cpu_has_amx_bf16", lambda: True)  # as on an AMX machine
    train(load_config("demo", over), quiet=True, stop_after=10)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"]["dtype"] == "bfloat16"
    monkeypatch.setattr(hardware, "cpu_has_amx_bf16", lambda: False)  # resumed on another machine
    r = cli("train", "--resume", str(tmp_path), "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "config.json").read_text())["train"]["dtype"] == "bfloat16"


def test_resume_refuses_changes_outside_train(tmp_path):
    over = {**FAST, "train.max_iters": "20", "train.out_dir": str(tmp_path)}
    train(load_config("demo", over), quiet=True, stop_after=10)
    r = cli("train", "--resume", str(tmp_path), "--synthetic.n_symbols=12", "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "synthetic.n_symbols differ" in r.stderr, r.stderr
    r = cli("train", "--resume", str(tmp_path), "--train.max_iters=30", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def runs_by_kind(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    out = {}
    for task, kind in (("index", "learned"), ("copy", "sinusoidal"), ("copy", "learned")):
        over = {**FAST, "train.max_iters": "10", "train.out_dir": str(root / f"{task}-{kind}"),
                "model.positional.kind": kind, "synthetic.length": "8", "model.positional.max_len": "20"}
        train(load_config("demo", {"task": task, **over}), quiet=True)
        out[task, kind] = root / f"{task}-{kind}"
    return out


def test_eval_at_another_length(runs_by_kind, tmp_path):
    r = cli("eval", "--run", str(runs_by_kind["index", "learned"]), "--length", "12", cwd=tmp_path)
    assert r.returncode == 2 and "query tokens for positions 0..7" in r.stderr and "Traceback" not in r.stderr
    r = cli("eval", "--run", str(runs_by_kind["index", "learned"]), "--length", "6", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # shorter works: its query tokens exist
    r = cli("eval", "--run", str(runs_by_kind["copy", "sinusoidal"]), "--length", "32", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # no table limit: runs at 4x the training length
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0 <= m["token_accuracy"] <= 1
    r = cli("eval", "--run", str(runs_by_kind["copy", "learned"]), "--length", "16", cwd=tmp_path)
    assert r.returncode == 2 and "learned table has 20" in r.stderr and "at most length 9" in r.stderr


def test_generate_checks_the_length_before_printing(tmp_path):
    run = tiny_lm(tmp_path)
    r = cli("generate", "--run", str(run), "--prompt", "line", "--max-new-tokens", "40", cwd=tmp_path)
    assert r.returncode == 2 and "pass --sliding" in r.stderr
    assert r.stdout == ""  # nothing printed before the error


def test_generate_on_a_synthetic_run_refuses_another_length(runs_by_kind, tmp_path):
    r = cli("generate", "--run", str(runs_by_kind["copy", "learned"]), "--prompt", "1 2 3", cwd=tmp_path)
    assert r.returncode == 2 and "trained on 8 symbols" in r.stderr and r.stdout == ""


def test_only_the_newest_two_checkpoints_are_kept(tmp_path):
    """Older checkpoints are removed, and a checkpoint write leaves no temp or trash folder."""
    train(load_config("demo", {**FAST, "train.max_iters": "30", "train.out_dir": str(tmp_path)}), quiet=True)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-00000020", "step-00000030"]


def test_resume_trains_with_the_configs_optimizer_settings(tmp_path):
    """load_state_dict would bring back the checkpoint's weight decay and betas; the resumed
    run must use what its (changed) config.json says, and refuse a switch of optimizer."""
    over = {**FAST, "train.max_iters": "20", "train.out_dir": str(tmp_path)}
    train(load_config("demo", over), quiet=True, stop_after=10)
    result = train(load_config("demo", {**over, "train.weight_decay": "0.0", "train.beta2": "0.95"}),
                   resume=True, quiet=True)
    state = torch.load(latest_checkpoint(tmp_path) / "trainer_state.pt", weights_only=True)
    groups = {g["name"]: g for g in state["optimizer"]["param_groups"]}
    assert groups["decay"]["weight_decay"] == 0.0 and groups["decay"]["betas"] == (0.9, 0.95)
    assert result.step == 20
    with pytest.raises(RunDirError, match="train.optimizer=sgd"):
        train(load_config("demo", {**over, "train.optimizer": "sgd", "train.max_iters": "30"}), resume=True,
              quiet=True)


def test_resume_without_a_checkpoint(tmp_path):
    """A run killed before its first checkpoint was complete starts again at step 0; a run
    whose checkpoints are gone, or one in the old layout, is refused instead of silently
    restarted."""
    over = {**FAST, "train.max_iters": "30", "train.out_dir": str(tmp_path)}
    train(load_config("demo", over), quiet=True, stop_after=10)
    shutil.rmtree(tmp_path / "checkpoints")  # as if killed writing the first one: the log stops at step 10
    assert train(load_config("demo", over), resume=True, quiet=True, stop_after=20).step == 20
    assert [r["step"] for r in read_metrics(tmp_path) if r["split"] == "val"] == [10, 20]
    shutil.rmtree(tmp_path / "checkpoints")  # now the log is past the first checkpoint
    with pytest.raises(RunDirError, match="records training steps but no checkpoint"):
        train(load_config("demo", over), resume=True, quiet=True)
    assert (tmp_path / "metrics.jsonl").read_text()  # nothing was thrown away
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "model.safetensors").write_bytes(b"old layout")
    with pytest.raises(RunDirError, match="made by an older learnpos"):
        train(load_config("demo", over), resume=True, quiet=True)
    (tmp_path / "model.safetensors").unlink()
    assert train(load_config("demo", over), resume=True, quiet=True).step == 30  # killed before step 10: redo


def test_a_fresh_run_that_fails_early_leaves_nothing_behind(tmp_path):
    (tmp_path / "short.txt").write_text("too short\n", encoding="utf-8")
    r = cli("train", "--preset", "shakespeare-char", "--data", "short.txt", "--train.out_dir=run", "--quiet",
            cwd=tmp_path)
    assert r.returncode == 2 and "not more than lm.block_size" in r.stderr
    assert not (tmp_path / "run").exists()  # the tokenizer it had written is gone: the command can run again


def test_a_missing_tokenizer_is_an_error_not_a_new_one(tmp_path):
    run = tiny_lm(tmp_path)
    (run / "tokenizer.json").unlink()
    r = cli("eval", "--run", str(run), cwd=tmp_path)
    assert r.returncode == 2 and "tokenizer.json is missing" in r.stderr
    assert not (run / "tokenizer.json").exists()


def test_what_a_run_keeps_is_made_once_then_loaded_and_never_remade_for_a_trained_run(tmp_path):
    """runs.kept_with_run: how LM and dialogue runs keep their tokenizer and speaker names."""
    from learnpos.runs import kept_with_run

    made = []

    def keep(run_dir, value):
        return kept_with_run(run_dir, "names.json", "name ids", lambda f: json.loads(f.read_text()),
                             lambda: made.append(value) or value, lambda v, f: f.write_text(json.dumps(v)))

    assert keep(tmp_path / "new", ["a", "b"]) == ["a", "b"] and made == [["a", "b"]]
    assert keep(tmp_path / "new", ["other"]) == ["a", "b"] and made == [["a", "b"]]  # loaded, not remade
    run = tiny_lm(tmp_path)
    with pytest.raises(RunDirError, match="names.json is missing .* its name ids mean nothing"):
        keep(run, ["guess"])
    assert made == [["a", "b"]] and not (run / "names.json").exists()


def test_a_padded_vocabulary_never_samples_ids_the_tokenizer_lacks(tmp_path):
    from learnpos.load import load_run

    text = "".join(f"line {i}: the quick brown fox {i % 7}\n" for i in range(400))
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    cfg = load_config("shakespeare-char", {
        "lm.data": str(tmp_path / "text.txt"), "train.out_dir": str(tmp_path / "run"), "train.max_iters": "4",
        "train.eval_interval": "4", "train.warmup_iters": "2", "model.n_layer": "1", "model.n_embd": "32",
        "lm.block_size": "16", "model.positional.max_len": "16", "lm.eval_windows": "5", "model.vocab_size": "64"})
    train(cfg, quiet=True)
    model, cfg, task = load_run(tmp_path / "run")
    assert model.config.vocab_size == 64 > task.tokenizer.vocab_size
    with torch.no_grad():  # make the padded ids the most likely ones
        model.tok_emb.weight[task.tokenizer.vocab_size:] = 10 * model.ln_f.weight.sign()
    text = task.respond(model, "line", generator=torch.Generator().manual_seed(0), temperature=1.0)
    assert text.startswith("line") and len(text) == 16 + 1


def test_metrics_lines_must_be_objects(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(RunDirError, match="line 2 is not a JSON object"):
        read_metrics(tmp_path)


def test_early_stopping_keeps_the_best_weights_and_resumes_its_count(tmp_path):
    """Stop after `patience` evaluations without improvement; the best evaluation's weights
    are in best/ and are what load_run gives; a resumed run continues the count from its log."""
    from safetensors.torch import load_file

    from learnpos.load import load_run

    over = {**FAST, "train.max_iters": "100", "train.lr": "1e-6", "train.min_lr": "1e-7",
            "train.early_stop_metric": "exact_match", "train.early_stop_patience": "2"}
    a = train(load_config("demo", {**over, "train.out_dir": str(tmp_path / "a")}), quiet=True)
    assert a.step == 30  # evals at 10 (best: exact-match 0), 20, 30 without improvement: stop
    assert [p.name for p in (tmp_path / "a/best").iterdir()] == ["step-00000010"]
    model, _, _ = load_run(tmp_path / "a")
    best = load_file(tmp_path / "a/best/step-00000010/model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())
    assert not all(torch.equal(a.model.state_dict()[k], v) for k, v in best.items())  # not the last weights
    b = load_config("demo", {**over, "train.out_dir": str(tmp_path / "b")})
    train(b, quiet=True, stop_after=20)
    assert train(load_config("demo", {**over, "train.out_dir": str(tmp_path / "b")}), resume=True,
                 quiet=True).step == 30
    with pytest.raises(Exception, match="early_stop_metric='mrr' is not a metric of task 'reverse'"):
        train(load_config("demo", {**over, "train.early_stop_metric": "mrr", "train.out_dir": str(tmp_path / "c")}),
              quiet=True)
