"""Text LM data: tokenizers, the token cache, bad input, the downloader, generation length."""

import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, shared_data_dir

from learnpos.config import load_config
from learnpos.data.fetch import CORPORA, fetch
from learnpos.data.text import load_corpus, read_text, tokenize_cached
from learnpos.data.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer
from learnpos.errors import DataError, PositionOutOfRange

SHARED = shared_data_dir()
MIXED = "To be, or not to be: that is the question.\n学而时习之，不亦说乎？有朋自远方来。\nnaïve café — 🙂\n"


def test_char_round_trip_any_unicode(tmp_path):
    tok = CharTokenizer.train(MIXED * 3)
    assert tok.decode(tok.encode(MIXED)) == MIXED
    tok.save(tmp_path / "t.json")
    again = load_tokenizer(tmp_path / "t.json")
    assert again.encode(MIXED) == tok.encode(MIXED) and again.vocab_size == len(set(MIXED))


def test_char_unknown_characters_are_explicit():
    tok = CharTokenizer.train("abc")
    with pytest.raises(DataError, match=r"2 character\(s\) this model never saw \('x', 'é'\)"):
        tok.encode("abxé")
    assert tok.decode(tok.encode("abxé", unknown="skip")) == "ab"


def test_bpe_round_trip_including_chinese(tmp_path):
    tok = BPETokenizer.train(MIXED * 50, vocab_size=400)
    for text in (MIXED, "从未见过的汉字：龘", "emoji 🙂🙃 and tabs\t!"):  # unseen characters too: byte-level
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(MIXED)) < len(MIXED.encode())  # merges were learned
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.encode(MIXED) == tok.encode(MIXED)


def test_stream_decoder_never_emits_half_characters():
    from learnpos.data.tokenizers import StreamDecoder

    tok = BPETokenizer.train("abc " * 50, vocab_size=260)  # no merges for CJK: one token per UTF-8 byte
    text = "学而时习之 🙂 ok"
    ids = tok.encode(text)
    assert len(ids) > len(text)  # characters really are split across tokens
    pieces = []
    decoder = StreamDecoder(tok, pieces.append)
    for i in ids:
        decoder.add(i)
    decoder.flush()
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_read_text_rejects_bad_input(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01\x02abc")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="holds no text"):
        read_text(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="not UTF-8 .*offset 3"):
        read_text(tmp_path / "latin1.txt")
    with pytest.raises(DataError, match="looks binary"):
        read_text(tmp_path / "bin.dat")
    with pytest.raises(DataError, match="no files"):
        read_text(tmp_path / "folder")
    with pytest.raises(DataError, match="does not exist"):
        read_text(tmp_path / "missing.txt")


def test_folder_input_and_split(tmp_path):
    (tmp_path / "b.txt").write_text("second file\n")
    (tmp_path / "a.txt").write_text("first file\n")
    (tmp_path / ".hidden").write_text("ignored\n")
    text, _ = read_text(tmp_path)
    assert text == "first file\n\nsecond file\n"
    c = load_corpus(str(tmp_path / "a.txt"), val_fraction=0.25)
    assert c.train_text + c.val_text == "first file\n" and len(c.val_text) == 3


def test_token_cache_is_reused_and_invalidated(tmp_path):
    src = tmp_path / "corpus.txt"
    src.write_text(MIXED * 20)
    tok = CharTokenizer.train(MIXED)
    tok.save(tmp_path / "tok.json")
    cache = tmp_path / "cache"
    first = tokenize_cached(load_corpus(str(src)), tok, tmp_path / "tok.json", cache)
    assert first.train.dtype == np.uint16 and tok.decode(first.train[:10].tolist()) == MIXED[:10]
    mtime = (first.cache / "train.bin").stat().st_mtime_ns
    again = tokenize_cached(load_corpus(str(src)), tok, tmp_path / "tok.json", cache)
    assert again.cache == first.cache and (again.cache / "train.bin").stat().st_mtime_ns == mtime  # not rebuilt
    src.write_text(MIXED * 21)  # changed file -> new fingerprint -> re-tokenized
    changed = tokenize_cached(load_corpus(str(src)), tok, tmp_path / "tok.json", cache)
    assert changed.cache != first.cache and changed.train.size > first.train.size
    other = tokenize_cached(load_corpus(str(src), val_fraction=0.2), tok, tmp_path / "tok.json", cache)
    assert other.cache != changed.cache  # split settings are part of the fingerprint


def _serve(root: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.skipif(not (SHARED / "tinyshakespeare").exists(), reason="needs ../shared/data")
def test_fetch_from_a_local_mirror_checks_sha256(tmp_path):
    server, url = _serve(SHARED)
    try:
        folder = fetch("tinyshakespeare", tmp_path / "cache", mirror=url, log=lambda m: None)
        data = (folder / "input.txt").read_bytes()
        assert hashlib.sha256(data).hexdigest() == CORPORA["tinyshakespeare"][0].sha256
        logs = []
        fetch("tinyshakespeare", tmp_path / "cache", mirror=url, log=logs.append)  # already there: no download
        assert "present, sha256 ok" in logs[0]
    finally:
        server.shutdown()


def test_fetch_rejects_a_wrong_checksum_and_keeps_nothing(tmp_path):
    bad = tmp_path / "mirror" / "tinyshakespeare"
    bad.mkdir(parents=True)
    (bad / "input.txt").write_text("not shakespeare\n")
    server, url = _serve(tmp_path / "mirror")
    try:
        with pytest.raises(DataError, match="does not match"):
            fetch("tinyshakespeare", tmp_path / "cache", mirror=url, log=lambda m: None)
        assert list((tmp_path / "cache" / "tinyshakespeare").iterdir()) == []
        with pytest.raises(DataError, match="could not download"):
            fetch("wikitext-2", tmp_path / "cache", mirror=url, log=lambda m: None)
    finally:
        server.shutdown()


def test_data_fetch_cli_unknown_name(tmp_path):
    r = run_cli("data", "fetch", "imagenet", "--dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "unknown corpus 'imagenet'" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A few steps of a char LM on a small Chinese + English text (not about quality)."""
    from learnpos.train import train

    root = tmp_path_factory.mktemp("lm")
    (root / "text.txt").write_text(MIXED * 200, encoding="utf-8")
    cfg = load_config("shakespeare-char", {
        "lm.data": str(root / "text.txt"), "train.out_dir": str(root / "run"), "train.max_iters": "10",
        "train.eval_interval": "10", "train.warmup_iters": "2", "model.n_layer": "1", "lm.block_size": "32",
        "model.positional.max_len": "32"})
    result = train(cfg, quiet=True)
    return result


def test_lm_run_directory_and_metrics(tiny_lm):
    run = tiny_lm.run_dir
    assert (run / "tokenizer.json").exists()
    m = tiny_lm.metrics
    assert m["perplexity"] == pytest.approx(np.exp(m["loss"]))
    assert m["bits_per_char"] == pytest.approx(m["loss"] / np.log(2))  # char model: one token per character
    by_pos = json.loads((run / "loss_by_position.json").read_text())
    assert len(by_pos) == 32 and np.mean(by_pos) == pytest.approx(m["loss"], rel=1e-6)


def test_lm_generation_length_handling(tiny_lm):
    from learnpos.load import load_run

    model, cfg, task = load_run(tiny_lm.run_dir)
    prompt = "学而"
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    text = task.respond(model, prompt, generator=g())  # default: fill the table
    assert text.startswith(prompt) and len(text) == 32 + 1
    with pytest.raises(PositionOutOfRange, match="pass --sliding"):
        task.respond(model, prompt, max_new_tokens=40, generator=g())
    pieces = []
    long = task.respond(model, prompt, max_new_tokens=100, sliding=True, stream=pieces.append, generator=g())
    assert len(long) == len(prompt) + 100 and "".join(pieces) == long
    with pytest.raises(DataError, match="never saw"):
        task.respond(model, "龘", generator=g())


@pytest.mark.skipif(not (SHARED / "tinyshakespeare").exists(), reason="needs ../shared/data")
def test_readme_lm_commands_short(tmp_path):
    """`learnpos train --preset shakespeare-char --data FILE` then `learnpos generate`, cut to 20 steps."""
    data = str(SHARED / "tinyshakespeare/input.txt")
    r = run_cli("train", "--preset", "shakespeare-char", "--data", data, "--train.max_iters=20",
                "--train.eval_interval=20", "--train.warmup_iters=5", "--lm.eval_windows=50",
                "--train.out_dir=run", "--quiet", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["step"] == 20 and 0 < res["loss"] < np.log(65) + 0.5 and "bits_per_char" in res
    g = run_cli("generate", "--run", "run", "--prompt", "ROMEO:", "--seed", "1", cwd=tmp_path)
    assert g.returncode == 0, g.stderr
    assert g.stdout.startswith("ROMEO:") and len(g.stdout.rstrip("\n")) == 64 + 1


def test_bpe_lm_end_to_end(tmp_path):
    """A BPE LM: bits per character uses the tokens-per-character ratio; any prompt encodes."""
    from learnpos.load import load_run
    from learnpos.tasks import build_task
    from learnpos.train import train

    (tmp_path / "text.txt").write_text(MIXED * 300, encoding="utf-8")
    cfg = load_config("shakespeare-bpe", {
        "lm.data": str(tmp_path / "text.txt"), "train.out_dir": str(tmp_path / "run"), "train.max_iters": "5",
        "train.eval_interval": "5", "train.warmup_iters": "2", "model.n_layer": "1", "lm.bpe_vocab_size": "300",
        "lm.block_size": "16", "model.positional.max_len": "16"})
    m = train(cfg, quiet=True).metrics
    task = build_task(cfg, tmp_path / "run")
    ratio = task.data.val.size / task.data.val_chars  # fewer tokens than characters
    assert ratio < 1 and m["bits_per_char"] == pytest.approx(m["loss"] / np.log(2) * ratio)
    model, _, _ = load_run(tmp_path / "run")
    pieces = []
    text = task.respond(model, "龘 unseen", max_new_tokens=6, stream=pieces.append,
                        generator=torch.Generator().manual_seed(0))
    assert text.startswith("龘 unseen") and "".join(pieces) == text  # streamed pieces are the text
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert task.respond(model, "学", 12, generator=g()) == task.respond(model, "学", 12, stream=print, generator=g())
