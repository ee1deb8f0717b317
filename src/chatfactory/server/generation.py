"""From an OpenAI chat request to `ChatFlow` calls and back: JSON or SSE, n choices, usage,
moderation per side, and the two commits that record the exchange.

Streaming: the response starts only once every choice has produced its first event, so a bad
request (prompt too long for the context window, ...) still gets a proper 400 instead of a
broken stream. The stream's `finally` always runs (see `SSEResponse`): when the client goes
away the flow is closed (which cancels the engine request) and what was shown is stored with
finish_reason "cancelled".
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from chatfactory.engine.generate import SamplingParams

from .auth import Caller
from .errors import APIError, bad_request
from .runtime import Runtime
from .schemas import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessageOut,
    ChunkChoice,
    ChunkDelta,
    Completion,
    CompletionChoice,
    Moderation,
    SamplingFields,
    Usage,
)
from .store.conversations import Answer, Exchange, abandon_exchange, finish_exchange

log = logging.getLogger("chatfactory.server")


class SSEResponse(StreamingResponse):
    """A streaming response whose body generator is always closed when the response ends:
    Starlette leaves a generator suspended at `yield` if the disconnect lands while it sends,
    and it would then be finalised only whenever the garbage collector gets to it."""

    def __init__(self, content: AsyncIterator[str], **kw: Any):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}, **kw)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[union-attr]


def sse(payload: Any) -> str:
    data = payload if isinstance(payload, str) else payload.model_dump_json()
    return f"data: {data}\n\n"


def sampling_params(req: SamplingFields, rt: Runtime, choice: int) -> SamplingParams:
    max_tokens = req.max_completion_tokens or req.max_tokens or rt.settings.default_max_tokens
    seed = None if req.seed is None else req.seed + choice  # n choices must differ, yet reproduce
    return SamplingParams(
        max_new_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_k=req.top_k or 0,
        top_p=1.0 if req.top_p is None else req.top_p,
        seed=seed,
    )


def sampling_record(req: SamplingFields, rt: Runtime, n: int) -> dict[str, Any]:
    p = sampling_params(req, rt, 0)
    return {
        "temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k, "max_tokens": p.max_new_tokens,
        "seed": req.seed, "stop": req.stop, "n": n,
    }


def _side(model: str, results: list[Any]) -> dict[str, Any]:
    if any(r is None for r in results):
        return {"type": "error", "code": "not_generated",
                "message": "no output to moderate: the input was flagged, so the model was not called"}
    items = [{**r.to_openai(), "model": model, "type": "moderation_result"} for r in results]
    return {"type": "moderation_results", "model": model, "results": items}


def moderation_of(rt: Runtime, results: list[Any]) -> Moderation:
    """OpenAI's `moderation` object for flow results of one request (one per choice)."""
    name = getattr(rt.moderator, "name", None) or "chatfactory-moderation"
    return Moderation(
        input=_side(name, [results[0].input_moderation]), output=_side(name, [r.output_moderation for r in results])
    )


@dataclass
class ChatJob:
    """One chat request, ready to run: what the flow sees and where the exchange is stored."""

    rt: Runtime
    caller: Caller
    model: str
    messages: list[dict[str, Any]]  # for the flow (history + new turn)
    req: SamplingFields
    n: int
    exchange: Exchange
    # opens choice i's event stream; None = the chat flow. /v1/completions passes its own.
    open_stream: Callable[[int], AsyncIterator[Any]] | None = None
    echo_prompt: str = ""  # /v1/completions with echo=true
    kind: str = "chat"  # "chat" | "text" (the wire format)

    def stream_for(self, i: int) -> AsyncIterator[Any]:
        if self.open_stream is not None:
            return self.open_stream(i)
        return self.rt.flow.stream(self.model, self.messages, sampling_params(self.req, self.rt, i), self.req.stop or ())


async def _first(stream: AsyncIterator[Any]) -> Any:
    return await stream.__anext__()


async def _all_or_cancel(coros: list[Awaitable[Any]]) -> list[Any]:
    """gather() that, when one fails, cancels the others and waits for them: an async generator
    still running in a task could not be closed afterwards ("already running")."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _close_all(streams: list[AsyncIterator[Any]]) -> None:
    for s in streams:
        try:
            await s.aclose()  # type: ignore[attr-defined]
        except Exception:
            log.exception("closing a flow stream failed")


async def _prime(job: ChatJob) -> tuple[list[AsyncIterator[Any]], list[Any]]:
    """Start n flow streams and wait for each one's first event; map bad input to 400."""
    streams = [job.stream_for(i) for i in range(job.n)]
    try:
        firsts = await _all_or_cancel([_first(s) for s in streams])
    except ValueError as e:  # ContextWindowError and other bad-input errors from the engine
        await _close_all(streams)
        code = "context_length_exceeded" if type(e).__name__ == "ContextWindowError" else "invalid_value"
        raise bad_request(str(e), param="messages", code=code) from None
    except BaseException:
        await _close_all(streams)
        raise
    return streams, firsts


async def _store(job: ChatJob, answers: list[Answer]) -> list[str]:
    # shielded: this runs while a cancelled stream unwinds, and must not be cancelled itself
    with anyio.CancelScope(shield=True):
        try:
            return await job.rt.db(finish_exchange, job.exchange, answers)
        except Exception:
            log.exception("storing the answer of conversation %s failed", job.exchange.conversation_id)
            raise


def _answer(job: ChatJob, i: int, result: Any, shown: str | None = None) -> Answer:
    rec = sampling_record(job.req, job.rt, job.n)
    if result is None:  # the stream ended early (client gone, server stopping): keep what was shown
        return Answer(content=shown or "", finish_reason="cancelled", choice_index=i, model=job.model, sampling=rec)
    return Answer(
        content=result.content,
        finish_reason=result.finish_reason,
        choice_index=i,
        model=job.model,
        sampling=rec,
        input_moderation=result.input_moderation.to_openai(),
        output_moderation=result.output_moderation.to_openai() if result.output_moderation else None,
        input_flagged=bool(result.input_moderation.flagged),
        template_used=result.template_used,
        hidden_version=result.hidden_version,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        ttft_ms=None if result.ttft_s is None else result.ttft_s * 1000,
        total_ms=result.total_s * 1000,
    )


def _observe(rt: Runtime, model: str, result: Any) -> None:
    m = rt.metrics
    m.prompt_tokens.labels(model).inc(result.prompt_tokens)
    m.completion_tokens.labels(model).inc(result.completion_tokens)
    m.finish.labels(model, result.finish_reason).inc()
    m.answer_seconds.labels(model).observe(result.total_s)
    if result.ttft_s is not None:
        m.ttft.labels(model).observe(result.ttft_s)
    if result.input_moderation.flagged:
        m.flagged.labels("input").inc()
    if result.output_moderation is not None and result.output_moderation.flagged:
        m.flagged.labels("output").inc()


def _usage(results: list[Any]) -> Usage:
    prompt = results[0].prompt_tokens if results else 0
    completion = sum(r.completion_tokens for r in results)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def run_chat(job: ChatJob, release: Callable[[], None]) -> Any:
    """Run the job; returns a JSONResponse or an SSEResponse. `release` frees the in-flight slot
    when the work is over (for a stream: when the stream ends, however it ends)."""
    try:
        streams, firsts = await _prime(job)
    except BaseException:
        # refused before anything was generated: undo the stored prompt side, free the slot
        release()
        with anyio.CancelScope(shield=True):
            await job.rt.db(abandon_exchange, job.exchange)
        raise
    if not job.req.stream:
        try:
            return await _complete(job, streams, firsts)
        finally:
            release()
    return SSEResponse(_stream(job, streams, firsts, release))


async def _drain(stream: AsyncIterator[Any], first: Any) -> Any:
    event = first
    while event.type != "done":
        event = await stream.__anext__()
    return event.result


async def _complete(job: ChatJob, streams: list[AsyncIterator[Any]], firsts: list[Any]) -> JSONResponse:
    results: list[Any] = [None] * job.n
    try:
        results = await _all_or_cancel([_drain(s, f) for s, f in zip(streams, firsts)])
    finally:
        await _close_all(streams)
        ids = await _store(job, [_answer(job, i, r) for i, r in enumerate(results)])
    for r in results:
        _observe(job.rt, job.model, r)
    created = int(time.time())
    if job.kind == "text":
        body: Any = Completion(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=created,
            model=job.model,
            choices=[
                CompletionChoice(index=i, text=job.echo_prompt + r.content, finish_reason=r.finish_reason)
                for i, r in enumerate(results)
            ],
            usage=_usage(results),
            moderation=moderation_of(job.rt, results),
        )
        return JSONResponse(body.model_dump())
    body = ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=created,
        model=job.model,
        choices=[
            ChatChoice(
                index=i,
                message=ChatMessageOut(content=r.content),
                finish_reason=r.finish_reason,
                template_used=r.template_used,
            )
            for i, r in enumerate(results)
        ],
        usage=_usage(results),
        moderation=moderation_of(job.rt, results),
        conversation_id=job.exchange.conversation_id,
        message_id=ids[0] if ids else None,
    )
    return JSONResponse(body.model_dump())


async def _merged(streams: list[AsyncIterator[Any]], firsts: list[Any]) -> AsyncIterator[tuple[int, Any]]:
    """(choice index, event) from all choices as they come."""
    for i, f in enumerate(firsts):
        yield i, f
    if len(streams) == 1:  # the common case, without tasks
        if firsts[0].type != "done":
            async for event in streams[0]:
                yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    _DONE = object()

    async def pump(i: int) -> None:
        try:
            async for event in streams[i]:
                await queue.put((i, event))
        finally:
            await queue.put((i, _DONE))

    tasks = [asyncio.create_task(pump(i)) for i, f in enumerate(firsts) if f.type != "done"]
    try:
        live = len(tasks)
        while live:
            i, event = await queue.get()
            if event is _DONE:
                live -= 1
                continue
            yield i, event
        for t in tasks:
            t.result()  # surface a failed choice
    finally:
        for t in tasks:
            t.cancel()
        with anyio.CancelScope(shield=True):  # let each stream unwind before anyone closes it
            await asyncio.gather(*tasks, return_exceptions=True)


class _Wire:
    """Chunk shapes: `chat.completion.chunk` for chat, `text_completion` for /v1/completions."""

    def __init__(self, job: ChatJob):
        self.job, self.text = job, job.kind == "text"
        self.id = f"{'cmpl' if self.text else 'chatcmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _chat(self, choices: list[ChunkChoice], **extra: Any) -> str:
        return sse(ChatCompletionChunk(id=self.id, created=self.created, model=self.job.model, choices=choices, **extra))

    def _textc(self, choices: list[CompletionChoice], **extra: Any) -> str:
        return sse(Completion(id=self.id, created=self.created, model=self.job.model, choices=choices, **extra))

    def start(self) -> str | None:
        if self.text:  # legacy completions have no role chunk; echo goes first
            if not self.job.echo_prompt:
                return None
            return self._textc([CompletionChoice(index=i, text=self.job.echo_prompt, finish_reason=None)
                                for i in range(self.job.n)])
        # the first chunk names the conversation, so a client can continue or delete it
        return self._chat(
            [ChunkChoice(index=i, delta=ChunkDelta(role="assistant", content="")) for i in range(self.job.n)],
            conversation_id=self.job.exchange.conversation_id,
        )

    def delta(self, i: int, text: str) -> str:
        if self.text:
            return self._textc([CompletionChoice(index=i, text=text, finish_reason=None)])
        return self._chat([ChunkChoice(index=i, delta=ChunkDelta(content=text))])

    def finish(self, i: int, r: Any) -> str:
        moderation = moderation_of(self.job.rt, [r])
        if self.text:
            return self._textc([CompletionChoice(index=i, text="", finish_reason=r.finish_reason)], moderation=moderation)
        return self._chat(
            [ChunkChoice(index=i, delta=ChunkDelta(), finish_reason=r.finish_reason, template_used=r.template_used)],
            moderation=moderation,
        )

    def usage(self, usage: Usage) -> str:
        return self._textc([], usage=usage) if self.text else self._chat([], usage=usage)


async def _stream(
    job: ChatJob, streams: list[AsyncIterator[Any]], firsts: list[Any], release: Callable[[], None]
) -> AsyncIterator[str]:
    wire = _Wire(job)
    shown = [""] * job.n
    results: list[Any] = [None] * job.n
    include_usage = bool(job.req.stream_options and job.req.stream_options.include_usage)
    stored = False
    try:
        head = wire.start()
        if head:
            yield head
        async for i, event in _merged(streams, firsts):
            if event.type == "delta":
                if event.text:
                    shown[i] += event.text
                    yield wire.delta(i, event.text)
            elif event.type == "done":
                r = results[i] = event.result
                _observe(job.rt, job.model, r)
                yield wire.finish(i, r)
        # stored before [DONE]: a client that saw the end finds the exchange in the database
        stored = True
        await _store(job, [_answer(job, i, r, shown[i]) for i, r in enumerate(results)])
        if include_usage:
            yield wire.usage(_usage(results))
        yield sse("[DONE]")
    except Exception as e:  # an engine failure mid-stream: tell the client in OpenAI's error shape
        log.exception("stream failed")
        yield sse(json.dumps(APIError(500, f"generation failed: {e}", type="server_error").body()))
    finally:
        with anyio.CancelScope(shield=True):
            await _close_all(streams)  # cancels the engine requests of unfinished choices
            try:
                if not stored:
                    await _store(job, [_answer(job, i, r, shown[i]) for i, r in enumerate(results)])
            finally:
                release()


async def guarded(rt: Runtime, work: Callable[[Callable[[], None]], Awaitable[Any]]) -> Any:
    """Admit (or 429), then run `work(release)`."""
    slot = rt.admit()
    try:
        return await work(slot.release)
    except BaseException:
        slot.release()
        raise
