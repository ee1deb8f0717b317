"""One GGUF model run by llama.cpp (llama-cpp-python): load, render, trim, stream, cancel.

One `LlamaRuntime` owns one `llama_cpp.Llama`, which is not thread-safe: `generate` holds a lock
for the whole answer, so a second request waits (or the caller cancels the first). The desktop
app calls it from its one inference worker thread only.

Speed comes from not redoing work:
- llama-cpp-python keeps the tokens it has processed and, for a new prompt, decodes only what
  follows the longest common prefix. Rendering is append-only across turns
  (`chat_template.py`), so a follow-up turn processes only its new tokens.
- Switching sessions would throw that prefix away, so the KV state of the few most recently
  used sessions is kept in RAM (`session_cache_mb`) and restored when the user comes back.

Stop: a flag checked on every token; while a long prompt is processed, llama.cpp's abort
callback checks the same flag, so Stop returns within one batch (`n_batch` tokens).
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engine.models.gguf_info import GGUFError, GGUFInfo, read_gguf_info
from engine.models.memory import available_memory

from .chat_template import ChatTemplate
from .settings import RuntimeSettings, Sampling


class ModelLoadError(ValueError):
    """A model file that cannot be run; the message names the file and the cause."""


class ContextOverflowError(ValueError):
    """The instructions and the newest message alone do not fit the context window."""


@dataclass
class Prompt:
    tokens: list[int]
    messages: list[dict[str, str]]  # what was rendered, after trimming
    dropped: int  # past messages left out to fit the context window


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens found in the KV cache (not processed again)
    switch_s: float = 0.0  # saving the previous session's KV state and restoring this one's
    completion_tokens: int = 0
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    prefill_s: float = 0.0  # processing the new prompt tokens
    ttft_s: float | None = None  # generate() called -> first token
    decode_s: float = 0.0  # first token -> last token
    tokens_per_s: float | None = None  # decode speed


@dataclass
class _SessionState:
    tokens: tuple[int, ...]
    state: object  # a numpy uint8 buffer filled by llama_state_get_data
    nbytes: int


@dataclass
class Generation:
    """An answer in progress: iterate it for text pieces; `stats` fills in as it runs."""

    _runtime: LlamaRuntime
    _tokens: list[int]
    _sampling: Sampling
    _cancel: threading.Event
    _session: object
    stats: GenerationStats = field(default_factory=GenerationStats)

    def __iter__(self) -> Iterator[str]:
        return self._runtime._run(self)


_abort_fn = None


def _set_abort_callback(ctx, callback) -> None:
    """llama_set_abort_callback from the shared library (llama-cpp-python binds no wrapper)."""
    global _abort_fn
    import llama_cpp

    if _abort_fn is None:
        fn = llama_cpp.llama_cpp._lib.llama_set_abort_callback
        fn.argtypes = [ctypes.c_void_p, llama_cpp.ggml_abort_callback, ctypes.c_void_p]
        fn.restype = None
        _abort_fn = fn
    _abort_fn(ctx, callback or llama_cpp.ggml_abort_callback(), None)


class LlamaRuntime:
    """A loaded GGUF model. `name` is what the user calls it (registry name or file stem)."""

    def __init__(self, path: str | Path, settings: RuntimeSettings | None = None, name: str | None = None):
        self.path = Path(path)
        self.settings = settings or RuntimeSettings()
        self.name = name or self.path.stem
        self.info = self._check(self.path)
        self._lock = threading.Lock()
        self._llm = self._load()
        meta = self._llm.metadata or {}
        vocab = self._llm._model
        bos = vocab.token_get_text(vocab.token_bos()) if vocab.token_bos() >= 0 else ""
        eos = vocab.token_get_text(vocab.token_eos()) if vocab.token_eos() >= 0 else ""
        self._bos_id = vocab.token_bos()
        self._add_bos = str(meta.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"
        self.template = ChatTemplate(self.info.chat_template, self.name, bos_token=bos, eos_token=eos)
        self._sessions: OrderedDict[object, _SessionState] = OrderedDict()
        self._current_session: object = None
        self._spare = None  # a state buffer to reuse (see _save_state)
        self._cancel_flag: threading.Event | None = None
        self._abort_cb = None

    # ---- loading -----------------------------------------------------------------------------
    def _check(self, path: Path) -> GGUFInfo:
        try:
            info = read_gguf_info(path)
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: no such model file") from None
        except GGUFError as e:
            raise ModelLoadError(str(e)) from None
        except OSError as e:
            raise ModelLoadError(f"{path}: cannot be read ({e.strerror or e})") from None
        need = info.kv_bytes_per_token() * self.settings.n_ctx
        free = available_memory()
        if self.settings.check_memory and free is not None and need > free:
            raise ModelLoadError(
                f"{path}: a context of {self.settings.n_ctx} tokens needs {need / 2**20:.0f} MiB for the KV "
                f"cache alone, and {free / 2**20:.0f} MiB of memory is available; choose a smaller context"
            )
        return info

    def _load(self):
        import llama_cpp

        n_threads, n_threads_batch = self.settings.threads()
        try:
            return llama_cpp.Llama(
                model_path=str(self.path), n_ctx=self.settings.n_ctx, n_batch=self.settings.n_batch,
                n_ubatch=self.settings.n_batch, n_threads=n_threads, n_threads_batch=n_threads_batch,
                n_gpu_layers=self.settings.n_gpu_layers, flash_attn=self.settings.flash_attn, verbose=False,
            )  # fmt: skip
        except (ValueError, RuntimeError, OSError) as e:
            arch = self.info.architecture
            raise ModelLoadError(
                f"{self.path}: llama.cpp could not load this model (architecture {arch!r}, "
                f"{self.info.quantization}, context {self.settings.n_ctx}): {e}. The architecture may be "
                "unsupported by this llama.cpp, or the context too large for memory."
            ) from None

    @property
    def n_ctx(self) -> int:
        return self._llm.n_ctx()

    def close(self) -> None:
        self._sessions.clear()
        self._spare = None
        with contextlib.suppress(Exception):
            self._llm.close()

    # ---- prompts -----------------------------------------------------------------------------
    def tokenize_messages(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Template markup may hold special tokens; message text never does."""
        tokens: list[int] = []
        pieces = self.template.pieces(messages, add_generation_prompt)
        for piece in pieces:
            tokens += self._llm.tokenize(piece.text.encode("utf-8"), add_bos=False, special=piece.special)
        if self._add_bos and self._bos_id >= 0 and (not tokens or tokens[0] != self._bos_id):
            tokens.insert(0, self._bos_id)
        return tokens

    def build_prompt(self, messages: list[dict[str, str]], max_tokens: int) -> Prompt:
        """The whole conversation, trimmed to the context window by dropping the oldest exchanges.
        A leading system message (the hidden instructions) and the newest user turn are kept."""
        budget = self.n_ctx - max_tokens
        head = 1 if messages and messages[0]["role"] == "system" else 0
        start = head
        while True:
            kept = messages[:head] + messages[start:]
            tokens = self.tokenize_messages(kept)
            if len(tokens) <= budget:
                return Prompt(tokens, kept, start - head)
            if start >= len(messages) - 1:
                need = len(self.tokenize_messages(messages[:head] + messages[-1:]))
                raise ContextOverflowError(
                    f"the hidden instructions and your message take {need} tokens and the answer may take "
                    f"{max_tokens} more, but {self.name}'s context window is {self.n_ctx} tokens: shorten the "
                    "message, lower the answer length, or raise the context length in Settings"
                )
            start += 1  # drop the oldest message, then any replies up to the next user turn
            while start < len(messages) - 1 and messages[start]["role"] != "user":
                start += 1

    # ---- generation --------------------------------------------------------------------------
    def generate(
        self,
        tokens: list[int],
        sampling: Sampling | None = None,
        cancel: threading.Event | None = None,
        session: object = None,
    ) -> Generation:
        """An answer to `tokens` (from build_prompt), streamed by iterating the result.
        `session` keys the KV-state cache: pass the conversation's id."""
        return Generation(self, list(tokens), sampling or Sampling(), cancel or threading.Event(), session)

    def _run(self, gen: Generation) -> Iterator[str]:
        with self._lock:
            yield from self._stream(gen)

    def _stream(self, gen: Generation) -> Iterator[str]:
        import llama_cpp

        llm, s, stats, cancel = self._llm, gen._sampling, gen.stats, gen._cancel
        t0 = time.perf_counter()
        tokens = gen._tokens
        stats.prompt_tokens = len(tokens)
        self._switch_session(gen._session, tokens)
        stats.switch_s = time.perf_counter() - t0
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(f"the prompt has {len(tokens)} tokens; the context window is {self.n_ctx}")
        max_new = max(1, min(s.max_tokens, self.n_ctx - len(tokens)))
        # Process the prompt, all but its last token, here with Stop wired to llama.cpp's abort
        # callback; generate() then finds that prefix cached and decodes the last token itself.
        reused = common_prefix(llm.input_ids[: llm.n_tokens], tokens)
        stats.reused_tokens = min(reused, len(tokens) - 1)
        if reused < len(tokens) - 1 and not self._prefill(tokens, reused, cancel):
            stats.finish_reason = "cancelled"
            stats.prefill_s = time.perf_counter() - t0
            return
        stats.prefill_s = time.perf_counter() - t0
        if cancel.is_set():
            stats.finish_reason = "cancelled"
            return
        seed = s.seed if s.seed >= 0 else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        llm.set_seed(seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        vocab = llm._model.vocab
        t_first = None
        stats.finish_reason = "length"
        gen_iter = llm.generate(
            tokens, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p, temp=s.temperature,
            repeat_penalty=s.repeat_penalty, reset=True,
        )  # fmt: skip
        try:
            for token in gen_iter:
                now = time.perf_counter()
                if t_first is None:
                    t_first = now
                    stats.ttft_s = now - t0
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    stats.finish_reason = "stop"
                    break
                stats.completion_tokens += 1
                text = decoder.decode(llm.detokenize([token], special=False))
                if text:
                    yield text
                if cancel.is_set():
                    stats.finish_reason = "cancelled"
                    break
                if stats.completion_tokens >= max_new:
                    break
        finally:
            gen_iter.close()
            tail = decoder.decode(b"", final=True)
            end = time.perf_counter()
            if t_first is not None:
                stats.decode_s = end - t_first
                if stats.completion_tokens > 1 and stats.decode_s > 0:
                    stats.tokens_per_s = (stats.completion_tokens - 1) / stats.decode_s
        if tail:
            yield tail

    def _prefill(self, tokens: list[int], reused: int, cancel: threading.Event) -> bool:
        """Process tokens[reused:-1] in batches; False when Stop interrupted it."""
        import llama_cpp

        llm = self._llm
        llm.n_tokens = reused
        cb = llama_cpp.ggml_abort_callback(lambda _data: cancel.is_set())
        _set_abort_callback(llm._ctx.ctx, cb)
        try:
            llm.eval(tokens[reused:-1])
        except RuntimeError:
            if cancel.is_set():  # llama_decode was aborted: what was decoded before it stays valid
                return False
            raise
        finally:
            _set_abort_callback(llm._ctx.ctx, None)
        return not cancel.is_set()

    # ---- the KV states of recent sessions ----------------------------------------------------
    def _switch_session(self, session: object, tokens: list[int]) -> None:
        llm = self._llm
        if session == self._current_session:
            return
        budget = self.settings.session_cache_mb * 2**20
        if self._current_session is not None and llm.n_tokens > 0 and budget > 0:
            self._sessions[self._current_session] = self._save_state()
            self._sessions.move_to_end(self._current_session)
            while self._sessions and sum(e.nbytes for e in self._sessions.values()) > budget:
                self._sessions.popitem(last=False)
        self._current_session = session
        saved = self._sessions.pop(session, None) if session is not None else None
        if saved is None:
            return
        here = common_prefix(llm.input_ids[: llm.n_tokens], tokens)
        if common_prefix(saved.tokens, tokens) > here:
            self._load_state(saved)

    def _save_state(self) -> _SessionState:
        """The context's KV state in one copy. (Llama.save_state copies it three times and adds
        the logits buffer, 50 MB for this vocabulary: 7x slower, measured.) The buffer of the
        state restored last is reused when it is big enough: no allocation, no page faults."""
        import llama_cpp
        import numpy as np

        llm = self._llm
        ctx = llm._ctx.ctx
        size = llama_cpp.llama_state_get_size(ctx)
        spare, self._spare = self._spare, None
        buf = spare if spare is not None and spare.nbytes >= size else np.empty(size, dtype=np.uint8)
        n = llama_cpp.llama_state_get_data(ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), size)
        return _SessionState(tuple(llm.input_ids[: llm.n_tokens].tolist()), buf, int(n))

    def _load_state(self, saved: _SessionState) -> None:
        import llama_cpp

        llm = self._llm
        ptr = saved.state.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        loaded = llama_cpp.llama_state_set_data(llm._ctx.ctx, ptr, saved.nbytes)
        self._spare = saved.state
        if loaded != saved.nbytes:
            llm.reset()  # the state did not fit back: process the prompt from scratch instead
            return
        n = len(saved.tokens)
        llm.input_ids[:n] = saved.tokens
        llm.n_tokens = n
        llm._requires_eval = True  # no logits kept: generate() decodes the last token again


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
