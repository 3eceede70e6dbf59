"""Robust in a user's hands: the mistakes people make on shared machines and in scripts.

Each test closes one class of failure seen with learnpos 68b4e7f (and fails there):
- two writers on one run directory (races of processes, not threads);
- a run that does not know what it was trained on (changed, moved data; damaged caches);
- config.json trusted as input (sizes, cache folders, file modes);
- failures of the operating system (disk full, read-only, not-a-folder, too many files);
- signals and closed pipes;
- a round trip (export-hf, import-hf) that did not close.
Options checked where they are parsed, and the property-based CLI fuzz, are in
tests/test_cli_fuzz.py.
"""

import errno
import json
import multiprocessing
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from learnpos.cli import main
from learnpos.runs import checkpoint_dirs, latest_checkpoint

# Spelled out rather than imported, so this file also runs against versions without them (and
# fails there on behaviour, not on an import): learnpos.files.LOCK_FILE, learnpos.runs.DATA_FILE
LOCK_FILE, DATA_FILE = ".learnpos.lock", "data.json"

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# demo preset at its smallest: a few steps of a 1-layer model, evaluated on 32 sequences
TINY = ["--train.max_iters=6", "--train.eval_interval=3", "--train.log_interval=3", "--train.warmup_iters=1",
        "--train.batch_size=8", "--model.n_layer=1", "--model.n_embd=16", "--model.n_head=2",
        "--synthetic.n_eval=32", "--train.device=cpu", "--quiet"]


def cli(*args: str, cwd: Path, stdin: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "learnpos", *args], cwd=cwd, env=env or ENV, capture_output=True,
                          timeout=600, input=stdin)


def one_error_line(stderr: bytes | str) -> str:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text and ": error: " in lines[0], text
    return lines[0]


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes and mode (what a reader, or a refused writer,
    must leave alone). The lock file is left out: a writer refused after taking the lock (bad
    data, a config the run cannot take) wrote its name there, which is all it changed."""
    return {str(p.relative_to(folder)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def training_in_background(run: Path, cwd: Path, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """A `learnpos train` that runs until stopped, returned once its first checkpoint is in. It
    starts with SIGINT at its default even where this process ignores it (a shell's background
    job does: `pytest ... &`), so Ctrl-C reaches it as it reaches a user's terminal command."""
    proc = subprocess.Popen([sys.executable, "-m", "learnpos", "train", *TINY, "--train.max_iters=100000",
                             "--train.eval_interval=50", f"--train.out_dir={run}"], env=ENV, cwd=cwd, stderr=stderr,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not checkpoint_dirs(run) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert checkpoint_dirs(run), "the background run wrote no checkpoint"
    return proc


def records(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_run(a: Path, b: Path) -> None:
    """Two runs of one config hold the same weights, optimizer steps and log."""
    assert [d.name for d in checkpoint_dirs(a)] == [d.name for d in checkpoint_dirs(b)]
    wa, wb = (load_file(latest_checkpoint(r) / "model.safetensors") for r in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert records(a) == records(b)
    ca, cb = (json.loads((r / "config.json").read_text()) for r in (a, b))
    ca["train"].pop("out_dir"), cb["train"].pop("out_dir")
    assert ca == cb


# ------------------------------------------------------------------ one writer per run


def _race_member(argv: list[str], cwd: str, go, conn) -> None:
    """A forkserver child: wait for the start signal, run the CLI, report (code, stderr)."""
    import io

    os.chdir(cwd)
    err = io.StringIO()
    sys.stderr = err
    go.wait()
    code = main(argv)
    conn.send((code, err.getvalue()))


@pytest.fixture(scope="module")
def racers():
    """Processes forked from a server that has imported learnpos once (torch imported, never
    run, so forking is safe): a race costs the training, not two interpreter start-ups."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["learnpos.cli", "learnpos.train", "learnpos.tasks"])
    return ctx


def _race(ctx, argvs: list[list[str]], cwd: Path) -> list[tuple[int, str]]:
    go = ctx.Event()
    pipes = [ctx.Pipe(duplex=False) for _ in argvs]
    procs = [ctx.Process(target=_race_member, args=(argv, str(cwd), go, w))
             for argv, (_, w) in zip(argvs, pipes, strict=True)]
    for p in procs:
        p.start()
    time.sleep(0.05)
    go.set()  # both start training at the same instant
    results = [r.recv() for r, _ in pipes]
    for p in procs:
        p.join(60)
    return results


@pytest.mark.parametrize("races", [6, pytest.param(20, marks=pytest.mark.slow)])
def test_two_writers_race_and_exactly_one_trains(tmp_path, racers, races):
    """Two `learnpos train` into one --train.out_dir, started together, 6 times (20 under -m slow):
    exactly one trains, the other exits 2 with one line naming the holder (or, if it came after
    the end, the finished run), and the run equals a run made alone: never two runs mixed in one
    log, never a config of one and checkpoints of the other, never a deleted run."""
    solo = tmp_path / "solo"
    assert main(["train", *TINY, f"--train.out_dir={solo}"]) == 0
    outcomes = []
    for i in range(races):
        run = tmp_path / f"race-{i}"
        if i % 4 == 3:
            run.mkdir()  # an existing empty folder: the lock, not mkdir, must settle it
        (code_a, err_a), (code_b, err_b) = _race(racers, [["train", *TINY, f"--train.out_dir={run}"]] * 2, tmp_path)
        assert sorted([code_a, code_b]) == [0, 2], (err_a, err_b)
        loser = one_error_line(err_a if code_a == 2 else err_b)
        assert "in use by another learnpos process (pid " in loser or "already holds a trained model" in loser, loser
        outcomes.append("lock" if "in use" in loser else "after")
        same_run(run, solo)
    assert outcomes.count("lock") >= races // 3, outcomes  # races overlap in time: the lock, not luck, decided


def test_resume_races_and_resume_while_training_are_refused(tmp_path, racers):
    """`train --resume RUN` twice at once, and while RUN trains: one writer, one trajectory."""
    run, solo = tmp_path / "run", tmp_path / "solo"
    for r in (run, solo):
        assert main(["train", *TINY, f"--train.out_dir={r}"]) == 0
    assert main(["train", "--resume", str(solo), "--train.max_iters=12", "--quiet"]) == 0
    results = _race(racers, [["train", "--resume", str(run), "--train.max_iters=12", "--quiet"]] * 2, tmp_path)
    assert sorted(c for c, _ in results) == [0, 0] or sorted(c for c, _ in results) == [0, 2], results
    for code, err in results:
        if code == 2:
            assert "in use by another learnpos process" in one_error_line(err)
    same_run(run, solo)  # a second resume after the first finished has nothing left to do

    long = tmp_path / "long"
    proc = training_in_background(long, tmp_path)
    try:
        config = (long / "config.json").read_bytes()
        r = cli("train", "--resume", str(long), "--train.max_iters=200000", cwd=tmp_path)
        assert r.returncode == 2 and f"pid {proc.pid}" in one_error_line(r.stderr)
        assert (long / "config.json").read_bytes() == config  # not rewritten by the refused writer
        r = cli("train", *TINY, f"--train.out_dir={long}", cwd=tmp_path)
        assert r.returncode == 2 and "in use" in one_error_line(r.stderr)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert proc.returncode == 130 and checkpoint_dirs(long)  # interrupted, its checkpoints kept
    reached = int(checkpoint_dirs(long)[-1].name[5:])
    assert cli("train", "--resume", str(long), f"--train.max_iters={reached + 50}", cwd=tmp_path).returncode == 0


def test_the_lock_dies_with_its_process(tmp_path):
    """SIGKILL leaves the lock file but no lock: the next writer goes on (no stale lock)."""
    run = tmp_path / "run"
    proc = training_in_background(run, tmp_path)
    proc.kill()
    proc.wait()
    assert (run / LOCK_FILE).exists()
    reached = int(checkpoint_dirs(run)[-1].name[5:])
    r = cli("train", "--resume", str(run), f"--train.max_iters={reached + 50}", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_a_fresh_run_that_fails_removes_only_what_it_made(tmp_path, monkeypatch):
    """An existing folder given as --train.out_dir stays (only the run's files go); a folder
    the run created goes whole; a folder holding anything else is refused untouched."""
    import learnpos.train as train_module

    def broken(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x" / "model.safetensors"))

    monkeypatch.setattr(train_module, "save_weights", broken)
    keep = tmp_path / "keep"
    keep.mkdir()
    assert main(["train", *TINY, f"--train.out_dir={keep}"]) == 2
    assert keep.is_dir() and [p.name for p in keep.iterdir()] == [LOCK_FILE]
    new = tmp_path / "new"
    assert main(["train", *TINY, f"--train.out_dir={new}"]) == 2
    assert not new.exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["train", *TINY, f"--train.out_dir={other}"]) == 2
    assert (other / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------ what a run was trained on


def _lm_run(tmp_path: Path, data: Path, run: Path | None = None) -> Path:
    run = run or tmp_path / "lm"
    args = ["train", "--preset", "shakespeare-char", "--data", str(data), "--train.max_iters=6",
            "--train.eval_interval=6", "--train.warmup_iters=1", "--model.n_layer=1", "--model.n_embd=16",
            "--model.n_head=2", "--lm.block_size=16", "--model.positional.max_len=16", "--lm.eval_windows=8",
            "--train.batch_size=4", f"--train.out_dir={run}", "--quiet"]
    assert main(args) == 0
    return run


def _text(n: int = 4000) -> str:
    return "".join("abcdefgh ij\n"[(i * 7 + i // 5) % 12] for i in range(n))


def test_a_run_records_its_data_and_says_when_it_changed(tmp_path, capsys, caplog, monkeypatch):
    data = tmp_path / "corpus.txt"
    data.write_text(_text())
    run = _lm_run(tmp_path, data)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lm"]["data"] == str(data) and Path(cfg["lm"]["data"]).is_absolute()
    manifest = json.loads((run / DATA_FILE).read_text())
    (record,) = manifest["lm.data"]["files"]
    assert manifest["lm.data"]["path"] == str(data) and record["name"] == "" and record["size"] == len(_text())
    capsys.readouterr()

    # eval from another folder finds the data (absolute path); unchanged data: no warning
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", "--run", str(run), "--json"]) == 0
    clean = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["loss"]
    assert "other data" not in caplog.text

    # the data changes: eval says so in one line and goes on; resume refuses unless told
    data.write_text(_text()[::-1])
    assert main(["eval", "--run", str(run), "--json"]) == 0
    warning = [r.getMessage() for r in caplog.records if "was trained on other data" in r.getMessage()]
    assert len(warning) == 1 and "corpus.txt" in warning[0] and "changed" in warning[0], caplog.text
    assert "\n" not in warning[0]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["loss"] != clean
    caplog.clear()
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "--train.max_iters=8", "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "data changed" in line and "--accept-data-change" in line
    assert snapshot(run) == before
    assert main(["train", "--resume", str(run), "--train.max_iters=8", "--quiet", "--accept-data-change"]) == 0
    assert json.loads((run / DATA_FILE).read_text())["lm.data"]["files"][0]["sha256"] != record["sha256"]

    # the data moves: eval and resume say where it was looked for, and take --data
    moved = tmp_path / "moved.txt"
    data.rename(moved)
    capsys.readouterr()
    assert main(["eval", "--run", str(run)]) == 2
    assert "does not exist" in one_error_line(capsys.readouterr().err)
    assert main(["eval", "--run", str(run), "--data", str(moved), "--json"]) == 0
    assert "other data" not in caplog.text
    assert main(["train", "--resume", str(run), "--data", str(moved), "--train.max_iters=10", "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["lm"]["data"] == str(moved)


def test_a_damaged_token_cache_is_rebuilt_never_believed(tmp_path, capsys, caplog):
    """A cache file overwritten with zeros of the right size gave another validation loss at
    68b4e7f (exit 0). Now its checksum fails, it is rebuilt with a warning, the loss is right."""
    data = tmp_path / "corpus.txt"
    data.write_text(_text())
    run = _lm_run(tmp_path, data)
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--json"]) == 0
    loss = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["loss"]
    caches = list((Path(os.environ["LEARNPOS_CACHE"]) / "tokens").glob("*/val.bin"))
    assert caches
    for cache in caches:
        cache.write_bytes(b"\0" * cache.stat().st_size)
    assert main(["eval", "--run", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["loss"] == loss
    assert "does not match its checksums" in caplog.text


def test_config_json_names_no_cache_folder_and_files_follow_the_umask(tmp_path, capsys):
    """A config.json saying where to cache (lm.cache_dir) is not obeyed: eval of a run whose
    config points elsewhere writes nothing there. New files get what the user's umask gives."""
    data = tmp_path / "corpus.txt"
    data.write_text(_text())
    old = os.umask(0o077)
    try:
        run = _lm_run(tmp_path, data)
    finally:
        os.umask(old)
    for path in [run / "config.json", run / DATA_FILE, latest_checkpoint(run) / "model.safetensors"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(latest_checkpoint(run).stat().st_mode) == 0o700
    cfg = json.loads((run / "config.json").read_text())
    cfg["lm"]["cache_dir"] = str(tmp_path / "planted")
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["eval", "--run", str(run)]) == 0
    assert not (tmp_path / "planted").exists()


def test_a_run_folder_inside_its_data_folder_is_not_read_as_data(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(_text())
    run = _lm_run(tmp_path, folder, folder / "run")
    assert [f["name"] for f in json.loads((run / DATA_FILE).read_text())["lm.data"]["files"]] == ["a.txt"]
    chars = json.loads((run / "tokenizer.json").read_text())["chars"]
    assert "{" not in chars and '"' not in chars  # none of the run's own JSON files was read as text
    assert main(["train", "--resume", str(run), "--train.max_iters=8", "--quiet"]) == 0  # same data on resume


def test_special_files_are_not_said_to_be_missing(tmp_path, capsys):
    assert main(["train", "--preset", "shakespeare-char", "--data", "/dev/zero", f"--train.out_dir={tmp_path / 'r'}",
                 "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "/dev/zero is not a regular file" in line and "does not exist" not in line
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ config.json is untrusted


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("robust") / "run"
    assert main(["train", *TINY, f"--train.out_dir={run}"]) == 0
    return run


@pytest.mark.parametrize("key, value, named", [("n_layer", 1_000_000, "model.n_layer=1000000"),
                                              ("n_embd", 32, "model.n_embd=32"),
                                              ("max_len", 64, "pos.weight is [40, 16] there but [64, 16]")])
def test_a_config_that_disagrees_with_its_weights_is_refused_before_allocating(demo_run, tmp_path, capsys, key, value,
                                                                                named):
    """68b4e7f: a checkpoint whose shapes disagree with config.json was a traceback, and a
    config asking for a million layers was allocated (7.5 GB) before failing."""
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    cfg = json.loads((run / "config.json").read_text())
    (cfg["model"]["positional"] if key == "max_len" else cfg["model"])[key] = value
    (run / "config.json").write_text(json.dumps(cfg))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for argv in (["eval", "--run", str(run)], ["generate", "--run", str(run), "--prompt", "1 2 3"],
                 ["train", "--resume", str(run), "--train.max_iters=20", "--quiet"]):
        assert main(argv) == 2
        assert named in one_error_line(capsys.readouterr().err)
    assert time.perf_counter() - t0 < 20 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200_000


def test_char_runs_export_to_hf_and_import_back(tmp_path, capsys):
    """68b4e7f: `import-hf` of its own char-level export said "the tokenizer has 62 tokens but
    the model only vocab_size=61". Now the round trip closes: same greedy continuation."""
    pytest.importorskip("transformers")
    data = tmp_path / "corpus.txt"
    data.write_text(_text())
    run = _lm_run(tmp_path, data)
    assert main(["export-hf", str(run), str(tmp_path / "hf")]) == 0
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    outputs, prompt = [], _text()[:3]
    for r in (run, tmp_path / "back"):
        capsys.readouterr()
        assert main(["generate", "--run", str(r), "--prompt", prompt, "--temperature", "0",
                     "--max-new-tokens", "8"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith(prompt) and len(outputs[0]) == 12  # + 8 and a newline


def test_import_hf_checks_sizes_against_the_header_first(tmp_path, capsys):
    pytest.importorskip("transformers")
    data = tmp_path / "corpus.txt"
    data.write_text(_text())
    run = _lm_run(tmp_path, data)
    assert main(["export-hf", str(run), str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    for i, (change, named) in enumerate([({"n_layer": 1_000_000}, "n_layer=1000000"), ({"n_embd": 64}, "n_embd=64"),
                                         ({"n_positions": 4096}, "n_positions=4096"), ({"n_head": 0}, "n_head")]):
        bad = tmp_path / f"bad-{i}"
        shutil.copytree(tmp_path / "hf", bad)
        conf = json.loads((bad / "config.json").read_text())
        conf.update(change)
        (bad / "config.json").write_text(json.dumps(conf))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert main(["import-hf", str(bad), str(tmp_path / f"run-{i}")]) == 2
        assert named in one_error_line(capsys.readouterr().err)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200_000
        assert not (tmp_path / f"run-{i}").exists()
    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "hf", damaged)
    raw = (damaged / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(raw[:8] + b"{not json" + raw[17:])
    assert main(["import-hf", str(damaged), str(tmp_path / "run-damaged")]) == 2
    assert "model.safetensors is not a readable safetensors file" in one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------ the operating system


def test_every_os_failure_is_named_with_what_to_do():
    from learnpos.errors import os_error_message

    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.ENOTDIR, errno.EMFILE, errno.EISDIR, errno.EDQUOT):
        message = os_error_message(OSError(code, os.strerror(code), "/some/path"))
        assert message.startswith("/some/path: ") and "(" in message and "\n" not in message
    assert "free space" in os_error_message(OSError(errno.ENOSPC, "No space left on device", "/x"))
    assert "ulimit -n" in os_error_message(OSError(errno.EMFILE, "Too many open files"))


def test_disk_full_while_checkpointing_is_one_line_and_leaves_nothing_half(tmp_path, capsys, monkeypatch):
    """The disk fills up in the middle of the checkpoint (the optimizer state's write fails):
    one line naming the path and the remedy, exit 2, no temporary folder left behind, and a
    run that already had a checkpoint keeps it and resumes."""
    import learnpos.train as train_module

    run = tmp_path / "run"
    assert main(["train", *TINY, f"--train.out_dir={run}"]) == 0
    real = train_module.save_trainer_state

    def full(path, *args, **kwargs):
        real(path, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(train_module, "save_trainer_state", full)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--train.max_iters=9", "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "trainer_state.pt" in line and "free space" in line
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000003", "step-00000006"]
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--train.max_iters=9", "--quiet"]) == 0


def _mount_tmpfs(where: Path, size: str) -> bool:
    """A small file system of our own (root here and in CI); False where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "disk"
    if not _mount_tmpfs(where, "200k"):
        pytest.skip("cannot mount a small file system here (needs root); the in-process ENOSPC test covers it")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_real_full_disk(small_disk, tmp_path):
    """Training into a 200 KB file system: the config and log fit, the checkpoint does not."""
    r = cli("train", *TINY, "--model.n_embd=64", f"--train.out_dir={small_disk / 'run'}", cwd=tmp_path)
    line = one_error_line(r.stderr)
    assert r.returncode == 2 and "No space left on device" in line and "free space" in line
    assert not (small_disk / "run").exists()  # a fresh run that failed removed what it made


@pytest.fixture
def read_only_run(demo_run, tmp_path):
    where = tmp_path / "ro"
    if not _mount_tmpfs(where, "20m"):
        pytest.skip("cannot mount a read-only file system here (needs root)")
    shutil.copytree(demo_run, where / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    yield where / "run"
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_read_only_run_is_evaluated_inspected_and_sampled(read_only_run, tmp_path):
    """In this process (what the commands compute and say; the mount is what is real)."""
    run = read_only_run
    for args in (["eval", "--run", str(run)], ["generate", "--run", str(run), "--prompt", " ".join("1234" * 4)],
                 ["inspect", str(run), "--out", str(tmp_path / "report")]):
        r = run_cli(*args, cwd=tmp_path)
        assert r.returncode == 0, (args, r.stderr)
    assert (tmp_path / "report" / "report.html").exists()
    for args, named in ((["inspect", str(run)], "read-only"),
                        (["train", "--resume", str(run), "--quiet"], "read-only")):
        r = run_cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and named in one_error_line(r.stderr), (args, r.stderr)


def test_paths_that_are_files_where_folders_belong(demo_run, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for argv, named in ((["train", *TINY, f"--train.out_dir={tmp_path / 'file'}"], "is a file"),
                        (["inspect", str(demo_run), "--out", str(tmp_path / "file")], "is a file"),
                        (["eval", "--run", str(demo_run), "--out", str(tmp_path / "file")], "is a file"),
                        (["train", *TINY, f"--train.out_dir={tmp_path / 'file' / 'run'}"], "Not a directory")):
        assert main(argv) == 2, argv
        assert named in one_error_line(capsys.readouterr().err), argv
    assert (tmp_path / "file").read_text() == "x"


def test_too_many_open_files_is_one_line(demo_run, tmp_path):
    """With the open-file limit at its smallest the run cannot even be read: one line, exit 2."""
    code = ("import os, resource, sys; from learnpos.cli import main; import learnpos.train, learnpos.tasks; "
            "n = len(os.listdir('/proc/self/fd')); resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
            f"sys.exit(main(['eval', '--run', {str(demo_run)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 2 and "Too many open files" in one_error_line(r.stderr) and "ulimit -n" in r.stderr


# ------------------------------------------------------------------ signals and pipes


def test_a_closed_pipe_ends_the_command_quietly(demo_run, tmp_path):
    for args in (["config"], ["generate", "--run", str(demo_run), "--prompt", "1 2 3", "--num-samples", "50"]):
        proc = subprocess.Popen([sys.executable, "-m", "learnpos", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=ENV, cwd=tmp_path)
        proc.stdout.close()  # the reader is gone before the first line is printed
        err = proc.stderr.read().decode()
        proc.wait(120)
        assert proc.returncode in (0, 141) and err == "", (args, proc.returncode, err)


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    run = tmp_path / "run"
    proc = training_in_background(run, tmp_path, stderr=subprocess.PIPE)
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read().decode()
    proc.wait(60)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and lines[0].startswith("learnpos train: terminated (SIGTERM)")
    assert "keeps its checkpoint step-" in lines[0] and f"--resume {run}" in lines[0]
    reached = int(checkpoint_dirs(run)[-1].name[5:])
    r = cli("train", "--resume", str(run), f"--train.max_iters={reached + 50}", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_resume_never_rewrites_the_config_to_a_step_the_run_has_passed(demo_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "--train.max_iters=3", "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "train.max_iters=3 is below step 6" in line and "--train.max_iters=6 or more" in line
    assert snapshot(run) == before


def test_chat_input_that_is_not_utf8_is_one_note_not_a_traceback(tmp_path):
    data = tmp_path / "dlg"
    data.mkdir()
    for split in ("train", "valid", "test"):
        lines = [json.dumps({"turns": [{"speaker": "user", "text": "hello there"},
                                       {"speaker": "bot", "text": f"hi {i}"}]}) for i in range(6)]
        (data / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    assert main(["train", "--preset", "dailydialog", "--data", str(data), "--train.max_iters=2",
                 "--train.warmup_iters=0", "--train.eval_interval=2", "--model.n_layer=1", "--model.n_embd=16",
                 "--model.n_head=2", "--dialogue.distinct_samples=2", f"--train.out_dir={run}", "--quiet"]) == 0
    r = cli("chat", "--run", str(run), "--max-new-tokens", "4", cwd=tmp_path,
            stdin=b"caf\xe9 latin-1\n\xff\xfe\nhello\n/quit\n")
    out = r.stdout.decode("utf-8")
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert out.count("[that line is not UTF-8 text") == 2 and "bot> " in out  # the UTF-8 line was answered
