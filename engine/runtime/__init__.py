"""The chat runtime: llama.cpp (llama-cpp-python) on GGUF files. No Qt, no torch."""

from .chat_template import ChatTemplate, ChatTemplateError
from .llama_runtime import (
    ContextOverflowError,
    Generation,
    GenerationStats,
    LlamaRuntime,
    ModelLoadError,
    Prompt,
    common_prefix,
)
from .settings import RuntimeSettings, Sampling, default_batch_threads, default_threads

__all__ = [
    "ChatTemplate",
    "ChatTemplateError",
    "ContextOverflowError",
    "Generation",
    "GenerationStats",
    "LlamaRuntime",
    "ModelLoadError",
    "Prompt",
    "RuntimeSettings",
    "Sampling",
    "common_prefix",
    "default_batch_threads",
    "default_threads",
]
