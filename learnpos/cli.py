"""`learnpos <command>`: the user-facing entry point. Owns all printing and exit codes.

Exit codes: 0 success, 1 a failed check, 2 bad input (an option, config, data or run
directory) or a failure of the operating system (disk full, read-only, permission, ...),
each with a one-line message and no traceback; 130 interrupted (Ctrl-C), 143 terminated
(SIGTERM), 141 the reader of stdout went away (`learnpos config | head`), as Unix tools do.
Every option is checked where it is parsed; its range is in `--help`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
from pathlib import Path

from learnpos.config import SEED_MAX, Config, is_device_name
from learnpos.errors import ConfigError, DataError, LearnposError, os_error_message
from learnpos.files import folder_contents

TOP_LEVEL_KEYS = tuple(f.name for f in dataclasses.fields(Config) if isinstance(f.default, str))  # e.g. task


def _parse_overrides(tokens: list[str]) -> dict[str, str]:
    """['--model.n_layer=4', '--train.lr', '3e-4'] -> {'model.n_layer': '4', 'train.lr': '3e-4'}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or len(tok) == 2:
            raise ConfigError(f"unexpected argument '{tok}'; config overrides look like --section.key=value")
        key, eq, value = tok[2:].partition("=")
        if "." not in key and key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"unknown option --{key}; see --help (config overrides look like --section.key=value)")
        if not eq:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise ConfigError(f"override --{key} needs a value: --{key}=VALUE")
            value = tokens[i + 1]
            i += 1
        out[key.replace("-", "_")] = value
        i += 1
    return out


def _free_dir(path: Path) -> tuple[Path, bool]:
    """(`path`, or `path-2`, `path-3`, ... the first that this process creates itself, and
    whether it did): never overwrite or mix runs; two demos started together get two folders.
    An existing empty folder (or one holding only a lock file) is taken as it is."""
    candidate, n = path, 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate, True
        except FileExistsError:
            if candidate.is_dir() and not folder_contents(candidate):
                return candidate, False  # the training's lock then settles who writes it
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")


# ---------------------------------------------------------------------- option types
# Each raises argparse.ArgumentTypeError, which the parser turns into one line naming the option.


def _integer(text: str) -> int:
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def int_at_least(low: int):
    def parse(text: str) -> int:
        value = _integer(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in 0..{SEED_MAX} (2**63 - 1), got {text}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def temperature(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = greedy), got {text}")
    return value


def probability(text: str) -> float:
    value = _finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (1 = off), got {text}")
    return value


def seed_list(text: str) -> list[int]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"needs at least one seed, comma-separated (e.g. 1337,1,2), got {text!r}")
    return [seed(t) for t in items]


def factor_list(text: str) -> list[float]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    values = [_finite(t) for t in items]
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"needs positive numbers, comma-separated (e.g. 1,1.5,2,4), got {text!r}")
    return values


def _positive_minutes(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {text!r}")
    return value


def device(text: str) -> str:
    if not is_device_name(text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def utf8_text(text: str) -> str:
    """Command-line text as the OS gave it: bytes that are not UTF-8 arrive as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise argparse.ArgumentTypeError(f"is not UTF-8 text (an undecodable byte at character {e.start}); "
                                         f"give UTF-8 (e.g. convert with iconv -t utf-8)") from None
    return text


class UsageError(ConfigError):
    """A bad option, reported by the parser of `prog`."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse, except that a bad option is one line (no usage block), exit code 2."""

    def error(self, message: str):
        raise UsageError(self.prog, f"{message} (see {self.prog} --help)")


def _emit_json(record: dict) -> None:
    print(json.dumps(record), flush=True)


# ---------------------------------------------------------------------------- commands


def cmd_demo(args, overrides) -> int:
    from learnpos.config import load_config
    from learnpos.train import train

    cfg = load_config("demo", overrides)
    out, created = _free_dir(Path(args.out or cfg.train.out_dir))
    cfg.train.out_dir = str(out)
    p, s = cfg.model.positional, cfg.synthetic
    if not args.quiet:
        print(f"learnpos demo: teach a {cfg.model.n_layer}-layer Transformer with a learned position table "
              f"({p.max_len} x {cfg.model.n_embd}) to reverse {s.length} symbols; {cfg.train.max_iters} steps "
              f"on {cfg.train.device}", flush=True)
    try:
        result = train(cfg, quiet=args.quiet)
    except BaseException:  # the folder this demo made goes too, if the failed run left it empty
        if created and out.is_dir() and not folder_contents(out):
            shutil.rmtree(out, ignore_errors=True)
        raise
    m = result.metrics
    if not args.quiet:
        print(f"held-out exact-match {m['exact_match']:.3f} on {s.n_eval} sequences "
              f"(token accuracy {m['token_accuracy']:.4f}) in {result.wall_s:.1f} s")
        print(f"run dir: {result.run_dir}  (config.json, checkpoints/, metrics.jsonl, pos_similarity.png)")
        digits = "31415926535897932384626433832795028841971693993751"  # any s.length symbols < n_symbols
        prompt = " ".join(str(int(d) % s.n_symbols) for d in (digits * 4)[:s.length])
        print(f"try: learnpos generate --run {result.run_dir} --prompt \"{prompt}\"")
    if args.json:
        _emit_json({"task": cfg.task, "exact_match": m["exact_match"], "wall_s": round(result.wall_s, 2),
                    "run_dir": str(result.run_dir)})
    return 0


def cmd_train(args, overrides) -> int:
    from learnpos.config import load_config, load_run_config, set_override, validate
    from learnpos.train import train

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.json").exists():
            raise ConfigError(f"--resume {run_dir}: no config.json there; give the run directory of an earlier run")
        cfg = load_run_config(run_dir / "config.json")
        for key, value in overrides.items():
            set_override(cfg, key, value)
        cfg.train.out_dir = str(run_dir)
    elif args.preset is None and not args.dataset and overrides.get("task") in DERIVED_TASKS:
        cfg = _derived_config(args, overrides)
    else:
        preset = args.preset or "demo"
        if args.dataset and args.preset is None:  # --dataset NAME without --preset: the dataset's preset
            preset = _dataset_preset(args.dataset)
            if overrides.get("task") == "kg":
                del overrides["task"]  # the preset's own task
        cfg = load_config(preset, overrides)
    for flag, field, value in (("--data", "data", args.data), ("--val-data", "val_data", args.val_data),
                               ("--dataset", "dataset", args.dataset)):
        if value:  # shorthands for the task's own section: --data PATH = --lm.data=PATH or --kg.data=PATH
            set_override(cfg, _task_key(cfg, field, flag), value)
    validate(cfg)
    worker = os.environ.get("RANK", "0") != "0"  # a torchrun process other than rank 0: it prints nothing
    try:
        result = train(cfg, resume=bool(args.resume), quiet=args.quiet or worker,
                       accept_data_change=args.accept_data_change)
    except KeyboardInterrupt as e:
        from learnpos.runs import checkpoint_dirs

        kept = checkpoint_dirs(cfg.train.out_dir)
        run = cfg.train.out_dir
        e.args = (f"{run} keeps its checkpoint {kept[-1].name}: continue with learnpos train --resume {run}"
                  if kept else f"no checkpoint was written yet, so {run} is left as it was",)
        raise
    m = {k: v for k, v in result.metrics.items() if not isinstance(v, list)}
    if worker:
        return 0
    if not args.quiet:
        print(f"done: step {result.step} in {result.wall_s:.1f} s; run dir {result.run_dir}")
    if args.json:
        _emit_json({"task": cfg.task, "step": result.step, **m, "wall_s": round(result.wall_s, 2),
                    "run_dir": str(result.run_dir)})
    return 0


def cmd_export_hf(args, overrides) -> int:
    from learnpos.hf import export_hf

    out = export_hf(args.run, args.out)
    print(f"wrote {out} (GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained read it)")
    return 0


def cmd_import_hf(args, overrides) -> int:
    from learnpos.hf import import_hf

    if args.data:
        overrides = {**overrides, "lm.data": args.data}
    run = import_hf(args.hf_dir, args.run, overrides)
    hint = f"learnpos train --resume {run} --train.max_iters=N" if args.data else \
        f"learnpos import-hf {args.hf_dir} NEW_DIR --data TEXT (to fine-tune)"
    print(f"wrote run {run}: try learnpos generate --run {run} --prompt \"...\", or {hint}")
    return 0


DERIVED_TASKS = ("kg", "lm", "dialogue")  # tasks whose settings `learnpos train` derives from the data


def _derived_config(args, overrides: dict[str, str]):
    """`learnpos train --task T --data PATH` with no preset: settings derived from the data
    (learnpos.derive), what was chosen printed to stderr."""
    from learnpos.derive import derive_config

    task = overrides.pop("task")
    data = args.data or overrides.get(f"{task}.data")
    if not data:
        raise ConfigError(f"--task {task} without --preset derives its settings from the data: give --data PATH "
                          f"(or pick a preset: `learnpos config --list`)")
    val_data = args.val_data or overrides.get("lm.val_data") if task == "lm" else None
    cfg, lines = derive_config(task, data, overrides, val_data)
    if not args.quiet:
        print("\n".join(lines), file=sys.stderr, flush=True)
    return cfg


def _task_key(cfg, field: str, flag: str) -> str:
    section = next((name for name, sec in cfg.sections.items() if field in {f.name for f in dataclasses.fields(sec)}),
                   None)
    if section is None:
        raise ConfigError(f"{flag}: task '{cfg.task}' has no {field} setting")
    return f"{section}.{field}"


def _dataset_preset(name: str) -> str:
    from learnpos.config import list_presets

    preset = f"kg-{name.lower()}"
    if preset not in list_presets():
        known = ", ".join(p[3:] for p in list_presets() if p.startswith("kg-"))
        raise ConfigError(f"--dataset {name}: no preset kg-{name.lower()} (presets exist for {known}); for another "
                          f"dataset pass --task=kg --kg.data=PATH --dataset NAME")
    return preset


def cmd_eval(args, overrides) -> int:
    from learnpos.hardware import autocast_for, resolve_device
    from learnpos.load import load_runs

    device = resolve_device(args.device, "--device")
    model, cfg, task = load_runs(args.run, device, data=_data_flags(args), check_data=True)
    extra = {}
    if args.split:
        if args.split not in task.splits:
            raise ConfigError(f"--split {args.split}: task '{cfg.task}' evaluates {', '.join(task.splits)}")
        extra["split"] = args.split
    if args.save_scores:
        if not task.saves_scores:
            raise ConfigError(f"--save-scores: task '{cfg.task}' has no score matrix to save")
        extra["save_scores"] = args.save_scores
    if args.out:
        task.files_dir = _out_dir(args.out)
    metrics = task.evaluate(model, device, autocast=autocast_for(device, cfg.train.dtype), length=args.length,
                            **extra)
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, list)}
    if not args.json or args.verbose:
        for k, v in metrics.items():
            shown = " ".join(f"{x:.3f}" for x in v) if isinstance(v, list) else f"{v:.4f}" \
                if isinstance(v, float) else str(v)
            print(f"{k}: {shown}")
    if args.json:
        runs = {"run_dir": str(args.run[0])} if len(args.run) == 1 else {"runs": [str(r) for r in args.run]}
        _emit_json({"task": cfg.task, **scalars, **runs})
    return 0


def _data_flags(args) -> dict[str, str]:
    """--data / --val-data of a command that reads a finished run: where its data is now."""
    return {field: value for field, value in (("data", args.data), ("val_data", getattr(args, "val_data", None)))
            if value}


def _out_dir(out: str) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (it is created if missing)")
    return path


def cmd_generate(args, overrides) -> int:
    import torch

    from learnpos.hardware import resolve_device
    from learnpos.load import load_run

    device = resolve_device(args.device, "--device")
    model, cfg, task = load_run(args.run, device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    streaming = task.streams_text and not args.no_stream
    temperature = args.temperature if args.temperature is not None else (0.8 if task.streams_text else 0.0)
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}", flush=True)
        text = task.respond(model, args.prompt, max_new_tokens=args.max_new_tokens,
                            stream=(lambda piece: print(piece, end="", flush=True)) if streaming else None,
                            sliding=args.sliding, skip_unknown=args.skip_unknown, temperature=temperature,
                            top_k=args.top_k, top_p=args.top_p, generator=gen)
        print("" if streaming else text, flush=True)  # streaming already printed the text
    return 0


def cmd_inspect(args, overrides) -> int:
    from learnpos.inspection import main as inspect_main

    inspect_main(args.run, str(_out_dir(args.out)) if args.out else None, args.device, _data_flags(args))
    return 0


def cmd_compare(args, overrides) -> int:
    from learnpos.compare import main as compare_main

    return compare_main(args.preset, args.variants, args.seeds, args.lengths, args.out, overrides, args.json)


def cmd_chat(args, overrides) -> int:
    import torch

    from learnpos.chat import ChatSession, run_chat
    from learnpos.hardware import resolve_device
    from learnpos.load import load_run

    lines = None
    if args.script:
        try:
            lines = Path(args.script).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"--script {args.script}: cannot read it as UTF-8 text ({e})") from None
    device = resolve_device(args.device, "--device")
    model, cfg, task = load_run(args.run, device)
    sampling = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k), ("top_p", args.top_p))
                if v is not None}
    gen = torch.Generator(device=device).manual_seed(args.seed)
    session = ChatSession(model, task, user=args.user, bot=args.bot, max_new_tokens=args.max_new_tokens,
                          generator=gen, **sampling)
    return run_chat(session, lines, echo=True)


def cmd_kg(args, overrides) -> int:
    from learnpos.hardware import resolve_device
    from learnpos.load import load_runs

    device = resolve_device(args.device, "--device")
    model, cfg, task = load_runs(args.run, device, command=("learnpos kg predict", "kg"), data=_data_flags(args),
                                 check_data=True)
    rows = task.predict(model, args.relation, head=args.head, tail=args.tail, top=args.top)
    if args.json:
        _emit_json({"head": args.head, "relation": args.relation, "tail": args.tail, "predictions": rows})
        return 0
    query = f"({args.head}, {args.relation}, ?)" if args.head is not None else f"(?, {args.relation}, {args.tail})"
    scores = f"; scores: mean log-probability of {len(args.run)} runs" if len(args.run) > 1 else ""
    print(f"{query}: top {len(rows)} of {task.E} entities (* = a known true triple{scores})")
    for i, r in enumerate(rows, 1):
        print(f"{i:3d}. {r['entity']}  {r['score']:.3f}{'  *' if r['known'] else ''}")
    return 0


def cmd_tune(args, overrides) -> int:
    from learnpos.tune import tune

    if args.preset is None and not args.data:
        raise ConfigError(f"learnpos tune --task {args.task} needs --data PATH (or --preset P)")
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    s = tune(args.task, args.data or "", args.budget, preset=args.preset, trials=args.trials, storage=args.storage,
             study_name=args.study, jobs=args.jobs, out=args.out, overrides=overrides, seed=args.seed,
             val_data=args.val_data, quiet=args.quiet, say=say)
    if args.json:
        _emit_json({k: s.get(k) for k in ("study", "task", "metric", "direction", "spent_minutes", "preset",
                                           "importance")} | {"best": s["best"], "baseline": s["baseline"],
                                                             "trials": len(s["trials"])})
        return 0
    from learnpos.tune import summary_markdown

    print(summary_markdown(s), end="")
    return 0


def cmd_data(args, overrides) -> int:
    from learnpos.data.fetch import fetch

    folder = fetch(args.name, args.dir, args.mirror, log=(lambda m: None) if args.quiet else print)
    print(folder)
    return 0


def cmd_verify(args, overrides) -> int:
    from learnpos.verify import main as verify_main

    return verify_main((["--json"] if args.json else []) + ["--seed", str(args.seed)])


def cmd_config(args, overrides) -> int:
    import learnpos.tasks  # noqa: F401  (registers the tasks' config sections)
    from learnpos.config import list_presets, load_config

    if args.list:
        print("\n".join(list_presets()))
        return 0
    print(load_config(args.preset, overrides).to_json())
    return 0


# -------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="learnpos", description="Transformers with learnable positional encodings.",
        epilog="Config overrides: any command that builds a config takes --section.key=value "
               "(e.g. --model.positional.kind=sinusoidal --train.max_iters=500).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    devices = "auto (default: cuda if available), cpu, cuda or cuda:N"
    data_moved = "where the run's data is now, if it moved (its content is checked against the run's data.json)"

    p = sub.add_parser("demo", help="train the reverse task with a learned table (CPU, < 3 min)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.add_argument("--out", help="run directory (default runs/demo, or runs/demo-N if taken)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or prose")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model from a preset plus overrides")
    p.add_argument("--preset", help="preset name or .toml path (see `learnpos config --list`); without it, "
                                    "--task kg|lm|dialogue --data PATH derives the settings from the data, and "
                                    "anything else trains the demo preset")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last checkpoint")
    p.add_argument("--data", help="the task's data: text for lm (= --lm.data), a triples folder or .tar.gz for kg "
                                  "(= --kg.data), a DailyDialog or JSONL folder for dialogue (= --dialogue.data); "
                                  "with --resume: " + data_moved)
    p.add_argument("--val-data", help="separate validation text (same as --lm.val_data=PATH)")
    p.add_argument("--dataset", help="a KG dataset name: picks its preset kg-NAME (umls, kinships, nations, "
                                     "wn18rr, fb15k-237) and sets kg.dataset")
    p.add_argument("--accept-data-change", action="store_true",
                   help="with --resume: continue although the data differs from what the run was trained on "
                        "(data.json is updated to the data as it is now)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run on its held-out set")
    p.add_argument("--run", required=True, action="append",
                   help="run directory; kg: repeat it to evaluate the runs as an ensemble (the mean of their "
                        "log-softmax scores)")
    p.add_argument("--length", type=int_at_least(1), default=None,
                   help="evaluate on sequences of this length (>= 1) instead of the training length")
    p.add_argument("--split", help="which split (kg: train, valid, test; default: the task's held-out split)")
    p.add_argument("--save-scores", metavar="FILE", help="kg: write the score matrix, queries and vocabularies "
                                                         "(safetensors)")
    p.add_argument("--data", help=data_moved)
    p.add_argument("--val-data", help="lm: " + data_moved.replace("data", "validation text", 1))
    p.add_argument("--out", metavar="DIR", help="write the evaluation's files (lm: loss by position) here; "
                                                "without it nothing is written (a run is never modified by eval)")
    p.add_argument("--device", type=device, default="auto", help=devices)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="continue a prompt with a trained run (streams text for LMs)")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--prompt", required=True, type=utf8_text,
                   help='text for an LM; for synthetic tasks symbols like "3 1 4 1 5" (index: "3 1 4 ?2")')
    p.add_argument("--num-samples", type=int_at_least(1), default=1, help="samples to draw (>= 1)")
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=None,
                   help=">= 1; default: as many as the learned table has room for (200 without a table)")
    p.add_argument("--temperature", type=temperature, default=None,
                   help=">= 0, 0 = greedy; default 0.8 for language models, 0 for synthetic tasks")
    p.add_argument("--top-k", type=int_at_least(1), default=None, help="keep the k most likely tokens (>= 1; "
                                                                        "default: all)")
    p.add_argument("--top-p", type=probability, default=None, help="nucleus sampling, in (0, 1] (default 1: off)")
    p.add_argument("--seed", type=seed, default=0, help=f"0..{SEED_MAX}")
    p.add_argument("--sliding", action="store_true",
                   help="past the learned table, keep generating from the most recent tokens")
    p.add_argument("--skip-unknown", action="store_true", help="drop prompt characters the model never saw")
    p.add_argument("--no-stream", action="store_true", help="print each sample when it is complete")
    p.add_argument("--device", type=device, default="auto", help=devices)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="talk with a dialogue run (or replay --script FILE, one user turn per line)")
    p.add_argument("--run", required=True, help="run directory of a dialogue run")
    p.add_argument("--script", metavar="FILE", help="user turns (and /commands), one per line; no terminal needed")
    p.add_argument("--user", type=utf8_text, help="the speaker you are (default: the data's first speaker)")
    p.add_argument("--bot", type=utf8_text, help="the speaker the model plays (default: the second)")
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=48,
                   help="at most this many tokens per reply (>= 1, less than the run's block)")
    p.add_argument("--temperature", type=temperature, default=None,
                   help=">= 0, 0 = greedy; default: the run's dialogue.sample_temperature")
    p.add_argument("--top-k", type=int_at_least(1), default=None, help=">= 1; default: all tokens")
    p.add_argument("--top-p", type=probability, default=None,
                   help="in (0, 1]; default: the run's dialogue.sample_top_p")
    p.add_argument("--seed", type=seed, default=0, help=f"0..{SEED_MAX}")
    p.add_argument("--device", type=device, default="auto", help=devices)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("tune", help="search a task's settings on your data with Optuna (needs learnpos[tune])")
    p.add_argument("--task", required=True, choices=("kg", "lm", "dialogue"))
    p.add_argument("--data", help="the task's data (as for train --data)")
    p.add_argument("--val-data", help="separate validation text (lm)")
    p.add_argument("--preset", help="start from this preset (default: the settings derived from the data)")
    p.add_argument("--budget", type=_positive_minutes, default=20.0,
                   help="minutes for the whole study, over all its sessions (default 20)")
    p.add_argument("--trials", type=int_at_least(0), default=0, help="stop after this many trials (default: "
                                                                     "as many as the budget holds)")
    p.add_argument("--storage", default="", help="Optuna storage URL (default sqlite:///OUT/study.db)")
    p.add_argument("--study", default="", help="study name (default TASK-DATANAME[-PRESET])")
    p.add_argument("--jobs", type=int_at_least(1), default=1, help="trials at once (default 1: on 2 cores one "
                                                                   "trial uses both)")
    p.add_argument("--out", default="", help="folder of the trials, the study and its summary "
                                             "(default runs/tune-STUDY)")
    p.add_argument("--seed", type=seed, default=0, help="the sampler's seed")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("compare", help="train one preset with every positional encoding and compare them across "
                                       "evaluation lengths (resumable)")
    p.add_argument("--preset", default="demo", help="preset name or .toml path")
    p.add_argument("--variants", default="all", help="comma-separated (default all): learned, learned+randomized, "
                                                     "sinusoidal, rope, alibi, none, init=randn, init=sinusoidal, "
                                                     "init=zeros, learned+decay")
    p.add_argument("--seeds", type=seed_list, default=[1337, 1, 2],
                   help=f"comma-separated seeds, each in 0..{SEED_MAX} (default 1337,1,2)")
    p.add_argument("--lengths", type=factor_list, default=[1, 1.5, 2, 4],
                   help="evaluation lengths as multiples (> 0) of the training length (default 1,1.5,2,4)")
    p.add_argument("--out", help="results and runs (default runs/compare-PRESET); run again to continue")
    p.add_argument("--json", action="store_true", help="print the runs as one JSON object last")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("inspect", help="plots and one self-contained report.html of what a run learned")
    p.add_argument("run", metavar="RUN_DIR", help="a run directory (of any task)")
    p.add_argument("--out", help="where the PNGs and report.html go (default RUN_DIR/inspect; a read-only run "
                                 "needs --out)")
    p.add_argument("--data", help=data_moved)
    p.add_argument("--val-data", help="lm: " + data_moved.replace("data", "validation text", 1))
    p.add_argument("--device", type=device, default="cpu",
                   help="where the task figures run the model: cpu (default), cuda, cuda:N, auto")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("kg", help="knowledge-graph runs: learnpos kg predict --run DIR --head H --relation R")
    p.add_argument("action", choices=["predict"])
    p.add_argument("--run", required=True, action="append",
                   help="run directory of a kg run; repeat it to ask an ensemble (scores: mean log-probability)")
    p.add_argument("--relation", required=True, type=utf8_text)
    side = p.add_mutually_exclusive_group(required=True)
    side.add_argument("--head", type=utf8_text, help="predict the tails of (HEAD, RELATION, ?)")
    side.add_argument("--tail", type=utf8_text, help="predict the heads of (?, RELATION, TAIL)")
    p.add_argument("--top", type=int_at_least(1), default=10, help="how many entities to list (>= 1)")
    p.add_argument("--data", help=data_moved)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", type=device, default="auto", help=devices)
    p.set_defaults(func=cmd_kg)

    p = sub.add_parser("export-hf", help="write a learned-position LM run as an HF GPT2LMHeadModel directory")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("out", metavar="OUT_DIR", help="a new directory")
    p.set_defaults(func=cmd_export_hf)

    p = sub.add_parser("import-hf", help="make a learnpos run from a local HF GPT-2 directory (safetensors + "
                                         "tokenizer.json); config overrides apply, e.g. --lm.block_size=128")
    p.add_argument("hf_dir", metavar="HF_DIR")
    p.add_argument("run", metavar="RUN_DIR", help="a new run directory")
    p.add_argument("--data", help="text to fine-tune and evaluate on (lm.data)")
    p.set_defaults(func=cmd_import_hf)

    p = sub.add_parser("data", help="download a public corpus: learnpos data fetch tinyshakespeare|wikitext-2")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("name", help="tinyshakespeare or wikitext-2")
    p.add_argument("--dir", help="cache folder (default ~/.cache/learnpos/data or $LEARNPOS_CACHE/data)")
    p.add_argument("--mirror", help="base URL of a copy laid out as <mirror>/<name>/<file>")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("verify", help="check the NumPy reference backward and optimizers against autograd")
    p.add_argument("--json", action="store_true", help="print {ok, checks: [...]} as the last line")
    p.add_argument("--seed", type=seed, default=0, help=f"0..{SEED_MAX}")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("config", help="print the resolved config of a preset plus overrides")
    p.add_argument("--preset", default="demo")
    p.add_argument("--list", action="store_true", help="list the presets")
    p.set_defaults(func=cmd_config)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the command stops where it is, a run keeps its checkpoint."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _quiet_stdout() -> None:
    """After the reader of stdout went away: send what is left to /dev/null, so the flush at
    exit does not fail a second time with a message on stderr."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file (a test's capture): nothing to silence
        pass


def main(argv: list[str] | None = None) -> int:
    command = "learnpos"
    previous = None
    for stream in (sys.stdout, sys.stderr):  # a path of undecodable bytes is printed escaped, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding program): leave signals alone
        pass
    try:
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        command = f"learnpos {args.command}"
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
        overrides = _parse_overrides(rest)
        if overrides and args.command in ("eval", "generate", "kg", "chat", "inspect", "export-hf", "verify",
                                          "data"):
            raise ConfigError(f"'{args.command}' takes no config overrides (got {', '.join(overrides)})")
        return args.func(args, overrides)
    except UsageError as e:
        print(f"{e.prog}: error: {e}", file=sys.stderr)
        return 2
    except LearnposError as e:
        rank = int(os.environ.get("RANK", "0"))  # torchrun starts one process per rank
        if rank == 0:
            print(f"{command}: error: {e}", file=sys.stderr)
        elif not isinstance(e, ConfigError | DataError):  # those come from the input every rank reads alike
            print(f"{command} (rank {rank}): error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except OSError as e:
        print(f"{command}: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{command}: error: out of memory (use a smaller model, batch or data, or close other programs)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        _close_progress_bars()  # each ends its line, so the message below has a line of its own
        why = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        detail = f": {e.args[0]}" if e.args else ""
        print(f"{command}: {why}{detail}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _close_progress_bars() -> None:
    """Close the tqdm bars an interrupted command left open (a bar redraws its line without a
    newline; closing it ends the line)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
