"""Batched generation with the KV cache: left-padded prefill, then one token per step.

This is the plain, synchronous generator used by training (rollouts, sampling K answers),
evaluation and the `generate` command. The serving scheduler builds on the same model calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.training.model import GPT

from .sampling import sample


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()


@dataclass
class Generation:
    tokens: list[int]
    finish_reason: str  # "stop" (a stop token was produced, and is included) or "length"
    logprobs: list[float] = field(default_factory=list)  # log p(token) at the sampling temperature


def left_pad(prompts: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids, attention_mask and position_ids for a left-padded batch."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, T - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, T - len(p) :] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


@torch.no_grad()
def generate(
    model: GPT,
    prompts: list[list[int]],
    params: SamplingParams,
    pad_id: int = 0,
    on_token: Callable[[int, int], None] | None = None,
) -> list[Generation]:
    """Generate a continuation for each prompt (token ids). on_token(row, token) streams."""
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: empty prompt")
    device = next(model.parameters()).device
    ctx = model.config.max_seq_len
    longest = max(len(p) for p in prompts)
    if longest >= ctx:
        raise ValueError(f"generate: prompt of {longest} tokens does not fit the context window of {ctx}")
    max_new = min(params.max_new_tokens, ctx - longest)
    ids, mask, pos = left_pad(prompts, pad_id, device)
    B = len(prompts)
    cache = model.new_kv_cache(B, longest + max_new)
    gen = None
    if params.seed is not None:
        gen = torch.Generator(device=device).manual_seed(params.seed)
    stops = torch.tensor(sorted(set(params.stop_token_ids)) or [-1], device=device)
    out = [Generation([], "length") for _ in range(B)]
    rows = torch.arange(B, device=device)  # each batch row's original index (finished rows leave)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    # only the prompt's last position goes through the output layer (49k columns for SmolLM2)
    logits = model.lm_head(model.hidden_states(ids, attention_mask=mask, position_ids=pos, kv_cache=cache)[:, -1])
    next_pos = pos[:, -1] + 1
    temp = params.temperature if params.temperature > 0 else 1.0
    for _ in range(max_new):
        tok = sample(logits, params.temperature, params.top_k, params.top_p, gen)
        lp = torch.log_softmax(logits.float() / temp, -1).gather(-1, tok[:, None]).squeeze(-1)
        for r, t, p, d in zip(rows.tolist(), tok.tolist(), lp.tolist(), done.tolist()):
            if not d:
                out[r].tokens.append(t)
                out[r].logprobs.append(p)
                if on_token:
                    on_token(r, t)
        hit = torch.isin(tok, stops) & ~done
        for r in rows[hit].tolist():
            out[r].finish_reason = "stop"
        done |= hit
        if bool(done.all()) or cache.pos >= cache.max_len:
            break
        if int(done.sum()) * 4 >= len(rows):  # a quarter of the batch has finished: stop computing those rows
            keep = (~done).nonzero().flatten()
            cache.keep_rows(keep)
            rows, tok, next_pos, done = rows[keep], tok[keep], next_pos[keep], done[keep]
        logits = model(tok[:, None], position_ids=next_pos[:, None], kv_cache=cache)[:, -1]
        next_pos = next_pos + 1
    return out

