"""Conversations and their messages: every query filters by the owner, so one user can never
read or change another's conversation (the routes turn "not yours" into 404, like "not there").

An exchange is written in two commits: `begin_exchange` stores the prompt side before the
model is called, `finish_exchange` stores the answer(s) when they end (normally, by a length
limit, by moderation, or by the client going away). A crash between the two leaves a
conversation whose last message is the user's: consistent, and nothing the user typed is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from .models import Conversation, Message, utcnow

TITLE_CHARS = 80


def title_from(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1] + "…"


def create_conversation(
    session: Session, user_id: int, *, title: str = "", model: str | None = None, source: str = "conversation"
) -> Conversation:
    conv = Conversation(user_id=user_id, title=title, model=model, source=source)
    session.add(conv)
    session.flush()
    return conv


def get_conversation(session: Session, user_id: int, conv_id: str, with_messages: bool = False) -> Conversation | None:
    q = sa.select(Conversation).where(Conversation.id == conv_id, Conversation.user_id == user_id)
    if with_messages:
        q = q.options(selectinload(Conversation.messages))
    return session.scalar(q)


def list_conversations(
    session: Session, user_id: int, *, limit: int = 20, after: str | None = None, source: str | None = None
) -> tuple[list[Conversation], bool]:
    """Newest first; `after` is the id of the last conversation of the previous page.
    Returns (page, has_more)."""
    q = sa.select(Conversation).where(Conversation.user_id == user_id)
    if source:
        q = q.where(Conversation.source == source)
    if after:
        anchor = get_conversation(session, user_id, after)
        if anchor is None:
            raise LookupError(after)
        q = q.where(
            sa.or_(
                Conversation.updated_at < anchor.updated_at,
                sa.and_(Conversation.updated_at == anchor.updated_at, Conversation.id < anchor.id),
            )
        )
    rows = list(session.scalars(q.order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def visible_history(conv: Conversation) -> list[dict[str, Any]]:
    """The conversation as the chat flow takes it: one message per position (choice 0 of an n>1
    request), flagged turns marked so the flow never feeds them to the model."""
    out = []
    for m in conv.messages:
        if m.choice_index != 0:
            continue
        item: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.flagged:
            item["flagged"] = True
        out.append(item)
    return out


@dataclass
class Exchange:
    """What `begin_exchange` stored: where the answer(s) go."""

    conversation_id: str
    user_message_id: str | None
    answer_position: int
    first_position: int = 0  # of the messages this exchange stored
    created: bool = False  # the exchange created the conversation


@dataclass
class Answer:
    """One finished choice, as the chat flow reported it."""

    content: str
    finish_reason: str
    choice_index: int = 0
    model: str | None = None
    sampling: dict[str, Any] | None = None
    input_moderation: dict[str, Any] | None = None
    output_moderation: dict[str, Any] | None = None
    input_flagged: bool = False
    template_used: str | None = None
    hidden_version: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def begin_exchange(
    session: Session,
    user_id: int,
    new_messages: list[dict[str, Any]],
    *,
    conversation_id: str | None = None,
    source: str = "conversation",
    model: str | None = None,
) -> Exchange:
    """Store the prompt side and commit, before any generation starts.

    With `conversation_id` the messages are appended to that (owned) conversation; without it a
    new conversation of `source` is created to hold them (a stateless API call is recorded too).
    """
    if conversation_id is None:
        first_user = next((m["content"] for m in new_messages if m["role"] == "user"), "")
        conv = create_conversation(session, user_id, title=title_from(first_user), model=model, source=source)
        position = 0
        created = True
    else:
        created = False
        conv = get_conversation(session, user_id, conversation_id)
        if conv is None:
            raise LookupError(conversation_id)
        last = session.scalar(sa.select(sa.func.max(Message.position)).where(Message.conversation_id == conv.id))
        position = 0 if last is None else last + 1
        if not conv.title:
            conv.title = title_from(next((m["content"] for m in new_messages if m["role"] == "user"), ""))
    user_message_id = None
    first_position = position
    for m in new_messages:
        row = Message(conversation_id=conv.id, position=position, role=m["role"], content=m["content"], model=None)
        row.flagged = bool(m.get("flagged", False))
        session.add(row)
        session.flush()
        if m["role"] == "user":
            user_message_id = row.id
        position += 1
    conv.updated_at = utcnow()
    if model:
        conv.model = model
    session.commit()
    return Exchange(conv.id, user_message_id, position, first_position, created)


def abandon_exchange(session: Session, exchange: Exchange) -> None:
    """Undo `begin_exchange` for a request refused before anything was generated (a prompt too
    long for the context window): the user gets an error, not a half-stored exchange."""
    if exchange.created:
        conv = session.get(Conversation, exchange.conversation_id)
        if conv is not None:
            session.delete(conv)
    else:
        session.execute(
            sa.delete(Message).where(
                Message.conversation_id == exchange.conversation_id, Message.position >= exchange.first_position
            )
        )
    session.commit()


def finish_exchange(session: Session, exchange: Exchange, answers: list[Answer]) -> list[str]:
    """Store the answer(s) and the input side's moderation in one commit. Returns message ids."""
    if exchange.user_message_id and answers:
        user_msg = session.get(Message, exchange.user_message_id)
        if user_msg is not None:
            user_msg.moderation = answers[0].input_moderation
            user_msg.flagged = user_msg.flagged or answers[0].input_flagged
    ids = []
    for a in answers:
        row = Message(
            conversation_id=exchange.conversation_id,
            position=exchange.answer_position,
            choice_index=a.choice_index,
            role="assistant",
            content=a.content,
            model=a.model,
            sampling=a.sampling,
            moderation=a.output_moderation,
            # a template answer (or one cut by moderation) must never be fed back to the model
            flagged=a.template_used is not None or a.finish_reason == "content_filter",
            template_used=a.template_used,
            hidden_version=a.hidden_version,
            finish_reason=a.finish_reason,
            prompt_tokens=a.prompt_tokens,
            completion_tokens=a.completion_tokens,
            ttft_ms=a.ttft_ms,
            total_ms=a.total_ms,
        )
        session.add(row)
        session.flush()
        ids.append(row.id)
    conv = session.get(Conversation, exchange.conversation_id)
    if conv is not None:
        conv.updated_at = utcnow()
    session.commit()
    return ids
