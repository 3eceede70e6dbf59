"""The CLI as a user runs it: exit codes, JSON last lines, no tracebacks. The README's first
command runs as a real process; the others through `main` in this process (conftest.run_cli;
process-level behaviour: signals, pipes, locks, is test_robust.py's)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


def learnpos_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "learnpos.cli", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)


learnpos = run_cli


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_demo_as_in_the_readme(tmp_path):
    """`learnpos demo --json`: the README's first command, full length."""
    r = learnpos_process("demo", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = last_json(r.stdout)
    assert res["task"] == "reverse" and res["exact_match"] >= 0.99 and res["wall_s"] < 180
    run = tmp_path / res["run_dir"]
    assert (run / "pos_similarity.png").stat().st_size > 1000 and (run / "checkpoints").is_dir()
    hint = next(line for line in r.stdout.splitlines() if line.startswith("try: learnpos generate"))
    prompt = hint.split('--prompt "')[1].rstrip('"')
    assert len(prompt.split()) == 16  # the suggested prompt has the trained length
    g = learnpos("generate", "--run", res["run_dir"], "--prompt", prompt, cwd=tmp_path)
    assert g.returncode == 0 and g.stdout.split() == prompt.split()[::-1]  # the demo model reverses it
    again = learnpos("demo", "--json", "--quiet", "--train.max_iters=20", "--train.eval_interval=20",
                     "--train.warmup_iters=5", cwd=tmp_path)
    assert again.returncode == 0 and last_json(again.stdout)["run_dir"] == "runs/demo-2"  # never overwrites


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("cli")
    r = learnpos("train", "--preset", "demo", "--train.max_iters=30", "--train.eval_interval=30",
                 "--train.warmup_iters=5", "--train.out_dir=run", "--quiet", "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert last_json(r.stdout)["step"] == 30
    return cwd / "run"


def test_eval_and_generate(small_run):
    r = learnpos("eval", "--run", str(small_run), "--json", cwd=small_run.parent)
    assert r.returncode == 0, r.stderr
    assert set(last_json(r.stdout)) >= {"loss", "exact_match", "token_accuracy"}
    prompt = " ".join(["1"] * 16)
    g = learnpos("generate", "--run", str(small_run), "--prompt", prompt, cwd=small_run.parent)
    assert g.returncode == 0, g.stderr
    assert len(g.stdout.split()) == 16


def test_resume_from_cli(small_run):
    r = learnpos("train", "--resume", str(small_run), "--train.max_iters=40", "--quiet", "--json",
                 cwd=small_run.parent)
    assert r.returncode == 0, r.stderr
    assert last_json(r.stdout)["step"] == 40


@pytest.mark.parametrize("args,message", [
    (["train", "--model.n_embd=30", "--model.n_head=4"], "not divisible by model.n_head"),
    (["train", "--model.n_lyer=3"], "did you mean 'n_layer'"),
    (["train", "--train.lr=fast"], "train.lr must be float"),
    (["train", "--preset", "nope"], "no preset 'nope'"),
    (["train", "stray"], "unexpected argument 'stray'"),
    (["train", "--train.lr"], "needs a value"),
    (["train", "--resume", "missing_dir"], "no config.json"),
    (["eval", "--run", "missing_dir"], "not a run directory"),
    (["train", "--train.device=cuda:0"], "CUDA is not available"),
    (["eval", "--run", "x", "--quiet"], "unknown option --quiet"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    if "cuda" in " ".join(args):
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA present")
    r = learnpos(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1



def test_under_torchrun_a_bad_input_is_reported_once_by_rank_0(tmp_path, monkeypatch, capsys):
    """torchrun starts the CLI once per rank; an error in the input every rank reads alike is
    printed by rank 0 only, one that may be a rank's own (here a missing run directory) by every
    rank with its rank named. Every rank exits 2."""
    from learnpos.cli import main

    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--model.n_lyer=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("learnpos train: error: ") and "did you mean 'n_layer'" in err
    monkeypatch.setenv("RANK", "1")
    assert main(["train", "--model.n_lyer=3"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "1")
    assert main(["eval", "--run", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("learnpos eval (rank 1): error: ") and "not a run directory" in err


def test_generate_bad_prompt_and_too_long_eval(small_run):
    g = learnpos("generate", "--run", str(small_run), "--prompt", "1 2 x", cwd=small_run.parent)
    assert g.returncode == 2 and "space-separated symbols" in g.stderr and "Traceback" not in g.stderr
    e = learnpos("eval", "--run", str(small_run), "--length", "40", cwd=small_run.parent)
    assert e.returncode == 2 and "learned table has 40" in e.stderr and "Traceback" not in e.stderr


def test_config_command_prints_resolved_config(tmp_path):
    r = learnpos("config", "--preset", "index-encoder", "--train.seed=3", cwd=tmp_path)
    assert r.returncode == 0
    cfg = json.loads(r.stdout)
    assert cfg["task"] == "index" and cfg["model"]["causal"] is False and cfg["train"]["seed"] == 3
