"""Models: the Llama-family transformer and its config."""
from jaxpost.models.config import ModelConfig
from jaxpost.models.transformer import Transformer

__all__ = ["ModelConfig", "Transformer"]
