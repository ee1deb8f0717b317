"""The model's prompt for one turn: the past conversation, the operator's hidden instructions,
trimmed to the context window.

- Conversation context: the whole past conversation is replayed every turn (the model keeps
  no state between turns), minus turns marked `"flagged": True` (a flagged prompt, a template
  answer, a flagged answer): the model must never be shown what moderation stopped.
- Hidden instructions: `hidden_before` becomes the first system message; a client's own
  leading system message is kept AFTER it in that same message (the operator's rules come
  first, the client's persona refines them; one system turn is what chat models are trained
  on). `hidden_after` is appended to the latest user turn only, so each hidden text appears
  exactly once in the prompt.
- Trimming: while prompt + max_new_tokens exceeds the context window, the oldest exchange
  (a user turn and the replies after it) is dropped. The system message and the latest user
  turn are never dropped; if they alone do not fit, that is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chatfactory.engine.scheduler import ContextWindowError
from chatfactory.tokenizer import IM_END, IM_START, Tokenizer
from chatfactory.tokenizer.chat_template import ROLES, render

from .config import FlowConfig


@dataclass
class Prompt:
    ids: list[int]
    messages: list[dict[str, str]]  # exactly what was rendered (hidden text included: never return it)
    dropped: int  # past messages left out to fit the context window


def message_text(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise ValueError(f"{where}: content must be a string or a list of text parts")


def visible_history(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Validated {"role", "content"} messages, flagged ones left out."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages: expected a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}]: expected an object with role and content")  # noqa: TRY004 (bad input)
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role: must be one of {list(ROLES)}, got {role!r}")
        if m.get("flagged"):
            continue
        out.append({"role": role, "content": message_text(m.get("content"), f"messages[{i}]")})
    if not out or out[-1]["role"] != "user":
        raise ValueError("messages: the last (unflagged) message must be the user's")
    return out


def with_hidden_instructions(history: list[dict[str, str]], config: FlowConfig) -> list[dict[str, str]]:
    """history with hidden_before in the leading system message and hidden_after on the last turn."""
    msgs = [dict(m) for m in history]
    if config.hidden_before:
        if msgs[0]["role"] == "system":
            msgs[0]["content"] = config.hidden_before + "\n\n" + msgs[0]["content"]
        else:
            msgs.insert(0, {"role": "system", "content": config.hidden_before})
    if config.hidden_after:
        msgs[-1]["content"] += config.hidden_after_separator + config.hidden_after
    return msgs


def build_prompt(
    messages: Sequence[dict[str, Any]],
    tokenizer: Tokenizer,
    config: FlowConfig,
    context_window: int,
    max_new_tokens: int,
) -> Prompt:
    """The ids to generate from: history + hidden instructions, trimmed to fit."""
    for special in (IM_START, IM_END):
        try:
            tokenizer.token_id(special)
        except KeyError:
            raise ValueError(
                f"this model's tokenizer has no {special} token, so it has no chat format; "
                "use /v1/completions (plain text) instead"
            ) from None
    msgs = with_hidden_instructions(visible_history(messages), config)
    budget = context_window - max_new_tokens
    # Each message renders to its own tokens (chat_template encodes messages one by one), so
    # its length is known once; a final render checks the total exactly.
    head = 1 if msgs[0]["role"] == "system" else 0
    sizes = [len(render([m], tokenizer)[0]) for m in msgs]
    gen_prompt = len(render([], tokenizer, add_generation_prompt=True)[0])
    start = head  # first kept past message
    total = sum(sizes) + gen_prompt
    while True:
        kept = msgs[:head] + msgs[start:]
        if total <= budget:
            ids = render(kept, tokenizer, add_generation_prompt=True)[0]
            if len(ids) <= budget:
                return Prompt(ids, kept, start - head)
            total = len(ids)
        if start >= len(msgs) - 1:
            need = len(render(msgs[:head] + msgs[-1:], tokenizer, add_generation_prompt=True)[0])
            raise ContextWindowError(
                f"this model's context window is {context_window} tokens; the instructions and the latest "
                f"message take {need} tokens and max_tokens asks for {max_new_tokens} more "
                f"({need + max_new_tokens} in all). Shorten the message or lower max_tokens."
            )
        # drop the oldest exchange: one message, then any replies up to the next user turn
        total -= sizes[start]
        start += 1
        while start < len(msgs) - 1 and msgs[start]["role"] != "user":
            total -= sizes[start]
            start += 1
