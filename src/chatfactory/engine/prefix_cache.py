"""Prefix caching: a prompt's keys and values are kept, and the next prompt that begins the same
way skips that part of its prefill.

Every chat request starts with the same hidden instructions, and a conversation's next turn
starts with the whole of its previous prompt, so most of a prompt's prefill has been done
before. vLLM's automatic prefix caching keeps such keys/values in hashed blocks; here whole
prompts are kept (least recently used out first, within a memory budget) and a new prompt
reuses the longest common beginning with any of them. Keys/values depend only on the tokens
before them and their positions, which start at 0 for every prompt, so the reused part is the
same computation (up to float rounding of differently shaped matmuls).

When several newcomers arrive together and share a beginning nobody has cached yet (the hidden
instructions, right after start-up), `warm` prefills that beginning once, alone, first.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import torch

from chatfactory.model import GPT, KVCache

# memory kept for cached keys/values: 512 MB holds ~11k tokens of SmolLM2-135M in fp32 (46 KB each)
DEFAULT_MAX_MB = 512
MIN_REUSE = 16  # shorter common beginnings are not worth a copy


def _nbytes(k: torch.Tensor, v: torch.Tensor) -> int:
    return k.numel() * k.element_size() + v.numel() * v.element_size()


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_MB << 20, min_reuse: int = MIN_REUSE):
        self.max_bytes, self.min_reuse = max_bytes, min_reuse
        # prompt tokens -> (k, v), each (n_layer, n_kv_head, T, head_dim)
        self._entries: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.tokens = self.bytes = 0  # held now
        self.hits = self.lookups = self.reused_tokens = 0

    @classmethod
    def from_env(cls) -> PrefixCache | None:
        """CHATFACTORY_PREFIX_CACHE_MB=0 turns prefix caching off; N keeps up to N MB of keys/values."""
        raw = os.environ.get("CHATFACTORY_PREFIX_CACHE_MB", str(DEFAULT_MAX_MB))
        try:
            mb = float(raw)
        except ValueError:
            raise ValueError(f"CHATFACTORY_PREFIX_CACHE_MB must be a number of megabytes, got {raw!r}") from None
        return cls(int(mb * (1 << 20))) if mb > 0 else None

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: Sequence[int]) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
        """(n, k, v): the first n tokens of `ids` (n < len(ids): the last one is always computed,
        its logits are needed) with their cached keys/values, or (0, None, None)."""
        self.lookups += 1
        best, best_key = self._longest(ids)
        best = min(best, len(ids) - 1)
        if best < self.min_reuse or best_key is None:
            return 0, None, None
        self._entries.move_to_end(best_key)
        k, v = self._entries[best_key]
        self.hits += 1
        self.reused_tokens += best
        return best, k[:, :, :best], v[:, :, :best]

    def _longest(self, ids: Sequence[int]) -> tuple[int, tuple[int, ...] | None]:
        """The kept prompt sharing the longest beginning with `ids`, and that length."""
        best, best_key = 0, None
        for key in self._entries:
            n = _common_length(key, ids)
            if n > best:
                best, best_key = n, key
        return best, best_key

    def add(self, ids: Sequence[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep a prompt's keys/values: tensors (n_layer, n_kv_head, T, head_dim) that the caller
        hands over and no longer writes."""
        key = tuple(int(t) for t in ids)
        size = _nbytes(k, v)
        if len(key) < self.min_reuse or size > self.max_bytes:
            return
        # the same prompt again, or a prefix of it, holds nothing the new entry does not
        for other in [o for o in self._entries if len(o) <= len(key) and key[: len(o)] == o]:
            self._drop(other)
        self._entries[key] = (k, v)
        self.tokens += len(key)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))  # least recently used first

    def _drop(self, key: tuple[int, ...]) -> None:
        k, v = self._entries.pop(key)
        self.tokens -= len(key)
        self.bytes -= _nbytes(k, v)

    def warm(self, model: GPT, prompts: list[list[int]]) -> None:
        """Prefill, once, the beginning that two or more of these prompts share and no entry holds."""
        if len(prompts) < 2:
            return
        shared = min(_common_length(prompts[0], p) for p in prompts[1:])
        shared = min(shared, min(len(p) for p in prompts) - 1)
        if shared < self.min_reuse:
            return
        if self._longest(prompts[0][:shared])[0] >= shared:
            return  # already kept
        ids = torch.tensor([prompts[0][:shared]], device=next(model.parameters()).device)
        cache = model.new_kv_cache(1, shared)
        model.hidden_states(ids, kv_cache=cache)
        self.add(prompts[0][:shared], cache.k[:, 0], cache.v[:, 0])  # a cache of its own: nothing else writes it


def prefill(
    model: GPT, prompts: list[list[int]], pad_id: int, prefix_cache: PrefixCache | None
) -> tuple[torch.Tensor, KVCache]:
    """Prefill a batch of prompts, reusing cached beginnings; returns the last position's hidden
    state of each row (B, d_model) and the batch's cache, each row's tokens ending at cache.pos.

    Layout: row i's reused n_i tokens sit right-aligned before column P = max(n); its remaining
    tokens are left-padded into the chunk [P, P + S) computed now. The invalid columns between
    are masked, and positions are passed explicitly, so the gap changes nothing.
    """
    device = next(model.parameters()).device
    hits = [prefix_cache.lookup(p) if prefix_cache is not None else (0, None, None) for p in prompts]
    P = max(n for n, _, _ in hits)
    rest = [p[n:] for p, (n, _, _) in zip(prompts, hits)]
    S = max(len(r) for r in rest)
    B = len(prompts)
    cache = model.new_kv_cache(B, P + S)
    for i, (n, k, v) in enumerate(hits):
        if n:
            cache.k[:, i, :, P - n : P] = k
            cache.v[:, i, :, P - n : P] = v
            cache.valid[i, P - n : P] = True
    cache.pos = P
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    mask = torch.zeros((B, S), dtype=torch.long)
    pos = torch.zeros((B, S), dtype=torch.long)
    for i, (r, (n, _, _)) in enumerate(zip(rest, hits)):
        ids[i, S - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, S - len(r) :] = 1
        pos[i, S - len(r) :] = torch.arange(n, n + len(r))
    h = model.hidden_states(ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device), kv_cache=cache)
    if prefix_cache is not None:
        for i, p in enumerate(prompts):
            cols = cache.valid[i, : cache.pos].nonzero().squeeze(1)
            prefix_cache.add(p, cache.k[:, i][:, :, cols], cache.v[:, i][:, :, cols])
    return h[:, -1], cache
