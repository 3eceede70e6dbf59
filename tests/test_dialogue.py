"""Dialogue: DailyDialog and JSONL loading, (history, response) examples cut at whole turns,
the four positional schemes' ids, response-only loss, metrics, generation that continues the
layout, and `learnpos chat` end to end through a pseudo-terminal."""

from __future__ import annotations

import io
import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import learnpos.tasks  # noqa: F401
from learnpos.chat import ChatSession, run_chat
from learnpos.config import load_config
from learnpos.data.dialogue import load_dialogues
from learnpos.errors import ConfigError, DataError
from learnpos.load import build_model, load_run
from learnpos.model import IGNORE_INDEX, cross_entropy
from learnpos.tasks import build_task
from learnpos.train import train

WORDS = "hello hi how are you fine thanks what do for a living I teach music nice see later bye".split()
TABLES = {"token": [], "token+speaker": [{"name": "speaker", "rows": 2}],
          "token+turn+speaker": [{"name": "turn", "rows": 5}, {"name": "speaker", "rows": 2}],
          "utterance+turn+speaker": [{"name": "turn", "rows": 5}, {"name": "speaker", "rows": 2}]}


def write_jsonl(folder: Path, n: int = 30, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("valid", 6), ("test", 6)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(count):
                turns = [{"speaker": ("user", "bot")[k % 2],
                          "text": " ".join(rng.choice(WORDS, size=int(rng.integers(1, 7))))}
                         for k in range(int(rng.integers(2, 7)))]
                f.write(json.dumps({"turns": turns}) + "\n")
    return folder


def config(data: Path, out: Path, scheme: str = "token+turn+speaker", **over) -> object:
    o = {"dialogue.data": str(data), "train.out_dir": str(out), "dialogue.positions": scheme,
         "model.tables": json.dumps(TABLES[scheme]), "dialogue.tokenizer": "char", "dialogue.block_size": "40",
         "dialogue.max_turns": "4", "model.positional.max_len": "40", "model.n_layer": "1", "model.n_embd": "32",
         "model.n_head": "2", "train.max_iters": "4", "train.warmup_iters": "0", "train.eval_interval": "4",
         "train.batch_size": "4", "dialogue.distinct_samples": "4", **{k: str(v) for k, v in over.items()}}
    return load_config("dailydialog", o)


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("dlg") / "data")


# ----------------------------------------------------------------------------- loading


def test_dailydialog_plain_and_zip_read_the_same_and_speakers_alternate(tmp_path):
    lines = {"train": "Hi , you . __eou__ Hello ! __eou__ Bye . __eou__\nA __eou__ B __eou__\n",
             "validation": "One __eou__ Two __eou__\n", "test": "Three __eou__ Four __eou__\n"}
    plain, zipped = tmp_path / "plain", tmp_path / "zipped"
    for split, text in lines.items():
        (plain / split).mkdir(parents=True)
        (plain / split / f"dialogues_{split}.txt").write_text(text, encoding="utf-8")
        zipped.mkdir(exist_ok=True)
        with zipfile.ZipFile(zipped / f"{split}.zip", "w") as z:
            z.writestr(f"{split}/dialogues_{split}.txt", text)
    a, b = load_dialogues(plain), load_dialogues(zipped)
    assert a.splits == b.splits and a.speakers == ["A", "B"]
    assert [(t.speaker, t.text) for t in a.splits["train"][0]] == [(0, "Hi , you ."), (1, "Hello !"), (0, "Bye .")]
    assert a.counts == {"train": 5, "valid": 2, "test": 2}


@pytest.mark.parametrize("text, message", [
    ("Hi __eou__ there\n", "line 1: text after the last __eou__"),
    ("ok __eou__\nHi __eou__  __eou__\n", "line 2: utterance 2 is empty"),
])
def test_dailydialog_malformed_lines_name_file_and_line(tmp_path, text, message):
    for split in ("train", "validation", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / f"dialogues_{split}.txt").write_text(text if split == "train" else "a __eou__\n")
    with pytest.raises(DataError, match=message) as e:
        load_dialogues(tmp_path)
    assert "dialogues_train.txt" in str(e.value)


def test_truncated_zip_is_a_clear_error(tmp_path):
    (tmp_path / "train.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        load_dialogues(tmp_path)


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: not JSON"),
    ('{"turns": []}', "line 2: the dialogue has no turns"),
    ('{"turns": [{"speaker": "user"}]}', "line 2: turn 1 has no text"),
    ('{"turns": [{"text": "hi"}]}', "line 2: turn 1 has no speaker"),
    ('{"dialogue": 1}', "line 2: expected"),
])
def test_jsonl_malformed_lines_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"turns": [{"speaker": "u", "text": "hi"}, {"speaker": "b", "text": "yo"}]})
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.jsonl").write_text(good + "\n" + (line if split == "train" else good) + "\n")
    with pytest.raises(DataError, match=message) as e:
        load_dialogues(tmp_path)
    assert "train.jsonl" in str(e.value)


def test_jsonl_speakers_are_ids_in_order_and_unseen_ones_are_refused(tmp_path):
    t = lambda *ss: json.dumps({"turns": [{"speaker": s, "text": "x"} for s in ss]})  # noqa: E731
    (tmp_path / "train.jsonl").write_text(t("ann", "bob", "cy") + "\n" + t("bob", "ann") + "\n")
    (tmp_path / "valid.jsonl").write_text(t("cy", "ann") + "\n")
    (tmp_path / "test.jsonl").write_text(t("dee", "ann") + "\n")
    with pytest.raises(DataError, match="test.jsonl line 1: speaker 'dee' never speaks in the training split"):
        load_dialogues(tmp_path)
    (tmp_path / "test.jsonl").write_text(t("bob") + "\n")
    d = load_dialogues(tmp_path)
    assert d.speakers == ["ann", "bob", "cy"] and [x.speaker for x in d.splits["train"][1]] == [1, 0]


# ---------------------------------------------------------------------------- examples


@pytest.mark.parametrize("scheme", list(TABLES))
def test_examples_keep_whole_turns_and_the_ids_of_each_scheme(jsonl, tmp_path, scheme):
    task = build_task(config(jsonl, tmp_path / "run", scheme))
    ex, data = task.examples("train"), task.data.split("train")
    EOU = task.EOU
    by_text = {t.text for d in data for t in d}
    for i in range(len(ex)):
        s = slice(ex.starts[i], ex.starts[i + 1])
        toks, pos, spk, turn = (a[s] for a in (ex.tokens, ex.positions, ex.speakers, ex.turns))
        assert len(toks) <= task.dlg.block_size + 1 and toks[-1] == EOU
        ends = np.flatnonzero(toks == EOU)
        n = len(ends)
        assert 2 <= n <= task.dlg.max_turns + 1
        begin = 0
        for k, end in enumerate(ends):  # every utterance whole, one turn id and one speaker each
            utt = toks[begin:end]
            assert task.tokenizer.decode(utt.tolist()) in by_text
            assert set(turn[begin:end + 1]) == {n - 1 - k} and len(set(spk[begin:end + 1])) == 1
            expect = np.arange(end + 1 - begin) if task.restart else np.arange(begin, end + 1)
            assert (pos[begin:end + 1] == expect).all()
            begin = end + 1
        assert ex.context[i] == ends[-2] + 1  # the response starts after the last history EOU
    b = task.train_batch(0, 4)
    assert set(b.extra_ids) == set(TABLES[scheme][i]["name"] for i in range(len(TABLES[scheme])))
    assert (b.position_ids is not None) == task.restart


def _fixed_turns(tmp_path, text_of, n_turns: int) -> Path:
    (tmp_path / "d").mkdir(exist_ok=True)
    for split in ("train", "valid", "test"):
        turns = [{"speaker": ("u", "b")[k % 2], "text": text_of(k)} for k in range(n_turns)]
        (tmp_path / "d" / f"{split}.jsonl").write_text(json.dumps({"turns": turns}) + "\n")
    return tmp_path / "d"


@pytest.mark.parametrize("block, kept", [(33, 1), (32, 0), (50, 2)])
def test_history_is_cut_from_the_left_at_whole_turns_at_the_boundary(tmp_path, block, kept):
    """Utterances of 16 characters + EOU = 17 tokens: with the response, one history turn is
    34 tokens, which fits block_size 33 (33 inputs + the last target) but not 32; two are 51."""
    data = _fixed_turns(tmp_path, lambda k: f"{k} word word word", 6)
    over = {"dialogue.block_size": block, "model.positional.max_len": 64}
    task = build_task(config(data, tmp_path / "run", "token+turn+speaker", **over))
    if kept == 0:
        with pytest.raises(DataError, match="no train example fits dialogue.block_size=32"):
            task.examples("train")
        return
    ex = task.examples("train")
    last = slice(ex.starts[-2], ex.starts[-1])  # the response "5 word word word" and its history
    text = task.tokenizer.decode([t for t in ex.tokens[last].tolist() if t != task.EOU])
    assert ex.starts[-1] - ex.starts[-2] == 17 * (kept + 1)
    assert text == "".join(f"{k} word word word" for k in range(5 - kept, 6))


def test_max_turns_caps_the_history_in_training_and_in_chat(tmp_path):
    data = _fixed_turns(tmp_path, lambda k: f"t{k}", 7)
    over = {"dialogue.max_turns": 2, "model.tables": json.dumps([{"name": "turn", "rows": 3},
                                                                  {"name": "speaker", "rows": 2}])}
    task = build_task(config(data, tmp_path / "run", "token+turn+speaker", **over))
    ex = task.examples("train")
    last = slice(ex.starts[-2], ex.starts[-1])
    assert sorted(set(ex.turns[last].tolist())) == [0, 1, 2]  # two history turns and the response
    assert (ex.tokens[last] == task.EOU).sum() == 3
    from learnpos.data.dialogue import Turn

    layout, start = task.fit_history([Turn(k % 2, f"t{k}") for k in range(5)], reply_room=4)
    assert start == 3 and sorted(set(layout[3])) == [1, 2]  # the reply to come is turn 0


def test_loss_covers_the_response_and_its_end_only(jsonl, tmp_path):
    task = build_task(config(jsonl, tmp_path / "run"))
    ex = task.examples("train")
    b = task.train_batch(0, 4)
    picks = task.epochs.order(0, len(ex))[:4]
    for row, i in enumerate(picks):
        s, c, n = ex.starts[i], ex.context[i], ex.starts[i + 1] - ex.starts[i]
        t = b.targets[row]
        assert (t[:c - 1] == IGNORE_INDEX).all() and (t[n - 1:] == IGNORE_INDEX).all()
        assert t[c - 1:n - 1].tolist() == ex.tokens[s + c:s + n].tolist()  # response tokens, then EOU
        assert b.idx[row, :n - 1].tolist() == ex.tokens[s:s + n - 1].tolist()


def test_response_only_head_gives_the_full_logits_loss_and_gradients(jsonl, tmp_path):
    cfg = config(jsonl, tmp_path / "run")
    task = build_task(cfg)
    cfg.model.vocab_size = task.vocab_size
    torch.manual_seed(0)
    model = build_model(cfg, task).double().eval()  # no dropout: both losses see one network
    b = task.train_batch(0, 4)
    assert (b.targets == IGNORE_INDEX).any()  # history and padding positions the head may skip
    grads = []
    for loss_fn in (lambda: task.loss(model, b),
                    lambda: cross_entropy(model(b.idx, **b.model_inputs()).logits, b.targets)):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (mine, g_mine), (full, g_full) = grads
    # float64: both sides are the same sum in another order, so they agree to rounding (~1e-15)
    assert torch.allclose(mine, full, rtol=1e-12, atol=0)
    assert all(torch.allclose(a, c, rtol=1e-9, atol=1e-14) for a, c in zip(g_mine, g_full, strict=True))


def test_scheme_table_mismatches_are_config_errors(jsonl, tmp_path):
    with pytest.raises(ConfigError, match="needs a named table 'turn'"):
        load_config("dailydialog", {"dialogue.data": str(jsonl), "model.tables": json.dumps(TABLES["token+speaker"])})
    with pytest.raises(ConfigError, match="uses no table 'speaker', 'turn'"):
        load_config("dailydialog", {"dialogue.positions": "token"})
    with pytest.raises(ConfigError, match="the turn table has 5 rows; dialogue.max_turns=8 needs 9"):
        config(jsonl, tmp_path, **{"dialogue.max_turns": 8})
    with pytest.raises(ConfigError, match="needs a decoder"):
        config(jsonl, tmp_path, **{"model.causal": "false"})
    with pytest.raises(ConfigError, match="restarts positions in every utterance; a relative encoding \\(alibi\\)"):
        config(jsonl, tmp_path, "utterance+turn+speaker", **{"model.positional.kind": "alibi"})
    config(jsonl, tmp_path, "token+turn+speaker", **{"model.positional.kind": "alibi"})  # continuous: fine


def test_a_character_tokenizer_knows_every_split_so_nothing_is_dropped(tmp_path):
    data = _fixed_turns(tmp_path, lambda k: "ab", 3)
    (data / "test.jsonl").write_text(json.dumps({"turns": [{"speaker": "u", "text": "ab"},
                                                           {"speaker": "b", "text": "zz"}]}) + "\n")
    task = build_task(config(data, tmp_path / "run"))
    ex = task.examples("test")
    assert task.tokenizer.decode(ex.tokens[ex.context[0]:ex.starts[1] - 1].tolist()) == "zz"


# ------------------------------------------------------------------ metrics, generation


def test_metrics_are_response_perplexity_bits_per_char_and_distinct(jsonl, tmp_path):
    cfg = config(jsonl, tmp_path / "run", **{"dialogue.block_size": 100, "model.positional.max_len": 100})
    task = build_task(cfg)
    cfg.model.vocab_size = task.vocab_size
    torch.manual_seed(0)
    model = build_model(cfg, task).eval()
    m = task.evaluate(model, "cpu", split="test")
    ex = task.examples("test")
    b = task.batch(ex, np.arange(len(ex)))
    logits = model(b.idx, **b.model_inputs()).logits
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), b.targets, ignore_index=IGNORE_INDEX,
                                            reduction="sum").item()
    tokens = int((b.targets != IGNORE_INDEX).sum())
    assert ex.dropped == 0  # every response counted below is an example
    chars = sum(len(d[k].text) + 1 for d in task.data.split("test") for k in range(1, len(d)))
    assert m["loss"] == pytest.approx(nll / tokens, rel=1e-6)
    assert m["perplexity"] == pytest.approx(math.exp(nll / tokens))
    assert m["bits_per_char"] == pytest.approx(nll / math.log(2) / chars, rel=1e-6)
    assert 0 < m["distinct_1"] <= 1 and 0 < m["distinct_2"] <= 1 and m["sampled_responses"] == 4
    assert "distinct_1" not in task.evaluate(model, "cpu", split="valid")


def test_inspect_figures_split_the_evaluated_loss_by_history_and_response_position(jsonl, tmp_path):
    cfg = config(jsonl, tmp_path / "run", **{"dialogue.block_size": 100, "model.positional.max_len": 100,
                                             "dialogue.eval_examples": 0})
    task = build_task(cfg)
    cfg.model.vocab_size = task.vocab_size
    torch.manual_seed(0)
    model = build_model(cfg, task).eval()
    by_turns, by_pos = task.figures(model, "cpu")
    ex = task.examples("valid")
    history = ex.turns[ex.starts[:-1]]  # each example's first token: its number of history turns
    counts = np.array([(history == k).sum() for k in by_turns.x])
    assert counts.min() > 0 and set(by_turns.x) == set(history.tolist())
    b = task.batch(ex, np.arange(len(ex)))
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(b.idx, **b.model_inputs()).logits.transpose(1, 2),
                                                b.targets, ignore_index=IGNORE_INDEX, reduction="none")  # (B, T)
    for k, ppl in zip(by_turns.x, by_turns.series["perplexity"], strict=True):
        rows = torch.from_numpy(history == k)
        mine = nll[rows].sum() / (b.targets[rows] != IGNORE_INDEX).sum()
        assert ppl == pytest.approx(math.exp(float(mine)), rel=1e-5)
    first = torch.stack([nll[r, int(ex.context[r]) - 1] for r in range(len(ex))]).mean()  # each response's 1st token
    assert by_pos.x[0] == 0 and by_pos.series["cross-entropy"][0] == pytest.approx(float(first), rel=1e-5)


@pytest.mark.parametrize("scheme", list(TABLES))
def test_generation_continues_positions_turns_and_speakers(jsonl, tmp_path, scheme):
    """A greedy reply equals what a full forward pass over history + reply, laid out as a
    training example, predicts token by token: the cache path gives the reply the ids training
    gives a response (turn 0, the responder's speaker, positions continuing or restarting)."""
    cfg = config(jsonl, tmp_path / "run", scheme)
    task = build_task(cfg)
    cfg.model.vocab_size = task.vocab_size
    torch.manual_seed(1)
    model = _loud_tables(build_model(cfg, task).eval())
    from learnpos.data.dialogue import Turn

    turns = [Turn(0, "hello how are you"), Turn(1, "fine thanks"), Turn(0, "what do you teach")]
    layout, start = task.fit_history(turns, reply_room=8)
    assert start == 1  # the first turn does not fit the 40-token block with room for the reply
    turns = turns[start:]
    reply_ids = model.generate([layout[0]], 8, temperature=0.0, **_gen_kwargs(task, layout))[0]
    assert reply_ids, "an untrained model still emits something within 8 tokens"
    full = task.layout(task.encode([t.text for t in turns]) + [reply_ids], [t.speaker for t in turns] + [1])
    x = torch.tensor([full[0][:-1]])
    extra = {"speaker": torch.tensor([full[2][:-1]]), "turn": torch.tensor([full[3][:-1]])}
    extra = {k: v for k, v in extra.items() if k in task.tables}
    pos = torch.tensor([full[1][:-1]]) if task.restart else None
    logits = model(x, position_ids=pos, extra_ids=extra or None).logits[0]
    c = len(layout[0])
    assert logits[c - 1:c - 1 + len(reply_ids), :task.vocab_size].argmax(-1).tolist() == reply_ids


def _loud_tables(model):
    """Scale every table up so a wrong id changes the greedy reply (at init, N(0, 0.02) rows
    are drowned by the token embeddings)."""
    with torch.no_grad():
        for table in [model.pos, *model.tables.values()]:
            if hasattr(table, "weight"):
                table.weight.mul_(50)
    return model


def _gen_kwargs(task, layout):
    kw = {"vocab_limit": task.vocab_size, "stop_token": None}
    extra, nxt = {}, {}
    if "speaker" in task.tables:
        extra["speaker"], nxt["speaker"] = [layout[2]], 1
    if "turn" in task.tables:
        extra["turn"], nxt["turn"] = [layout[3]], 0
    if extra:
        kw.update(extra_ids=extra, next_extra_ids=nxt)
    if task.restart:
        kw.update(position_ids=[layout[1]], next_position=0)
    return kw


def test_batched_replies_with_restarting_positions_equal_each_alone(jsonl, tmp_path):
    """Left padding and per-utterance positions together (the distinct-n path): every row of a
    batch of histories of different lengths gets the reply it gets alone."""
    cfg = config(jsonl, tmp_path / "run", "utterance+turn+speaker")
    task = build_task(cfg)
    cfg.model.vocab_size = task.vocab_size
    torch.manual_seed(4)
    model = _loud_tables(build_model(cfg, task).eval())
    from learnpos.data.dialogue import Turn

    histories = [task.fit_history(turns, reply_room=8)[0] for turns in (
        [Turn(0, "hi")], [Turn(0, "hello how are you"), Turn(1, "fine thanks"), Turn(0, "what")],
        [Turn(1, "bye"), Turn(0, "see you later")])]
    assert len({len(h[0]) for h in histories}) == 3
    kw = {"temperature": 0.0, "top_p": 1.0}
    batched = task.sample(model, histories, [1, 1, 1], 8, **kw)
    alone = [task.sample(model, [h], [1], 8, **kw)[0] for h in histories]
    assert batched == alone and any(batched)


def test_task_sample_matches_the_layout_rule(jsonl, tmp_path):
    """`task.sample` (used by chat and distinct-n) decodes what generate gives with the ids above."""
    cfg = config(jsonl, tmp_path / "run", "utterance+turn+speaker")
    task = build_task(cfg)
    cfg.model.vocab_size = task.vocab_size
    torch.manual_seed(2)
    model = _loud_tables(build_model(cfg, task).eval())
    from learnpos.data.dialogue import Turn

    layout, _ = task.fit_history([Turn(0, "hi there")], reply_room=12)
    # sampled (seeded) rather than greedy: an untrained model's argmax may be EOU at once; several
    # seeds, since one seeded draw often lands on the same tokens under a slightly other distribution
    lengths = []
    for seed in range(5):
        text = task.sample(model, [layout], [1], 12, temperature=1.0, top_p=1.0,
                           generator=torch.Generator().manual_seed(seed))[0]
        ids = model.generate([layout[0]], 12, temperature=1.0, generator=torch.Generator().manual_seed(seed),
                             **{**_gen_kwargs(task, layout), "stop_token": task.EOU})[0]
        assert text == task.tokenizer.decode(ids)
        lengths.append(len(ids))
    assert max(lengths) >= 5  # replies long enough for the new tokens' ids to matter


# --------------------------------------------------------------------------------- chat


@pytest.fixture(scope="module")
def run_dir(jsonl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chat") / "run"
    train(config(jsonl, out, **{"dialogue.block_size": 40}), quiet=True)
    return out


def test_chat_session_commands_history_and_dropping_old_turns(run_dir):
    model, cfg, task = load_run(run_dir)
    out = io.StringIO()
    session = ChatSession(model, task, max_new_tokens=8, out=out, generator=torch.Generator().manual_seed(0))
    lines = ["hello how are you", "/history", "what do you do for a living", "I teach music", "nice see you",
             "/bogus", "/reset", "/history", "/quit", "never read"]
    assert run_chat(session, lines, echo=True) == 0
    text = out.getvalue()
    assert text.count("bot> ") == 4 and "user> never read" not in text
    assert "user: hello how are you" in text and "[conversation reset]" in text and "[no turns yet]" in text
    assert "older turn(s) no longer fit the 40-token window" in text
    assert "[unknown command /bogus" in text


def test_chat_refuses_a_run_of_another_task(tmp_path, capsys):
    from learnpos.cli import main

    train(load_config("demo", {"train.out_dir": str(tmp_path / "r"), "train.max_iters": "2",
                               "train.warmup_iters": "0", "train.eval_interval": "2"}), quiet=True)
    assert main(["chat", "--run", str(tmp_path / "r"), "--script", "/dev/null"]) == 2
    assert "`learnpos chat` needs a dialogue run; this is a 'reverse' run" in capsys.readouterr().err


def test_chat_bot_defaults_to_the_other_speaker_and_never_the_user(run_dir):
    model, _, task = load_run(run_dir)
    assert ChatSession(model, task, user="bot", max_new_tokens=8).bot_name == "user"
    with pytest.raises(ConfigError, match="--user and --bot are both 'user'"):
        ChatSession(model, task, user="user", bot="user")


def test_chat_script_mode_through_the_cli(run_dir, tmp_path, capsys):
    from learnpos.cli import main

    script = tmp_path / "s.txt"
    script.write_text("hello\n/history\n/quit\n", encoding="utf-8")
    assert main(["chat", "--run", str(run_dir), "--script", str(script), "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("user> hello\nbot> ") and "user: hello" in out


def test_chat_in_a_pseudo_terminal(run_dir):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "learnpos", "chat", "--run", str(run_dir), "--max-new-tokens", "6"],
                          encoding="utf-8", timeout=60, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    child.expect("chatting as user with bot")
    child.expect_exact("user> ")
    child.sendline("hello how are you")
    child.expect_exact("bot> ")
    child.expect_exact("user> ")  # the reply streamed, then the next prompt
    child.sendline("/history")
    child.expect_exact("user: hello how are you")
    child.expect_exact("user> ")
    child.sendline("/reset")
    child.expect_exact("[conversation reset]")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
