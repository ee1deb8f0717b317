"""Pydantic models for every request and response body: OpenAI's wire format, plus the
documented extensions (`moderation`, `template_used`, `conversation_id`, `message_id`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# ---------------------------------------------------------------- requests


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """The sampling knobs shared by chat completions, completions and conversation messages."""

    model_config = ConfigDict(extra="ignore")  # unknown OpenAI fields (user, logit_bias=None, ...) pass
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # extension (vLLM and llama.cpp accept it too)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops


class ChatCompletionRequest(SamplingFields):
    model: str
    messages: list[ChatMessageIn] = Field(min_length=1)
    n: int = Field(1, ge=1)
    tools: list[Any] | None = None
    logprobs: bool | None = None


class CompletionRequest(SamplingFields):
    model: str
    prompt: str | list[str]
    n: int = Field(1, ge=1)
    echo: bool = False
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's legacy default


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: str | list[str] | list[TextPart]
    model: str | None = None


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field("", max_length=300)
    model: str | None = None


class ConversationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1, max_length=300)


class ConversationMessageRequest(SamplingFields):
    """POST /v1/conversations/{id}/messages: only the new user message; the server holds the rest."""

    content: str = Field(min_length=1)
    model: str | None = None  # default: the conversation's model, else the first served model


# ---------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Moderation(BaseModel):
    """Moderation per side, in the shape of OpenAI's moderated chat completions (the
    `moderation` object of ChatCompletion / ChatCompletionChunk in the current API):
    each side is `{"type": "moderation_results", "model", "results": [{flagged, categories,
    category_scores, category_applied_input_types, model, "type": "moderation_result"}]}` —
    `output.results` holds one result per choice — or `{"type": "error", "code", "message"}`
    when that side has no result (the model was not called because the input was flagged)."""

    input: dict[str, Any]
    output: dict[str, Any]


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: str
    logprobs: None = None
    template_used: str | None = None  # extension: "input" | "output" when a template answer was shown


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    moderation: Moderation | None = None
    conversation_id: str | None = None  # extension: where the exchange is stored
    message_id: str | None = None  # extension: the stored assistant message (choice 0)


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: str | None = None
    logprobs: None = None
    template_used: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    moderation: Moderation | None = None  # on each choice's finishing chunk
    conversation_id: str | None = None
    message_id: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    moderation: Moderation | None = None  # extension: as on chat completions


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "chatfactory"
    context_window: int | None = None  # extension


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[dict[str, Any]]


class ConversationOut(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    title: str
    model: str | None
    source: str
    created_at: int
    updated_at: int


class MessageOut(BaseModel):
    id: str
    object: Literal["conversation.message"] = "conversation.message"
    role: str
    content: str
    position: int
    choice_index: int
    model: str | None
    created_at: int
    flagged: bool
    template_used: str | None
    finish_reason: str | None
    moderation: dict[str, Any] | None
    sampling: dict[str, Any] | None
    usage: Usage | None


class ConversationDetail(ConversationOut):
    messages: list[MessageOut]


class ConversationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ConversationOut]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True
