"""Hugging Face model folders, out and in: config.json + model.safetensors (+ tokenizer files).

Export writes what `transformers` loads as `LlamaForCausalLM` (llama family) or
`GPT2LMHeadModel` (gpt2 family) with logits equal to ours; import reads Llama and GPT-2
folders, including sharded ones (`model.safetensors.index.json`).

The two layouts differ from ours only by names, except GPT-2's: its `Conv1D` stores weights
as (in, out), the transpose of `nn.Linear`, and q, k, v are one fused `c_attn`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .checkpoint import atomic_folder, load_state_dict_checked
from .config import ModelConfig
from .gpt import GPT

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# Llama parameter names, ours -> Hugging Face's, per layer and outside the layers.
_LLAMA_LAYER = {
    "norm1.weight": "input_layernorm.weight",
    "norm2.weight": "post_attention_layernorm.weight",
    **{f"attn.{p}.{w}": f"self_attn.{p}_proj.{w}" for p in "qkvo" for w in ("weight", "bias")},
    **{f"mlp.{p}.{w}": f"mlp.{p}_proj.{w}" for p in ("gate", "up", "down") for w in ("weight", "bias")},
}
_LLAMA_TOP = {
    "embed.weight": "model.embed_tokens.weight",
    "norm_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
# GPT-2 activations that are exactly our tanh-approximate GELU
_GPT2_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


# ---- which Hugging Face architecture a config is -------------------------------------------
def hf_architecture(config: ModelConfig) -> str:
    """The Hugging Face architecture ("llama" or "gpt2") that computes exactly what this config computes.

    Raises ValueError naming the field when no HF class does (a mixed config)."""
    c = config
    if (c.pos_embedding, c.norm, c.mlp) == ("rope", "rmsnorm", "swiglu"):
        return "llama"
    if (c.pos_embedding, c.norm, c.mlp) == ("learned", "layernorm", "gelu"):
        if c.n_kv_head != c.n_head:
            raise ValueError(
                f"HF export: GPT-2 has no grouped-query attention (n_kv_head={c.n_kv_head}, n_head={c.n_head}); "
                "use the llama family for GQA"
            )
        if c.head_dim * c.n_head != c.d_model:
            raise ValueError(
                f"HF export: GPT-2 needs head_dim*n_head == d_model, got {c.head_dim}*{c.n_head} != {c.d_model}"
            )
        return "gpt2"
    raise ValueError(
        "HF export: no Hugging Face architecture computes this model "
        f"(pos_embedding={c.pos_embedding!r}, norm={c.norm!r}, mlp={c.mlp!r}); Llama needs rope/rmsnorm/swiglu, "
        "GPT-2 needs learned/layernorm/gelu"
    )


def hf_config(config: ModelConfig, tokenizer=None, dtype: torch.dtype = torch.float32) -> dict:
    """The config.json for `config`."""
    c = config
    arch = hf_architecture(c)
    ids = {}
    if tokenizer is not None:
        ids = {
            "bos_token_id": tokenizer.bos_id,
            "eos_token_id": tokenizer.eos_id,
            "pad_token_id": tokenizer.pad_id,
        }
    dtype_name = str(dtype).removeprefix("torch.")
    if arch == "llama":
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": c.vocab_size,
            "hidden_size": c.d_model,
            "intermediate_size": c.d_ff,
            "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head,
            "num_key_value_heads": c.n_kv_head,
            "head_dim": c.head_dim,
            "max_position_embeddings": c.max_seq_len,
            "rms_norm_eps": c.norm_eps,
            "rope_theta": c.rope_theta,
            "rope_scaling": None,
            "hidden_act": "silu",
            "attention_bias": c.bias,
            "mlp_bias": c.bias,
            "attention_dropout": c.dropout,
            "tie_word_embeddings": c.tie_embeddings,
            "initializer_range": c.init_std,
            "torch_dtype": dtype_name,
            **ids,
        }
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_embd": c.d_model,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": c.d_ff,
        "n_positions": c.max_seq_len,
        "layer_norm_epsilon": c.norm_eps,
        # exactly torch's tanh GELU (HF's "gelu_new" is the same formula written out: ~1e-7 apart)
        "activation_function": "gelu_pytorch_tanh",
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "scale_attn_weights": True,
        "tie_word_embeddings": c.tie_embeddings,
        "initializer_range": c.init_std,
        "torch_dtype": dtype_name,
        **ids,
    }


# ---- state dicts, ours <-> Hugging Face ------------------------------------------------------
def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    c = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    if c.tie_embeddings:
        sd.pop("lm_head.weight")  # HF ties it back on load (tie_word_embeddings)
    if hf_architecture(c) == "llama":
        return {_llama_name(k): v.contiguous() for k, v in sd.items()}
    return _gpt2_from_ours(sd, c)


def _llama_name(ours: str) -> str:
    if ours in _LLAMA_TOP:
        return _LLAMA_TOP[ours]
    _, i, rest = ours.split(".", 2)  # layers.N.rest
    return f"model.layers.{i}.{_LLAMA_LAYER[rest]}"


def _gpt2_from_ours(sd: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    def bias(name: str, n: int) -> torch.Tensor:
        # bias=False exports as zero biases: GPT-2 always has them, and zero is the same function
        return sd[name] if name in sd else torch.zeros(n, dtype=sd["embed.weight"].dtype)

    out = {"transformer.wte.weight": sd["embed.weight"], "transformer.wpe.weight": sd["pos_embed.weight"]}
    d = c.d_model
    for i in range(c.n_layer):
        p, h = f"layers.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[h + theirs + ".weight"] = sd[p + ours + ".weight"]
            out[h + theirs + ".bias"] = bias(p + ours + ".bias", d)
        # Conv1D computes x @ W + b with W of shape (in, out): the transpose of nn.Linear's weight
        qkv = torch.cat([sd[p + f"attn.{x}.weight"] for x in "qkv"], dim=0)
        out[h + "attn.c_attn.weight"] = qkv.t()
        out[h + "attn.c_attn.bias"] = torch.cat([bias(p + f"attn.{x}.bias", d) for x in "qkv"])
        out[h + "attn.c_proj.weight"] = sd[p + "attn.o.weight"].t()
        out[h + "attn.c_proj.bias"] = bias(p + "attn.o.bias", d)
        out[h + "mlp.c_fc.weight"] = sd[p + "mlp.up.weight"].t()
        out[h + "mlp.c_fc.bias"] = bias(p + "mlp.up.bias", c.d_ff)
        out[h + "mlp.c_proj.weight"] = sd[p + "mlp.down.weight"].t()
        out[h + "mlp.c_proj.bias"] = bias(p + "mlp.down.bias", d)
    out["transformer.ln_f.weight"] = sd["norm_f.weight"]
    out["transformer.ln_f.bias"] = bias("norm_f.bias", d)
    if "lm_head.weight" in sd:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def _ours_from_llama(hf: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    back = {v: k for k, v in _LLAMA_TOP.items()}
    layer_back = {v: k for k, v in _LLAMA_LAYER.items()}
    out = {}
    for k, v in hf.items():
        if k in back:
            out[back[k]] = v
        elif k.startswith("model.layers."):
            _, _, i, rest = k.split(".", 3)
            if rest in layer_back:
                out[f"layers.{i}.{layer_back[rest]}"] = v
            elif not rest.endswith("rotary_emb.inv_freq"):  # old checkpoints saved this buffer
                out[k] = v  # unknown: reported by load_state_dict_checked
        elif not k.endswith("rotary_emb.inv_freq"):
            out[k] = v
    return out


def _ours_from_gpt2(hf: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    # Some GPT-2 checkpoints (the original one) have no "transformer." prefix.
    hf = {(k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v for k, v in hf.items()}
    out, d = {}, c.d_model
    pop = hf.pop
    out["embed.weight"] = pop("transformer.wte.weight")
    out["pos_embed.weight"] = pop("transformer.wpe.weight")
    for i in range(c.n_layer):
        p, h = f"layers.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[p + ours + ".weight"] = pop(h + theirs + ".weight")
            out[p + ours + ".bias"] = pop(h + theirs + ".bias")
        w, b = pop(h + "attn.c_attn.weight").t(), pop(h + "attn.c_attn.bias")
        for j, x in enumerate("qkv"):
            out[p + f"attn.{x}.weight"] = w[j * d : (j + 1) * d]
            out[p + f"attn.{x}.bias"] = b[j * d : (j + 1) * d]
        out[p + "attn.o.weight"] = pop(h + "attn.c_proj.weight").t()
        out[p + "attn.o.bias"] = pop(h + "attn.c_proj.bias")
        out[p + "mlp.up.weight"] = pop(h + "mlp.c_fc.weight").t()
        out[p + "mlp.up.bias"] = pop(h + "mlp.c_fc.bias")
        out[p + "mlp.down.weight"] = pop(h + "mlp.c_proj.weight").t()
        out[p + "mlp.down.bias"] = pop(h + "mlp.c_proj.bias")
        for buf in ("attn.bias", "attn.masked_bias"):  # causal-mask buffers of older versions
            hf.pop(h + buf, None)
    out["norm_f.weight"] = pop("transformer.ln_f.weight")
    out["norm_f.bias"] = pop("transformer.ln_f.bias")
    if "lm_head.weight" in hf:
        out["lm_head.weight"] = pop("lm_head.weight")
    out.update(hf)  # leftovers are unexpected: reported by load_state_dict_checked
    return {k: v.contiguous() for k, v in out.items()}


# ---- export -------------------------------------------------------------------------------
def export_hf_folder(model: GPT, tokenizer, out_dir: str | Path) -> Path:
    """Write `model` (and its tokenizer) as a Hugging Face folder, atomically."""
    out_dir = Path(out_dir)
    dtype = next(model.parameters()).dtype
    config = hf_config(model.config, tokenizer, dtype)  # raises before anything is written
    sd = to_hf_state_dict(model)
    with atomic_folder(out_dir) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.cpu() for k, v in sd.items()}, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        os.chmod(
            tmp / WEIGHTS_FILE, 0o644
        )  # safetensors creates it private; a model folder is meant to be shared
        if tokenizer is not None:
            from engine.training.tokenizer.files import save_tokenizer_files

            save_tokenizer_files(tokenizer, tmp)
    return out_dir


# ---- import -------------------------------------------------------------------------------
def config_from_hf(cfg: dict, source: str) -> ModelConfig:
    """ModelConfig from a Llama or GPT-2 config.json (already parsed)."""

    def need(key: str):
        if key not in cfg or cfg[key] is None:
            raise ValueError(f"{source}: field {key!r} is missing")
        return cfg[key]

    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if model_type == "llama" or (model_type is None and "LlamaForCausalLM" in archs):
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"{source}: hidden_act={act!r} is not supported (Llama uses 'silu')")
        rope = cfg.get("rope_parameters") or {}
        scaling = cfg.get("rope_scaling") or {}
        rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        if rope_type != "default":
            raise ValueError(f"{source}: RoPE scaling {rope_type!r} is not supported (only plain RoPE)")
        if cfg.get("attention_bias", False) != cfg.get("mlp_bias", False):
            raise ValueError(f"{source}: attention_bias and mlp_bias must be equal (one `bias` switch here)")
        n_head = need("num_attention_heads")
        return ModelConfig(
            family="llama",
            vocab_size=need("vocab_size"),
            n_layer=need("num_hidden_layers"),
            n_head=n_head,
            n_kv_head=cfg.get("num_key_value_heads") or n_head,
            d_model=need("hidden_size"),
            d_ff=need("intermediate_size"),
            head_dim=cfg.get("head_dim") or need("hidden_size") // n_head,
            max_seq_len=need("max_position_embeddings"),
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0),
            bias=bool(cfg.get("attention_bias", False)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),  # LlamaConfig's default
        )
    if model_type == "gpt2" or (model_type is None and "GPT2LMHeadModel" in archs):
        act = cfg.get("activation_function", "gelu_new")
        if act not in _GPT2_TANH_GELU:
            raise ValueError(
                f"{source}: activation_function={act!r} is not supported (tanh GELU: {_GPT2_TANH_GELU})"
            )
        for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if cfg.get(key):
                raise ValueError(f"{source}: {key}=true is not supported")
        if cfg.get("scale_attn_weights", True) is False:
            raise ValueError(f"{source}: scale_attn_weights=false is not supported")
        d = need("n_embd")
        return ModelConfig(
            family="gpt2",
            vocab_size=need("vocab_size"),
            n_layer=need("n_layer"),
            n_head=need("n_head"),
            d_model=d,
            d_ff=cfg.get("n_inner") or 4 * d,
            max_seq_len=need("n_positions"),
            norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        )
    raise ValueError(
        f"{source}: unsupported architecture (model_type={model_type!r}, architectures={archs}); "
        "supported: llama (LlamaForCausalLM), gpt2 (GPT2LMHeadModel)"
    )


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder's model.safetensors, or of the shards its index names."""
    index = folder / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})") from None
        files = sorted(set(weight_map.values()))
    elif (folder / WEIGHTS_FILE).exists():
        files, weight_map = [WEIGHTS_FILE], None
    else:
        others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pth"))
        hint = f" (found {others[:3]}: only safetensors weights are read)" if others else ""
        raise FileNotFoundError(f"{folder / WEIGHTS_FILE}: weights file missing{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: shard named in {INDEX_FILE} is missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    tensors[key] = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path}: corrupt or unreadable safetensors file ({e})") from None
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise ValueError(f"{index}: tensors {missing[:5]} are listed but absent from their shards")
    return tensors


def load_hf_folder(path: str | Path, dtype: torch.dtype | None = None) -> GPT:
    """A GPT from a Hugging Face Llama or GPT-2 folder (config.json + safetensors weights)."""
    folder = Path(path)
    cfg_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: missing (not a Hugging Face model folder)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    config = config_from_hf(cfg, str(cfg_path))
    hf_sd = read_safetensors(folder)
    convert = _ours_from_llama if config.family == "llama" else _ours_from_gpt2
    try:
        sd = convert(hf_sd, config)
    except KeyError as e:
        raise ValueError(f"{folder}: weights lack tensor {e.args[0]!r} that config.json implies") from None
    if not config.tie_embeddings and "lm_head.weight" not in sd:
        raise ValueError(
            f"{folder}: config.json says tie_word_embeddings=false but there is no lm_head.weight"
        )
    model = GPT(config)
    target = dtype or torch.float32
    sd = {k: v.to(target) for k, v in sd.items()}
    load_state_dict_checked(model, sd, str(folder))
    return model.to(target)
