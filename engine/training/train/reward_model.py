"""The reward model: a transformer backbone plus a scalar head, and the ranking loss.

The head reads the final hidden state at the *last real token* of prompt + response, which
is the response's closing <|im_end|> (encode_answer always ends an answer with it). Padding,
left or right, is found from the attention mask, never assumed: reading at a pad position
is the classic bug that sinks a reward model to ~60% pairwise accuracy.

Saved as a native model folder (the backbone, loadable on its own by engine.training.loader.load)
plus `reward_head.safetensors`, with the normalisation constants in meta.json["reward"].
The PPO critic is the same module read at every position (`values`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from engine.training.data.preferences import Comparison
from engine.training.model import GPT
from engine.training.model.checkpoint import META_FILE, atomic_folder, write_model_files
from engine.training.tokenizer import Tokenizer
from engine.training.tokenizer.bpe import IM_END
from engine.training.tokenizer.chat_template import render_prompt

HEAD_FILE = "reward_head.safetensors"


class ScalarHeadModel(nn.Module):
    """backbone (GPT) + Linear(d_model, 1): a reward model, or (read at every token) a critic.

    mean/std: normalisation constants; `score` returns (raw - mean) / std.
    """

    def __init__(self, backbone: GPT, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.backbone = backbone
        d = backbone.config.d_model
        self.head = nn.Linear(d, 1)
        # std 1/sqrt(d+1) (Stiennon et al. 2020): initial rewards are O(1) whatever the width
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(d + 1))
        nn.init.zeros_(self.head.bias)
        if not backbone.config.tie_embeddings:
            # the LM head is never used here; frozen so DDP does not wait for its gradient
            backbone.lm_head.weight.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               trunk: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Raw head output at every position (B, T), fp32. trunk: see GPT.hidden_states."""
        if attention_mask is not None and is_right_padded(attention_mask):
            # padding only after the real tokens: causal attention never lets a real token see
            # it and positions are already 0..n-1, so the fast causal path gives the same values
            attention_mask = None
        kwargs = {}
        if attention_mask is not None:
            # positions count real tokens only, so a left-padded row sees the same positions as unpadded
            pos = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
            kwargs = {"attention_mask": attention_mask, "position_ids": pos}
        if trunk is not None:
            if kwargs:
                raise ValueError("values: a shared trunk needs right-padded rows (causal attention alone)")
            kwargs = {"trunk": trunk}
        h = self.backbone.hidden_states(input_ids, **kwargs)
        return self.head(h.to(self.head.weight.dtype)).squeeze(-1).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                trunk: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Raw reward (B,) read at each row's last real token."""
        v = self.values(input_ids, attention_mask, trunk)
        return v.gather(1, last_token_index(input_ids, attention_mask)[:, None]).squeeze(1)

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              trunk: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Normalised reward (B,)."""
        return (self(input_ids, attention_mask, trunk) - self.mean) / self.std

    def set_normalisation(self, mean: float, std: float) -> None:
        self.mean.fill_(mean)
        self.std.fill_(max(std, 1e-6))


RewardModel = ScalarHeadModel  # the name the stages and eval read best with


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row is real tokens then padding (or no padding at all)."""
    m = attention_mask.bool()
    return bool((m[:, 1:] <= m[:, :-1]).all()) and bool(m[:, 0].all())


def last_token_index(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Index of each row's last real token (B,), for right *or* left padding."""
    B, T = input_ids.shape
    if attention_mask is None:
        return torch.full((B,), T - 1, dtype=torch.long, device=input_ids.device)
    pos = torch.arange(T, device=input_ids.device).expand(B, T)
    return torch.where(attention_mask.bool(), pos, torch.full_like(pos, -1)).max(1).values.clamp(min=0)


# ---- the loss --------------------------------------------------------------------------------
def ranking_loss(rewards: torch.Tensor, pairs: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """InstructGPT's loss: -log sigmoid(r_better - r_worse), averaged over each prompt's pairs,
    then over prompts (so a prompt with K=9 answers weighs as much as one pair).

    rewards: (N,) one per sequence; pairs: (P, 2) sequence indices (better, worse);
    group: (P,) the prompt each pair belongs to, in [0, n_groups).
    """
    per_pair = -F.logsigmoid(rewards[pairs[:, 0]] - rewards[pairs[:, 1]])
    total = torch.zeros(n_groups, dtype=per_pair.dtype, device=per_pair.device).index_add(0, group, per_pair)
    count = torch.zeros(n_groups, dtype=per_pair.dtype, device=per_pair.device).index_add(
        0, group, torch.ones_like(per_pair)
    )
    has = count > 0
    return (total[has] / count[has]).mean()


# ---- data ------------------------------------------------------------------------------------
def encode_answer(prompt_ids: list[int], response_ids: list[int], max_len: int) -> list[int]:
    """prompt + response, cut to max_len: the response keeps its start and its final token
    (<|im_end|>, where the reward is read); the prompt keeps its end (the latest turns)."""
    if len(prompt_ids) + len(response_ids) <= max_len:
        return prompt_ids + response_ids
    resp_room = max_len - min(len(prompt_ids), max_len // 2)
    if len(response_ids) > resp_room:
        response_ids = response_ids[: resp_room - 1] + response_ids[-1:]
    keep = max_len - len(response_ids)
    return (prompt_ids[-keep:] if keep else []) + response_ids


def response_ids(text: str, tokenizer: Tokenizer) -> list[int]:
    """A written answer as the model would have generated it: content then <|im_end|>."""
    return tokenizer.encode(text) + [tokenizer.token_id(IM_END)]


@dataclass
class EncodedComparison:
    sequences: list[list[int]]  # one per response
    pairs: list[tuple[int, int]]  # (better, worse) response indices, ties skipped


def encode_comparison(c: Comparison, tokenizer: Tokenizer, max_len: int) -> EncodedComparison:
    prompt = render_prompt(c.prompt, tokenizer)
    seqs = [encode_answer(prompt, response_ids(r, tokenizer), max_len) for r in c.responses]
    return EncodedComparison(seqs, c.pairs())


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def collate_comparisons(items: list[EncodedComparison], pad_id: int) -> dict[str, torch.Tensor]:
    """Every response of every prompt in one batch (each prompt's K answers share one forward),
    with the pair and group indices ranking_loss needs."""
    seqs, pairs, group = [], [], []
    for g, item in enumerate(items):
        base = len(seqs)
        seqs += item.sequences
        pairs += [(base + a, base + b) for a, b in item.pairs]
        group += [g] * len(item.pairs)
    ids, mask = pad_right(seqs, pad_id)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pairs": torch.tensor(pairs, dtype=torch.long).view(-1, 2),
        "group": torch.tensor(group, dtype=torch.long),
        "n_groups": len(items),
    }


@torch.no_grad()
def pairwise_accuracy(model: ScalarHeadModel, items: list[EncodedComparison], pad_id: int, batch_size: int = 8) -> dict:
    """Held-out accuracy: the share of (better, worse) pairs the model orders correctly
    (an exact tie counts half), and the mean loss."""
    was = model.training
    model.eval()
    correct = total = 0.0
    losses = []
    dev = model.head.weight.device
    for s in range(0, len(items), batch_size):
        b = collate_comparisons(items[s : s + batch_size], pad_id)
        if len(b["pairs"]) == 0:
            continue
        b = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
        r = model(b["input_ids"], b["attention_mask"])
        d = r[b["pairs"][:, 0]] - r[b["pairs"][:, 1]]
        correct += float((d > 0).sum() + 0.5 * (d == 0).sum())
        total += len(d)
        losses.append(float(ranking_loss(r, b["pairs"], b["group"], b["n_groups"])))
    model.train(was)
    return {"accuracy": correct / total if total else float("nan"), "pairs": int(total),
            "loss": sum(losses) / len(losses) if losses else float("nan")}


@torch.no_grad()
def raw_rewards(model: ScalarHeadModel, seqs: list[list[int]], pad_id: int, batch_size: int = 16) -> torch.Tensor:
    out = []
    for s in range(0, len(seqs), batch_size):
        ids, mask = pad_right(seqs[s : s + batch_size], pad_id)
        out.append(model(ids.to(model.head.weight.device), mask.to(model.head.weight.device)).cpu())
    return torch.cat(out) if out else torch.zeros(0)


# ---- saving and loading -----------------------------------------------------------------------
def save_reward_model(folder: str | Path, model: ScalarHeadModel, tokenizer: Tokenizer, meta: dict) -> Path:
    """A native model folder (the backbone) + reward_head.safetensors; meta["reward"] holds
    the normalisation constants."""
    meta = dict(meta)
    meta["reward"] = {**meta.get("reward", {}), "mean": float(model.mean), "std": float(model.std), "head": HEAD_FILE}
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        write_model_files(tmp, model.backbone, tokenizer, meta)
        head = {k: v.detach().contiguous() for k, v in model.head.state_dict().items()}
        save_file(head, str(tmp / HEAD_FILE), metadata={"format": "pt"})
    return folder


def load_reward_model(spec: str | Path, device: str | torch.device = "cpu") -> tuple[ScalarHeadModel, Tokenizer, dict]:
    """(model, tokenizer, meta) from a folder written by save_reward_model."""
    from engine.training.loader import load

    folder = Path(spec)
    if not (folder / HEAD_FILE).exists():
        raise FileNotFoundError(f"{folder}: not a reward model (no {HEAD_FILE}; train one with `chatfactory reward`)")
    loaded = load(folder, device=device)
    meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).exists() else {}
    norm = meta.get("reward", {})
    model = ScalarHeadModel(loaded.model, norm.get("mean", 0.0), norm.get("std", 1.0))
    sd = load_file(str(folder / HEAD_FILE))
    try:
        model.head.load_state_dict(sd)
    except RuntimeError as e:
        raise ValueError(f"{folder / HEAD_FILE}: does not fit the backbone ({e})") from None
    return model.to(device).eval(), loaded.tokenizer, meta
