"""Tokenizer files beside a model: tokenizer.json and tokenizer_config.json (with the chat template)."""

from __future__ import annotations

import json
from pathlib import Path

from .bpe import Tokenizer


def tokenizer_config(tokenizer: Tokenizer) -> dict:
    """The Hugging Face tokenizer_config.json for our tokenizers."""
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "bos_token": tokenizer.bos_token,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000,
    }
    try:
        from .chat_template import JINJA_CHAT_TEMPLATE

        cfg["chat_template"] = JINJA_CHAT_TEMPLATE
    except ImportError:  # the chat format module arrives with SFT
        pass
    return cfg


def save_tokenizer_files(tokenizer: Tokenizer, folder: str | Path) -> None:
    folder = Path(folder)
    tokenizer.save(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tokenizer), indent=2) + "\n")
