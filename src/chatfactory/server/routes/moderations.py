"""/v1/moderations in OpenAI's schema, answered by the server's own Moderator."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ..auth import CurrentUser
from ..errors import bad_request
from ..schemas import ModerationRequest, ModerationResponse

router = APIRouter(prefix="/v1", tags=["moderations"])
MAX_INPUTS = 64


@router.post("/moderations")
async def moderate(body: ModerationRequest, request: Request, _caller: CurrentUser) -> ModerationResponse:
    rt = request.app.state.runtime
    if isinstance(body.input, str):
        texts = [body.input]
    else:
        texts = [x if isinstance(x, str) else x.text for x in body.input]
    if not texts:
        raise bad_request("input must not be empty", param="input")
    if len(texts) > MAX_INPUTS:
        raise bad_request(f"at most {MAX_INPUTS} inputs per request, got {len(texts)}", param="input")
    # classifiers are CPU work: keep them off the event loop
    results = await run_in_threadpool(rt.moderator.moderate_batch, texts)
    for r in results:
        if r.flagged:
            rt.metrics.flagged.labels("moderations").inc()
    from chatfactory.moderation.taxonomy import openai_response

    name = getattr(rt.moderator, "name", None) or "chatfactory-moderation"
    return ModerationResponse(**openai_response(results, name, f"modr-{uuid.uuid4().hex}"))
