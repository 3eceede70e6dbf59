"""learnpos: Transformers with learnable positional encodings, built, verified, trained and explained."""

import os

# OpenMP threads that busy-wait make every step 25-50x slower when another process holds a
# core; passive waiting costs nothing measurable when the machine is idle. Only a default:
# it applies if torch has not been imported yet and the user has not chosen otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from learnpos.config import Config, ModelConfig, PositionalConfig, TrainConfig, load_config
from learnpos.model import GPT, KVCache
from learnpos.positional import LearnedPositionalEmbedding, position_ids_from_mask

__version__ = "0.1.0"

__all__ = ["Config", "ModelConfig", "PositionalConfig", "TrainConfig", "load_config", "GPT", "KVCache",
           "LearnedPositionalEmbedding", "position_ids_from_mask", "__version__"]
