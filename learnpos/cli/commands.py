"""The `learnpos` commands: one function per command, `cmd_<name>(args, overrides) -> exit code`.
Each imports what it needs when it runs, so `learnpos --help` stays fast."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from learnpos.errors import ConfigError, DataError
from learnpos.files import folder_contents


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

