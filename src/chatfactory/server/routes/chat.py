"""/v1/chat/completions (through the seven-step chat flow)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..auth import CurrentUser
from ..errors import bad_request
from ..generation import ChatJob, guarded, run_chat
from ..schemas import ChatCompletionRequest
from ..store.conversations import begin_exchange

router = APIRouter(prefix="/v1", tags=["chat"])


def check_common(rt: Any, model: str, n: int) -> None:
    rt.engine_for(model)  # 404 for an unknown model, before anything is stored
    if n > rt.settings.max_n:
        raise bad_request(f"n must be at most {rt.settings.max_n}, got {n}", param="n")


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, caller: CurrentUser) -> Any:
    rt = request.app.state.runtime
    check_common(rt, body.model, body.n)
    if body.tools:
        raise bad_request("tools are not supported by this server", param="tools", code="unsupported_parameter")
    if body.logprobs:
        raise bad_request("logprobs are not supported by this server", param="logprobs", code="unsupported_parameter")
    # "developer" is OpenAI's newer name for the system role
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    if messages[-1]["role"] == "assistant":
        raise bad_request("the last message must not be the assistant's", param="messages")

    async def work(release):
        # the prompt side is committed before generation starts
        exchange = await rt.db(begin_exchange, caller.user_id, messages, source="chat.completions", model=body.model)
        return await run_chat(ChatJob(rt, caller, body.model, messages, body, body.n, exchange), release)

    return await guarded(rt, work)
