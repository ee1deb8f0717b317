"""Growing and shrinking the running batch's KV cache as requests join and leave.

The model's KVCache has one write column `pos` shared by all rows and a per-row `valid` mask
(model/gpt.py). A row's tokens therefore sit right-aligned, ending at `pos`; what is left of
a row's first token is invalid for it and masked out of its attention. Each row's RoPE /
learned positions are passed explicitly (`position_ids`), so a column is not a position.

- join: newcomers are prefilled in a cache of their own, then `merge` copies them into the
  running cache's spare rows, right-aligned at its `pos`; only when it has no room (or a
  newcomer is longer than the batch's span) are both copied into a new, larger cache;
- leave: `compact_rows` drops finished rows (moving one kept row into each hole, no full copy)
  and the leading columns no remaining row uses (a narrower view of the same buffers), so the
  cache spans only live requests however long the engine keeps serving, and the freed rows
  are spare rows for the next join.

The price of one shared column: every row attends over the batch's whole span (masked where
not its own) and the cache holds rows x span, so a long conversation next to short ones costs
the short ones too. A paged, per-row layout (vLLM's) avoids that; at the context lengths of
the small CPU-served models here the attention is a minor part of a step (its two batched
matmuls were 14 % of a SmolLM2 step at 16 rows and ~300 columns; the weight matmuls 67 %).
"""

from __future__ import annotations

from chatfactory.model import GPT, KVCache

SLACK = 256  # at most this many more free columns than asked for, on a fresh merge


def merge(model: GPT, a: KVCache | None, b: KVCache, room: int, rows: int = 0) -> KVCache:
    """Rows of `a` then rows of `b` in one cache, both ending at the same column, with `room`
    free columns after it for the tokens still to come. In place when `a` has the spare rows
    and columns and `b` is no longer than `a` (only b's rows are copied); otherwise in a new
    cache with spare rows (as many as it has, up to `rows` in all) and up to SLACK more free
    columns, so later joins can be in place."""
    if a is not None and a.spare_rows >= b.batch_size and b.pos <= a.pos and a.max_len - a.pos >= room:
        r0 = a.batch_size
        a.add_rows(b.batch_size)
        try:
            _place(a, r0, a.pos, b)
        except BaseException:
            a.narrow(r0)  # the running batch as it was
            raise
        return a
    pa = a.pos if a is not None else 0
    pos = max(pa, b.pos)
    rows_a = a.batch_size if a is not None else 0
    n = rows_a + b.batch_size
    # uninitialised, not zeroed (zeroing the whole cache took as long as the copies): every column
    # before `pos` is copied or zeroed below, and the decode steps write the later ones before reading
    # spare rows: as many again, up to `rows` (doubling, as a growing array does: a lone long request
    # on a GPU must not reserve a whole batch's memory)
    spare = max(0, min(rows - n, n))
    out = model.new_kv_cache(n, pos + room + min(room, SLACK), zeroed=False, spare_rows=spare)
    out.pos = pos
    if a is not None:
        _place(out, 0, pos, a)
    _place(out, rows_a, pos, b)
    return out



def _place(out: KVCache, r0: int, pos: int, src: KVCache) -> None:
    """src's rows into out's rows r0.., right-aligned to end at column `pos`."""
    r1, p = r0 + src.batch_size, src.pos
    # left of a shorter source: masked out by `valid`, but zeros (never NaN) under the mask
    out.k[:, r0:r1, :, : pos - p] = 0
    out.v[:, r0:r1, :, : pos - p] = 0
    out.valid[r0:r1, : pos - p] = False
    if p:
        out.k[:, r0:r1, :, pos - p : pos] = src.k[:, :, :, :p]
        out.v[:, r0:r1, :, pos - p : pos] = src.v[:, :, :, :p]
        out.valid[r0:r1, pos - p : pos] = src.valid[:, :p]


def compact_rows(cache: KVCache, keep: list[int]) -> list[int]:
    """Drop every row not in `keep` (ascending indices) with as few copies as possible: kept rows
    from the end move into the holes left by dropped rows before them, one row each, and the
    cache becomes a view of its first len(keep) rows, cut to the columns a kept row still uses.
    (Gathering the kept rows into a new tensor instead copied the whole cache each time a request
    finished: 80 ms at 16 SmolLM2 rows, against 1.9 ms.) Returns the old index now at each new row, for
    the caller to reorder its per-row state the same way."""
    n = len(keep)
    kept = set(keep)
    holes = [i for i in range(n) if i not in kept]
    movers = [i for i in keep if i >= n]  # as many as there are holes
    for h, src in zip(holes, movers):
        cache.k[:, h] = cache.k[:, src]
        cache.v[:, h] = cache.v[:, src]
        cache.valid[h] = cache.valid[src]
    order = list(range(n))  # rows below n that were kept stay where they are
    for h, src in zip(holes, movers):
        order[h] = src
    used = cache.valid[:n, : cache.pos].any(0).nonzero()
    first = int(used[0]) if used.numel() else cache.pos
    cache.narrow(n, first)
    return order
