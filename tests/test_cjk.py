"""Text without spaces is text: distinct-n on characters where a script has no word
boundaries, and no U+FFFD in anything generated, streamed or chatted, on a small Chinese
multi-turn corpus and a Chinese text corpus built here."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import learnpos.tasks  # noqa: F401
from learnpos.analysis.diversity import distinct_n, unit_name, units
from learnpos.chat import ChatSession, run_chat
from learnpos.config import load_config
from learnpos.data.tokenizers import BPETokenizer, CharTokenizer, StreamDecoder
from learnpos.load import load_run
from learnpos.train import train

PHRASES = ["你好", "今天天气很好", "我们去公园吧", "你吃饭了吗", "还没有", "一起去吃面条", "好的", "明天见",
           "周末有空吗", "我想看电影", "这本书很有意思", "谢谢你", "不客气", "路上小心"]


def chinese_dialogues(folder: Path, n: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("valid", 8), ("test", 8)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(count):
                turns = [{"speaker": ("甲", "乙")[k % 2],
                          "text": "，".join(rng.sample(PHRASES, rng.randint(1, 3))) + "。"}
                         for k in range(rng.randint(2, 6))]
                f.write(json.dumps({"turns": turns}, ensure_ascii=False) + "\n")
    return folder


def test_units_are_words_or_characters_by_script():
    assert units("the cat sat") == ["the", "cat", "sat"]
    assert units("今天天气很好。") == ["今", "天", "天", "气", "很", "好", "。"]
    assert units("用 PyTorch 训练") == ["用", "PyTorch", "训", "练"]
    assert units("こんにちは world") == ["こ", "ん", "に", "ち", "は", "world"]
    assert unit_name(["a b", "c"]) == "words" and unit_name(["你好"]) == "characters"
    assert unit_name(["你好", "hi"]) == "words+characters"


def test_distinct_n_counts_characters_of_chinese_and_words_of_english():
    # whitespace words would make every Chinese reply one "word": distinct-1 = 1.0 for any set
    replies = ["你好你好", "你好"]
    assert distinct_n(replies, 1) == pytest.approx(2 / 6)  # 你 好 of 6 characters
    assert distinct_n(replies, 2) == pytest.approx(2 / 4)  # 你好 好你 of 3 + 1 bigrams
    assert distinct_n(["a b a", "b"], 1) == pytest.approx(2 / 4)  # English: unchanged (whitespace words)
    assert distinct_n(["a"], 2) == 0.0  # no bigram at all


def test_streams_of_random_tokens_never_show_replacement_characters():
    """Any id sequence a sampler can produce (lone continuation bytes, characters cut by the end)
    streams without U+FFFD, and the stream equals decode()."""
    tok = BPETokenizer.train("学而时习之，不亦说乎？" * 20 + "abc " * 20, vocab_size=300)
    rng = np.random.default_rng(0)
    seen_partial = False
    for _ in range(300):
        ids = rng.integers(0, tok.vocab_size, size=12).tolist()
        seen_partial |= "\ufffd" in tok.tok.decode(ids)  # what the library's own decode makes of them
        pieces = []
        stream = StreamDecoder(tok, pieces.append)
        for i in ids:
            stream.add(i)
        stream.flush()
        text = "".join(pieces)
        assert "\ufffd" not in text and text == tok.decode(ids)
    assert seen_partial  # the draws really held broken UTF-8


def test_decode_drops_only_what_is_not_utf8():
    tok = BPETokenizer.train("abc " * 50, vocab_size=260)  # one token per byte beyond ASCII
    ids = tok.encode("学习")
    assert tok.decode(ids) == "学习"
    assert tok.decode(ids[1:]) == "习" and tok.decode(ids[:-1]) == "学"  # cut characters are dropped, whole kept
    char = CharTokenizer.train("学习")
    assert char.decode(char.encode("习学")) == "习学"


@pytest.fixture(scope="module")
def chinese_chat_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zh")
    data = chinese_dialogues(root / "data")
    cfg = load_config("dailydialog", {
        "dialogue.data": str(data), "train.out_dir": str(root / "run"), "dialogue.bpe_vocab_size": "300",
        "dialogue.block_size": "96", "model.positional.max_len": "96", "model.n_layer": "1", "model.n_embd": "32",
        "model.n_head": "2", "train.max_iters": "6", "train.warmup_iters": "0", "train.eval_interval": "6",
        "train.batch_size": "8", "dialogue.distinct_samples": "8", "dialogue.max_turns": "4",
        "model.tables.turn.rows": "5"})
    train(cfg, quiet=True)
    return root / "run"


def test_chinese_dialogue_trains_evaluates_and_distinct_is_per_character(chinese_chat_run):
    model, cfg, task = load_run(chinese_chat_run)
    assert cfg.dialogue.tokenizer == "bpe"
    m = task.evaluate(model, torch.device("cpu"), split="test")
    assert m["distinct_unit"] in ("characters", "words+characters") and m["sampled_responses"] == 8
    assert 0 < m["distinct_1"] < 1 and 0 < m["distinct_2"] < 1  # a barely trained model repeats characters


def test_chinese_generation_and_chat_never_print_replacement_characters(chinese_chat_run):
    model, cfg, task = load_run(chinese_chat_run)
    gen = torch.Generator().manual_seed(0)
    for k in range(10):  # hot sampling from a barely trained model: byte tokens in any order
        pieces = []
        text = task.respond(model, "你好", max_new_tokens=20, stream=pieces.append, generator=gen, temperature=2.0)
        assert "\ufffd" not in text and "".join(pieces) == text, k
    out = io.StringIO()
    session = ChatSession(model, task, max_new_tokens=16, out=out, generator=torch.Generator().manual_seed(1))
    assert run_chat(session, ["你好", "周末有空吗", "我想看电影", "/quit"], echo=True) == 0
    shown = out.getvalue()
    assert shown.count("> ") >= 6 and "\ufffd" not in shown


def test_chinese_text_lm_generates_without_replacement_characters(tmp_path):
    rng = random.Random(1)
    text = "\n".join("".join(rng.sample(PHRASES, 3)) + "。" for _ in range(400))
    (tmp_path / "zh.txt").write_text(text, encoding="utf-8")
    cfg = load_config("shakespeare-bpe", {
        "lm.data": str(tmp_path / "zh.txt"), "train.out_dir": str(tmp_path / "run"), "train.max_iters": "4",
        "train.eval_interval": "4", "train.warmup_iters": "0", "model.n_layer": "1", "lm.bpe_vocab_size": "280",
        "lm.block_size": "32", "model.positional.max_len": "32"})
    train(cfg, quiet=True)
    model, _, task = load_run(tmp_path / "run")
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        pieces = []
        out = task.respond(model, "今天", max_new_tokens=24, stream=pieces.append, generator=gen, temperature=2.0)
        assert out.startswith("今天") and "\ufffd" not in out and "".join(pieces) == out
