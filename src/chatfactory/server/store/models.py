"""The database tables (SQLAlchemy 2 declarative models).

Every table the chat service and the feedback loop need: users and their API keys, conversations
and their messages (with everything needed to reproduce or audit an answer: sampling settings,
moderation per side, hidden-instruction version, template use, timings), feedback on a message
and K-wise rankings for reward-model training. Schema changes go through an Alembic migration
in `migrations/versions/` — never `create_all` — so SQLite and PostgreSQL stay in step.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id(prefix: str) -> str:
    # OpenAI-style opaque ids ("conv_…", "msg_…"): unguessable, so an id alone leaks nothing.
    return f"{prefix}_{uuid.uuid4().hex}"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict] = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # sha256 of the key: the key has ~256 bits of entropy, so a plain fast hash is safe and lets
    # us look a key up by equality; the key itself is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to tell keys apart in `keys list`
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    user: Mapped[User] = relationship()


class Conversation(Base):
    __tablename__ = "conversations"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("conv"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(300), default="")
    model: Mapped[str | None] = mapped_column(String(300))
    # "conversation" (history held by the server), "chat.completions" or "completions" (one
    # stateless API call, recorded so every exchange is auditable and can feed training)
    source: Mapped[str] = mapped_column(String(32), default="conversation")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation", order_by="Message.position", cascade="all, delete-orphan", passive_deletes=True
    )
    __table_args__ = (Index("ix_conversations_user_updated", "user_id", "updated_at"),)


class Message(Base):
    __tablename__ = "messages"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("msg"))
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    position: Mapped[int]  # order in the conversation; choices of one n>1 request share it
    choice_index: Mapped[int] = mapped_column(default=0)
    role: Mapped[str] = mapped_column(String(16))  # system | user | assistant
    content: Mapped[str] = mapped_column(Text)  # what the user saw (never the hidden instructions)
    model: Mapped[str | None] = mapped_column(String(300))
    sampling: Mapped[dict[str, Any] | None]  # temperature, top_p, max_tokens, seed, stop, n
    moderation: Mapped[dict[str, Any] | None]  # this side's result, OpenAI's moderation result shape
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)  # never fed back to the model
    template_used: Mapped[str | None] = mapped_column(String(16))  # None | "input" | "output"
    hidden_version: Mapped[str | None] = mapped_column(String(100))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    total_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    conversation: Mapped[Conversation] = relationship(back_populates="messages")
    __table_args__ = (Index("ix_messages_conversation_position", "conversation_id", "position", "choice_index"),)


class Feedback(Base):
    """Thumbs up/down and a comment on one assistant message, by one user (one row per pair)."""

    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    rating: Mapped[int]  # +1 thumbs up, -1 thumbs down
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("message_id", "user_id", name="uq_feedback_message_user"),)


class Ranking(Base):
    """A K-wise ranking: prompt, the K answers, and their order (ties allowed) by one person.

    `ranking` is a list of groups of answer indices, best first: [[2], [0, 3], [1]] means answer 2
    is best, 0 and 3 tie, 1 is worst — the K-wise preference format reward training reads.
    """

    __tablename__ = "rankings"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    prompt: Mapped[dict[str, Any]]  # {"messages": [...]} or {"prompt": "..."}
    responses: Mapped[list[Any]]  # ["answer 0", "answer 1", ...]
    ranking: Mapped[list[Any]]  # [[i, ...], ...] best group first
    model: Mapped[str | None] = mapped_column(String(300))
    sampling: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
