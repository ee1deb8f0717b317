"""Human feedback from the chat page: thumbs (with an optional comment) on any answer, and
Compare mode — the server samples 2–4 answers to one prompt, the person orders them best to
worst (ties allowed), and the ranking is stored with the prompt, the answers, the model, the
sampling settings and who ranked. `chatfactory feedback export` turns both into reward-model data.

A compare run is recorded like an n>1 chat completion (a conversation of source "compare": the
prompt, then the n answers at one position, choice 0..n-1, each with its moderation), so the
ranking refers to answers the server produced, never to text a client sends back. Answers a
template replaced (moderation) are shown but not rankable: they would teach the reward model
about the template, not the model.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from chatfactory.data.preferences import parse_ranking

from ..auth import Caller, CurrentUser
from ..errors import bad_request, not_found
from ..generation import ChatJob, guarded, run_chat
from ..schemas import SamplingFields
from ..store.conversations import begin_exchange, get_conversation
from ..store.models import Conversation, Feedback, Message, Ranking, utcnow
from .chat import check_common
from .conversations import _ts

router = APIRouter(prefix="/v1", tags=["feedback"])
COMPARE_SOURCE = "compare"
MIN_ANSWERS, MAX_ANSWERS = 2, 4


# ---------------------------------------------------------------- schemas
class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rating: int = Field(description="+1 thumbs up, -1 thumbs down")
    comment: str | None = Field(None, max_length=5000)


class FeedbackOut(BaseModel):
    object: str = "message.feedback"
    message_id: str
    rating: int
    comment: str | None
    created_at: int


class FeedbackList(BaseModel):
    object: str = "list"
    data: list[FeedbackOut]


class CompareRequest(SamplingFields):
    """POST /v1/compare: one prompt (and an optional system message), n answers, streamed."""

    model: str
    prompt: str = Field(min_length=1)
    system: str | None = None
    n: int = Field(3, ge=MIN_ANSWERS, le=MAX_ANSWERS)
    stream: bool = True


class RankingIn(BaseModel):
    """Order the compare's answers best to worst by choice index; a nested list is a tie:
    [2, [0, 1]] = answer 2 best, 0 and 1 equally good. Template answers are left out."""

    model_config = ConfigDict(extra="forbid")
    conversation_id: str
    ranking: list[int | list[int]] = Field(min_length=1)


class RankingUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ranking: list[int | list[int]] = Field(min_length=1)


class RankingOut(BaseModel):
    object: str = "ranking"
    id: int
    conversation_id: str | None
    prompt: dict[str, Any]
    responses: list[str]
    ranking: list[list[int]]  # tie groups of indices into `responses`, best first
    choice_indices: list[int]  # responses[i] is the compare's answer choice_indices[i]
    model: str | None
    sampling: dict[str, Any] | None
    rater: str
    created_at: int


# ---------------------------------------------------------------- thumbs
def _owned_message(s: Session, caller: Caller, message_id: str) -> Message:
    msg = s.scalar(
        sa.select(Message)
        .join(Conversation, Message.conversation_id == Conversation.id)
        .where(Message.id == message_id, Conversation.user_id == caller.user_id)
    )
    if msg is None:  # not there, or someone else's: the same answer, so ids leak nothing
        raise not_found(
            f"No message found with id '{message_id}'", param="message_id", code="message_not_found"
        )
    return msg


def _feedback_out(fb: Feedback) -> FeedbackOut:
    return FeedbackOut(
        message_id=fb.message_id, rating=fb.rating, comment=fb.comment, created_at=_ts(fb.created_at)
    )


@router.put("/messages/{message_id}/feedback")
async def put_feedback(
    message_id: str, body: FeedbackIn, request: Request, caller: CurrentUser
) -> FeedbackOut:
    """Thumbs up/down (+1/-1) and an optional comment; one per person and answer (replaced)."""
    if body.rating not in (1, -1):
        raise bad_request(
            f"rating must be 1 (thumbs up) or -1 (thumbs down), got {body.rating}", param="rating"
        )

    def put(s: Session) -> Feedback:
        msg = _owned_message(s, caller, message_id)
        if msg.role != "assistant":
            raise bad_request("only an assistant's answer can be rated", param="message_id")
        fb = s.scalar(
            sa.select(Feedback).where(Feedback.message_id == msg.id, Feedback.user_id == caller.user_id)
        )
        if fb is None:
            fb = Feedback(message_id=msg.id, user_id=caller.user_id, rating=body.rating)
            s.add(fb)
        fb.rating = body.rating
        fb.comment = (body.comment or "").strip() or None
        fb.created_at = utcnow()  # when the judgement was (last) given: what `export --since` filters on
        s.commit()
        return fb

    return _feedback_out(await request.app.state.runtime.db(put))


@router.delete("/messages/{message_id}/feedback")
async def delete_feedback(message_id: str, request: Request, caller: CurrentUser) -> dict:
    def delete(s: Session) -> bool:
        msg = _owned_message(s, caller, message_id)
        n = s.execute(
            sa.delete(Feedback).where(Feedback.message_id == msg.id, Feedback.user_id == caller.user_id)
        )
        s.commit()
        return n.rowcount > 0

    deleted = await request.app.state.runtime.db(delete)
    return {"object": "message.feedback.deleted", "message_id": message_id, "deleted": deleted}


@router.get("/conversations/{conv_id}/feedback")
async def conversation_feedback(conv_id: str, request: Request, caller: CurrentUser) -> FeedbackList:
    """The caller's feedback on one of their conversations (the page shows it after a reload)."""

    def read(s: Session) -> list[Feedback] | None:
        if get_conversation(s, caller.user_id, conv_id) is None:
            return None
        return list(
            s.scalars(
                sa.select(Feedback)
                .join(Message, Feedback.message_id == Message.id)
                .where(Message.conversation_id == conv_id, Feedback.user_id == caller.user_id)
            )
        )

    rows = await request.app.state.runtime.db(read)
    if rows is None:
        raise not_found(f"No conversation found with id '{conv_id}'", param="conversation_id")
    return FeedbackList(data=[_feedback_out(fb) for fb in rows])


# ---------------------------------------------------------------- compare mode
@router.post("/compare")
async def compare(body: CompareRequest, request: Request, caller: CurrentUser) -> Any:
    """Sample n answers to one prompt through the moderated chat flow; the reply is exactly a
    /v1/chat/completions reply with n choices (SSE by default), naming the stored compare run
    in `conversation_id`."""
    rt = request.app.state.runtime
    check_common(rt, body.model, body.n)
    messages = (
        [{"role": "system", "content": body.system}] if body.system and body.system.strip() else []
    ) + [{"role": "user", "content": body.prompt}]

    async def work(release):
        exchange = await rt.db(
            begin_exchange, caller.user_id, messages, source=COMPARE_SOURCE, model=body.model
        )
        return await run_chat(ChatJob(rt, caller, body.model, messages, body, body.n, exchange), release)

    return await guarded(rt, work)


def _compare_run(s: Session, caller: Caller, conv_id: str) -> tuple[Conversation, list[dict], list[Message]]:
    """(the compare conversation, its prompt messages, its rankable answers by choice index)."""
    conv = get_conversation(s, caller.user_id, conv_id, with_messages=True)
    if conv is None or conv.source != COMPARE_SOURCE:
        raise not_found(
            f"No compare run found with id '{conv_id}'", param="conversation_id", code="compare_not_found"
        )
    answers = sorted((m for m in conv.messages if m.role == "assistant"), key=lambda m: m.choice_index)
    prompt = [{"role": m.role, "content": m.content} for m in conv.messages if m.role != "assistant"]
    if any(m.flagged for m in conv.messages if m.role != "assistant"):
        raise bad_request(
            "the prompt was flagged by moderation: there are no model answers to rank",
            param="conversation_id",
        )
    rankable = [m for m in answers if m.template_used is None and m.finish_reason != "content_filter"]
    return conv, prompt, rankable


def _ranking_of(value: list, choice_indices: list[int]) -> list[list[int]]:
    """Choice indices (best first, ties nested) -> tie groups of positions in `choice_indices`."""
    position = {c: i for i, c in enumerate(choice_indices)}
    flat = [c for item in value for c in (item if isinstance(item, list) else [item])]
    if sorted(flat) != sorted(choice_indices):
        raise bad_request(
            f"ranking {value!r} must name each rankable answer {choice_indices} exactly once "
            "(answers a template replaced are not rankable)",
            param="ranking",
        )
    return parse_ranking(
        [[position[c] for c in item] if isinstance(item, list) else position[item] for item in value],
        len(choice_indices),
        "ranking",
    )


def _ranking_out(r: Ranking, conv_id: str | None, choice_indices: list[int], rater: str) -> RankingOut:
    return RankingOut(
        id=r.id,
        conversation_id=conv_id,
        prompt=r.prompt,
        responses=r.responses,
        ranking=r.ranking,
        choice_indices=choice_indices,
        model=r.model,
        sampling=r.sampling,
        rater=rater,
        created_at=_ts(r.created_at),
    )


@router.post("/rankings")
async def create_ranking(body: RankingIn, request: Request, caller: CurrentUser) -> RankingOut:
    """Store a person's ranking of a compare run's answers."""

    def create(s: Session) -> RankingOut:
        conv, prompt, rankable = _compare_run(s, caller, body.conversation_id)
        if len(rankable) < MIN_ANSWERS:
            raise bad_request(
                f"only {len(rankable)} of the answers are the model's own (a template replaced the others): "
                "nothing to compare",
                param="ranking",
            )
        choice_indices = [m.choice_index for m in rankable]
        groups = _ranking_of(body.ranking, choice_indices)
        sampling = dict(rankable[0].sampling or {})
        sampling["choice_indices"] = choice_indices  # which answers of the run were ranked
        sampling["conversation_id"] = conv.id
        row = Ranking(
            user_id=caller.user_id,
            prompt={"messages": prompt},
            responses=[m.content for m in rankable],
            ranking=groups,
            model=rankable[0].model or conv.model,
            sampling=sampling,
        )
        s.add(row)
        s.commit()
        return _ranking_out(row, conv.id, choice_indices, caller.name)

    return await request.app.state.runtime.db(create)


@router.put("/rankings/{ranking_id}")
async def update_ranking(
    ranking_id: int, body: RankingUpdate, request: Request, caller: CurrentUser
) -> RankingOut:
    """Change a stored ranking (the person changed their mind); the answers stay as stored."""

    def update(s: Session) -> RankingOut:
        row = s.scalar(sa.select(Ranking).where(Ranking.id == ranking_id, Ranking.user_id == caller.user_id))
        if row is None:
            raise not_found(f"No ranking found with id {ranking_id}", param="ranking_id")
        choice_indices = list((row.sampling or {}).get("choice_indices") or range(len(row.responses)))
        row.ranking = _ranking_of(body.ranking, choice_indices)
        row.created_at = utcnow()
        s.commit()
        return _ranking_out(row, (row.sampling or {}).get("conversation_id"), choice_indices, caller.name)

    return await request.app.state.runtime.db(update)
