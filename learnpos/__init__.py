"""learnpos: Transformers with learnable positional encodings, built, verified, trained and explained."""

from learnpos.config import Config, ModelConfig, PositionalConfig, TrainConfig, load_config
from learnpos.model import GPT, KVCache
from learnpos.positional import LearnedPositionalEmbedding, position_ids_from_mask

__version__ = "0.1.0"

__all__ = ["Config", "ModelConfig", "PositionalConfig", "TrainConfig", "load_config", "GPT", "KVCache",
           "LearnedPositionalEmbedding", "position_ids_from_mask", "__version__"]
