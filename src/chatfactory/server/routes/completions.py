"""/v1/completions: raw text completion. No chat template and no hidden instructions, but the
prompt and the answer are still moderated (a flagged prompt never reaches the model and gets
finish_reason "content_filter" with empty text; a flagged answer is cut where moderation caught
it, with the same finish reason)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ..auth import CurrentUser
from ..errors import bad_request
from ..generation import ChatJob, guarded, run_chat, sampling_params
from ..runtime import Runtime
from ..schemas import CompletionRequest
from ..store.conversations import begin_exchange
from .chat import check_common

router = APIRouter(prefix="/v1", tags=["completions"])


async def raw_completion(rt: Runtime, model: str, prompt: str, req: CompletionRequest, choice: int) -> AsyncIterator[Any]:
    """The moderated raw generation, as the same FlowEvents the chat flow yields."""
    from chatfactory.chat import FlowEvent, FlowResult

    t0 = time.perf_counter()
    engine = rt.engine_for(model)
    moderator = rt.moderator
    verdict = await run_in_threadpool(moderator.moderate, prompt)
    if verdict.flagged:  # step 4: the model is not called
        yield FlowEvent("done", result=FlowResult(
            content="", finish_reason="content_filter", template_used="input", input_moderation=verdict,
            output_moderation=None, prompt_tokens=0, completion_tokens=0, hidden_version="",
            ttft_s=None, total_s=time.perf_counter() - t0,
        ))
        return
    ids = engine.tokenizer.encode(prompt)
    request = engine.submit(ids, sampling_params(req, rt, choice), req.stop or ())
    watcher = moderator.stream(prompt)
    content, out, finish = "", None, None
    try:
        async for delta in request.stream():
            released, result = watcher.feed(delta.text)
            if released:
                content += released
                yield FlowEvent("delta", text=released)
            if result is not None and result.flagged:
                out, finish = result, "content_filter"
                request.cancel()
                break
        if finish is None:
            released, out = watcher.finish()
            if released:
                content += released
                yield FlowEvent("delta", text=released)
            finish = "content_filter" if out.flagged else (request.finish_reason or "stop")
    finally:
        if request.finish_reason is None:
            request.cancel()
    # as the chat flow counts it: flow start -> the model's first token
    ttft = None if request.first_token_at is None else request.first_token_at - t0
    yield FlowEvent("done", result=FlowResult(
        content=content, finish_reason=finish, template_used=None, input_moderation=verdict,
        output_moderation=out, prompt_tokens=request.prompt_tokens, completion_tokens=request.completion_tokens,
        hidden_version="", ttft_s=ttft, total_s=time.perf_counter() - t0,
    ))


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, caller: CurrentUser) -> Any:
    rt = request.app.state.runtime
    check_common(rt, body.model, body.n)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise bad_request("this server takes one prompt per request (a string)", param="prompt")
    prompt = prompts[0]
    if not prompt:
        raise bad_request("prompt must not be empty", param="prompt")
    stored = [{"role": "user", "content": prompt}]

    async def work(release):
        exchange = await rt.db(begin_exchange, caller.user_id, stored, source="completions", model=body.model)
        job = ChatJob(
            rt, caller, body.model, stored, body, body.n, exchange,
            open_stream=lambda i: raw_completion(rt, body.model, prompt, body, i),
            echo_prompt=prompt if body.echo else "", kind="text",
        )
        return await run_chat(job, release)

    return await guarded(rt, work)
