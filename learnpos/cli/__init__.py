"""`learnpos <command>`: the user-facing entry point. Owns all printing and exit codes.

Exit codes: 0 success, 1 a failed check, 2 bad input (an option, config, data or run
directory) or a failure of the operating system (disk full, read-only, permission, ...),
each with a one-line message and no traceback; 130 interrupted (Ctrl-C), 143 terminated
(SIGTERM), 141 the reader of stdout went away (`learnpos config | head`), as Unix tools do.
Every option is checked where it is parsed; its range is in `--help`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from learnpos.cli.parser import UsageError, _parse_overrides, build_parser
from learnpos.errors import ConfigError, DataError, LearnposError, os_error_message

__all__ = ["build_parser", "main"]


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
