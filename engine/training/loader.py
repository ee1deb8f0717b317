"""Load a model and its tokenizer from anything a user may point at.

- a registry name ("smollm2-135m-instruct"): the bundled pretrained model, pulled on first use;
- a native chatfactory folder (model_config.json);
- a Hugging Face folder (config.json + *.safetensors + tokenizer.json);
- a GGUF file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.training.model import GPT
from engine.training.tokenizer import Tokenizer


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer
    name: str  # what the user called it (registry name or path)
    source: str  # "native" | "hf" | "gguf"


def load(spec: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> LoadedModel:
    from engine.models import bundled as pretrained

    name = str(spec)
    path = Path(spec)
    if not path.exists() and name in pretrained.REGISTRY:
        path = pretrained.ensure(name)
    if not path.exists():
        known = ", ".join(sorted(pretrained.REGISTRY))
        raise FileNotFoundError(f"{spec}: no such file or folder, and not a known model name ({known})")
    if path.is_file() and path.suffix == ".gguf":
        from engine.training.model.gguf_import import load_gguf

        model, tokenizer = load_gguf(path)
        source = "gguf"
    elif path.is_dir() and (path / "model_config.json").exists():
        from engine.training.model.checkpoint import load_model_folder

        model = load_model_folder(path)
        tokenizer = Tokenizer.load(path)
        source = "native"
    elif path.is_dir() and (path / "config.json").exists():
        from engine.training.model.hf import load_hf_folder

        model = load_hf_folder(path)
        tokenizer = Tokenizer.load(path)
        source = "hf"
    else:
        raise ValueError(
            f"{path}: not a model (expected a .gguf file, a chatfactory folder with model_config.json, "
            "or a Hugging Face folder with config.json)"
        )
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {model.config.vocab_size}"
        )
    model = model.to(device=device, dtype=dtype) if dtype else model.to(device)
    return LoadedModel(model.eval(), tokenizer, name, source)
