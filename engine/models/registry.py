"""The models the app can chat with: the bundled one, and GGUF files the user added.

The registry is a small JSON file in the data folder (`models/registry.json`): for each name,
the file, where it came from, and the metadata read from its GGUF header. The bundled model is
always there and needs no entry. `resolve(name_or_path)` turns what a user typed (a registry
name or a path to a .gguf file) into a file, or a clear error.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.paths import atomic_writer, home

from . import bundled
from .gguf_info import read_gguf_info

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass
class ModelEntry:
    name: str
    path: str
    source: str  # "bundled" | "added" | "downloaded" | "finetuned"
    architecture: str = ""
    parameters: int = 0
    quantization: str = ""
    context_length: int | None = None
    has_chat_template: bool = False
    size: int = 0
    added: float = 0.0
    lineage: dict | None = None  # a fine-tuned model: base, method, data, metrics, job folder

    @property
    def available(self) -> bool:
        return Path(self.path).is_file()


def _registry_file() -> Path:
    return home() / "models" / "registry.json"


def _read() -> dict[str, dict]:
    path = _registry_file()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: the model registry is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object of model entries")  # noqa: TRY004 (bad input)
    return data


def _write(entries: dict[str, dict]) -> None:
    path = _registry_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        json.dump(entries, f, indent=2)


def bundled_entry() -> ModelEntry:
    spec = bundled.REGISTRY[DEFAULT_MODEL]
    return ModelEntry(
        name=DEFAULT_MODEL, path=str(bundled.model_path(DEFAULT_MODEL)), source="bundled",
        architecture="llama", parameters=134_515_008, quantization="Q4_1", context_length=8192,
        has_chat_template=True, size=spec.size,
    )  # fmt: skip


def list_models() -> list[ModelEntry]:
    """The bundled model first, then the others by name."""
    out = [bundled_entry()]
    for name, raw in sorted(_read().items()):
        out.append(ModelEntry(**{k: v for k, v in raw.items() if k in ModelEntry.__dataclass_fields__}))
    return out


def add_model(path: str | Path, name: str | None = None, source: str = "added", lineage: dict | None = None) -> ModelEntry:
    """Register a GGUF file under `name` (default: the file name without .gguf). The file is
    checked first: one that is not valid GGUF is refused with the reason."""
    path = Path(path).expanduser().resolve()
    info = read_gguf_info(path)  # raises with the file's name and the cause
    name = name or path.name.removesuffix(".gguf")
    if name == DEFAULT_MODEL:
        raise ValueError(f"{name!r} is the bundled model's name; choose another name")
    entry = ModelEntry(
        name=name, path=str(path), source=source, architecture=info.architecture,
        parameters=info.parameters, quantization=info.quantization, context_length=info.context_length,
        has_chat_template=info.chat_template is not None, size=info.size, added=time.time(), lineage=lineage,
    )  # fmt: skip
    entries = _read()
    entries[name] = asdict(entry)
    _write(entries)
    return entry


def remove_model(name: str) -> None:
    entries = _read()
    if name not in entries:
        raise ValueError(f"no added model named {name!r}")
    del entries[name]
    _write(entries)


def resolve(spec: str | Path | None) -> tuple[str, Path]:
    """(name, file) for a registry name or a path to a GGUF file; None = the bundled model."""
    spec = str(spec) if spec else DEFAULT_MODEL
    if spec == DEFAULT_MODEL:
        return DEFAULT_MODEL, bundled.find(DEFAULT_MODEL)
    entries = _read()
    if spec in entries:
        return spec, Path(entries[spec]["path"])
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or path.exists():
        return path.name.removesuffix(".gguf"), path
    known = ", ".join(e.name for e in list_models())
    raise ValueError(f"unknown model {spec!r}: not a registered name ({known}) nor a .gguf file")
