"""learnpos: Transformers with learnable positional encodings, built, verified, trained and explained.

The names below are loaded on first use (PEP 562), so `import learnpos.config` or
`import learnpos.data.tokenizers` stays light and does not import torch.
"""

import importlib
import os

# OpenMP threads that busy-wait make every step 25-50x slower when another process holds a
# core; passive waiting costs nothing measurable when the machine is idle. Only a default:
# it applies if torch has not been imported yet and the user has not chosen otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "learnpos.config", "ModelConfig": "learnpos.config", "PositionalConfig": "learnpos.config",
    "TableConfig": "learnpos.config", "TrainConfig": "learnpos.config",
    "GPT": "learnpos.model", "KVCache": "learnpos.cache",
    "LearnedPositionalEmbedding": "learnpos.positional", "position_ids_from_mask": "learnpos.positional",
    "load_run": "learnpos.load", "train": "learnpos.train",
}

__all__ = [*_EXPORTS, "load_config", "__version__"]


def load_config(preset=None, overrides=None):
    """`learnpos.config.load_config` with the built-in tasks registered."""
    importlib.import_module("learnpos.tasks")
    return importlib.import_module("learnpos.config").load_config(preset, overrides)


def __getattr__(name):
    if name in _EXPORTS:
        if _EXPORTS[name] == "learnpos.config":  # a Config needs the task sections registered
            importlib.import_module("learnpos.tasks")
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'learnpos' has no attribute '{name}'")
