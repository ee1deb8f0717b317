"""The transformer: one definition for the GPT-2 and Llama families, with a KV cache."""

from .config import ModelConfig
from .gpt import GPT, KVCache

__all__ = ["GPT", "KVCache", "ModelConfig"]
