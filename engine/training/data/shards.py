"""Token shards: documents -> flat uint16/uint32 token files + manifest.json, and a memmap reader.

Layout of a shard folder:
    manifest.json          tokenizer fingerprint, dtype, eos id, per split: files, tokens, documents, bytes
    train_000000.bin ...   raw little-endian token ids; each document is followed by <|endoftext|>
    val_000000.bin ...

The reader memory-maps the files, so a corpus far larger than RAM trains the same way. Training
draws random windows of block_size+1 tokens (x = w[:-1], y = w[1:]); evaluation walks the val
split in order so every token is scored exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.training.model.checkpoint import atomic_folder

from .corpus import Document

MANIFEST = "manifest.json"
FORMAT = "chatfactory-token-shards"
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16 a file: few files, each far below any FS limit


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536 ids 0..65535), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


# ---- writing ----------------------------------------------------------------------------------------
def write_shards(
    splits: dict[str, Iterable[Document]],
    tokenizer,
    out_dir: str | Path,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    batch_docs: int = 256,
    extra: dict | None = None,
) -> dict:
    """Tokenize each split's documents into shard files under out_dir (written atomically).
    Returns the manifest. `extra` is stored in the manifest as-is (e.g. the data sources)."""
    out_dir = Path(out_dir)
    dtype = token_dtype(tokenizer.vocab_size)
    eos = tokenizer.eos_id
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": 1,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "eos_id": eos,
        "dtype": dtype.name,
        "splits": {},
        **({"extra": extra} if extra else {}),
    }
    with atomic_folder(out_dir) as tmp:
        for name, docs in splits.items():
            writer = _ShardWriter(tmp, name, dtype, shard_tokens)
            n_docs = n_bytes = 0
            for chunk in _chunks(docs, batch_docs):
                # encode_batch runs on the tokenizers library's thread pool
                for doc, ids in zip(chunk, tokenizer.encode_batch([d.text for d in chunk])):
                    writer.add(np.asarray(ids + [eos], dtype=dtype))
                    n_docs += 1
                    n_bytes += len(doc.text.encode("utf-8"))
            files = writer.close()
            manifest["splits"][name] = {
                "files": files,
                "tokens": sum(f["tokens"] for f in files),
                "documents": n_docs,
                "bytes": n_bytes,
            }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _chunks(items: Iterable[Document], n: int) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    for it in items:
        chunk.append(it)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _ShardWriter:
    """Appends token arrays to <split>_NNNNNN.bin files of at most shard_tokens tokens each."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.split, self.dtype, self.limit = folder, split, dtype, shard_tokens
        self.files: list[dict] = []
        self.fh = None
        self.count = 0

    def add(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.fh is None or self.count >= self.limit:
                self._next_file()
            take = ids[: self.limit - self.count]
            take.tofile(self.fh)
            self.count += len(take)
            self.files[-1]["tokens"] = self.count
            ids = ids[len(take) :]

    def _next_file(self) -> None:
        if self.fh is not None:
            self.fh.close()
        name = f"{self.split}_{len(self.files):06d}.bin"
        self.fh = open(self.folder / name, "wb")  # noqa: SIM115 (kept open across add() calls; close() closes)
        self.files.append({"name": name, "tokens": 0})
        self.count = 0

    def close(self) -> list[dict]:
        if self.fh is not None:
            self.fh.close()
        return self.files


# ---- reading ----------------------------------------------------------------------------------------
def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no shard manifest (not a token shard folder)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def check_tokenizer(manifest: dict, tokenizer, source: str = "shards") -> None:
    """Refuse to train on shards made by a different tokenizer: the ids would mean other tokens."""
    if manifest["tokenizer_fingerprint"] != tokenizer.fingerprint():
        raise ValueError(
            f"{source}: shards were written with a different tokenizer "
            f"(fingerprint {manifest['tokenizer_fingerprint'][:12]} != {tokenizer.fingerprint()[:12]})"
        )


@dataclass
class TokenSplit:
    """One split's shard files, memory-mapped."""

    name: str
    arrays: list[np.ndarray]
    documents: int
    bytes: int

    @property
    def tokens(self) -> int:
        return sum(len(a) for a in self.arrays)

    def window_starts(self, window: int) -> np.ndarray:
        """Number of valid window starts per file (windows never straddle two files)."""
        return np.array([max(0, len(a) - window + 1) for a in self.arrays], dtype=np.int64)

    def windows(self, flat_starts: np.ndarray, window: int) -> torch.Tensor:
        """(N, window) int64 tensor of windows at the given global start indices."""
        counts = self.window_starts(window)
        bounds = np.cumsum(counts)
        files = np.searchsorted(bounds, flat_starts, side="right")
        offsets = flat_starts - (bounds - counts)[files]
        rows = [self.arrays[f][o : o + window] for f, o in zip(files, offsets)]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def iter_windows(self, block_size: int, batch_size: int, max_tokens: int | None = None) -> Iterator[dict]:
        """The split in order as {"x", "y"} batches of non-overlapping windows (the last one padded
        with target -100): every token after each file's first is predicted exactly once.
        max_tokens limits how many tokens are scored (a quick periodic estimate)."""
        xs, ys, scored = [], [], 0
        for arr in self.arrays:
            for s in range(0, len(arr) - 1, block_size):
                chunk = torch.from_numpy(arr[s : s + block_size + 1].astype(np.int64))
                x, y = chunk[:-1], chunk[1:]
                if len(x) < block_size:  # tail: pad inputs with token 0, targets with ignore_index
                    pad = block_size - len(x)
                    x = torch.cat([x, torch.zeros(pad, dtype=torch.long)])
                    y = torch.cat([y, torch.full((pad,), -100, dtype=torch.long)])
                xs.append(x)
                ys.append(y)
                scored += int((y != -100).sum())
                if len(xs) == batch_size:
                    yield {"x": torch.stack(xs), "y": torch.stack(ys)}
                    xs, ys = [], []
                if max_tokens is not None and scored >= max_tokens:
                    break
            if max_tokens is not None and scored >= max_tokens:
                break
        if xs:
            yield {"x": torch.stack(xs), "y": torch.stack(ys)}


class ShardSet:
    """A shard folder: manifest + memory-mapped splits."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.dtype = np.dtype(self.manifest["dtype"])
        self.eos_id = int(self.manifest["eos_id"])
        self.vocab_size = int(self.manifest["vocab_size"])

    @property
    def split_names(self) -> list[str]:
        return list(self.manifest["splits"])

    def split(self, name: str) -> TokenSplit:
        info = self.manifest["splits"].get(name)
        if info is None:
            raise ValueError(f"{self.folder}: no {name!r} split (has {self.split_names})")
        arrays = []
        for f in info["files"]:
            path = self.folder / f["name"]
            if not path.exists():
                raise FileNotFoundError(f"{path}: shard file listed in the manifest is missing")
            size = path.stat().st_size // self.dtype.itemsize
            if size != f["tokens"]:
                raise ValueError(f"{path}: holds {size} tokens, the manifest says {f['tokens']} (truncated?)")
            if size:
                arrays.append(np.memmap(path, dtype=self.dtype, mode="r"))
        return TokenSplit(name, arrays, int(info["documents"]), int(info["bytes"]))


class RandomWindows:
    """Random (x, y) windows for training, drawn for the GLOBAL batch from one seeded generator.

    Every rank draws the same global batch and keeps its own slice, so a run on N processes sees
    exactly the windows a 1-process run with the same global batch sees, and the generator state
    (saved in checkpoints) is the whole data position: resume is exact.
    """

    def __init__(self, split: TokenSplit, block_size: int, micro_batch: int, seed: int = 0):
        self.split, self.block_size, self.micro_batch = split, block_size, micro_batch
        self.counts = split.window_starts(block_size + 1)
        self.total = int(self.counts.sum())
        if self.total <= 0:
            raise ValueError(
                f"{split.name} split has {split.tokens} tokens: too few for one window of {block_size + 1}"
            )
        self.rng = np.random.default_rng(seed)
        self.steps = 0

    def next_step(self, n_micro: int, rank: int = 0, world_size: int = 1) -> list[dict]:
        """This rank's n_micro micro-batches for one optimizer step."""
        B = self.micro_batch
        starts = self.rng.integers(0, self.total, size=n_micro * world_size * B)
        self.steps += 1
        out = []
        for m in range(n_micro):
            lo = (m * world_size + rank) * B
            w = self.split.windows(starts[lo : lo + B], self.block_size + 1)
            out.append({"x": w[:, :-1], "y": w[:, 1:]})
        return out

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.steps = int(state["steps"])


def token_byte_lengths(tokenizer) -> torch.Tensor:
    """UTF-8 bytes each token id stands for (special tokens: 0), for bits-per-byte.

    Byte-level BPE spells each byte as one character of its 256-symbol alphabet, so a token's
    byte count is its string length; any other tokenizer falls back to decoding the id alone.
    """
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    specials = set(tokenizer.special_tokens)
    out = torch.zeros(tokenizer.vocab_size, dtype=torch.long)
    for i in range(tokenizer.vocab_size):
        tok = tokenizer.hf.id_to_token(i)
        if tok is None or tok in specials:
            continue
        out[i] = len(tok) if set(tok) <= alphabet else len(tokenizer.decode([i]).encode("utf-8"))
    return out
