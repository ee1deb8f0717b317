"""Changing a conversation's last turns from the chat page: Regenerate, and edit-and-resend.

- `POST /v1/conversations/{id}/regenerate` answers the last user message again. The earlier
  answers stay, as alternatives at the same position (choice 1, 2, ... — the newest is choice
  0, the one the history shows and the flow feeds on): thumbs given to them remain, and an
  up-rated and a down-rated answer to the same prompt are exactly what `feedback export` turns
  into a training pair.
- `POST /v1/conversations/{id}/edit` replaces a user message: that message and every turn after
  it are removed (with any thumbs given to those answers: they answered a prompt that no longer
  exists), then the new text is sent as `POST /v1/conversations/{id}/messages` would.

Both reply like `/v1/conversations/{id}/messages` (streamed or not).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from pydantic import Field
from sqlalchemy.orm import Session

from ..auth import CurrentUser
from ..errors import bad_request
from ..generation import ChatJob, guarded, run_chat
from ..schemas import ConversationMessageRequest, SamplingFields
from ..store import conversations as store
from ..store.models import Message
from . import conversations as conversation_routes
from .chat import check_common

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])


class RegenerateRequest(SamplingFields):
    model: str | None = None  # default: the conversation's model, else the first served model


class EditRequest(ConversationMessageRequest):
    message_id: str = Field(description="the user message to replace")


def _shift_answers(s: Session, conv_id: str, position: int, by: int) -> None:
    s.execute(
        sa.update(Message)
        .where(Message.conversation_id == conv_id, Message.position == position)
        .values(choice_index=Message.choice_index + by)
    )


@router.post("/{conv_id}/regenerate")
async def regenerate(conv_id: str, body: RegenerateRequest, request: Request, caller: CurrentUser) -> Any:
    rt = request.app.state.runtime

    def begin(s: Session) -> tuple[store.Exchange, list[dict[str, Any]], str, bool]:
        conv = store.get_conversation(s, caller.user_id, conv_id, with_messages=True)
        if conv is None:
            raise conversation_routes._missing(conv_id)
        if not conv.messages:
            raise bad_request("the conversation has no message to answer", param="conversation_id")
        last = conv.messages[-1]
        # the last user message answered again: its answers (if any) move aside as alternatives
        shifted = last.role == "assistant"
        position = last.position if shifted else last.position + 1
        history = store.visible_history(
            SimpleNamespace(messages=[m for m in conv.messages if m.position < position])
        )
        if not history or history[-1]["role"] != "user":
            raise bad_request(
                "the conversation does not end with a user message to answer", param="conversation_id"
            )
        model = body.model or (conv.model if conv.model in rt.engines else next(iter(rt.engines)))
        check_common(rt, model, 1)  # an unknown model is refused before anything changes
        if shifted:
            _shift_answers(s, conv_id, position, +1)
        s.commit()
        # first_position past the end: a refused request (abandon_exchange) deletes nothing
        return store.Exchange(conv_id, None, position, position + 1, False), history, model, shifted

    async def work(release):
        exchange, history, model, shifted = await rt.db(begin)
        try:
            return await run_chat(ChatJob(rt, caller, model, history, body, 1, exchange), release)
        except BaseException:
            if shifted:  # refused before anything was stored: the old answer is current again

                def unshift(s: Session) -> None:
                    _shift_answers(s, conv_id, exchange.answer_position, -1)
                    s.commit()

                await rt.db(unshift)
            raise

    return await guarded(rt, work)


@router.post("/{conv_id}/edit")
async def edit(conv_id: str, body: EditRequest, request: Request, caller: CurrentUser) -> Any:
    rt = request.app.state.runtime

    def rewind(s: Session) -> None:
        conv = store.get_conversation(s, caller.user_id, conv_id)
        if conv is None:
            raise conversation_routes._missing(conv_id)
        msg = s.scalar(
            sa.select(Message).where(Message.id == body.message_id, Message.conversation_id == conv_id)
        )
        if msg is None or msg.role != "user":
            raise bad_request(
                f"'{body.message_id}' is not a user message of this conversation", param="message_id"
            )
        s.execute(
            sa.delete(Message).where(Message.conversation_id == conv_id, Message.position >= msg.position)
        )
        s.commit()

    await rt.db(rewind)
    plain = ConversationMessageRequest(**body.model_dump(exclude={"message_id"}))
    return await conversation_routes.add_message(conv_id, plain, request, caller)
