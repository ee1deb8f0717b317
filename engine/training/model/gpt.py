"""One decoder-only transformer for the GPT-2 and Llama families, with a KV cache.

Parameter names follow the Llama layout (q/k/v/o projections, gate/up/down MLP) so that
weight import and export are plain renames; GPT-2's fused c_attn is split on import.
RoPE uses the "rotate half" convention of Hugging Face's Llama (GGUF files store q/k
permuted for the interleaved convention; the GGUF importer undoes that).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class KVCache:
    """Pre-allocated keys and values for every layer.

    All rows share one write position `pos`; rows that start later (left padding, or a
    request that joins a running batch) mark their unused slots invalid in `valid`.

    `k`, `v` and `valid` are views of the first `batch_size` rows of buffers that may hold
    `spare_rows` more, so a serving batch can shrink (`narrow`) and grow again (`add_rows`)
    without copying the rows it keeps (engine/batch_cache.py).
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device=None, dtype=None,
                 zeroed: bool = True, spare_rows: int = 0):
        """zeroed=False leaves k and v uninitialised: for a caller that writes or zeroes every
        column before `pos` itself (columns from `pos` on are always written before they are read)."""
        shape = (config.n_layer, batch_size + spare_rows, config.n_kv_head, max_len, config.head_dim)
        alloc = torch.zeros if zeroed else torch.empty
        self._k = alloc(shape, device=device, dtype=dtype)
        self._v = alloc(shape, device=device, dtype=dtype)
        self._valid = torch.zeros(batch_size + spare_rows, max_len, dtype=torch.bool, device=device)
        self._rows, self._col0 = batch_size, 0
        self.pos = 0
        self._set_views()

    def _set_views(self) -> None:
        r, c = self._rows, self._col0
        self.k, self.v = self._k[:, :r, :, c:], self._v[:, :r, :, c:]
        self.valid = self._valid[:r, c:]
        self.max_len = self._k.shape[3] - c

    @property
    def batch_size(self) -> int:
        return self._rows

    @property
    def spare_rows(self) -> int:
        return self._k.shape[1] - self._rows

    def narrow(self, rows: int, first: int = 0) -> None:
        """Keep the first `rows` rows and drop the `first` leading columns (no copy)."""
        if not 0 <= rows <= self._rows or not 0 <= first <= self.pos:
            raise ValueError(f"narrow({rows}, {first}) of a cache of {self._rows} rows at position {self.pos}")
        self._rows, self._col0, self.pos = rows, self._col0 + first, self.pos - first
        self._set_views()

    def add_rows(self, n: int) -> None:
        """Extend the views over `n` spare rows (their contents are the caller's to write)."""
        if n > self.spare_rows:
            raise ValueError(f"add_rows({n}): only {self.spare_rows} spare rows")
        self._rows += n
        self._set_views()

    def keep_rows(self, keep: torch.Tensor) -> None:
        """Keep only the rows in `keep` (indices into the current rows), copying their keys and
        values; the spare rows go (generation drops the rows that finished)."""
        self._k, self._v = self._k[:, keep], self._v[:, keep]
        self._valid = self._valid[keep]
        self._rows = len(keep)
        self._set_views()

    def reserve(self, n: int, valid: torch.Tensor | None) -> None:
        """Called once per forward before the layers write `n` new positions."""
        if self.pos + n > self.max_len:
            raise ValueError(f"KV cache full: {self.pos} + {n} tokens > capacity {self.max_len}")
        self.valid[:, self.pos : self.pos + n] = True if valid is None else valid.to(torch.bool)


class Linear(nn.Linear):
    """nn.Linear with one CPU inference fast path. For a few rows (decoding a batch), PyTorch's CPU
    BLAS computes W @ x^T much faster than x @ W^T: at 16 rows, 1.6x for SmolLM2's MLP and 1.8x
    for its 49k-row output layer (bench in BENCHMARKS.md, "Decode"). Same weights and state-dict
    keys; training, GPUs and large inputs take nn.Linear's own path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.dim() >= 2 else 1
        if x.device.type != "cpu" or torch.is_grad_enabled() or not 1 < rows <= 64:
            return super().forward(x)
        y = torch.mm(self.weight, x.reshape(rows, x.shape[-1]).t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in fp32, as Llama does: bf16 sums of squares lose too much precision
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


def rope_tables(head_dim: int, max_len: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(max_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); cos/sin: (B, 1, T, D)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        hd, nh, nkv = config.head_dim, config.n_head, config.n_kv_head
        self.q = Linear(config.d_model, nh * hd, bias=config.bias)
        self.k = Linear(config.d_model, nkv * hd, bias=config.bias)
        self.v = Linear(config.d_model, nkv * hd, bias=config.bias)
        self.o = Linear(nh * hd, config.d_model, bias=config.bias)

    def forward(self, x, rope, mask, is_causal, kv_cache: KVCache | None):
        B, T, _ = x.shape
        c = self.config
        q = self.q(x).view(B, T, c.n_head, c.head_dim).transpose(1, 2)
        k = self.k(x).view(B, T, c.n_kv_head, c.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, c.n_kv_head, c.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_cache is not None:
            p = kv_cache.pos
            kv_cache.k[self.layer_idx, :, :, p : p + T] = k
            kv_cache.v[self.layer_idx, :, :, p : p + T] = v
            k = kv_cache.k[self.layer_idx, :, :, : p + T]
            v = kv_cache.v[self.layer_idx, :, :, : p + T]
        dropout = c.dropout if self.training else 0.0
        rep = c.n_head // c.n_kv_head
        if T == 1 and kv_cache is not None:
            # Decoding one token. With GQA, fold each kv group's `rep` query heads into the query
            # axis, (B, n_kv_head, rep, D), so attention reads the cached k/v once instead of
            # copying them `rep` times with repeat_interleave (at 1k context that copy was ~17%
            # of a SmolLM2 decode step). Exact: one query position needs no causal mask, and the
            # (B, 1, 1, S) padding mask broadcasts over the folded axis.
            qf = q.reshape(B, c.n_kv_head, rep, c.head_dim)
            if x.device.type == "cpu" and not torch.is_grad_enabled():
                # by hand on a CPU: SDPA takes its unfused "math" path for a masked single query
                # and a whole SmolLM2 decode step at 16 rows took 8 % longer with it (BENCHMARKS.md,
                # "Serving", fourth session)
                s = torch.matmul(qf, k.transpose(-1, -2)).mul_(c.head_dim**-0.5)
                if mask is not None:
                    s.masked_fill_(~mask, float("-inf"))
                y = torch.matmul(s.softmax(-1), v)
            else:
                y = F.scaled_dot_product_attention(qf, k, v, attn_mask=mask)
            y = y.reshape(B, c.n_head, 1, c.head_dim)
        else:
            if rep > 1:
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout)
        return self.o(y.transpose(1, 2).reshape(B, T, c.n_head * c.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        if self.swiglu:
            self.gate = Linear(config.d_model, config.d_ff, bias=config.bias)
        self.up = Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down = Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x):
        if self.swiglu:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x), approximate="tanh"))  # GPT-2's "gelu_new"


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = Attention(config, layer_idx)
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, rope, mask, is_causal, kv_cache):
        x = x + self.drop(self.attn(self.norm1(x), rope, mask, is_causal, kv_cache))
        return x + self.drop(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        if config.pos_embedding == "learned":
            self.pos_embed = nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = make_norm(config)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        if config.pos_embedding == "rope":
            cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    # ---- initialisation and accounting -------------------------------------------------
    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # GPT-2: residual projections scaled down by depth so the stream's variance stays O(1)
                scale = 1 / math.sqrt(2 * self.config.n_layer) if name.endswith(("o.weight", "down.weight")) else 1
                nn.init.normal_(p, mean=0.0, std=std * scale)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)  # norm weights

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.weight.numel()
            if hasattr(self, "pos_embed"):
                n -= self.pos_embed.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N for the matmuls including the
        output layer, plus 12*L*H*D*T for attention scores (the PaLM / nanoGPT estimate)."""
        c = self.config
        T = seq_len or c.max_seq_len
        n = self.num_params(non_embedding=True) + c.vocab_size * c.d_model  # lm_head matmul
        return 6 * n + 12 * c.n_layer * c.n_head * c.head_dim * T

    # ---- forward ------------------------------------------------------------------------
    def _mask(self, B, T, device, position_ids, doc_ids, attention_mask, kv_cache):
        """Returns (bool attn_mask or None, is_causal) for scaled_dot_product_attention."""
        if kv_cache is not None:
            past = kv_cache.pos
            S = past + T
            if bool(kv_cache.valid[:, :S].all()):  # reserve() already marked the new positions
                if T == 1:
                    return None, False
                if past == 0:
                    return None, True
            q_pos = torch.arange(past, S, device=device)
            k_pos = torch.arange(S, device=device)
            causal = k_pos[None, :] <= q_pos[:, None]  # (T, S)
            mask = causal[None] & kv_cache.valid[:, None, :S]  # (B, T, S); valid already updated
            return self._no_empty_rows(mask).unsqueeze(1), False
        if doc_ids is None and attention_mask is None:
            return None, True
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        mask = causal[None].expand(B, T, T)
        if doc_ids is not None:
            mask = mask & (doc_ids[:, :, None] == doc_ids[:, None, :])
        if attention_mask is not None:
            mask = mask & attention_mask.to(torch.bool)[:, None, :]
        return self._no_empty_rows(mask).unsqueeze(1), False

    @staticmethod
    def _no_empty_rows(mask: torch.Tensor) -> torch.Tensor:
        # A query with no visible key (a padding position) would give NaN from softmax;
        # let it see everything: its output is ignored anyway.
        empty = ~mask.any(-1, keepdim=True)
        return mask | empty

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        trunk: tuple[int, torch.Tensor] | None = None,
        stop_after: int | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states (B, T, d_model).

        position_ids: (B, T); default 0..T-1 (after the cache), or restarting at each document.
        doc_ids: (B, T) packed-sequence ids; attention never crosses documents.
        attention_mask: (B, T) 1 for real tokens, 0 for padding (keys that must not be seen).
        kv_cache: keys/values of earlier positions; the new ones are appended.
        stop_after: return the residual stream after this many blocks instead (no final norm).
        trunk: (n, residual) from `stop_after=n` on the same ids, of this model or of one whose
            embeddings and first n blocks are the same tensors: only the blocks from n on run.
            Models that share frozen lower blocks (PPO's policy, reference, reward model and
            critic) compute those once.
        """
        B, T = input_ids.shape
        device = input_ids.device
        past = kv_cache.pos if kv_cache is not None else 0
        if position_ids is None:
            if doc_ids is not None:
                position_ids = _positions_within_documents(doc_ids)
            else:
                position_ids = torch.arange(past, past + T, device=device).expand(B, T)
        if int(position_ids.max()) >= self.config.max_seq_len:
            raise ValueError(f"position {int(position_ids.max())} exceeds max_seq_len={self.config.max_seq_len}")
        if kv_cache is not None:
            kv_cache.reserve(T, attention_mask)
        mask, is_causal = self._mask(B, T, device, position_ids, doc_ids, attention_mask, kv_cache)
        if kv_cache is not None and (trunk is not None or stop_after is not None):
            raise ValueError("hidden_states: trunk and stop_after run part of the blocks, which a KV cache cannot follow")
        rope = None
        if self.config.pos_embedding == "rope":
            rope = (self.rope_cos[position_ids].unsqueeze(1), self.rope_sin[position_ids].unsqueeze(1))
        if trunk is not None:
            first, x = trunk
            if x.shape[:2] != (B, T):
                raise ValueError(f"trunk: a residual of shape {tuple(x.shape)} for ids of shape {(B, T)}")
        else:
            first, x = 0, self.embed(input_ids)
            if self.config.pos_embedding == "learned":
                x = x + self.pos_embed(position_ids)
            x = self.drop(x)
        for layer in self.layers[first:stop_after]:
            x = layer(x, rope, mask, is_causal, kv_cache)
        if kv_cache is not None:
            kv_cache.pos += T
        return x if stop_after is not None else self.norm_f(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        reduction: str = "mean",
        **kwargs,
    ) -> torch.Tensor:
        """Logits (B, T, V), or with `targets` the cross-entropy loss (targets == -100 ignored).

        reduction: "mean" over counted tokens, "sum", or "none" (B, T).
        """
        h = self.hidden_states(input_ids, **kwargs)
        if targets is None:
            return self.lm_head(h)
        logits = self.lm_head(h).float()  # fp32 for the softmax: bf16 logits lose the tail
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction=reduction)
        return loss.view(targets.shape) if reduction == "none" else loss

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, zeroed: bool = True,
                     spare_rows: int = 0) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.config, batch_size, max_len or self.config.max_seq_len, device=p.device, dtype=p.dtype,
                       zeroed=zeroed, spare_rows=spare_rows)


def _positions_within_documents(doc_ids: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... restarting wherever doc_ids changes along the sequence."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx))
    start_idx = torch.cummax(start_idx, dim=1).values
    return idx - start_idx
