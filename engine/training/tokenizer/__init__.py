"""Byte-level BPE tokenizers (trained here or loaded from tokenizer.json / GGUF) and the chat format."""

from .bpe import ENDOFTEXT, IM_END, IM_START, PAD, SPECIAL_TOKENS, Tokenizer

__all__ = ["ENDOFTEXT", "IM_END", "IM_START", "PAD", "SPECIAL_TOKENS", "Tokenizer"]
