"""The parser of `learnpos <command>`: option types (each checks its value where it is parsed,
its range in `--help`), config overrides (`--section.key=value`), and every command's options."""

from __future__ import annotations

import argparse
import dataclasses
import math

from learnpos.cli.commands import (
    cmd_chat,
    cmd_compare,
    cmd_config,
    cmd_data,
    cmd_demo,
    cmd_eval,
    cmd_export_hf,
    cmd_generate,
    cmd_import_hf,
    cmd_inspect,
    cmd_kg,
    cmd_train,
    cmd_tune,
    cmd_verify,
)
from learnpos.config import SEED_MAX, Config, is_device_name
from learnpos.errors import ConfigError

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
                                                     "init=zeros, learned+decay, learned+offset, "
                                                     "learned+offset+randomized, task-ids+offset, task-ids+randomized "
                                                     "(the last two for tasks with their own ids: copy, reverse, add)")
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

