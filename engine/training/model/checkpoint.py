"""The native model folder: model_config.json + model.safetensors (+ tokenizer files, meta.json).

Writes are atomic: everything goes to a temporary sibling folder that is renamed into place,
so a kill mid-write leaves either the old folder or the new one, never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .gpt import GPT

CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"


def is_native_folder(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).exists()


def state_dict_for_saving(model: GPT) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)  # safetensors refuses shared storage; restored on load
    return sd


def atomic_folder(final: str | Path):
    """Context manager: yields a temporary folder that replaces `final` on success."""
    return _AtomicFolder(Path(final))


class _AtomicFolder:
    def __init__(self, final: Path):
        self.final = final
        self.tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        for f in self.tmp.iterdir():  # flush file contents before the rename makes them visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = self.final.parent / f".{self.final.name}.old-{uuid.uuid4().hex[:8]}"
        if self.final.exists():
            os.rename(self.final, old)
        os.rename(self.tmp, self.final)
        shutil.rmtree(old, ignore_errors=True)
        return False


def save_model(folder: str | Path, model: GPT, tokenizer=None, meta: dict | None = None, extra_files: dict | None = None) -> Path:
    """Save a model (and its tokenizer) as a native folder. extra_files: name -> bytes|str."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        write_model_files(tmp, model, tokenizer, meta, extra_files)
    return folder


def write_model_files(tmp: Path, model: GPT, tokenizer=None, meta=None, extra_files=None) -> None:
    model.config.save(tmp / CONFIG_FILE)
    save_file(state_dict_for_saving(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    if tokenizer is not None:
        from engine.training.tokenizer.files import save_tokenizer_files

        save_tokenizer_files(tokenizer, tmp)
    if meta is not None:
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    for name, content in (extra_files or {}).items():
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(tmp / name, mode) as f:
            f.write(content)


def load_model_folder(folder: str | Path, device="cpu", dtype: torch.dtype | None = None) -> GPT:
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such model folder")
    if not (folder / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{folder}: not a chatfactory model folder (no {CONFIG_FILE})")
    config = ModelConfig.load(folder / CONFIG_FILE)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: weights file missing")
    try:
        sd = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{weights}: corrupt or unreadable safetensors file ({e})") from None
    model = GPT(config)
    load_state_dict_checked(model, sd, str(weights))
    return model.to(device=device, dtype=dtype) if dtype else model.to(device)


def load_state_dict_checked(model: GPT, sd: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with errors that name the file, the tensor and the shapes."""
    expected = model.state_dict()
    if model.config.tie_embeddings:
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(
                f"{source}: tensor {k} has shape {tuple(v.shape)}, the config needs {tuple(expected[k].shape)}"
                + (" (wrong vocab size?)" if k in ("embed.weight", "lm_head.weight") else "")
            )
    model.load_state_dict(sd, strict=False)
