"""Sampling for a batch whose rows each carry their own temperature, top-k, top-p and seed.

`sampling.sample` takes one setting for the whole batch and one generator; the serving
scheduler mixes requests, so here every parameter is a (B,) tensor and the randomness is one
uniform number per row, drawn by the caller from that request's own torch.Generator. A token
is then picked by inverse CDF: row i's token depends only on row i's logits and its uniform,
so a seeded request gives the same text alone or batched with others.

Same truncation rules as `sampling.process_logits`: top-k first, then top-p keeps the smallest
prefix of the (top-k renormalised) distribution whose mass reaches p.
"""

from __future__ import annotations

import torch


def _inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Index i with cdf[i-1] <= u*total < cdf[i] per row; zero-probability entries never win."""
    cdf = probs.cumsum(-1)
    target = (uniform * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)


def sample_rows(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    uniform: torch.Tensor,
) -> torch.Tensor:
    """Next token per row (B,) from logits (B, V).

    temperature <= 0 is greedy (argmax; the row's uniform is ignored); top_k 0 and top_p 1.0
    mean no truncation. uniform: (B,) numbers in [0, 1).
    """
    V = logits.shape[-1]
    out = logits.argmax(-1)
    sampled = temperature > 0
    if not bool(sampled.any()):
        return out
    truncated = sampled & (((top_k > 0) & (top_k < V)) | (top_p < 1.0))
    # Rows go down one path or the other by their own settings only (never by their
    # neighbours'), or a seeded row's tokens would depend on who else is in the batch.
    plain = (sampled & ~truncated).nonzero().squeeze(1)
    if plain.numel():
        scaled = logits[plain].float() / temperature[plain, None]
        out[plain] = _inverse_cdf(scaled.softmax(-1), uniform[plain])
    trunc = truncated.nonzero().squeeze(1)
    if trunc.numel():
        scaled = logits[trunc].float() / temperature[trunc, None]
        k = torch.where(top_k[trunc] > 0, top_k[trunc], V)
        p = top_p[trunc]
        picked, slow = _truncated_from_candidates(scaled, k, p, uniform[trunc])
        out[trunc] = picked
        if slow.numel():
            out[trunc[slow]] = _truncated_full_sort(scaled[slow], k[slow], p[slow], uniform[trunc[slow]])
    return out


CANDIDATES = 512  # tokens a truncated row is first sampled from (the largest logits, sorted)


def _truncated_from_candidates(scaled, k, p, uniform):
    """Top-k/top-p sampling that sorts only the CANDIDATES largest logits instead of the whole
    vocabulary (sorting 49k logits per row was a quarter of a 16-row SmolLM2 decode step).
    Exact wherever the kept set lies among the candidates: top-k rows with k <= CANDIDATES,
    and top-p rows whose candidates already hold mass p (a trained model's usual case). Returns
    (tokens for every row, indices of the rows that must take the full sort instead)."""
    V = scaled.shape[-1]
    c = min(V, CANDIDATES)
    vals, idx = scaled.topk(c, -1)  # sorted, largest first
    rank = torch.arange(c, device=scaled.device)
    beyond_k = rank[None, :] >= k[:, None]
    # the distribution top-p reads: softmax over all V tokens, or over the top k
    norm = torch.where(k >= V, scaled.logsumexp(-1), vals.masked_fill(beyond_k, float("-inf")).logsumexp(-1))
    probs = (vals - norm[:, None]).exp().masked_fill(beyond_k, 0.0)
    # exact when the top k fit among the candidates, or (no top-k) the candidates hold mass p
    ok = (k <= c) | ((k >= V) & (probs.sum(-1) >= p))
    return _pick(probs, p, uniform, idx), (~ok).nonzero().squeeze(1)


def _truncated_full_sort(scaled, k, p, uniform):
    V = scaled.shape[-1]
    sorted_logits, order = scaled.sort(-1, descending=True)
    rank = torch.arange(V, device=scaled.device)
    probs = sorted_logits.masked_fill(rank[None, :] >= k[:, None], float("-inf")).softmax(-1)
    return _pick(probs, p, uniform, order)


def _pick(probs, p, uniform, token_ids):
    """Top-p over probabilities sorted largest first, then the inverse-CDF draw; returns token ids."""
    # drop a token when the mass before it already reaches top_p (the first always stays)
    drop = (probs.cumsum(-1) - probs >= p[:, None]) & (p[:, None] < 1.0)
    choice = _inverse_cdf(probs.masked_fill(drop, 0.0), uniform)
    return token_ids.gather(1, choice[:, None]).squeeze(1)
