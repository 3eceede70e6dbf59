"""Hostile input: every loader and command, given empty, binary, huge-line, non-UTF-8, CRLF,
wrong-column, duplicate-key, truncated-archive or malformed-JSON input, impossible configs or
override strings, out-of-range ids or a malicious checkpoint, either works or ends in one clear
line (a `LearnposError`; exit code 2 from the CLI) - never a traceback, a hang, a partial
output file or a silent wrong answer.

The property tests run the loaders in-process on generated inputs (hypothesis; the example
counts are in `--hypothesis-show-statistics`); the command cases run `learnpos.cli.main`.
"""

import io
import json
import math
import os
import pickle
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from learnpos.cli import main
from learnpos.config import load_config, load_run_config
from learnpos.data.dialogue import load_dialogues
from learnpos.data.kg import read_splits
from learnpos.data.text import read_text
from learnpos.data.tokenizers import load_tokenizer
from learnpos.errors import LearnposError
from learnpos.runs import latest_checkpoint, load_trainer_state, read_metrics
from learnpos.train import train

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
EDGE_BYTES = [b"", b"\0", b"\xff\xfe\x00a", b"\xc3(", b"a\r\nb\r\n", b"x" * 200_000, "é\u2028\ufeff".encode(),
              b"\x1f\x8b\x08\x00trunc", b"PK\x03\x04trunc", b"{\"a\": 1, \"a\": 2}", b"[1, 2", b"[1]", b"5",
              b"\"x\"", b"null", b"\t\t\n\t"]
blobs = st.one_of(st.sampled_from(EDGE_BYTES), st.binary(max_size=400),
                  st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")))


def _one_line(e: LearnposError) -> None:
    message = str(e)
    assert message and "\n" not in message and "Traceback" not in message, message


def _work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="hostile-"))


# ----------------------------------------------------------------------------- loaders


def _read_or_refuse(name: str, raw: bytes, loader):
    """`loader(path)` of a file `name` holding `raw`: its result, or None after a one-line refusal."""
    d = _work_dir()
    (d / name).write_bytes(raw)
    try:
        return loader(d / name)
    except LearnposError as e:
        _one_line(e)
        return None
    finally:
        shutil.rmtree(d)


@FUZZ
@given(raw=blobs)
def test_text_loader(raw):
    read = _read_or_refuse("input.txt", raw, read_text)
    if read is not None:
        assert read[0] == raw.decode("utf-8") and read[0].strip()  # read exactly as written, or refused


KG_LINES = st.lists(st.one_of(
    st.tuples(st.text("abc\t ", max_size=4), st.text("rs", max_size=2), st.text("xyz", max_size=3)).map("\t".join),
    st.sampled_from(["h\tr\tt", "h\tr\tt\r", "h\tr", "h\tr\tt\tx", "\t\t", "  ", "h\t \tt", "a\tb\tc\r\n"])),
    max_size=12).map(lambda lines: "\n".join(lines).encode())


@FUZZ
@given(train=st.one_of(KG_LINES, blobs), valid=KG_LINES, test=st.one_of(KG_LINES, blobs),
       pack=st.sampled_from(["folder", "tar", "truncated-tar"]))
def test_kg_loader(train, valid, test, pack):
    d = _work_dir()
    files = {"train.txt": train, "valid.txt": valid, "test.txt": test}
    if pack == "folder":
        for name, raw in files.items():
            (d / name).write_bytes(raw)
        path = d
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, raw in files.items():
                info = tarfile.TarInfo(f"data/{name}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
        data = buf.getvalue()
        path = d / "kg.tar.gz"
        path.write_bytes(data if pack == "tar" else data[: len(data) // 2])
    try:
        splits = read_splits(path)
        for name, raw in files.items():  # every non-blank line became one triple of stripped fields
            lines = [ln for ln in raw.decode().replace("\r", "").split("\n") if ln.strip()]
            assert len(splits[name.removesuffix(".txt")]) == len(lines)
    except LearnposError as e:
        _one_line(e)
    finally:
        shutil.rmtree(d)


DIALOGUE_LINES = st.lists(st.one_of(
    st.fixed_dictionaries({"turns": st.lists(st.fixed_dictionaries(
        {"speaker": st.sampled_from(["a", "b", "", 3]), "text": st.one_of(st.text(max_size=20), st.none())}),
        max_size=4)}).map(json.dumps),
    st.sampled_from(['{"turns": []}', '{"turns": 5}', "[1, 2]", '{"turns": [{"speaker": "a"}]}', "{", "null",
                     '{"turns": [{"speaker": "a", "text": "hi", "speaker": "b"}]}', '{"x": 1}'])),
    max_size=6).map(lambda lines: "\n".join(lines).encode())


@FUZZ
@given(raw=st.one_of(DIALOGUE_LINES, blobs), form=st.sampled_from(["jsonl", "dailydialog", "zip", "truncated-zip"]))
def test_dialogue_loader(raw, form):
    d = _work_dir()
    path = d / "data"
    path.mkdir()
    for split in ("train", "validation", "test"):
        if form == "jsonl":
            (path / f"{'valid' if split == 'validation' else split}.jsonl").write_bytes(raw)
        elif form == "dailydialog":
            (path / split).mkdir()
            (path / split / f"dialogues_{split}.txt").write_bytes(raw)
        else:  # DailyDialog ships one zip per split
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
                z.writestr(f"{split}/dialogues_{split}.txt", raw)
            data = buf.getvalue()
            (path / f"{split}.zip").write_bytes(data if form == "zip" else data[: max(1, len(data) // 2)])
    try:
        data = load_dialogues(path)
        assert all(turn.text.strip() for split in data.splits.values() for d in split for turn in d)
    except LearnposError as e:
        _one_line(e)
    finally:
        shutil.rmtree(d)


OVERRIDE_KEYS = ["train.lr", "train.batch_size", "model.n_head", "model.n_embd", "model.positional.max_len",
                 "model.positional.kind", "model.tables", "train.dtype", "synthetic.length", "train.max_iters",
                 "train.grad_accum", "train.on_nonfinite", "model.dropout", "train.warmup_iters", "nosuch.key",
                 "model", "train.", ".lr", "model.tables.turn.rows", "task"]
VALUES = st.one_of(st.sampled_from(["0", "-1", "nan", "inf", "1e309", "", "true", "[", "{}", "[{}]", "3.5", "abc",
                                    "99999999999999999999", '[{"name": "x", "rows": -2}]', "rope", "\x00"]),
                   st.text(max_size=12))


@FUZZ
@given(over=st.dictionaries(st.sampled_from(OVERRIDE_KEYS), VALUES, max_size=3))
def test_config_overrides(over):
    try:
        cfg = load_config("demo", over)
        assert cfg.model.n_embd % cfg.model.n_head == 0 and math.isfinite(cfg.train.lr)
        assert cfg.train.batch_size > 0 and cfg.train.grad_accum > 0
    except LearnposError as e:
        _one_line(e)


@FUZZ
@given(raw=st.one_of(blobs, st.dictionaries(st.sampled_from(["task", "model", "train", "synthetic", "lm"]),
                                            st.one_of(st.integers(), st.text(max_size=5),
                                                      st.dictionaries(st.text(max_size=8), st.integers()))
                                            ).map(lambda d: json.dumps(d).encode())))
def test_run_config_file(raw):
    cfg = _read_or_refuse("config.json", raw, load_run_config)
    assert cfg is None or isinstance(cfg.task, str)


@FUZZ
@given(raw=blobs)
def test_tokenizer_file(raw):
    tok = _read_or_refuse("tokenizer.json", raw, load_tokenizer)
    assert tok is None or isinstance(tok.decode(list(range(min(tok.vocab_size, 64)))), str)  # loaded means usable


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "run"
    train(load_config("demo", {"train.max_iters": "10", "train.warmup_iters": "0", "train.eval_interval": "5",
                               "train.out_dir": str(out)}), quiet=True)
    return out


@FUZZ
@given(raw=blobs, name=st.sampled_from(["model.safetensors", "trainer_state.pt", "metrics.jsonl"]))
def test_damaged_run_files(run, raw, name):
    d = _work_dir()
    copy = d / "run"
    shutil.copytree(run, copy)
    target = copy / name if name == "metrics.jsonl" else latest_checkpoint(copy) / name
    target.write_bytes(raw)
    try:
        if name == "metrics.jsonl":
            read_metrics(copy)
        else:
            folder = latest_checkpoint(copy)  # the damaged newest one is skipped (checksums)
            assert folder.name != target.parent.name
            from learnpos.load import load_run

            load_run(copy)
            load_trainer_state(folder)
    except LearnposError as e:
        _one_line(e)
    finally:
        shutil.rmtree(d)


# ------------------------------------------------------------------ a malicious checkpoint


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_payload_in_the_optimizer_state_never_runs(run, tmp_path, capsys):
    """An attacker who can write the run directory can also rewrite its manifest's checksums:
    the state file is still read with weights_only=True, which refuses the payload."""
    from learnpos.files import sha256_file

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    marker = tmp_path / "payload-ran"
    folder = latest_checkpoint(copy)
    with open(folder / "trainer_state.pt", "wb") as f:
        torch.save({"step": 10, "optimizer": _Payload(marker)}, f)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["trainer_state.pt"] = sha256_file(folder / "trainer_state.pt")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert pickle.loads(pickle.dumps(_Payload(tmp_path / "control"))) == 0  # the payload is live when unpickled
    assert (tmp_path / "control").exists()
    code = main(["train", "--resume", str(copy), "--train.max_iters=20", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists(), err
    assert len(err.strip().splitlines()) == 1 and "trainer_state.pt" in err and "Traceback" not in err


# ------------------------------------------------------------------------- the commands


def _cli(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("learnpos ") and ": error: " in lines[0], err
    return lines[0]


def _command_cases(tmp: Path, run: Path) -> list[tuple[list[str], str]]:
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    (tmp / "latin1.txt").write_bytes("caf\xe9 ".encode("latin1") * 100)
    (tmp / "kg").mkdir()
    for split in ("train", "valid", "test"):
        (tmp / "kg" / f"{split}.txt").write_text("a\tr\n", encoding="utf-8")
    (tmp / "dlg").mkdir()
    for split in ("train", "valid", "test"):
        (tmp / "dlg" / f"{split}.jsonl").write_text('{"turns": [{"speaker": "a", "text": "hi"}]\n', encoding="utf-8")
    (tmp / "dd").mkdir()
    for split in ("train", "validation", "test"):
        (tmp / "dd" / f"{split}.zip").write_bytes(b"PK\x03\x04" + b"\0" * 20)
    for name, ext, raw in (("kg-latin1", "txt", b"caf\xe9\tr\tb\n"), ("dlg-binary", "jsonl", b'{"turns": []}\0\n')):
        (tmp / name).mkdir()
        for split in ("train", "valid", "test"):
            (tmp / name / f"{split}.{ext}").write_bytes(raw)
    (tmp / "notrun").mkdir()
    (tmp / "broken-run").mkdir()
    (tmp / "broken-run" / "config.json").write_text("{", encoding="utf-8")
    (tmp / "dupe-run").mkdir()
    (tmp / "dupe-run" / "config.json").write_text('{"task": "copy", "task": "reverse"}', encoding="utf-8")
    (tmp / "dupe-dlg").mkdir()
    for split in ("train", "valid", "test"):
        (tmp / "dupe-dlg" / f"{split}.jsonl").write_text(
            '{"turns": [{"speaker": "a", "text": "hi", "text": "no"}, {"speaker": "b", "text": "yo"}]}\n')
    out = str(tmp / "out")
    return [
        (["train", "--preset", "shakespeare-char", "--data", str(tmp / "empty.txt"), f"--train.out_dir={out}"],
         "no text"),
        (["train", "--preset", "shakespeare-char", "--data", str(tmp / "binary.txt"), f"--train.out_dir={out}"],
         "binary"),
        (["train", "--preset", "shakespeare-char", "--data", str(tmp / "latin1.txt"), f"--train.out_dir={out}"],
         "not UTF-8"),
        (["train", "--preset", "shakespeare-char", "--data", str(tmp / "missing.txt"), f"--train.out_dir={out}"],
         "does not exist"),
        (["train", "--preset", "kg-umls", "--data", str(tmp / "kg"), f"--train.out_dir={out}"], "line 1"),
        (["train", "--preset", "dailydialog", "--data", str(tmp / "dlg"), f"--train.out_dir={out}"], "line 1"),
        (["train", "--preset", "dailydialog", "--data", str(tmp / "dd"), f"--train.out_dir={out}"], "zip"),
        (["train", "--preset", "kg-umls", "--data", str(tmp / "kg-latin1"), f"--train.out_dir={out}"],
         "train.txt is not UTF-8"),
        (["train", "--preset", "dailydialog", "--data", str(tmp / "dlg-binary"), f"--train.out_dir={out}"],
         "train.jsonl looks binary"),
        (["train", "--train.lr=abc", f"--train.out_dir={out}"], "train.lr"),
        (["train", "--model.n_head=3", f"--train.out_dir={out}"], "n_head"),
        (["train", "--nosuch.key=1", f"--train.out_dir={out}"], "nosuch"),
        (["train", "--model.tables=[{", f"--train.out_dir={out}"], "model.tables"),
        (["train", "--train.batch_size=10", "--train.grad_accum=3", f"--train.out_dir={out}"], "grad_accum"),
        (["train", "--train.on_nonfinite=ignore", f"--train.out_dir={out}"], "on_nonfinite"),
        (["train", "--resume", str(tmp / "notrun")], "config.json"),
        (["train", "--resume", str(tmp / "broken-run")], "config"),
        (["train", "--resume", str(tmp / "dupe-run")], "duplicate key 'task'"),
        (["train", "--preset", "dailydialog", "--data", str(tmp / "dupe-dlg"), f"--train.out_dir={out}"],
         "duplicate key 'text'"),
        (["train", "--preset", "no-such-preset"], "no-such-preset"),
        (["train", f"--train.out_dir={run}"], "already holds a trained model"),
        (["eval", "--run", str(tmp / "notrun")], "not a run directory"),
        (["eval", "--run", str(tmp / "broken-run")], "config"),
        (["generate", "--run", str(run), "--prompt", "1 2 99"], "0..15"),
        (["generate", "--run", str(run), "--prompt", " ".join(["1"] * 60)], "trained on 16 symbols"),
        (["inspect", str(tmp / "notrun")], "not a run directory"),
        (["kg", "predict", "--run", str(run), "--head", "x", "--relation", "r"], "kg"),
        (["export-hf", str(run), str(tmp / "hf")], "task 'reverse'"),
        (["import-hf", str(tmp / "notrun"), str(tmp / "imported")], "config.json"),
        (["compare", "--preset", "demo", "--variants", "nosuch", "--out", str(tmp / "cmp")], "nosuch"),
        (["config", "--preset", "demo", "--model.n_embd=-4"], "n_embd"),
    ]


def test_every_command_fails_in_one_line_with_exit_code_2(run, tmp_path, capsys):
    cases = _command_cases(tmp_path, run)
    for argv, named in cases:
        before = sorted(p.name for p in tmp_path.iterdir())
        line = _cli(argv, capsys)
        assert named.lower() in line.lower(), (argv, line)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, (argv, "left files behind")
    assert len(cases) >= 25
