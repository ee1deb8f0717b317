"""Our GPT + tokenizer -> a GGUF file that llama.cpp loads, and llama.cpp's quantizer on it.

The inverse of gguf_import.py, written with the `gguf` package's `GGUFWriter`:
- Llama family ("llama" architecture): the tensor names and metadata that llama.cpp's
  convert_hf_to_gguf.py writes for a Hugging Face Llama checkpoint. Our q/k rows are in the
  "rotate half" RoPE order (as HF's), so they get the converter's `permute` to llama.cpp's
  interleaved order; gguf_import._unpermute undoes it, so load_gguf(export_gguf(m)) == m
  (up to the f16 rounding of the weights).
- GPT-2 family ("gpt2" architecture): learned positions, LayerNorm with biases, GELU, and
  llama.cpp's fused attn_qkv (our q, k, v rows stacked). gguf_import does not read it back.
Matrices are stored as F16 (or F32), 1-D tensors (norms, biases) as F32, as the converter does.

The tokenizer goes in as llama.cpp's byte-level BPE ("gpt2" model): the vocabulary in id order,
merges, token types (3 = control for special tokens, 4 = user-defined for other added tokens),
the eos/bos/pad ids, and `tokenizer.ggml.pre`, the name llama.cpp knows the split regex by.

Files are written to a temporary name beside the target and renamed into place (os.replace),
so a crash never leaves a half-written model under the final name.
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

import numpy as np
import torch

from .config import FAMILY_DEFAULTS
from .gpt import GPT

_LAYER_NAMES = {
    "norm1": "attn_norm",
    "norm2": "ffn_norm",
    "attn.q": "attn_q",
    "attn.k": "attn_k",
    "attn.v": "attn_v",
    "attn.o": "attn_output",
    "mlp.gate": "ffn_gate",
    "mlp.up": "ffn_up",
    "mlp.down": "ffn_down",
}
_TOP_NAMES = {
    "embed": "token_embd",
    "pos_embed": "position_embd",
    "norm_f": "output_norm",
    "lm_head": "output",
}
DTYPES = ("f16", "f32")
QUANT_TYPES = ("Q8_0", "Q4_K_M")


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute: rotate-half q/k rows -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _architecture(config) -> str:
    """'llama' or 'gpt2' when every per-part setting is its family's default; refuse mixes."""
    for arch in ("llama", "gpt2"):
        d = FAMILY_DEFAULTS[arch]
        if all(getattr(config, k) == d[k] for k in ("pos_embedding", "norm", "mlp", "bias")):
            return arch
    parts = {k: getattr(config, k) for k in ("pos_embedding", "norm", "mlp", "bias")}
    raise ValueError(
        f"GGUF export: model config {parts} is neither the Llama nor the GPT-2 layout; "
        "llama.cpp has no architecture for this mix"
    )


def _pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's `tokenizer.ggml.pre` name for our tokenizer's pre-tokenizer, or ValueError."""
    from engine.training.tokenizer.gguf import _LLAMA3_SPLIT, _QWEN2_SPLIT

    pre = json.loads(tokenizer.hf.to_str()).get("pre_tokenizer") or {}

    def is_byte_level(p, regex: bool) -> bool:
        return (
            p.get("type") == "ByteLevel"
            and bool(p.get("use_regex", True)) == regex
            and not p.get("add_prefix_space", False)
        )

    if is_byte_level(pre, True):
        return "gpt2"
    if pre.get("type") == "Sequence":
        seq = pre.get("pretokenizers", [])
        if (
            len(seq) == 2
            and seq[0].get("type") == "Digits"
            and seq[0].get("individual_digits")
            and is_byte_level(seq[1], True)
        ):
            return "smollm"
        if len(seq) == 2 and seq[0].get("type") == "Split" and is_byte_level(seq[1], False):
            regex = (seq[0].get("pattern") or {}).get("Regex")
            if regex == _LLAMA3_SPLIT:
                return "llama-bpe"
            if regex == _QWEN2_SPLIT:
                return "qwen2"
    raise ValueError(
        f"GGUF export: the tokenizer's pre-tokenizer {json.dumps(pre)[:200]} has no llama.cpp "
        "equivalent we know (supported: GPT-2 ByteLevel, SmolLM2 Digits+ByteLevel, Llama 3, Qwen2)"
    )


def _add_tokenizer(w, tokenizer, chat_template: str) -> None:
    hf = json.loads(tokenizer.hf.to_str())
    if (hf.get("model") or {}).get("type") != "BPE":
        raise ValueError("GGUF export: only byte-level BPE tokenizers are supported")
    n = tokenizer.vocab_size
    tokens = [tokenizer.hf.id_to_token(i) for i in range(n)]
    if any(t is None for t in tokens):
        raise ValueError(f"GGUF export: the tokenizer's ids are not contiguous 0..{n - 1}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in hf["model"].get("merges", [])]
    added = {t.content: t.special for t in tokenizer.hf.get_added_tokens_decoder().values()}
    types = [(3 if added[t] else 4) if t in added else 1 for t in tokens]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre_tokenizer_name(tokenizer))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(tokenizer.eos_id)
    if tokenizer.bos_id is not None:
        w.add_bos_token_id(tokenizer.bos_id)
    w.add_pad_token_id(tokenizer.pad_id)
    # our tokenizer never adds bos/eos itself; llama.cpp must not either
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(chat_template)


def _tensors(model: GPT, arch: str, n_vocab: int | None = None) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in our (out, in) row order, q/k permuted for llama); the
    embedding and output rows cut to n_vocab."""
    c = model.config
    sd = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}
    if c.tie_embeddings:
        sd.pop("lm_head.weight", None)  # llama.cpp uses token_embd when output is absent
    out: list[tuple[str, np.ndarray]] = []
    fused: dict[str, dict[str, np.ndarray]] = {}
    for name, value in sd.items():
        parts = name.split(".")
        kind = parts[-1]  # weight | bias
        if parts[0] == "layers":
            sub = ".".join(parts[2:-1])
            if arch == "gpt2" and sub in ("attn.q", "attn.k", "attn.v"):
                fused.setdefault(f"blk.{parts[1]}.attn_qkv.{kind}", {})[sub] = value
                continue
            gname = f"blk.{parts[1]}.{_LAYER_NAMES[sub]}.{kind}"
            if arch == "llama" and sub == "attn.q":
                value = llama_cpp_permute(value, c.n_head)
            elif arch == "llama" and sub == "attn.k":
                value = llama_cpp_permute(value, c.n_kv_head)
        else:
            gname = f"{_TOP_NAMES[parts[0]]}.{kind}"
            if parts[0] in ("embed", "lm_head") and n_vocab is not None:
                value = value[:n_vocab]
        out.append((gname, value))
    for gname, qkv in fused.items():
        out.append((gname, np.concatenate([qkv["attn.q"], qkv["attn.k"], qkv["attn.v"]], axis=0)))
    return out


def export_gguf(
    model: GPT,
    tokenizer,
    path: str | Path,
    *,
    chat_template: str | None = None,
    dtype: str = "f16",
    name: str | None = None,
) -> Path:
    """Write `model` and `tokenizer` as a GGUF file llama.cpp loads; returns the path.

    chat_template: Jinja template stored as `tokenizer.chat_template`; None = our ChatML one.
    dtype: "f16" (what llama.cpp's converter writes by default) or "f32" for matrices.
    """
    import gguf

    from engine.training.tokenizer.chat_template import JINJA_CHAT_TEMPLATE

    if dtype not in DTYPES:
        raise ValueError(f"GGUF export: dtype must be one of {DTYPES}, got {dtype!r}")
    c = model.config
    arch = _architecture(c)
    if tokenizer.vocab_size > c.vocab_size:
        raise ValueError(
            f"GGUF export: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {c.vocab_size}"
        )
    # pre-training rounds the vocabulary up (to a multiple of 64, for speed); the rows past the
    # tokenizer's last id are never read, and llama.cpp wants one row per token: they are left out
    n_vocab = tokenizer.vocab_size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")

    w = gguf.GGUFWriter(str(tmp), arch)
    try:
        w.add_name(name or path.stem)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
        w.add_context_length(c.max_seq_len)
        w.add_embedding_length(c.d_model)
        w.add_block_count(c.n_layer)
        w.add_feed_forward_length(c.d_ff)
        w.add_head_count(c.n_head)
        w.add_head_count_kv(c.n_kv_head)
        if arch == "llama":
            w.add_vocab_size(n_vocab)
            w.add_rope_freq_base(c.rope_theta)
            w.add_rope_dimension_count(c.head_dim)
            w.add_layer_norm_rms_eps(c.norm_eps)
            if c.head_dim * c.n_head != c.d_model:
                w.add_key_length(c.head_dim)
                w.add_value_length(c.head_dim)
        else:
            if c.head_dim * c.n_head != c.d_model:
                raise ValueError(
                    "GGUF export: llama.cpp's gpt2 architecture needs head_dim * n_head == d_model"
                )
            w.add_layer_norm_eps(c.norm_eps)
        _add_tokenizer(w, tokenizer, chat_template or JINJA_CHAT_TEMPLATE)
        for gname, value in _tensors(model, arch, n_vocab):
            if value.ndim == 2 and dtype == "f16":
                value = value.astype(np.float16)
            w.add_tensor(gname, np.ascontiguousarray(value))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def quantize_gguf(src: str | Path, dst: str | Path, qtype: str = "Q8_0", *, nthread: int = 0) -> Path:
    """Quantize an F16/F32 GGUF with llama.cpp's own quantizer (llama_model_quantize).

    qtype: "Q8_0" or "Q4_K_M". Tensors whose rows don't split into whole blocks (K-quants need
    multiples of 256) are quantized by llama.cpp to a fallback type per tensor (q5_0/q8_0...),
    so tiny models work too. Written to a temporary name and renamed into place.
    """
    import llama_cpp

    ftypes = {"Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    if qtype not in ftypes:
        raise ValueError(f"quantize_gguf: qtype must be one of {QUANT_TYPES}, got {qtype!r}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"quantize_gguf: {src}: no such GGUF file")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[qtype]
    params.nthread = nthread
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(
                f"quantize_gguf: llama.cpp failed (code {rc}) to quantize {src} to {qtype} as {dst}"
            )
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
