"""What a GGUF file is, from its header alone, before llama.cpp is asked to load it.

gguf's own `GGUFReader` maps every tensor and decodes the whole vocabulary into numpy arrays
(seconds for a 100 MB model on this CPU); the app needs a dozen metadata values and a check that
the file is whole, so this reads the header sequentially and skips the large arrays. Sizes of the
quantized tensor types come from the `gguf` package's table.

Every problem is a `GGUFError` (a ValueError) naming the file and what is wrong: not GGUF, an
unsupported version, a truncated file, absurd counts or tensor sizes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

MAGIC = b"GGUF"
MAX_COUNT = 10_000_000  # keys, tensors, array items: far beyond any real model
MAX_STRING = 256 * 1024 * 1024
MAX_DIMS = 8
MAX_TENSOR_BYTES = 1 << 44  # 16 TiB: any larger tensor is a damaged header

# scalar value types -> struct format
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# big arrays the app never needs: skipped, only their length is kept
_SKIP_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")


class GGUFError(ValueError):
    """The file is not a GGUF that llama.cpp could load."""


@dataclass
class GGUFInfo:
    path: Path
    size: int  # bytes on disk
    version: int
    metadata: dict[str, Any]
    tensor_count: int
    parameters: int  # sum of tensor elements
    array_lengths: dict[str, int] = field(default_factory=dict)  # skipped arrays: their item count

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name") or self.path.stem)

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def context_length(self) -> int | None:
        v = self.arch_value("context_length")
        return int(v) if v is not None else None

    @property
    def chat_template(self) -> str | None:
        t = self.metadata.get("tokenizer.chat_template")
        return t if isinstance(t, str) and t.strip() else None

    @property
    def quantization(self) -> str:
        ft = self.metadata.get("general.file_type")
        if ft is None:
            return "unknown"
        try:
            return LlamaFileType(int(ft)).name.removeprefix("MOSTLY_")
        except ValueError:
            return f"file_type {ft}"

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """Memory of one token in the KV cache (f16 keys and values by default)."""
        layers = int(self.arch_value("block_count", 0) or 0)
        heads = int(self.arch_value("attention.head_count", 1) or 1)
        kv_heads = self.arch_value("attention.head_count_kv", heads)
        kv_heads = int(kv_heads if not isinstance(kv_heads, list) else max(kv_heads))
        embd = int(self.arch_value("embedding_length", 0) or 0)
        k_dim = int(self.arch_value("attention.key_length", embd // max(heads, 1)) or 0)
        v_dim = int(self.arch_value("attention.value_length", k_dim) or 0)
        return layers * kv_heads * (k_dim + v_dim) * bytes_per_value


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """The header of `path`, checked; raises GGUFError or FileNotFoundError with the file's name."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise GGUFError(f"{path}: not a file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            return _read(f, path, size)
    except (struct.error, EOFError):
        raise GGUFError(f"{path}: truncated: the file ends inside its header ({size} bytes)") from None
    except UnicodeDecodeError as e:
        raise GGUFError(f"{path}: damaged header: a key or string is not UTF-8 ({e.reason})") from None


def _read(f: BinaryIO, path: Path, size: int) -> GGUFInfo:
    magic = f.read(4)
    if magic != MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF file with b'GGUF')")
    (version,) = _unpack(f, "<I")
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = _unpack(f, "<QQ")
    for what, n in (("tensors", n_tensors), ("metadata keys", n_kv)):
        if n > MAX_COUNT:
            raise GGUFError(f"{path}: damaged header: it claims {n} {what}")
    metadata: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    for _ in range(n_kv):
        key = _string(f, path)
        (vtype,) = _unpack(f, "<I")
        if vtype == _ARRAY and key in _SKIP_ARRAYS:
            lengths[key] = _skip_array(f, path, key)
        else:
            metadata[key] = _value(f, path, vtype, key)
    alignment = int(metadata.get("general.alignment", 32) or 32)
    parameters, data_end = 0, 0
    for _ in range(n_tensors):
        name = _string(f, path)
        (n_dims,) = _unpack(f, "<I")
        if n_dims > MAX_DIMS:
            raise GGUFError(f"{path}: tensor {name}: {n_dims} dimensions")
        dims = _unpack(f, f"<{n_dims}Q")
        ttype, offset = _unpack(f, "<IQ")
        elements = 1
        for d in dims:
            elements *= d
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise GGUFError(f"{path}: tensor {name}: unknown tensor type {ttype}") from None
        nbytes = elements // block * type_size
        if elements % block or nbytes > MAX_TENSOR_BYTES:
            raise GGUFError(f"{path}: tensor {name}: impossible size {list(dims)} ({nbytes} bytes)")
        parameters += elements
        data_end = max(data_end, offset + nbytes)
    start = f.tell()
    start += (-start) % alignment
    if start + data_end > size:
        raise GGUFError(
            f"{path}: truncated: its tensors need {start + data_end} bytes, the file has {size} "
            "(an interrupted download or copy?)"
        )
    return GGUFInfo(path, size, version, metadata, n_tensors, parameters, lengths)


def _unpack(f: BinaryIO, fmt: str) -> tuple:
    n = struct.calcsize(fmt)
    raw = f.read(n)
    if len(raw) < n:
        raise EOFError
    return struct.unpack(fmt, raw)


def _string(f: BinaryIO, path: Path) -> str:
    (n,) = _unpack(f, "<Q")
    if n > MAX_STRING:
        raise GGUFError(f"{path}: damaged header: a string of {n} bytes")
    raw = f.read(n)
    if len(raw) < n:
        raise EOFError
    return raw.decode("utf-8")


def _value(f: BinaryIO, path: Path, vtype: int, key: str) -> Any:
    if vtype in _SCALARS:
        return _unpack(f, _SCALARS[vtype])[0]
    if vtype == _STRING:
        return _string(f, path)
    if vtype == _ARRAY:
        itype, n = _unpack(f, "<IQ")
        if n > MAX_COUNT:
            raise GGUFError(f"{path}: {key}: an array of {n} items")
        return [_value(f, path, itype, key) for _ in range(n)]
    raise GGUFError(f"{path}: {key}: unknown value type {vtype}")


def _skip_array(f: BinaryIO, path: Path, key: str) -> int:
    itype, n = _unpack(f, "<IQ")
    if n > MAX_COUNT:
        raise GGUFError(f"{path}: {key}: an array of {n} items")
    if itype in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[itype]) * n, os.SEEK_CUR)
    elif itype == _STRING:
        for _ in range(n):
            (length,) = _unpack(f, "<Q")
            if length > MAX_STRING:
                raise GGUFError(f"{path}: {key}: a string of {length} bytes")
            f.seek(length, os.SEEK_CUR)
    else:
        raise GGUFError(f"{path}: {key}: an array of type {itype} where strings or numbers were expected")
    return n
