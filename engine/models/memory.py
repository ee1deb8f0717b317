"""Will this model fit? Memory a model costs at a given context size, before it is loaded.

The models page shows a badge per model (fits / tight / too big) and the settings suggest a
context size, so the user learns *before* a 2 GB download or a swap storm, not after. The
estimate has three parts, in bytes:

- **weights** = the GGUF file's size. llama.cpp maps the file; on CPU every weight is read on the
  first answer, so the whole file becomes resident. (Untied token embeddings are only partly
  read, so this errs high for such models, which is the safe side.)
- **kv_cache** = 2 (K and V) * n_layer * n_ctx * n_head_kv * head_dim * 2 bytes (f16, llama.cpp's
  default cache type). llama.cpp clears the cache when it creates it, so all of it is resident
  from the start, used or not.
- **compute** = what llama.cpp and llama-cpp-python allocate beside them, modelled as
  `FIXED + PER_VOCAB * n_vocab + n_batch * 4 * (3 * n_ff + 6 * n_embd)`:
  the vocabulary's tables (token strings, the token->id map, BPE merges, the sampler's candidate
  array: all proportional to n_vocab), the activations of one batch of prompt tokens (the
  feed-forward block's gate, up and product, n_ff wide, and about six n_embd-wide vectors:
  residual, norm, Q, K, V, attention output; f32), and a fixed part for the library's own state.
  With flash attention (the app's default) the attention scores are computed in tiles, so this
  term does not grow with n_ctx: measured on SmolLM2-135M, the memory beyond weights + KV was the
  same 28 MiB at 2048, 4096 and 8192 tokens. Without flash attention llama.cpp materialises the
  scores of one batch against the whole cache, n_ctx * n_batch * n_head * 4 bytes, which is added.
  The constants were calibrated with `bench/memory_fit.py` on the bundled SmolLM2-135M: the slope
  in n_batch measured 33-34 KB per batch token (the formula gives 32 KB), and the rest split into
  4 MiB fixed and 343 bytes per vocabulary entry (49152 entries).

`fit()` compares the total with what the system can give (MemAvailable on Linux): "fits" leaves
at least 20 % of it for everything else, "tight" fits but with less slack (the system may swap
when the user opens a browser), "too big" does not fit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .catalogue import ArchNumbers, CatalogueModel
from .gguf_info import GGUFInfo, read_gguf_info

FIXED_BYTES = 4 * 2**20  # library state beside the model (calibrated, see the module docstring)
PER_VOCAB_BYTES = 343  # vocabulary tables per token (calibrated)
TIGHT_FRACTION = 0.8  # "fits" uses at most this share of the available memory
MIN_CONTEXT = 512
DEFAULT_BATCH = 256  # RuntimeSettings.n_batch (= n_ubatch)

Fit = Literal["fits", "tight", "too big"]


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    compute: int
    total: int
    n_ctx: int

    def describe(self) -> str:
        gib = 2**30
        return (f"{self.total / gib:.2f} GiB at {self.n_ctx} tokens (weights {self.weights / gib:.2f}, "
                f"KV cache {self.kv_cache / gib:.2f}, buffers {self.compute / gib:.2f})")  # fmt: skip


@dataclass(frozen=True)
class ModelShape:
    """The numbers the estimate needs, from a GGUF header or a catalogue entry."""

    weights: int  # bytes of the GGUF file
    arch: ArchNumbers
    context_length: int | None


def shape_of(
    model: GGUFInfo | CatalogueModel | ModelShape | str | Path, quant: str | None = None
) -> ModelShape:
    """A ModelShape from a GGUF header (or a path to one) or a catalogue entry (its `quant` file)."""
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, CatalogueModel):
        return ModelShape(model.file(quant).size, model.arch, model.context_length)
    info = model if isinstance(model, GGUFInfo) else read_gguf_info(model)
    heads = info.arch_value("attention.head_count", 1) or 1
    heads = int(max(heads) if isinstance(heads, list) else heads)  # per-layer lists: the worst case
    kv_heads = info.arch_value("attention.head_count_kv", heads)
    kv_heads = int(max(kv_heads) if isinstance(kv_heads, list) else kv_heads)
    n_embd = int(info.arch_value("embedding_length", 0) or 0)
    head_dim = int(info.arch_value("attention.key_length", n_embd // max(heads, 1)) or 0)
    n_ff = info.arch_value("feed_forward_length", 4 * n_embd) or 4 * n_embd
    n_ff = int(max(n_ff) if isinstance(n_ff, list) else n_ff)
    n_vocab = int(info.arch_value("vocab_size", 0) or info.array_lengths.get("tokenizer.ggml.tokens", 0)
                  or len(info.metadata.get("tokenizer.ggml.tokens", [])) or 32000)  # fmt: skip
    arch = ArchNumbers(
        n_layer=int(info.arch_value("block_count", 0) or 0), n_head=max(heads, 1), n_head_kv=max(kv_heads, 1),
        head_dim=head_dim, n_embd=n_embd, n_ff=n_ff, n_vocab=n_vocab,
    )  # fmt: skip
    return ModelShape(info.size, arch, info.context_length)


def estimate(
    model: GGUFInfo | CatalogueModel | ModelShape | str | Path,
    n_ctx: int,
    *,
    quant: str | None = None,
    n_batch: int = DEFAULT_BATCH,
    flash_attn: bool = True,
) -> MemoryEstimate:
    """Bytes of RAM that loading `model` with an `n_ctx`-token context and chatting will take."""
    s = shape_of(model, quant)
    a = s.arch
    kv = a.kv_bytes_per_token() * n_ctx
    batch = min(n_batch, n_ctx)
    compute = FIXED_BYTES + PER_VOCAB_BYTES * a.n_vocab + batch * 4 * (3 * a.n_ff + 6 * a.n_embd)
    if not flash_attn:
        compute += n_ctx * batch * a.n_head * 4
    return MemoryEstimate(s.weights, kv, compute, s.weights + kv + compute, n_ctx)


def available_memory() -> int | None:
    """Bytes a new allocation can get without swapping: MemAvailable on Linux; elsewhere half of the
    physical memory (a guess on the safe side), None if even that is unknown.
    The runtime uses it too, to refuse a context that cannot fit before llama.cpp tries."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return None


def fit(est: MemoryEstimate | int, available: int | None = None) -> Fit:
    """The badge: "fits" (at most 80 % of the available memory), "tight" (at most all of it), "too big".
    With the available memory unknown, nothing can be promised: "tight"."""
    total = est.total if isinstance(est, MemoryEstimate) else int(est)
    available = available if available is not None else available_memory()
    if available is None:
        return "tight"
    if total <= TIGHT_FRACTION * available:
        return "fits"
    return "tight" if total <= available else "too big"


def suggest_context(
    model: GGUFInfo | CatalogueModel | ModelShape | str | Path,
    available: int | None = None,
    *,
    quant: str | None = None,
    n_batch: int = DEFAULT_BATCH,
    flash_attn: bool = True,
) -> int | None:
    """The largest power-of-two context (>= 512, <= the model's trained context) whose estimate
    "fits"; None when even 512 tokens do not."""
    s = shape_of(model, quant)
    available = available if available is not None else available_memory()
    limit = s.context_length or 131072
    best, n = None, MIN_CONTEXT
    while n <= limit:
        if fit(estimate(s, n, n_batch=n_batch, flash_attn=flash_attn), available) != "fits":
            break
        best, n = n, n * 2
    return best


def gpu_free_memory() -> int | None:
    """Free memory of the first NVIDIA GPU (nvidia-smi), None without one or without llama.cpp GPU
    support. Other GPUs (Metal, Vulkan, ROCm) are not detected: the suggestion is then 0 layers,
    which always works, and the user can raise it in the settings."""
    try:
        import llama_cpp

        if not llama_cpp.llama_supports_gpu_offload():
            return None
    except (ImportError, AttributeError, OSError):
        return None
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5, check=True).stdout  # fmt: skip
        return int(out.split()[0]) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def suggest_gpu_layers(
    model: GGUFInfo | CatalogueModel | ModelShape | str | Path,
    n_ctx: int,
    gpu_free: int | None = None,
    *,
    quant: str | None = None,
    n_batch: int = DEFAULT_BATCH,
) -> int:
    """How many layers to offload (llama.cpp's n_gpu_layers): 0 with no GPU detected (CPU only,
    always safe), -1 when the whole model fits in 90 % of the GPU's free memory, else as many
    layers as fit. One layer costs its share of the weights (the file over n_layer + 1, the
    embeddings and output counting as one more) plus its share of the KV cache, which llama.cpp
    keeps on the GPU for offloaded layers; the compute buffers are reserved first."""
    gpu_free = gpu_free if gpu_free is not None else gpu_free_memory()
    if not gpu_free:
        return 0
    s = shape_of(model, quant)
    est = estimate(s, n_ctx, n_batch=n_batch)
    budget = 0.9 * gpu_free - est.compute
    if est.total <= 0.9 * gpu_free:
        return -1
    n_layer = max(s.arch.n_layer, 1)
    per_layer = s.weights / (n_layer + 1) + est.kv_cache / n_layer
    return max(0, min(n_layer, int(budget // per_layer)))
