"""`learnpos compare`: every variant trained at one budget, evaluated at several lengths with
each extend method named for a learned table past its rows, and an interrupted compare
continuing where it stopped."""

from __future__ import annotations

import csv
import json

import pytest

import learnpos.compare as compare
from learnpos.cli import main as cli_main
from learnpos.config import load_run_config
from learnpos.errors import ConfigError
from learnpos.tasks.synthetic import ReverseTask

FAST = {"train.max_iters": "8", "train.eval_interval": "4", "train.log_interval": "4", "train.warmup_iters": "0",
        "synthetic.length": "4", "synthetic.n_eval": "16", "model.positional.max_len": "12", "model.n_embd": "16",
        "model.n_layer": "1", "model.n_head": "2"}


@pytest.fixture
def calls(monkeypatch):
    seen = []
    real = compare.train

    def counting(cfg, resume=False, **kw):
        seen.append((cfg.train.out_dir, resume))
        return real(cfg, resume=resume, **kw)

    monkeypatch.setattr(compare, "train", counting)
    return seen


def test_compare_names_every_extend_method_and_continues_after_an_interruption(tmp_path, calls):
    out = tmp_path / "cmp"
    variants = ["learned", "learned+randomized", "rope"]
    compare.run_compare("demo", variants, [1, 2], [1, 2], out, FAST, quiet=True)
    assert len(calls) == 6 and not any(resume for _, resume in calls)
    rows = [row for x in (out / "results.jsonl").read_text().splitlines() for row in json.loads(x)["rows"]]
    assert ReverseTask.seq_len(4) <= 12 < ReverseTask.seq_len(8)  # 1x fits the table, 2x does not
    learned_2x = sorted(r["method"] for r in rows if r["variant"] == "learned" and r["length"] == 8)
    assert learned_2x == sorted(["copy-last", "init", "interpolate"] * 2)  # per seed, each method explicitly
    assert {r["method"] for r in rows if r["variant"] != "learned"} == {""}
    randomized = load_run_config(out / "learned-randomized/seed-1/config.json")
    assert randomized.model.positional.randomize and randomized.model.positional.max_len == ReverseTask.seq_len(8)
    md = (out / "results.md").read_text()
    for label in ("learned (copy-last)", "learned (interpolate)", "learned (init)", "learned+randomized", "rope"):
        assert f"| {label} |" in md
    with open(out / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (out / "report.html").exists() and (out / "token_accuracy_by_length.png").exists()

    # interrupted: the rope runs' results were never written, the last line is cut off
    lines = (out / "results.jsonl").read_text().splitlines()
    kept = [x for x in lines if json.loads(x)["variant"] != "rope"]
    (out / "results.jsonl").write_text("\n".join(kept) + '\n{"variant": "ro')
    calls.clear()
    compare.run_compare("demo", variants, [1, 2], [1, 2], out, FAST, quiet=True)
    assert calls == []  # the rope runs had finished training: they are only evaluated again
    again = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]  # every line is whole
    assert [r["variant"] for r in again] == ["learned"] * 2 + ["learned+randomized"] * 2 + ["rope"] * 2
    assert sum(len(r["rows"]) for r in again if r["variant"] == "rope") == 4  # 2 seeds x 2 lengths


def test_new_lengths_are_evaluated_without_training_and_a_failing_run_is_listed(tmp_path, calls):
    out = tmp_path / "cmp"
    variants = ["learned", "learned+randomized"]
    compare.run_compare("demo", variants, [1], [1, 2], out, FAST, quiet=True)
    calls.clear()
    # 3x needs more rows than the randomized table was trained with: that run fails, the others go on
    compare.run_compare("demo", variants, [1], [1, 2, 3], out, FAST, quiet=True)
    assert calls == []
    md = (out / "results.md").read_text()
    assert "- learned+randomized seed 1: " in md and "compare the longer lengths in a new --out" in md
    row = next(line for line in md.splitlines() if line.startswith("| learned (copy-last) |"))
    assert row.count("±") == 2 and "n/a" in row  # 2x and 3x measured; at 1x the table fits (no extend row)
    with pytest.raises(ConfigError, match="differ after rounding"):
        compare.run_compare("demo", variants, [1], [1, 1.1], out, FAST, quiet=True)


def test_an_unfinished_run_resumes(tmp_path, calls):
    from learnpos.train import train

    out = tmp_path / "cmp"
    cfg = compare.variant_config("demo", "learned", 1, out / "learned/seed-1", FAST, None)
    train(cfg, quiet=True, stop_after=4)  # killed half way
    compare.run_compare("demo", ["learned"], [1], [1], out, FAST, quiet=True)
    assert calls == [(str(out / "learned/seed-1"), True)]


def test_a_run_killed_before_its_first_checkpoint_is_trained_again(tmp_path, calls):
    """Killed before any checkpoint, a run leaves config.json and metrics.jsonl: the next
    compare trains it afresh instead of failing on it at every rerun."""
    out = tmp_path / "cmp"
    run = out / "learned/seed-1"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 3.0}\n')
    compare.run_compare("demo", ["learned"], [1], [1], out, FAST, quiet=True)
    assert calls == [(str(run), False)]
    assert len([line for line in (out / "results.jsonl").read_text().splitlines() if line]) == 1


def test_compare_refuses_what_it_cannot_do(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown variant"):
        compare.run_compare("demo", ["learnt"], [1], [1], tmp_path, FAST)
    with pytest.raises(ConfigError, match="task 'kg' has no sequence length to vary"):
        compare.run_compare("kg-nations", ["learned"], [1], [1], tmp_path, {})
    assert cli_main(["compare", "--lengths", "1,x", "--out", str(tmp_path / "c")]) == 2
    assert "argument --lengths: must be a number, got 'x'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="positive factors"):  # NaN passes every `<= 0` check
        compare.run_compare("demo", ["learned"], [1], [1, float("nan")], tmp_path, FAST)
    assert not (tmp_path / "c").exists()


def test_a_rerun_with_other_settings_is_refused_rather_than_mixed(tmp_path, calls):
    out = tmp_path / "cmp"
    compare.run_compare("demo", ["rope"], [1], [1, 2], out, FAST, quiet=True)
    md = (out / "results.md").read_text()
    assert "--synthetic.length=4" in md.splitlines()[0]  # the table says how it was made
    exact = md[md.index("exact_match"):]
    assert "nan" not in exact and "±" in exact
    calls.clear()
    with pytest.raises(ConfigError, match="holds a comparison made with .*model.n_embd=16.* not .*model.n_embd=32"):
        compare.run_compare("demo", ["rope"], [1], [1, 2], out, {**FAST, "model.n_embd": "32"}, quiet=True)
    with pytest.raises(ConfigError, match="holds a comparison made with `--preset demo"):
        compare.run_compare("index-encoder", ["rope"], [1], [1], out, FAST, quiet=True)
    assert calls == []  # nothing trained, nothing appended
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
    compare.run_compare("demo", ["rope"], [1, 2], [1, 2], out, FAST, quiet=True)  # more seeds: same study
    assert len(calls) == 1


def test_each_grown_lm_table_keeps_its_own_loss_by_position_file(tmp_path):
    """An LM run evaluated past its table, once per extend method: each method's per-position
    losses land in their own file (they used to overwrite each other in loss_by_position_64.json),
    and each file's mean is the loss reported in that method's row."""
    (tmp_path / "text.txt").write_text("to be or not to be, that is the question. " * 300, encoding="utf-8")
    lm = {"lm.data": str(tmp_path / "text.txt"), "lm.block_size": "32", "model.positional.max_len": "32",
          "train.max_iters": "6", "train.eval_interval": "6", "train.warmup_iters": "0", "model.n_layer": "1",
          "model.n_embd": "32", "model.n_head": "2"}
    out = tmp_path / "cmp"
    compare.run_compare("shakespeare-char", ["learned"], [1], [2], out, lm, quiet=True)
    rows = json.loads((out / "results.jsonl").read_text().splitlines()[0])["rows"]
    assert sorted(r["method"] for r in rows) == sorted(compare.EXTEND_METHODS)
    run = compare.run_path(out, "learned", 1)
    for r in rows:
        by_pos = json.loads((run / f"loss_by_position_64_{r['method']}.json").read_text())
        # the file keeps 6 decimals: its mean is within 5e-7 of the row, far inside rel=1e-5 of a loss near 3
        assert len(by_pos) == 64 and sum(by_pos) / 64 == pytest.approx(r["loss"], rel=1e-5)
    assert not (run / "loss_by_position_64.json").exists()  # no untagged file a grown copy could have written
    assert len({r["loss"] for r in rows}) == 3  # the methods really are different models


def test_compare_json_is_the_last_line_and_holds_every_run(tmp_path, capsys):
    over = [f"--{k}={v}" for k, v in FAST.items()]
    assert cli_main(["compare", "--variants", "learned,none", "--seeds", "1", "--lengths", "1,2",
                     "--out", str(tmp_path / "c"), "--json", *over]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["variants"] == ["learned", "none"] and record["lengths"] == [1.0, 2.0]
    assert sorted(r["variant"] for r in record["runs"]) == ["learned", "none"]
