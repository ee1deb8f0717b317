"""Runtime and sampling settings, with the defaults chosen by measurement (BENCHMARKS.md)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any


def default_threads() -> int:
    """Threads for llama.cpp on this machine.

    llama.cpp's threads spin-wait for each other at every step, so a thread that loses its core
    to another program stalls all of them: on 2 cores, 2 threads decode SmolLM2-135M at ~165
    tokens/s idle but ~1 token/s with one core busy, while 1 thread holds ~110-135 either way
    (bench/threads.py). A desktop app shares the CPU, so leave one core in two to the rest of
    the machine: half the cores, at least 1.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // 2)


@dataclass
class RuntimeSettings:
    n_ctx: int = 4096  # context window in tokens
    n_threads: int = 0  # 0 = default_threads()
    n_threads_batch: int = 0  # prompt processing; 0 = same as n_threads
    n_gpu_layers: int = 0  # layers offloaded to a GPU (llama.cpp's n_gpu_layers; -1 = all)
    n_batch: int = 256  # prompt tokens per llama_decode call: also the granularity of Stop
    flash_attn: bool = True  # faster prefill and decode on this CPU (bench/threads.py)
    session_cache_mb: int = 256  # KV states of recently used sessions kept in RAM

    def threads(self) -> tuple[int, int]:
        n = self.n_threads or default_threads()
        return n, self.n_threads_batch or n

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
