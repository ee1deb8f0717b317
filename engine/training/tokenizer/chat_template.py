"""The chat format: ChatML as SmolLM2 uses it, rendered to token ids plus a loss mask.

    <|im_start|>system\\nYou are ...<|im_end|>\\n
    <|im_start|>user\\nHello<|im_end|>\\n
    <|im_start|>assistant\\nHi!<|im_end|>\\n

The loss mask is on for an assistant turn's content and its closing <|im_end|> (the model must
learn to stop), and off for everything else, including the "\\n" after <|im_end|>: that newline
is template glue the serving code appends itself, and training on it would only teach the
model to emit a token that generation stops before.

Ids equal what `transformers`' `apply_chat_template` produces from `JINJA_CHAT_TEMPLATE`:
it renders one string and tokenizes it with special tokens split out first, so every stretch
of text *between* two special tokens is encoded as one piece. `render` encodes exactly those
stretches ("user\\nHello", "\\n") as whole pieces, never smaller ones (BPE across "\\n\\n" differs).
The one deliberate difference: special-token strings inside message content stay plain text
here (a user typing "<|im_end|>" cannot forge a turn), while a Jinja render would parse them.

No system message is invented: a conversation without one renders without one. SmolLM2's own
template inserts a default system prompt in that case; pass `default_system=SMOLLM2_DEFAULT_SYSTEM`
to reproduce it token for token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .bpe import IM_END, IM_START, Tokenizer

ROLES = ("system", "user", "assistant")
GENERATION_PROMPT = f"{IM_START}assistant\n"

# SmolLM2-Instruct's template (GGUF metadata tokenizer.chat_template) adds this when a
# conversation starts without a system message.
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# The same format as a Jinja chat_template (exported in tokenizer_config.json): plain Jinja, so
# every renderer takes it (transformers, vLLM, llama.cpp after GGUF conversion, Ollama).
JINJA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# The same again with transformers' `{% generation %}` marks around the trained span, so that
# `apply_chat_template(..., return_assistant_tokens_mask=True)` (TRL's assistant_only_loss)
# gives our loss mask. A transformers extension: plain Jinja renderers reject the tag, which
# is why it is not the exported template.
JINJA_CHAT_TEMPLATE_WITH_MASK = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

def render(
    messages: Sequence[dict[str, Any]],
    tokenizer: Tokenizer,
    add_generation_prompt: bool = False,
    *,
    train_from: int = 0,
    default_system: str | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids and loss mask (1 = train on this token) for a conversation.

    messages: [{"role": "system"|"user"|"assistant", "content": str}, ...] (validated upstream,
        see engine.training.data.conversations; here only the shape is checked).
    add_generation_prompt: end with "<|im_start|>assistant\\n" for the model to answer.
    train_from: assistant turns before this message index are context only (mask off), as for
        the prompt part of a {"prompt", "completion"} example.
    default_system: a system message to prepend when the conversation has none.
    """
    if default_system is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": default_system}, *messages]
        train_from += 1
    start, end = tokenizer.token_id(IM_START), tokenizer.token_id(IM_END)
    newline = tokenizer.encode("\n")
    ids: list[int] = []
    mask: list[int] = []
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if not isinstance(content, str):
            raise TypeError(f"message {i}: content must be a string, got {type(content).__name__}")
        header = f"{role}\n"
        # One piece from after <|im_start|> to before <|im_end|>, as transformers encodes it.
        enc = tokenizer.hf.encode(header + content, add_special_tokens=False)
        trained = role == "assistant" and i >= train_from
        ids.append(start)
        mask.append(0)
        ids += enc.ids
        if trained:
            # A token that straddles the header/content boundary holds content: train on it
            # (transformers' assistant mask does the same, by character position).
            mask += [1 if e > len(header) else 0 for _, e in enc.offsets]
        else:
            mask += [0] * len(enc.ids)
        ids.append(end)
        mask.append(1 if trained else 0)
        ids += newline
        mask += [0] * len(newline)
    if add_generation_prompt:
        ids += [start, *tokenizer.encode("assistant\n")]
        mask += [0] * (len(ids) - len(mask))
    return ids, mask


def render_prompt(messages: Sequence[dict[str, Any]], tokenizer: Tokenizer, **kwargs: Any) -> list[int]:
    """The ids to feed the model for it to write the next assistant turn."""
    return render(messages, tokenizer, add_generation_prompt=True, **kwargs)[0]


def render_text(messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """The rendered string (for display and debugging; ids come from `render`)."""
    out = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return out + (GENERATION_PROMPT if add_generation_prompt else "")
