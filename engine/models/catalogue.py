"""The download catalogue: GGUF chat models the app offers, from `assets/models.yaml`.

The catalogue is data the app ships, so a mistake in it is a bug to catch at load time with a
message that names the file and the entry, not a KeyError deep inside a download. Every entry
carries the architecture numbers the memory estimate needs (`engine.models.memory`), so the
models page can say "fits / tight / too big" before anything is downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.paths import assets_dir

ARCH_KEYS = ("n_layer", "n_head", "n_head_kv", "head_dim", "n_embd", "n_ff", "n_vocab")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class CatalogueError(ValueError):
    """The catalogue file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class CatalogueFile:
    quant: str  # "Q4_K_M"
    filename: str
    size: int  # bytes (approximate when size_approx)
    size_approx: bool = False
    sha256: str | None = None  # None: verified against the hub's published LFS sha256


@dataclass(frozen=True)
class ArchNumbers:
    """What the memory estimate needs: the KV cache per token and the compute buffers."""

    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_embd: int
    n_ff: int
    n_vocab: int

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """K and V, every layer, f16 by default (llama.cpp's default cache type)."""
        return 2 * self.n_layer * self.n_head_kv * self.head_dim * bytes_per_value


@dataclass(frozen=True)
class CatalogueModel:
    id: str  # what the user types: `chatfactory models download qwen2.5-0.5b-instruct`
    name: str
    repo: str  # Hugging Face repo id
    license: str
    gated: bool
    architecture: str
    parameters: int
    context_length: int
    arch: ArchNumbers
    files: dict[str, CatalogueFile]  # by quantization, in catalogue order
    default_quant: str
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def file(self, quant: str | None = None) -> CatalogueFile:
        """The file for `quant` (case-insensitive; default: the entry's default quantization)."""
        q = (quant or self.default_quant).upper()
        if q not in self.files:
            raise ValueError(f"{self.id} has no {quant} file; it has {', '.join(self.files)}")
        return self.files[q]

    def registry_name(self, quant: str | None = None) -> str:
        """The name a download of this model is registered under, e.g. `qwen2.5-0.5b-instruct-q4_k_m`
        (never the bundled model's name, which the registry reserves)."""
        return f"{self.id}-{self.file(quant).quant.lower()}"


def catalogue_path() -> Path:
    return assets_dir() / "models.yaml"


def load_catalogue(path: str | Path | None = None) -> list[CatalogueModel]:
    """Every model in the catalogue, validated; raises CatalogueError naming the file and entry."""
    path = Path(path) if path else catalogue_path()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CatalogueError(f"{path}: cannot read the model catalogue ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise CatalogueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
        raise CatalogueError(f"{path}: expected a mapping with a `models:` list")
    out: list[CatalogueModel] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw["models"]):
        label = f"entry {i + 1}"
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            label += f" ({entry['id']})"
        try:
            model = _parse(entry)
        except _Invalid as e:
            raise CatalogueError(f"{path}: {label}: {e}") from None
        if model.id in seen:
            raise CatalogueError(f"{path}: {label}: the id {model.id!r} is used twice")
        seen.add(model.id)
        out.append(model)
    return out


def get(model_id: str, path: str | Path | None = None) -> CatalogueModel:
    """The catalogue entry `model_id`, or a ValueError listing the known ids."""
    models = load_catalogue(path)
    for m in models:
        if m.id == model_id.lower():
            return m
    raise ValueError(f"no model {model_id!r} in the catalogue; known: {', '.join(m.id for m in models)}")


class _Invalid(Exception):
    pass


def _need(d: dict, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    if key not in d or d[key] is None:
        raise _Invalid(f"missing `{where}{key}`")
    v = d[key]
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise _Invalid(f"`{where}{key}` must be a whole number, not {v!r}")
    if not isinstance(v, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _Invalid(f"`{where}{key}` must be a {names}, not {v!r}")
    return v


def _positive(d: dict, key: str, where: str = "") -> int:
    v = _need(d, key, int, where)
    if v <= 0:
        raise _Invalid(f"`{where}{key}` must be positive, not {v}")
    return v


def _parse(entry: Any) -> CatalogueModel:
    if not isinstance(entry, dict):
        raise _Invalid(f"expected a mapping, not {entry!r}")
    model_id = _need(entry, "id", str)
    if not _ID.match(model_id):
        raise _Invalid(f"`id` {model_id!r} must be lower case letters, digits, '.', '_' or '-'")
    repo = _need(entry, "repo", str)
    if not _REPO.match(repo):
        raise _Invalid(f"`repo` {repo!r} is not a Hugging Face repo id (owner/name)")
    arch_raw = _need(entry, "arch", dict)
    arch = ArchNumbers(**{k: _positive(arch_raw, k, "arch.") for k in ARCH_KEYS})
    if arch.n_head % arch.n_head_kv:
        raise _Invalid(
            f"`arch.n_head` ({arch.n_head}) must be a multiple of `arch.n_head_kv` ({arch.n_head_kv})"
        )
    files_raw = _need(entry, "files", dict)
    if not files_raw:
        raise _Invalid("`files` is empty")
    files = {}
    for quant, f in files_raw.items():
        where = f"files.{quant}."
        if not isinstance(f, dict):
            raise _Invalid(f"`files.{quant}` must be a mapping with file, size, sha256")
        filename = _need(f, "file", str, where)
        if not filename.endswith(".gguf") or filename.startswith("/") or ".." in filename.split("/"):
            raise _Invalid(f"`{where}file` {filename!r} must be a .gguf path inside the repo")
        sha = f.get("sha256")
        if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
            raise _Invalid(f"`{where}sha256` must be 64 lower-case hex digits or null, not {sha!r}")
        approx = f.get("size_approx", False)
        if not isinstance(approx, bool):
            raise _Invalid(f"`{where}size_approx` must be true or false")
        files[str(quant).upper()] = CatalogueFile(
            str(quant).upper(), filename, _positive(f, "size", where), approx, sha
        )
    default_quant = str(entry.get("default_quant") or next(iter(files))).upper()
    if default_quant not in files:
        raise _Invalid(f"`default_quant` {default_quant} is not one of its files ({', '.join(files)})")
    gated = entry.get("gated", False)
    if not isinstance(gated, bool):
        raise _Invalid("`gated` must be true or false")
    known = {"id", "name", "repo", "license", "gated", "architecture", "parameters", "context_length", "arch",
             "files", "default_quant", "description"}  # fmt: skip
    return CatalogueModel(
        id=model_id, name=_need(entry, "name", str), repo=repo, license=_need(entry, "license", str),
        gated=gated, architecture=_need(entry, "architecture", str), parameters=_positive(entry, "parameters"),
        context_length=_positive(entry, "context_length"), arch=arch, files=files, default_quant=default_quant,
        description=str(entry.get("description") or ""), extra={k: v for k, v in entry.items() if k not in known},
    )  # fmt: skip
