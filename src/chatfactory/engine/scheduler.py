"""The serving engine: one model, one background thread, continuous batching. No HTTP here.

Callers `submit` token ids and iterate the returned `EngineRequest` (blocking, or `async for`
over `stream()`) for text deltas. After `start()`, a background thread loops (without it,
a blocking iteration drives the same loop in the caller's thread: the CLI and tests do that):

    admit waiting requests (up to max_batch rows): prefill them together in a cache of their
        own, skipping the beginning a recent prompt shared (engine/prefix_cache.py), sample
        each one's first token, then merge that cache into the running batch;
    one decode step for the whole batch: ONE model call, one batched sampling call;
    finished and cancelled rows leave the batch (their cache rows and unused columns dropped).

So a request joins between two decode steps of the others and never waits for them to end.
Cache layout and its join/leave operations: engine/batch_cache.py. Per-row sampling with
per-request seeds: engine/row_sampling.py. Text release (UTF-8, stop strings): engine/stops.py.

Not done (yet): chunked prefill (a long prompt stalls the batch for its prefill).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from chatfactory.loader import LoadedModel
from chatfactory.tokenizer import ENDOFTEXT

from . import batch_cache, prefix_cache
from .generate import SamplingParams
from .row_sampling import sample_rows
from .stops import IncrementalDetokenizer, StopStrings

log = logging.getLogger(__name__)

_END = object()  # end-of-stream marker in a request's queue


class ContextWindowError(ValueError):
    """prompt + max_tokens does not fit the model's context window (OpenAI: context_length_exceeded)."""


@dataclass
class Delta:
    """Newly released text (never empty) and the token ids generated since the previous Delta.
    Ids whose text is never shown (the stop token, a cut stop string) are counted in
    `EngineRequest.completion_tokens` and listed in `output_ids`, not sent as deltas."""

    text: str
    token_ids: list[int]


class EngineRequest:
    """One generation: iterate it for Deltas; `finish_reason` is set when the stream ends."""

    def __init__(self, engine: Engine, prompt_ids: list[int], params: SamplingParams, stop: Sequence[str]):
        self.engine = engine
        self.prompt_ids = prompt_ids
        self.params = params
        self.stop = tuple(stop)
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.output_ids: list[int] = []  # every generated token, stop token included
        self.finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
        self.error: BaseException | None = None
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._cancelled = threading.Event()

    # ---- consumer side ---------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop generating (client gone, Stop button, moderation flag). The engine drops the row
        before its next step; the stream then ends with finish_reason "cancelled"."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[Delta]:
        try:
            while True:
                with self._cond:
                    if not self._items and self.engine.running:
                        while not self._items:
                            self._cond.wait()
                    item = self._next()
                if item is None:  # no engine thread: run its loop here until this request has news
                    if not self.engine.step() and not self._items:
                        raise RuntimeError("engine has no work left but this request never finished")
                    continue
                if item is _END:
                    if self.error is not None:
                        raise RuntimeError(f"generation failed: {self.error}") from self.error
                    return
                yield item
        finally:
            if self.finish_reason is None:  # the consumer stopped reading: nobody wants the rest
                self.cancel()

    async def stream(self) -> AsyncIterator[Delta]:
        """The same deltas for asyncio callers, without a thread per waiting request: the engine
        thread wakes this loop with call_soon_threadsafe."""
        self.engine.start()  # an event loop must never run decode steps itself
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        with self._cond:
            self._waiters.append((loop, ready))
        try:
            while True:
                with self._cond:
                    item = self._next()
                    if item is None:
                        ready.clear()  # under the lock: a put after this sets it again
                if item is None:
                    await ready.wait()
                    continue
                if item is _END:
                    if self.error is not None:
                        raise RuntimeError(f"generation failed: {self.error}") from self.error
                    return
                yield item
        finally:
            with self._cond:
                self._waiters.remove((loop, ready))
            if self.finish_reason is None:  # the caller closed the stream early
                self.cancel()

    def _next(self) -> Any:
        """The next queued item or None (caller holds the lock). _END stays queued, so a
        finished request iterated again ends at once."""
        if not self._items:
            return None
        return self._items[0] if self._items[0] is _END else self._items.popleft()

    def result(self) -> str:
        """Block until done; the whole released text."""
        return "".join(d.text for d in self)

    # ---- engine side -------------------------------------------------------------------------
    def _put(self, item: Any) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()
            waiters = list(self._waiters)
        for loop, ready in waiters:
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # that event loop is closed: its consumer is gone
                pass

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        if self.finish_reason is not None:
            return
        self.error = error
        self.finished_at = time.perf_counter()
        self.finish_reason = reason  # set before _END so a consumer that sees the end sees it
        self._put(_END)


class _Row:
    """A request while it is in the running batch: its text state and its randomness."""

    def __init__(self, req: EngineRequest, engine: Engine):
        self.req = req
        p = req.params
        self.stop_ids = engine.default_stop_ids | set(p.stop_token_ids)
        self.detok = IncrementalDetokenizer(engine.tokenizer, req.prompt_ids)
        self.stops = StopStrings(req.stop)
        # One RNG per request (never shared): its uniforms, and so its tokens, do not depend
        # on which other requests share the batch. Python's Random is enough for one number
        # per step and far cheaper than a torch.Generator call.
        seed = p.seed if p.seed is not None else int.from_bytes(os.urandom(8), "little")
        self.rng = random.Random(seed)
        self.unsent: list[int] = []

    @property
    def remaining(self) -> int:
        return self.req.params.max_new_tokens - self.req.completion_tokens


class Engine:
    """Serves one loaded model to many concurrent requests."""

    def __init__(self, loaded: LoadedModel, *, max_batch: int = 16, use_prefix_cache: bool = True):
        if max_batch < 1:
            raise ValueError(f"engine: max_batch must be at least 1, got {max_batch}")
        self.loaded = loaded
        self.model = loaded.model.eval()
        self.tokenizer = loaded.tokenizer
        self.name = loaded.name
        self.context_window = self.model.config.max_seq_len
        self.max_batch = max_batch
        self.device = next(self.model.parameters()).device
        # eos, and <|endoftext|> where it exists (both end a document; SmolLM2's eos is
        # <|im_end|>, so a raw completion would otherwise run on past <|endoftext|>).
        # The chat flow adds <|im_end|> (chat/flow.py).
        self.default_stop_ids = {self.tokenizer.eos_id}
        if ENDOFTEXT in self.tokenizer.hf.get_vocab(with_added_tokens=True):
            self.default_stop_ids.add(self.tokenizer.token_id(ENDOFTEXT))
        self.requests_submitted = 0
        self.tokens_generated = 0
        self.decode_steps = 0
        # where the engine thread's time goes (seconds), exported by /metrics: decode steps,
        # admissions (prefill of newcomers, which pauses the batch), and requests' waits in the queue
        self.decode_seconds = self.admit_seconds = self.queue_wait_seconds = 0.0
        self.admitted = 0
        self.peak_batch = 0  # most rows decoded together so far
        # keys/values of recent prompts, reused by prompts that begin the same way
        self.prefix_cache = prefix_cache.PrefixCache.from_env() if use_prefix_cache else None
        self._pending: deque[EngineRequest] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._reset_batch()

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def batch_size(self) -> int:
        """Sequences in the running batch now."""
        return len(self._rows)

    def start(self) -> None:
        """Start the background decode thread (idempotent)."""
        with self._cond:
            if self._stopping:
                raise RuntimeError(f"engine {self.name}: shut down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
                self._thread.start()

    def shutdown(self) -> None:
        """Stop the thread; requests still waiting or running end as "cancelled"."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        for req in list(self._pending) + [r.req for r in self._rows]:
            req._finish("cancelled")
        self._pending.clear()
        self._reset_batch()

    # ---- submitting --------------------------------------------------------------------------
    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, stop: Sequence[str] = ()
    ) -> EngineRequest:
        """Queue a generation. Raises ValueError (ContextWindowError for length) on bad input."""
        with self._cond:
            self.requests_submitted += 1  # every call counts: proves what never reached the model
        ids = [int(t) for t in prompt_ids]
        self.check(ids, params)
        req = EngineRequest(self, ids, params, stop)
        with self._cond:
            if self._stopping:
                raise RuntimeError(f"engine {self.name}: shut down")
            self._pending.append(req)
            self._cond.notify_all()
        return req

    def check(self, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        """The errors `submit` raises, without submitting."""
        n, m, ctx = len(prompt_ids), params.max_new_tokens, self.context_window
        if n == 0:
            raise ValueError("prompt is empty")
        vocab = self.model.config.vocab_size
        bad = next((t for t in prompt_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"prompt token id {bad} is outside the model's vocabulary (0..{vocab - 1})")
        if m < 1:
            raise ValueError(f"max_tokens must be at least 1, got {m}")
        if params.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {params.temperature}")
        if params.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {params.top_k}")
        if not 0 < params.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {params.top_p}")
        if n + m > ctx:
            raise ContextWindowError(
                f"this model's context window is {ctx} tokens; the prompt has {n} tokens and max_tokens "
                f"asks for {m} more ({n + m} in all). Shorten the prompt or lower max_tokens."
            )

    # ---- the decode thread -------------------------------------------------------------------
    def _reset_batch(self) -> None:
        self._rows: list[_Row] = []
        self._cache = None
        self._last = self._next_pos = None  # (B,) last sampled token, its position
        self._temp = self._top_k = self._top_p = None  # (B,) sampling settings per row

    def step(self) -> bool:
        """Without the background thread: admit waiting requests and run one decode step in the
        calling thread. Returns whether work remains."""
        if self.running:
            raise RuntimeError(f"engine {self.name}: step() is for engines without a background thread")
        with self._cond:
            new = self._take_pending()
        self._iterate(new)
        return bool(self._pending or self._rows)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._pending or self._rows):
                    self._cond.wait()
                if self._stopping:
                    return
                new = self._take_pending()
            self._iterate(new)

    def _take_pending(self) -> list[EngineRequest]:
        """Waiting requests that fit in the batch (caller holds self._cond)."""
        for req in [r for r in self._pending if r.cancelled]:
            self._pending.remove(req)
            req._finish("cancelled")
        new = []
        while self._pending and len(self._rows) + len(new) < self.max_batch:
            new.append(self._pending.popleft())
        return new

    def _iterate(self, new: list[EngineRequest]) -> None:
        # grad mode is per thread: inference_mode is entered by whichever thread runs the loop.
        # A failure must not kill the server: it fails the requests involved, and only those
        # (a failed admission leaves the running batch untouched: it is merged in last).
        with torch.inference_mode():
            if new:
                t0 = time.perf_counter()
                self.queue_wait_seconds += sum(t0 - r.submitted_at for r in new)
                self.admitted += len(new)
                try:
                    self._admit(new)
                except Exception as e:
                    log.exception("engine %s: prefill failed", self.name)
                    for req in new:
                        req._finish("error", e)
                self.admit_seconds += time.perf_counter() - t0
            if self._rows:
                t0 = time.perf_counter()
                try:
                    self._step()
                except Exception as e:
                    log.exception("engine %s: decode step failed", self.name)
                    for row in self._rows:
                        row.req._finish("error", e)
                    self._reset_batch()
                self.decode_seconds += time.perf_counter() - t0

    def _admit(self, reqs: list[EngineRequest]) -> None:
        """Prefill newcomers together (left-padded), sample their first tokens, merge them in."""
        rows = [_Row(r, self) for r in reqs]
        prompts = [r.prompt_ids for r in reqs]
        if self.prefix_cache is not None:
            self.prefix_cache.warm(self.model, prompts)
        h, cache = prefix_cache.prefill(self.model, prompts, self.tokenizer.pad_id, self.prefix_cache)
        logits = self.model.lm_head(h)  # only the last position's logits are needed
        temp, top_k, top_p = self._settings(rows)
        toks = self._sample(logits, rows, temp, top_k, top_p)
        keep = [i for i, (row, t) in enumerate(zip(rows, toks)) if not self._accept(row, t)]
        if not keep:
            return
        if len(keep) < len(rows):
            keep = batch_cache.compact_rows(cache, keep)  # the kept newcomers' new order
        rows = [rows[i] for i in keep]
        idx = torch.tensor(keep, device=self.device)
        all_rows = self._rows + rows
        new = (
            torch.tensor([toks[i] for i in keep], device=self.device),
            torch.tensor([len(r.req.prompt_ids) for r in rows], device=self.device),
            temp[idx],
            top_k[idx],
            top_p[idx],
        )
        if self._rows:
            old = (self._last, self._next_pos, self._temp, self._top_k, self._top_p)
            new = tuple(torch.cat([a, b]) for a, b in zip(old, new))
        # last, and assigned together: a failure before this leaves the running batch as it was
        # (merge writes into the running cache's spare rows, which no row reads until assigned)
        self._cache = batch_cache.merge(
            self.model, self._cache, cache, max(r.remaining for r in all_rows), rows=self.max_batch
        )
        self._rows = all_rows
        self._last, self._next_pos, self._temp, self._top_k, self._top_p = new
        self.peak_batch = max(self.peak_batch, len(all_rows))

    def _step(self) -> None:
        """One decode step for every row: one model call, one sampling call."""
        gone = [i for i, r in enumerate(self._rows) if r.req.cancelled]
        for i in gone:
            self._rows[i].req._finish("cancelled")
        if gone:
            self._keep([i for i in range(len(self._rows)) if i not in gone])
            if not self._rows:
                return
        h = self.model.hidden_states(
            self._last[:, None], position_ids=self._next_pos[:, None], kv_cache=self._cache
        )
        logits = self.model.lm_head(h[:, -1])
        toks = self._sample(logits, self._rows, self._temp, self._top_k, self._top_p)
        self.decode_steps += 1
        self._last = torch.tensor(toks, device=self.device)
        self._next_pos = self._next_pos + 1
        finished = {i for i, (row, t) in enumerate(zip(self._rows, toks)) if self._accept(row, t)}
        if finished:
            self._keep([i for i in range(len(self._rows)) if i not in finished])

    def _keep(self, keep: list[int]) -> None:
        if not keep:
            self._reset_batch()
            return
        keep = batch_cache.compact_rows(self._cache, keep)  # the rows' new order
        idx = torch.tensor(keep, device=self.device)
        self._rows = [self._rows[i] for i in keep]
        self._last, self._next_pos = self._last[idx], self._next_pos[idx]
        self._temp, self._top_k, self._top_p = self._temp[idx], self._top_k[idx], self._top_p[idx]

    def _settings(self, rows: list[_Row]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ps = [r.req.params for r in rows]
        return (
            torch.tensor([float(p.temperature) for p in ps], device=self.device),
            torch.tensor([int(p.top_k) for p in ps], device=self.device),
            torch.tensor([float(p.top_p) for p in ps], device=self.device),
        )

    def _sample(self, logits: torch.Tensor, rows: list[_Row], temp, top_k, top_p) -> list[int]:
        # a greedy row draws nothing, so its neighbours' RNG streams stay untouched too
        u = [r.rng.random() if r.req.params.temperature > 0 else 0.0 for r in rows]
        uniform = torch.tensor(u, device=self.device)
        return sample_rows(logits, temp, top_k, top_p, uniform).tolist()

    def _accept(self, row: _Row, tok: int) -> bool:
        """Record a sampled token, release what text is ready; True when the request is done."""
        req = row.req
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        req.output_ids.append(tok)
        req.completion_tokens += 1
        self.tokens_generated += 1
        row.unsent.append(tok)
        reason = None
        if tok in row.stop_ids:
            text, hit = row.stops.feed(row.detok.flush())  # the stop token's own text is never shown
            text += "" if hit else row.stops.flush()
            reason = "stop"
        else:
            text, hit = row.stops.feed(row.detok.push(tok))
            if hit:
                reason = "stop"
            elif row.remaining <= 0:
                more, hit = row.stops.feed(row.detok.flush())
                text += more + ("" if hit else row.stops.flush())
                reason = "stop" if hit else "length"
        if text:
            req._put(Delta(text, row.unsent))
            row.unsent = []
        if reason is not None:
            req._finish(reason)
            return True
        return False
