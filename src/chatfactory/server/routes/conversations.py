"""/v1/conversations: a user's own conversations — list, create, read, rename, delete — and
`POST /v1/conversations/{id}/messages` to continue one with just the new user message (the
server holds the history; the answer comes back exactly like /v1/chat/completions, streamed
or not). Another user's conversation answers 404, the same as a missing one."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session

from ..auth import CurrentUser
from ..errors import APIError, bad_request, not_found
from ..generation import ChatJob, guarded, run_chat
from ..schemas import (
    ConversationCreate,
    ConversationDetail,
    ConversationList,
    ConversationMessageRequest,
    ConversationOut,
    ConversationUpdate,
    Deleted,
    MessageOut,
    Usage,
)
from ..store import conversations as store
from ..store.models import Conversation, Message
from .chat import check_common

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])


def _ts(dt: datetime) -> int:
    if dt.tzinfo is None:  # SQLite hands back naive datetimes; they were stored as UTC
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


def _conv_out(c: Conversation) -> ConversationOut:
    return ConversationOut(
        id=c.id, title=c.title, model=c.model, source=c.source, created_at=_ts(c.created_at), updated_at=_ts(c.updated_at)
    )


def _message_out(m: Message) -> MessageOut:
    usage = None
    if m.prompt_tokens is not None and m.completion_tokens is not None:
        usage = Usage(
            prompt_tokens=m.prompt_tokens, completion_tokens=m.completion_tokens,
            total_tokens=m.prompt_tokens + m.completion_tokens,
        )
    return MessageOut(
        id=m.id, role=m.role, content=m.content, position=m.position, choice_index=m.choice_index, model=m.model,
        created_at=_ts(m.created_at), flagged=m.flagged, template_used=m.template_used,
        finish_reason=m.finish_reason, moderation=m.moderation, sampling=m.sampling, usage=usage,
    )


def _missing(conv_id: str) -> APIError:
    return not_found(f"No conversation found with id '{conv_id}'", param="conversation_id", code="conversation_not_found")


@router.get("")
async def list_conversations(
    request: Request,
    caller: CurrentUser,
    limit: int = Query(20, ge=1, le=100),
    after: str | None = None,
    source: str | None = None,
) -> ConversationList:
    rt = request.app.state.runtime
    try:
        rows, has_more = await rt.db(store.list_conversations, caller.user_id, limit=limit, after=after, source=source)
    except LookupError:
        raise bad_request(f"after: no conversation '{after}'", param="after") from None
    data = [_conv_out(c) for c in rows]
    return ConversationList(
        data=data, has_more=has_more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )


@router.post("")
async def create_conversation(body: ConversationCreate, request: Request, caller: CurrentUser) -> ConversationOut:
    rt = request.app.state.runtime
    if body.model is not None:
        rt.engine_for(body.model)

    def create(s: Session) -> Conversation:
        c = store.create_conversation(s, caller.user_id, title=body.title, model=body.model)
        s.commit()
        return c

    return _conv_out(await rt.db(create))


@router.get("/{conv_id}")
async def get_conversation(conv_id: str, request: Request, caller: CurrentUser) -> ConversationDetail:
    rt = request.app.state.runtime
    conv = await rt.db(store.get_conversation, caller.user_id, conv_id, with_messages=True)
    if conv is None:
        raise _missing(conv_id)
    return ConversationDetail(**_conv_out(conv).model_dump(), messages=[_message_out(m) for m in conv.messages])


@router.patch("/{conv_id}")
async def rename_conversation(
    conv_id: str, body: ConversationUpdate, request: Request, caller: CurrentUser
) -> ConversationOut:
    def rename(s: Session) -> Conversation | None:
        c = store.get_conversation(s, caller.user_id, conv_id)
        if c is not None:
            c.title = body.title.strip() or c.title
            s.commit()
        return c

    conv = await request.app.state.runtime.db(rename)
    if conv is None:
        raise _missing(conv_id)
    return _conv_out(conv)


@router.delete("/{conv_id}")
async def delete_conversation(conv_id: str, request: Request, caller: CurrentUser) -> Deleted:
    def delete(s: Session) -> bool:
        c = store.get_conversation(s, caller.user_id, conv_id)
        if c is None:
            return False
        s.delete(c)
        s.commit()
        return True

    if not await request.app.state.runtime.db(delete):
        raise _missing(conv_id)
    return Deleted(id=conv_id, object="conversation.deleted")


@router.post("/{conv_id}/messages")
async def add_message(
    conv_id: str, body: ConversationMessageRequest, request: Request, caller: CurrentUser
) -> Any:
    rt = request.app.state.runtime
    conv = await rt.db(store.get_conversation, caller.user_id, conv_id)
    if conv is None:
        raise _missing(conv_id)
    # the request's model, else the conversation's (if still served), else the first served one
    model = body.model or (conv.model if conv.model in rt.engines else next(iter(rt.engines)))
    check_common(rt, model, 1)
    new = {"role": "user", "content": body.content}

    def begin(s: Session) -> tuple[store.Exchange, list[dict[str, Any]]]:
        c = store.get_conversation(s, caller.user_id, conv_id, with_messages=True)
        if c is None:
            raise LookupError(conv_id)
        history = store.visible_history(c)
        return store.begin_exchange(s, caller.user_id, [new], conversation_id=conv_id, model=model), history

    async def work(release):
        try:
            exchange, history = await rt.db(begin)
        except LookupError:  # deleted meanwhile
            raise _missing(conv_id) from None
        return await run_chat(ChatJob(rt, caller, model, history + [new], body, 1, exchange), release)

    return await guarded(rt, work)
