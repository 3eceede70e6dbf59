"""Every option checked where it is parsed, and a property-based fuzz of the whole CLI.

The fuzz (hypothesis) draws, for every command, any subset of its options with values from
pools of valid and hostile ones (wrong types, out-of-range numbers, NaN, huge integers, text
that is not UTF-8, paths that are files, folders, special files, missing or inside a file)
and runs `learnpos.cli.main` in-process. Every example must:
- exit 0 or 2; on 2, print exactly one error line, no traceback;
- name in that line only flags the command accepts (advice that leads somewhere);
- leave every trained run it read untouched (a reader never writes into a run; `inspect`
  without --out writes its report into RUN/inspect/, its documented output folder);
- write nothing outside the test's own folder (the working folder, the cache folder and the
  outputs all live in it).
`--hypothesis-show-statistics` prints how many cases each test ran.
"""

import hashlib
import io
import json
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from learnpos.cli import build_parser, main

LOCK_FILE = ".learnpos.lock"  # learnpos.files.LOCK_FILE, spelled out so the fuzz also runs against older versions

FUZZ = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)
TINY_TRAIN = ["--train.max_iters=2", "--train.warmup_iters=0", "--train.eval_interval=2", "--model.n_layer=1",
              "--model.n_embd=16", "--model.n_head=2", "--train.batch_size=4", "--train.device=cpu"]


# ----------------------------------------------------------------- options checked at parse time


@pytest.mark.parametrize("argv, named", [
    (["generate", "--run", "R", "--prompt", "x", "--top-k", "0"], "--top-k: must be an integer >= 1, got 0"),
    (["generate", "--run", "R", "--prompt", "x", "--temperature", "nan"], "--temperature: must be a finite number"),
    (["generate", "--run", "R", "--prompt", "x", "--temperature", "-1"], "--temperature: must be >= 0"),
    (["generate", "--run", "R", "--prompt", "x", "--top-p", "1.5"], "--top-p: must be in (0, 1]"),
    (["generate", "--run", "R", "--prompt", "x", "--top-p", "0"], "--top-p: must be in (0, 1]"),
    (["generate", "--run", "R", "--prompt", "x", "--num-samples", "0"], "--num-samples: must be an integer >= 1"),
    (["generate", "--run", "R", "--prompt", "x", "--max-new-tokens", "-5"],
     "--max-new-tokens: must be an integer >= 1"),
    (["generate", "--run", "R", "--prompt", "x", "--seed", str(2**70)], "--seed: must be in 0..9223372036854775807"),
    (["generate", "--run", "R", "--prompt", "caf\udce9"], "--prompt: is not UTF-8 text"),
    (["eval", "--run", "R", "--length", "0"], "--length: must be an integer >= 1, got 0"),
    (["eval", "--run", "R", "--device", "foo"], "--device: must be auto, cpu, cuda or cuda:N, got 'foo'"),
    (["kg", "predict", "--run", "R", "--relation", "r", "--head", "h", "--top", "-5"],
     "--top: must be an integer >= 1"),
    (["chat", "--run", "R", "--top-p", "inf"], "--top-p: must be a finite number"),
    (["verify", "--seed", "-1"], "--seed: must be in 0.."),
    (["generate", "--run", "R"], "the following arguments are required: --prompt"),
    (["nosuch"], "invalid choice: 'nosuch'"),
])
def test_bad_options_are_one_line_naming_the_option(argv, named, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and "Traceback" not in err and err.startswith("learnpos"), err


def test_every_range_is_in_the_help():
    helps = {name: p.format_help() for name, p in _subparsers().items()}
    for command, option, said in (("generate", "--top-k", ">= 1"), ("generate", "--top-p", "(0, 1]"),
                                  ("generate", "--temperature", ">= 0"), ("generate", "--seed", f"0..{2**63 - 1}"),
                                  ("eval", "--length", ">= 1"), ("kg", "--top", ">= 1"), ("chat", "--top-p", "(0, 1]"),
                                  ("generate", "--num-samples", ">= 1"), ("eval", "--device", "cuda:N")):
        text = " ".join(helps[command].split())
        start = text.index(option, text.index("options:"))  # its entry, not the usage line
        assert said in text[start:start + 250], (command, option)


def _subparsers() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.choices and "train" in a.choices)
    return dict(action.choices)


OPTIONS = {name: {s for a in p._actions for s in a.option_strings} for name, p in _subparsers().items()}


# --------------------------------------------------------------------------------- fixtures


def _text(n: int = 3000) -> str:
    rng = np.random.default_rng(0)
    return " ".join(rng.choice(["the", "king", "sea", "rain", "stone", "dog", "sings", "\n"], size=n // 4))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder holding everything the fuzz reads: trained runs of four tasks, their data, an
    HF export, and hostile paths. Runs are built once and must never change."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "text.txt").write_text(_text(), encoding="utf-8")
    kg = root / "kgdata"
    kg.mkdir()
    rng = np.random.default_rng(1)
    triples = [f"e{rng.integers(12)}\tr{rng.integers(3)}\te{rng.integers(12)}" for _ in range(120)]
    for split, part in (("train", triples), ("valid", triples[:10]), ("test", triples[10:20])):
        (kg / f"{split}.txt").write_text("\n".join(part) + "\n", encoding="utf-8")
    dlg = root / "dlgdata"
    dlg.mkdir()
    for split in ("train", "valid", "test"):
        lines = [json.dumps({"turns": [{"speaker": "user", "text": "hello how are you"},
                                       {"speaker": "bot", "text": f"fine thanks {i}"}]}) for i in range(8)]
        (dlg / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    runs = {
        "demo": ["train", *TINY_TRAIN, "--synthetic.n_eval=16"],
        "lm": ["train", "--preset", "shakespeare-char", "--data", str(root / "text.txt"), *TINY_TRAIN,
               "--lm.block_size=16", "--model.positional.max_len=16", "--lm.eval_windows=4"],
        "kg": ["train", "--preset", "kg-umls", "--data", str(kg), "--kg.dataset=toy", *TINY_TRAIN],
        "dlg": ["train", "--preset", "dailydialog", "--data", str(dlg), *TINY_TRAIN, "--dialogue.tokenizer=char",
                "--dialogue.block_size=32", "--model.positional.max_len=32", "--dialogue.distinct_samples=2",
                "--dialogue.eval_examples=4"],
    }
    for name, argv in runs.items():
        assert main([*argv, f"--train.out_dir={root / name}", "--quiet"]) == 0, name
    assert main(["export-hf", str(root / "lm"), str(root / "hf")]) == 0
    (root / "afile.txt").write_text("not a run\n")
    (root / "emptydir").mkdir()
    (root / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (root / "latin1.txt").write_bytes("caf\xe9\n".encode("latin1") * 50)
    (root / "script.txt").write_text("hello\n/history\nhow are you\n/reset\n\n/quit\n", encoding="utf-8")
    (root / "bad.toml").write_text("task = [\n")
    return root


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


RUNS = ("demo", "lm", "kg", "dlg")


@pytest.fixture(scope="module")
def frozen(world):
    return {name: snapshot(world / name) for name in RUNS}


# ------------------------------------------------------------------------------ value pools

INTS = st.sampled_from(["0", "1", "2", "3", "-1", "-5", "16", "40", "1000", "99999999999999999999999", "1e3", "x",
                        "", "nan", "2_0", " 3"])
# a generate case on the dialogue run kept a worker in the sampling loop for 10+ minutes (faulthandler trace, args
# unknown); the likely case, 1000 samples of up to 1000 tokens each, is valid but slow: not drawn for --num-samples
SAMPLES = st.sampled_from([v for v in INTS.elements if v != "1000"])
FLOATS = st.sampled_from(["0", "0.5", "1", "1.5", "-1", "nan", "inf", "-inf", "1e309", "0.9", "x", "", "1e-9"])
TEXTS = st.one_of(st.sampled_from(["hello", "1 2 3", " ".join(["1"] * 16), "caf\udce9", "", "\x00", "e1", "r0",
                                   "?2", "the king", "国王和大海", "\n", "-x", "--x"]),
                  st.text(max_size=20))
SEEDS = st.sampled_from(["0", "1", "-1", str(2**63 - 1), str(2**63), str(2**80), "x", "nan"])
DEVICES = st.sampled_from(["cpu", "auto", "cuda", "cuda:7", "foo", "", "CPU", "mps", "cuda:x"])


def paths(world: Path, *runs: str):
    """Run directories and hostile paths, relative to the working folder `world` is."""
    return st.sampled_from([*runs, "afile.txt", "emptydir", "/dev/zero", "/dev/null", "missing/nowhere", "",
                            "afile.txt/sub", "binary.bin", "bad\udcffname", "kgdata", "dlgdata", "text.txt"])


def fresh_out(counter=[0]):  # noqa: B006  (a counter: each example writes into a folder of its own)
    counter[0] += 1
    return f"out/{counter[0]}"


def optional(name: str, values) -> st.SearchStrategy:
    return st.one_of(st.just([]), values.map(lambda v: [name, v]))


def flag(name: str) -> st.SearchStrategy:
    return st.sampled_from([[], [name]])


def assemble(*parts) -> st.SearchStrategy:
    return st.tuples(*parts).map(lambda ps: [x for p in ps for x in p])


# ------------------------------------------------------------------------------ the fuzz


def _run(argv: list[str], world: Path, frozen: dict, capsys, monkeypatch, wrote: str = "") -> None:
    monkeypatch.chdir(world)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n\xff\nbye\n/quit\n"))
    outside = sorted(p.name for p in world.parent.iterdir())
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2:
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert len(errors) == 1 and errors[0].startswith("learnpos"), (argv, err)
        command = argv[0] if argv and argv[0] in OPTIONS else None
        # flags named after another command (`learnpos eval --length N`) are that command's
        own = re.sub(r"`[^`]*`|learnpos [a-z][\w-]* [^;)]*", "", errors[0].split(": error: ", 1)[1])
        for named in re.findall(r"(?<![\w.-])(--[a-z][a-z-]*)(?![\w.=])", own):
            if command is not None and "unrecognized" not in errors[0] and named not in argv:
                assert named in OPTIONS[command], (argv, errors[0], named)  # advice the command can follow
    for name in RUNS:
        if wrote == "inspect" and name in argv and "--out" not in argv:  # its report, RUN/inspect/: only that
            shutil.rmtree(world / name / "inspect", ignore_errors=True)
        assert snapshot(world / name) == frozen[name], (argv, name, "a reader changed the run")
    assert sorted(p.name for p in world.parent.iterdir()) == outside, (argv, "wrote outside the test folder")


def readers(world: Path):
    runs = paths(world, *RUNS)
    common = lambda: [optional("--device", DEVICES)]  # noqa: E731
    return st.one_of(
        assemble(st.just(["eval"]), optional("--run", runs), optional("--run", runs), optional("--length", INTS),
                 optional("--split", st.sampled_from(["valid", "test", "train", "x"])),
                 optional("--save-scores", st.sampled_from(["out/s.safetensors", "afile.txt/x", "emptydir"])),
                 optional("--data", paths(world)), optional("--val-data", paths(world)),
                 optional("--out", st.sampled_from(["out/eval", "afile.txt", "emptydir"])), flag("--json"), *common()),
        assemble(st.just(["generate"]), optional("--run", runs), optional("--prompt", TEXTS),
                 optional("--num-samples", SAMPLES), optional("--max-new-tokens", INTS),
                 optional("--temperature", FLOATS),
                 optional("--top-k", INTS), optional("--top-p", FLOATS), optional("--seed", SEEDS),
                 flag("--sliding"), flag("--skip-unknown"), flag("--no-stream"), *common()),
        assemble(st.just(["chat"]), optional("--run", runs),
                 optional("--script", st.sampled_from(["script.txt", "binary.bin", "latin1.txt", "missing",
                                                       "emptydir"])),
                 optional("--user", TEXTS), optional("--bot", TEXTS), optional("--max-new-tokens", INTS),
                 optional("--temperature", FLOATS), optional("--top-k", INTS), optional("--top-p", FLOATS),
                 optional("--seed", SEEDS), *common()),
        assemble(st.just(["kg", "predict"]), optional("--run", runs), optional("--relation", TEXTS),
                 st.one_of(st.just([]), optional("--head", TEXTS), optional("--tail", TEXTS)),
                 optional("--top", INTS), optional("--data", paths(world)), flag("--json"), *common()),
        assemble(st.just(["config"]), optional("--preset", st.sampled_from(["demo", "kg-umls", "nosuch", "bad.toml",
                                                                            "afile.txt", ""])),
                 flag("--list"), st.lists(st.sampled_from(["--model.n_embd=-4", "--train.lr=nan", "--x", "--model.y=1",
                                                           "--train.seed=99999999999999999999999"]), max_size=2)),
        assemble(st.sampled_from([[], ["-v"]]), st.sampled_from([["verify"]]),
                 st.sampled_from([["--seed", "-1"], ["--seed", str(2**64)], ["--seed", "x"],
                                  ["--json", "--seed", ""]])),
    )


@settings(max_examples=600, **FUZZ)
@given(data=st.data())
def test_fuzz_readers(world, frozen, capsys, monkeypatch, data):
    """eval, generate, chat, kg predict, config, verify: fast, so most of the examples."""
    _run(data.draw(readers(world)), world, frozen, capsys, monkeypatch)


@settings(max_examples=60, **FUZZ)
@given(data=st.data())
def test_fuzz_inspect_and_hf(world, frozen, capsys, monkeypatch, data):
    runs = paths(world, *RUNS)
    argv = data.draw(st.one_of(
        assemble(st.just(["inspect"]), runs.map(lambda r: [r]),
                 optional("--out", st.sampled_from([fresh_out(), "afile.txt", "emptydir", "afile.txt/x"])),
                 optional("--data", paths(world)), optional("--device", DEVICES)),
        assemble(st.just(["export-hf"]), runs.map(lambda r: [r]),
                 st.sampled_from([fresh_out(), "afile.txt", "emptydir", "hf", "afile.txt/x"]).map(lambda o: [o])),
        assemble(st.just(["import-hf"]), paths(world, "hf", "lm").map(lambda r: [r]),
                 st.sampled_from([fresh_out(), "afile.txt", "emptydir", "lm", "afile.txt/x"]).map(lambda o: [o]),
                 optional("--data", paths(world))),
    ))
    _run(argv, world, frozen, capsys, monkeypatch, wrote=argv[0])


OVERRIDES = st.lists(st.sampled_from([
    "--train.lr=nan", "--train.lr=-1", "--train.seed=-3", "--train.seed=99999999999999999999999", "--model.n_head=3",
    "--train.device=foo", "--train.dtype=float16", "--model.positional.max_len=0", "--nosuch.key=1", "--x",
    "--train.max_iters=1", "--train.out_dir=afile.txt", "--train.out_dir=afile.txt/run", "--lm.cache_dir=/tmp/x",
    "--train.batch_size=3", "--train.grad_accum=2", "--model.dropout=1", "--train.eval_interval=1",
]), max_size=3)


@settings(max_examples=50, **FUZZ)
@given(data=st.data())
def test_fuzz_writers(world, frozen, capsys, monkeypatch, data):
    """train (fresh and --resume of a copy), demo, compare and data fetch, all at tiny sizes."""
    out = fresh_out()
    copy = f"{out}-resumed"
    kind = data.draw(st.sampled_from(["fresh", "resume", "demo", "compare", "fetch"]))
    if kind == "fresh":
        argv = data.draw(assemble(
            st.just(["train"]),
            optional("--preset", st.sampled_from(["demo", "shakespeare-char", "kg-umls", "dailydialog", "nosuch",
                                                  "bad.toml"])),
            optional("--data", paths(world)), optional("--val-data", paths(world)),
            optional("--dataset", st.sampled_from(["umls", "toy", "nosuch"])), flag("--accept-data-change"),
            flag("--json"), st.just([*TINY_TRAIN, "--quiet", f"--train.out_dir={out}"]), OVERRIDES))
    elif kind == "resume":
        source = data.draw(st.sampled_from(RUNS))
        shutil.copytree(world / source, world / copy)
        argv = data.draw(assemble(
            st.just(["train", "--resume", copy, "--quiet"]), optional("--data", paths(world)),
            flag("--accept-data-change"), optional("--train.max_iters", st.sampled_from(["1", "2", "3", "-1"])),
            OVERRIDES))
    elif kind == "demo":
        argv = data.draw(assemble(st.just(["demo"]), optional("--out", st.sampled_from([out, "afile.txt", "emptydir"])),
                                  flag("--json"), st.just([*TINY_TRAIN, "--quiet", "--synthetic.n_eval=8"])))
    elif kind == "compare":
        argv = data.draw(assemble(
            st.just(["compare", "--preset", "demo", "--out", out]),
            optional("--variants", st.sampled_from(["learned", "none", "rope,learned", "nosuch", ""])),
            optional("--seeds", st.sampled_from(["1", "-1", "x", str(2**70), ""])),
            optional("--lengths", st.sampled_from(["1", "0", "-1", "nan", "1,1", "x"])),
            st.just([*TINY_TRAIN, "--synthetic.n_eval=8"])))
    else:
        argv = data.draw(assemble(
            st.just(["data", "fetch"]), st.sampled_from([["tinyshakespeare"], ["wikitext-2"], ["nosuch"]]),
            st.just(["--dir", out]), st.sampled_from([["--mirror", "file:///nonexistent"], ["--mirror", "nope://x"],
                                                      ["--mirror", f"file://{world}/emptydir"]]), flag("--quiet")))
    _run(argv, world, frozen, capsys, monkeypatch)
