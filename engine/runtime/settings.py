"""Runtime and sampling settings, with the defaults chosen by measurement (BENCHMARKS.md)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads() -> int:
    """Threads for decoding (one token at a time).

    llama.cpp's threads spin-wait for each other at every step, so a thread that loses its core
    to another program stalls all of them. Measured on 2 cores (bench/threads.py, BENCHMARKS.md):
    2 threads decode SmolLM2-135M at 80 tokens/s idle but 23 with one core busy elsewhere; 1 thread
    holds 49 either way. A desktop app shares the CPU, so decoding leaves one core in two to the
    rest of the machine: half the cores, at least 1.
    """
    return max(1, _cores() // 2)


def default_batch_threads() -> int:
    """Threads for prompt processing (big batches). Each step is long enough that waiting on a
    busy core costs little: 2 threads prefill at 143 tokens/s idle and 77 with one core busy,
    against 75 for 1 thread either way. So prompt processing uses every core."""
    return _cores()


@dataclass
class RuntimeSettings:
    n_ctx: int = 4096  # context window in tokens
    n_threads: int = 0  # decoding; 0 = default_threads()
    n_threads_batch: int = 0  # prompt processing; 0 = default_batch_threads()
    n_gpu_layers: int = 0  # layers offloaded to a GPU (llama.cpp's n_gpu_layers; -1 = all)
    n_batch: int = 256  # prompt tokens per llama_decode call: also the granularity of Stop
    flash_attn: bool = True  # faster prefill and decode on this CPU (bench/threads.py)
    session_cache_mb: int = 256  # KV states of recently used sessions kept in RAM
    check_memory: bool = True  # refuse a context whose KV cache cannot fit (off: "load anyway")

    def threads(self) -> tuple[int, int]:
        return self.n_threads or default_threads(), self.n_threads_batch or default_batch_threads()

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RuntimeSettings:
        return cls(**_known(cls, data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Sampling:
    temperature: float = 0.2  # SmolLM2-135M rambles and drifts into French above ~0.5 (measured)
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    seed: int = -1  # -1 = a new random seed each answer
    max_tokens: int = 512

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Sampling:
        return cls(**_known(cls, data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _known(cls: type, data: dict[str, Any] | None) -> dict[str, Any]:
    """The entries of `data` that are fields of `cls`, each checked against the field's type."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        if data and f.name in data:
            value = data[f.name]
            if f.type in ("bool", bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{cls.__name__}.{f.name}: expected true or false, got {value!r}")
                out[f.name] = value
                continue
            want = int if f.type in ("int", int) else float
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{cls.__name__}.{f.name}: expected a number, got {value!r}")
            out[f.name] = want(value)
    return out
