"""The model's configuration: one dataclass covers the GPT-2 and Llama families."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

# What each family means when a field is left as None.
FAMILY_DEFAULTS = {
    "gpt2": {"pos_embedding": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True, "norm_eps": 1e-5},
    "llama": {"pos_embedding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "norm_eps": 1e-5},
}


@dataclass
class ModelConfig:
    """A decoder-only transformer.

    family: "gpt2" (learned positions, LayerNorm, GELU, biases) or "llama" (RoPE, RMSNorm,
    SwiGLU, grouped-query attention). Any of the per-part fields may be set to mix them.
    """

    vocab_size: int = 8192
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    max_seq_len: int = 256
    family: str = "llama"
    n_kv_head: int | None = None  # grouped-query attention; None = n_head (plain multi-head)
    d_ff: int | None = None  # MLP width; None = 4*d (gelu) or 8/3*d rounded up to 32 (swiglu)
    head_dim: int | None = None  # None = d_model // n_head
    pos_embedding: str | None = None  # "learned" | "rope"
    norm: str | None = None  # "layernorm" | "rmsnorm"
    mlp: str | None = None  # "gelu" | "swiglu"
    bias: bool | None = None  # biases in linear layers
    norm_eps: float | None = None
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.family not in FAMILY_DEFAULTS:
            raise ValueError(f"model config: family must be one of {sorted(FAMILY_DEFAULTS)}, got {self.family!r}")
        for key, value in FAMILY_DEFAULTS[self.family].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise ValueError(f"model config: d_model={self.d_model} is not divisible by n_head={self.n_head}")
            self.head_dim = self.d_model // self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.mlp == "gelu" else 32 * ((8 * self.d_model // 3 + 31) // 32)
        checks = {
            "pos_embedding": ("learned", "rope"),
            "norm": ("layernorm", "rmsnorm"),
            "mlp": ("gelu", "swiglu"),
        }
        for key, allowed in checks.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"model config: {key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"model config: n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.pos_embedding == "rope" and self.head_dim % 2:
            raise ValueError(f"model config: RoPE needs an even head_dim, got {self.head_dim}")
        for key in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            if getattr(self, key) <= 0:
                raise ValueError(f"model config: {key} must be positive, got {getattr(self, key)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown model config field(s) {unknown}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, source=str(path))
