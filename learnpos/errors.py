"""Errors a user can cause and fix. The CLI turns every `LearnposError` into one line on
stderr and exit code 2; anything else is a bug and keeps its traceback."""


class LearnposError(Exception):
    """Base class for problems in the user's input (config, data, positions, run dirs)."""


class ConfigError(LearnposError, ValueError):
    """An unknown key, a wrong type or an impossible combination in a config."""


class DataError(LearnposError, ValueError):
    """Missing, empty, binary or non-UTF-8 data, or text a tokenizer cannot encode."""


class PositionOutOfRange(LearnposError, ValueError):
    """A position id that the positional encoding cannot represent."""


class RunDirError(LearnposError):
    """A run directory that is missing, incomplete or would be overwritten."""


class TrainingDiverged(LearnposError):
    """The loss became NaN or infinite."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (libraries raise multi-line ones), for
    wrapping it in a one-line LearnposError."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]
