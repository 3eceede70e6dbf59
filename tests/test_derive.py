"""Settings derived from the data (`learnpos train --task T --data PATH`, no preset), the time
budget that bounds a run, and `learnpos tune` (Optuna, SQLite, resumable after kill -9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

import learnpos.tasks  # noqa: F401
from learnpos.cli import main
from learnpos.config import from_dict, load_config
from learnpos.derive import derived_settings
from learnpos.errors import ConfigError
from learnpos.train import train

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_graph(folder: Path, entities: int = 40, relations: int = 4, triples: int = 400, seed: int = 0) -> Path:
    """A graph with structure to learn: relation r links e to (e * (r + 2) + r) mod E."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    heads = rng.integers(0, entities, triples)
    rels = rng.integers(0, relations, triples)
    rows = sorted({(int(h), int(r), int((h * (r + 2) + r) % entities)) for h, r in zip(heads, rels, strict=True)})
    rng.shuffle(rows)
    n = len(rows)
    cuts = {"train": rows[: int(n * 0.8)], "valid": rows[int(n * 0.8): int(n * 0.9)], "test": rows[int(n * 0.9):]}
    for split, part in cuts.items():
        (folder / f"{split}.txt").write_text("".join(f"e{h}\tr{r}\te{t}\n" for h, r, t in part), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    return write_graph(tmp_path_factory.mktemp("kg") / "toygraph")


# ------------------------------------------------------------------------------ derivation


def test_kg_settings_follow_the_graphs_counts(tmp_path):
    small, _, most = derived_settings("kg", str(write_graph(tmp_path / "small", entities=150, relations=2)))
    assert small["kg.queries"] == "reciprocal" and small["kg.targets"] == "query"
    assert small["kg.negatives"] == 0 and small["train.batch_size"] == 256 and small["model.dropout"] == 0.1
    # 4 training triples per relation (< SCARCE): one relation embedding for both directions (coke queries);
    # 80 per entity (> DENSE): more dropout
    scarce, why_scarce, _ = derived_settings("kg", str(write_graph(tmp_path / "scarce", 5, 100, 2000)))
    assert scarce["kg.queries"] == "coke" and scarce["model.dropout"] == 0.2
    assert "queries: coke (4 training triples per relation: scarce" in "\n".join(why_scarce)
    assert small["kg.query_weight"] == scarce["kg.query_weight"] == "uniform"
    # many-to-one: every entity's "r0" is e0, so a triple's head query has ~300 answers (> HEAVY): a query
    # weighs its answer count
    heavy_dir = tmp_path / "heavy"
    heavy_dir.mkdir()
    for split, n in (("train", 300), ("valid", 20), ("test", 20)):
        (heavy_dir / f"{split}.txt").write_text("".join(f"e{i + 1}\tr0\te0\n" for i in range(n)), encoding="utf-8")
    heavy, why_heavy, _ = derived_settings("kg", str(heavy_dir))
    assert heavy["kg.query_weight"] == "answers" and "answer count" in "\n".join(why_heavy)
    # many entities: training scores a sample of them; many queries: bigger batches
    big_dir = tmp_path / "big"
    big_dir.mkdir()
    rng = np.random.default_rng(0)
    lines = "".join(f"e{h}\tr{r}\te{t}\n" for h, r, t in zip(rng.integers(0, 9000, 40000), rng.integers(0, 6, 40000),
                                                               rng.integers(0, 9000, 40000), strict=True))
    for split in ("train", "valid", "test"):
        (big_dir / f"{split}.txt").write_text(lines, encoding="utf-8")
    big, why, big_most = derived_settings("kg", str(big_dir))
    assert big["kg.negatives"] == 4096 and big["train.batch_size"] == 512
    assert "sampled entities" in "\n".join(why)
    assert big_most > most  # at most 150 epochs of the queries: more queries, more steps


def test_lm_picks_characters_for_small_text_and_bpe_for_large(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("To be, or not to be. " * 2000, encoding="utf-8")
    s, why, _ = derived_settings("lm", str(small))
    assert s["lm.tokenizer"] == "char" and s["lm.block_size"] == s["model.positional.max_len"] == 64
    assert s["model.n_embd"] <= 128  # 42,000 tokens: a small model
    large = tmp_path / "large.txt"
    large.write_text(("the quick brown fox jumps over the lazy dog " * 80000), encoding="utf-8")  # 3.5M characters
    s, why, _ = derived_settings("lm", str(large))
    assert s["lm.tokenizer"] == "bpe" and 1024 <= s["lm.bpe_vocab_size"] <= 16384
    from learnpos.derive.sizing import tokenizer_for

    assert tokenizer_for(100_000, 5000) == ("char", 0)  # a Chinese text: thousands of characters, still char
    assert tokenizer_for(100_000, 20000)[0] == "bpe"  # too many distinct characters for one row each


def test_dialogue_settings_from_a_chinese_corpus(tmp_path):
    from test_cjk import chinese_dialogues

    data = chinese_dialogues(tmp_path / "zh")
    s, why, _ = derived_settings("dialogue", str(data))
    assert s["dialogue.tokenizer"] == "char"  # a small corpus
    tables = {t["name"]: t["rows"] for t in json.loads(s["model.tables"])}
    assert tables == {"turn": s["dialogue.max_turns"] + 1, "speaker": 2}
    assert 1 <= s["dialogue.max_turns"] <= 5 and s["dialogue.block_size"] in (32, 64, 128)
    assert "2 speakers" in why[0]


def test_train_without_preset_derives_prints_and_saves(graph, tmp_path, capsys):
    out = tmp_path / "run"
    t0 = time.perf_counter()
    assert main(["train", "--task", "kg", "--data", str(graph), "--train.time_budget=0.5",
                 f"--train.out_dir={out}", "--model.n_embd=64", "--quiet"]) == 0
    wall = time.perf_counter() - t0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["n_embd"] == 64 and cfg["model"]["n_head"] == 8  # the user's key wins, the rest derived
    assert cfg["model"]["mlp"] == "swiglu" and cfg["model"]["mlp_hidden"] == 0  # the inner width follows 64, not 1024
    assert cfg["kg"]["queries"] == "coke" and cfg["train"]["time_budget"] == 0.5  # 29 triples per relation
    assert cfg["kg"]["dataset"] == "toygraph" and cfg["train"]["early_stop_metric"] == "mrr"
    assert wall < 0.5 * 60 + 15  # the probe and the run fit the budget (15 s: interpreter and imports)
    # what was chosen is printed (not with --quiet)
    main(["train", "--task", "kg", "--data", str(graph), "--train.time_budget=0.2",
          f"--train.out_dir={tmp_path / 'run2'}", "--train.max_iters=5", "--train.eval_interval=5"])
    err = capsys.readouterr().err
    assert "settings derived from the data" in err and "distinct queries" in err
    assert "probe" not in err  # the user fixed the steps: nothing to fit


def test_train_without_preset_or_data_says_what_to_give(capsys):
    assert main(["train", "--task", "kg"]) == 2
    assert "give --data PATH" in capsys.readouterr().err


def test_the_schedule_fits_the_budget(graph):
    from learnpos.derive.schedule import Probe, fit

    cfg = load_config("kg-umls", {"kg.data": str(graph)})
    lines = fit(cfg, Probe(setup_s=2, step_s=0.1, eval_s=1, wall_s=5), 600, most_steps=10**6, fixed=set())
    t = cfg.train
    evals = -(-t.max_iters // t.eval_interval)
    planned = 5 + 2 + t.max_iters * 0.1 + evals * 1
    assert 0.8 * 600 <= planned <= 600 and 2 <= evals <= 10 and t.warmup_iters <= 200
    assert "set by the time budget" in lines[1]
    fit(cfg, Probe(setup_s=2, step_s=0.1, eval_s=1, wall_s=5), 600, most_steps=300, fixed=set())
    assert cfg.train.max_iters == 300  # the data's epoch cap binds first


# ----------------------------------------------------------------------------- time budget


def test_time_budget_ends_a_run_early_with_a_checkpoint_and_resume_refuses(graph, tmp_path):
    out = tmp_path / "run"
    cfg = load_config("kg-umls", {"kg.data": str(graph), "kg.dataset": "toy", "train.out_dir": str(out),
                                  "train.max_iters": "100000", "train.eval_interval": "100000",
                                  "model.n_embd": "32", "model.n_head": "2", "train.time_budget": "0.04"})
    t0 = time.perf_counter()
    result = train(cfg, quiet=True)
    assert time.perf_counter() - t0 < 0.04 * 60 + 5 and 0 < result.step < 100000
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["split"] == "val" and records[-1]["step"] == result.step  # evaluated where it stopped
    assert (out / "checkpoints").is_dir()
    with pytest.raises(ConfigError, match="used its train.time_budget of 0.04 minutes"):
        train(cfg, resume=True, quiet=True)
    cfg.train.time_budget = 0.06  # more time: it goes on from its checkpoint
    again = train(cfg, resume=True, quiet=True)
    assert again.step > result.step


def test_time_budget_must_not_be_negative():
    with pytest.raises(ConfigError, match="train.time_budget is in minutes"):
        load_config("demo", {"train.time_budget": "-1"})


# ------------------------------------------------------------------------------------ tune


@pytest.mark.parametrize("task,preset", [("kg", "kg-umls"), ("lm", "shakespeare-char"), ("dialogue", "dailydialog")])
def test_every_search_space_offers_the_optimizer_and_recipe_switches_and_each_value_is_valid(task, preset):
    """Each task's tuning space has train.optimizer (adamw, muon) and the recipe switches, and
    every choice (and each float range's ends) is a config the task accepts."""
    import importlib

    from learnpos.config import set_override, validate

    space = importlib.import_module(f"learnpos.derive.{task}").SPACE
    keys = {p.key for p in space}
    assert {"train.optimizer", "train.muon_lr", "model.qk_norm", "model.zero_init_proj", "train.schedule", "train.ema",
            "model.mlp"} <= keys
    assert ("model.logit_softcap" in keys) == (task != "kg")  # kg scores entities with its own head
    for p in space:
        values = p.choices if p.kind == "choice" else (p.low, p.high) if p.kind != "scale" else ()
        for value in values:
            cfg = load_config(preset)
            set_override(cfg, p.key, str(value).lower() if isinstance(value, bool) else str(value))
            validate(cfg)


def test_toml_preset_round_trips_a_config():
    from learnpos.config import to_toml

    cfg = load_config("dailydialog", {"model.embd_dropout": "0.05"})
    back = from_dict(tomllib.loads(to_toml(cfg.to_dict(), "header")))
    assert back.to_dict() == cfg.to_dict()


def test_tune_writes_a_preset_a_summary_and_a_plot(graph, tmp_path):
    pytest.importorskip("optuna")
    from learnpos.tune import tune

    out = tmp_path / "tune"
    s = tune("kg", str(graph), budget=2.0, trials=3, out=str(out), quiet=True,
             overrides={"train.max_iters": "40", "train.eval_interval": "10", "model.n_embd": "32"})
    assert [r["trial"] for r in s["trials"]] == [0, 1, 2] and s["trials"][0]["baseline"]
    base = s["trials"][0]["params"]
    assert base["train.lr"] == 1e-3 and base["model.dropout"] == 0.1  # trial 0 is the derived config
    assert "model.n_embd" not in base  # a key the user set is fixed, not searched
    configs = [json.loads((out / f"trial-000{i}" / "config.json").read_text()) for i in range(3)]
    assert all(c["model"]["n_embd"] == 32 for c in configs)
    assert len({c["train"]["lr"] for c in configs}) == 3  # the other keys were searched
    assert (out / "trials.png").stat().st_size > 1000 and (out / "summary.md").exists()
    best = s["best"]
    complete = [r["value"] for r in s["trials"] if r["state"] == "complete"]
    assert best["value"] == max(complete)
    cfg = load_config(str(out / "best.toml"))  # what `learnpos train --preset OUT/best.toml` reads
    trial_cfg = json.loads((Path(best["run_dir"]) / "config.json").read_text())
    assert cfg.model.n_embd == trial_cfg["model"]["n_embd"] and cfg.train.lr == trial_cfg["train"]["lr"]
    assert cfg.train.out_dir.endswith("-tuned")
    assert cfg.model.vocab_size == 0 and cfg.train.dtype == "auto"  # as a preset says them, not as a run resolved


def test_tune_searches_the_training_settings_first_then_the_model_and_recipe(graph, tmp_path, monkeypatch):
    """In the first stage of the budget a trial varies only stage-1 keys (the rest are the
    base's, in its config too); later ones vary every key of the space."""
    pytest.importorskip("optuna")
    import learnpos.tune as tuning
    from learnpos.derive.kg import SPACE

    first = {p.key for p in SPACE if p.stage == 1} | {f"{p.key} (x base)" for p in SPACE if p.stage == 1}
    out, over = tmp_path / "tune", {"train.max_iters": "20", "train.eval_interval": "10", "model.n_embd": "32"}
    monkeypatch.setattr(tuning, "FIRST_STAGE", 1.0)  # the whole budget is the first stage
    s = tuning.tune("kg", str(graph), budget=2.0, trials=3, out=str(out), quiet=True, overrides=over)
    assert all(set(r["params"]) <= first for r in s["trials"]) and "train.lr" in s["trials"][1]["params"]
    assert all(5e-4 <= r["params"]["train.lr"] <= 2e-3 for r in s["trials"])  # near the base's 1e-3
    for i in range(3):
        c = json.loads((out / f"trial-000{i}" / "config.json").read_text())
        assert (c["model"]["n_layer"], c["kg"]["queries"], c["train"]["optimizer"]) == (1, "coke", "adamw")
    monkeypatch.setattr(tuning, "FIRST_STAGE", 0.0)  # the same study, resumed, in its second stage
    s = tuning.tune("kg", str(graph), budget=2.0, trials=4, out=str(out), quiet=True, overrides=over)
    assert {"model.n_layer", "kg.queries", "train.optimizer", "train.lr"} <= set(s["trials"][3]["params"])


def test_a_trial_the_studys_end_cuts_short_is_pruned_not_complete(graph, tmp_path):
    """Its early value says how far it got, not how good its settings are: it must not count as a result."""
    pytest.importorskip("optuna")
    from learnpos.tune import tune

    s = tune("kg", str(graph), budget=0.1, trials=1, out=str(tmp_path / "tune"), quiet=True,
             overrides={"train.max_iters": "100000", "train.eval_interval": "10", "model.n_embd": "32"})
    assert [r["state"] for r in s["trials"]] == ["pruned"] and s["best"] is None
    assert "No trial completed" in (tmp_path / "tune" / "summary.md").read_text() and not (tmp_path / "tune" /
                                                                                          "best.toml").exists()


def test_tune_resumes_after_kill_9(graph, tmp_path):
    pytest.importorskip("optuna")
    out = tmp_path / "tune"
    cmd = [sys.executable, "-m", "learnpos", "tune", "--task", "kg", "--data", str(graph), "--budget", "3",
           "--trials", "3", "--out", str(out), "--train.max_iters=400", "--train.eval_interval=20",
           "--model.n_embd=32", "--model.n_layer=1", "--model.mlp=gelu", "--train.batch_size=64",
           "--train.early_stop_patience=0", "--json"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    trial = out / "trial-0001" / "checkpoints"
    while not (trial.exists() and any(trial.iterdir())) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    proc.send_signal(signal.SIGKILL)  # in the middle of trial 1
    proc.wait()
    steps_before = [json.loads(x)["step"] for x in (out / "trial-0001" / "metrics.jsonl").read_text().splitlines()]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming: 1 trial(s) cut short" in r.stderr
    import optuna

    study = optuna.load_study(study_name=f"kg-{graph.name}", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states[1] == "FAIL" and states.count("COMPLETE") + states.count("PRUNED") == 3
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 1)
    assert retry.params == study.trials[1].params and retry.user_attrs["run_dir"].endswith("trial-0001")
    fresh = [t for t in study.trials[2:] if "retry_of" not in t.user_attrs]
    assert fresh and all(t.params != study.trials[1].params for t in fresh)  # not the last session's proposal again
    steps_after = [json.loads(x)["step"] for x in (out / "trial-0001" / "metrics.jsonl").read_text().splitlines()]
    assert steps_after[: len(steps_before)] == steps_before and steps_after[-1] > steps_before[-1]  # continued


# ------------------------------------------------------------------ text and dialogue, derived


def test_derived_chinese_dialogue_trains_evaluates_and_chats(tmp_path, capsys):
    from test_cjk import chinese_dialogues

    data = chinese_dialogues(tmp_path / "zh")
    out = tmp_path / "run"
    assert main(["train", "--task", "dialogue", "--data", str(data), "--train.time_budget=0.25",
                 f"--train.out_dir={out}", "--quiet"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dialogue"]["tokenizer"] == "char" and cfg["train"]["time_budget"] == 0.25
    assert main(["eval", "--run", str(out), "--split", "test", "--json"]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert m["distinct_unit"] in ("characters", "words+characters") and 0 < m["distinct_1"] < 1
    script = tmp_path / "chat.txt"
    script.write_text("你好\n周末有空吗\n/quit\n", encoding="utf-8")
    assert main(["chat", "--run", str(out), "--script", str(script), "--max-new-tokens", "12"]) == 0
    said = capsys.readouterr().out
    assert said.count("> ") >= 4 and "\ufffd" not in said


def test_derived_chinese_text_lm_generates(tmp_path, capsys):
    from test_cjk import PHRASES

    rng = np.random.default_rng(0)
    text = "\n".join("".join(rng.choice(PHRASES, 3)) + "。" for _ in range(600))
    (tmp_path / "zh.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--task", "lm", "--data", str(tmp_path / "zh.txt"), "--train.time_budget=0.2",
                 f"--train.out_dir={out}", "--quiet"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lm"]["tokenizer"] == "char" and cfg["lm"]["block_size"] == cfg["model"]["positional"]["max_len"]
    capsys.readouterr()
    assert main(["generate", "--run", str(out), "--prompt", "今天", "--max-new-tokens", "30", "--seed", "1"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("今天") and "\ufffd" not in said
