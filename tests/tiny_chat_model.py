"""A real, tiny model for serving tests: a random-init GPT and a BPE tokenizer trained on a few
KB of text, saved as a native folder and loaded back through `engine.training.loader.load`.

init_std is large on purpose: a random model with the usual 0.02 has near-uniform logits, where
tiny float differences (batched vs alone) could flip an argmax; peaked logits make greedy
comparisons exact.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.training.loader import LoadedModel, load
from engine.training.model import GPT, ModelConfig
from engine.training.model.checkpoint import save_model
from engine.training.tokenizer import Tokenizer

TEXT = [
    "To be, or not to be, that is the question. Whether 'tis nobler in the mind to suffer\n",
    "The slings and arrows of outrageous fortune, or to take arms against a sea of troubles.\n",
    "Explain how a classification algorithm works: it learns a boundary between classes.\n",
    "Café, naïve, façade, jalapeño — déjà vu! 漢字 and emoji 😀🎉 are several bytes each.\n",
    "user\nHello there, how are you?\nassistant\nI am fine, thank you for asking.\n",
] * 12


def tiny_model_folder(folder: Path, max_seq_len: int = 96, seed: int = 0) -> Path:
    tok = Tokenizer.train(TEXT, vocab_size=320)
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=tok.vocab_size,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        d_model=64,
        max_seq_len=max_seq_len,
        init_std=0.3,
    )
    return save_model(folder, GPT(config), tok)


def tiny_loaded(folder: Path, **kwargs) -> LoadedModel:
    if not (folder / "model_config.json").exists():
        tiny_model_folder(folder, **kwargs)
    return load(folder)
