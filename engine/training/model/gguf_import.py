"""GGUF files of the Llama architecture -> our GPT (dequantized) and its tokenizer.

Uses the `gguf` package (llama.cpp's own Python reader): `GGUFReader` for metadata and
tensors, `gguf.quants.dequantize` for the block formats. Two layout facts matter:
- GGUF lists dimensions fastest-first (ne0 = columns); the reader's numpy arrays are already
  in row-major (out, in) order, which is nn.Linear's.
- llama.cpp's converter permutes the rows of attn_q/attn_k so that its RoPE can rotate
  adjacent pairs (x0, x1), (x2, x3)...; our RoPE (like Hugging Face's) rotates halves
  (x_i, x_{i+d/2}). `_unpermute` undoes it exactly as transformers' GGUF loader does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.training.tokenizer.gguf import open_gguf, read_field, tokenizer_from_gguf

from .config import ModelConfig
from .gpt import GPT

# Tensor types we dequantize (each one tested). Others that gguf.quants knows (the IQ* family,
# ternary TQ*, MXFP4) are refused by name rather than loaded untested.
SUPPORTED_TYPES = (
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)  # fmt: skip

# GGUF tensor name (inside blk.N.) -> ours (inside layers.N.)
_LAYER_NAMES = {
    "attn_norm": "norm1",
    "ffn_norm": "norm2",
    "attn_q": "attn.q",
    "attn_k": "attn.k",
    "attn_v": "attn.v",
    "attn_output": "attn.o",
    "ffn_gate": "mlp.gate",
    "ffn_up": "mlp.up",
    "ffn_down": "mlp.down",
}
_TOP_NAMES = {"token_embd": "embed", "output_norm": "norm_f", "output": "lm_head"}


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (convert_hf_to_gguf.py `permute`).

    llama.cpp writes rows per head as (2, head_dim/2) -> (head_dim/2, 2), interleaving the two
    halves; we swap them back. Same as transformers' `_reverse_permute_weights`."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def config_from_gguf(reader, source: str) -> ModelConfig:
    """ModelConfig from a Llama GGUF's `llama.*` metadata."""
    arch = read_field(reader, "general.architecture", source, required=True)
    if arch != "llama":
        raise ValueError(f"{source}: architecture {arch!r} is not supported (only 'llama')")

    def get(key: str, default=None, required: bool = True):
        return read_field(
            reader, f"llama.{key}", source, default=default, required=required and default is None
        )

    d_model = int(get("embedding_length"))
    n_head = int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", default=d_model // n_head))
    rope_dim = int(get("rope.dimension_count", default=head_dim))
    if rope_dim != head_dim:
        raise ValueError(
            f"{source}: partial RoPE (rope.dimension_count={rope_dim} < head_dim={head_dim}) is not supported"
        )
    scaling = get("rope.scaling.type", default="none")
    if scaling not in ("none", "linear") or (
        scaling == "linear" and float(get("rope.scaling.factor", 1.0)) != 1.0
    ):
        raise ValueError(f"{source}: RoPE scaling {scaling!r} is not supported")
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise ValueError(f"{source}: tensor 'token_embd.weight' is missing")
    vocab = int(embd.shape[1])  # GGUF shapes are (ne0=d_model, ne1=vocab)
    meta_vocab = get("vocab_size", default=vocab)
    if int(meta_vocab) != vocab:
        raise ValueError(
            f"{source}: llama.vocab_size={meta_vocab} but token_embd.weight has {vocab} rows (wrong vocab size)"
        )
    return ModelConfig(
        family="llama",
        vocab_size=vocab,
        n_layer=int(get("block_count")),
        n_head=n_head,
        n_kv_head=int(get("attention.head_count_kv", default=n_head)),
        d_model=d_model,
        d_ff=int(get("feed_forward_length")),
        head_dim=head_dim,
        max_seq_len=int(get("context_length")),
        norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", default=10000.0)),
        bias=False,
        # llama.cpp drops output.weight when it equals token_embd.weight
        tie_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
    )


def _our_name(gguf_name: str, source: str) -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES and parts[3] == "weight":
        return f"layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.weight"
    if len(parts) == 2 and parts[0] in _TOP_NAMES and parts[1] == "weight":
        return f"{_TOP_NAMES[parts[0]]}.weight"
    raise ValueError(
        f"{source}: tensor {gguf_name!r} has no counterpart in a Llama model (unsupported variant)"
    )


def dequantized_tensor(tensor, source: str) -> np.ndarray:
    """One GGUF tensor as float32 numpy, (out, in) for matrices; refuses unsupported types by name."""
    import gguf

    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise ValueError(
            f"{source}: tensor {tensor.name!r} has type {kind}, which is not supported (supported: {', '.join(SUPPORTED_TYPES)})"
        )
    w = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(w, dtype=np.float32).reshape(tuple(int(n) for n in reversed(tensor.shape)))


def load_gguf_model(reader, source: str, dtype: torch.dtype = torch.float32) -> GPT:
    config = config_from_gguf(reader, source)
    sd: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = _our_name(t.name, source)
        w = dequantized_tensor(t, source)
        if name.endswith("attn.q.weight"):
            w = _unpermute(w, config.n_head)
        elif name.endswith("attn.k.weight"):
            w = _unpermute(w, config.n_kv_head)
        # np.array copies: F32 tensors are read-only views into the memory-mapped file
        sd[name] = torch.from_numpy(np.array(w, dtype=np.float32, order="C")).to(dtype)
    model = GPT(config).to(dtype)
    from .checkpoint import load_state_dict_checked

    load_state_dict_checked(model, sd, source)
    return model


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32):
    """(GPT, Tokenizer) from a Llama-architecture GGUF file, weights dequantized to `dtype`."""
    path = Path(path)
    reader = open_gguf(path)
    source = str(path)
    tokenizer = tokenizer_from_gguf(reader, source=source)
    model = load_gguf_model(reader, source, dtype)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but token_embd.weight has "
            f"{model.config.vocab_size} rows (wrong vocab size)"
        )
    return model, tokenizer
