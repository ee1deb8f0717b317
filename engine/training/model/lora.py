"""LoRA (Hu et al. 2021): fine-tune a large model through small low-rank updates, then merge them.

    n_trainable = apply_lora(model, LoRAConfig(rank=8, alpha=16))   # adapters in, base frozen
    ... train ...
    merge_lora(model)                                                # an ordinary GPT again

Each targeted projection W (out x in) gets W x + (alpha / rank) * B A x with A (rank x in)
Kaiming-uniform and B (out x rank) zeros, so the model is unchanged before the first step. Every
other parameter is frozen. The adapted layers keep the base layer's state-dict keys (`...q.weight`,
`...q.bias`) and add `...q.lora_A` and `...q.lora_B`, so a training checkpoint of a LoRA model holds
the frozen base and the adapters side by side and resumes exactly. `merge_lora` folds
(alpha / rank) * B @ A into W and puts plain `Linear` layers back: the state dict is then the base
model's, key for key and shape for shape (what the native folder, the GGUF exporter and every
later stage read).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .gpt import Linear

ATTENTION_TARGETS = ("q", "k", "v", "o")  # Attention's projections
MLP_TARGETS = ("gate", "up", "down")  # MLP's (gate only in SwiGLU models)
VALID_TARGETS = ATTENTION_TARGETS + MLP_TARGETS
_PARENTS = {**dict.fromkeys(ATTENTION_TARGETS, "attn"), **dict.fromkeys(MLP_TARGETS, "mlp")}


@dataclasses.dataclass
class LoRAConfig:
    """rank: r of the update B @ A; alpha: the update is scaled by alpha / rank; dropout: on the
    adapter's input only; targets: which projections get adapters (q, k, v, o, gate, up, down;
    Hugging Face's q_proj etc. are accepted too; "gate" is skipped in models without one)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: list[str] = dataclasses.field(default_factory=lambda: list(ATTENTION_TARGETS))

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        names = [t.strip() for item in self.targets for t in str(item).split(",") if t.strip()]
        names = [t.removesuffix("_proj") for t in names]
        unknown = [t for t in names if t not in VALID_TARGETS]
        if unknown:
            raise ValueError(f"lora.targets: unknown projection(s) {unknown}; valid: {', '.join(VALID_TARGETS)}")
        if not names:
            raise ValueError(f"lora.targets: empty; name some of {', '.join(VALID_TARGETS)}")
        self.targets = list(dict.fromkeys(names))  # de-duplicated, in order
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank must be an integer >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class LoRALinear(Linear):
    """A `Linear` plus a trainable low-rank update. It shares (does not copy) the base layer's
    weight and bias, under the same names, so the base keys of the state dict do not change."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.rank, self.scaling = rank, alpha / rank
        w = base.weight
        a = torch.empty(rank, self.in_features, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)  # nn.Linear's own init, as in the paper's code
        self.lora_A = nn.Parameter(a.to(device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        update = torch.nn.functional.linear(torch.nn.functional.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return y + update * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """(alpha / rank) * B @ A, in fp32 at least (fp64 for an fp64 model)."""
        dt = torch.promote_types(self.weight.dtype, torch.float32)
        return (self.lora_B.detach().to(dt) @ self.lora_A.detach().to(dt)) * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}"


def _targets_of(model: nn.Module, targets: list[str]) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute) of every targeted projection in the model's blocks."""
    found = []
    for block in getattr(model, "layers", []):
        for t in targets:
            parent = getattr(block, _PARENTS[t], None)
            if parent is not None and isinstance(getattr(parent, t, None), nn.Linear):
                found.append((parent, t))
    return found


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def apply_lora(model: nn.Module, cfg: LoRAConfig, seed: int = 0) -> int:
    """Wrap cfg.targets in every block with LoRA adapters, in place, and freeze every other
    parameter. Returns the number of trainable parameters. `seed` fixes A's initialisation
    (without touching torch's global random state)."""
    if not isinstance(cfg, LoRAConfig):
        raise TypeError(f"apply_lora: expected a LoRAConfig, got {type(cfg).__name__}")
    if has_lora(model):
        raise ValueError("apply_lora: the model already has LoRA adapters (merge_lora first)")
    found = _targets_of(model, cfg.targets)
    if not found:
        raise ValueError(f"apply_lora: none of {cfg.targets} is a projection of this model's blocks")
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    for parent, attr in found:
        setattr(parent, attr, LoRALinear(getattr(parent, attr), cfg.rank, cfg.alpha, cfg.dropout, generator=gen))
    model.lora_config = cfg
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold each adapter into its base weight (W += alpha/rank * B @ A, computed in fp32 at least) and put
    a plain `Linear` back, in place; every parameter is trainable again. Returns the model."""
    for name, layer in lora_layers(model).items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        w = layer.weight
        delta = layer.delta_weight().to(w.device)
        w.copy_((w.to(delta.dtype) + delta).to(w.dtype))
        plain = Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        plain.weight = w
        plain.bias = layer.bias
        setattr(parent, attr, plain)
    for p in model.parameters():
        p.requires_grad_(True)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters' tensors (`layers.0.attn.q.lora_A`, ...): what a LoRA run learnt."""
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}
