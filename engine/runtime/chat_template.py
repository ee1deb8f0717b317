"""The model's own chat template (Jinja from the GGUF's `tokenizer.chat_template`), in a sandbox.

Rendering keeps the message texts apart from the template's markup: each message's content is
replaced by a sentinel, the template is rendered, and the result is split back into pieces that
are either template text (its role markers: tokenized with special tokens allowed) or message
text (tokenized as plain text). So a user who types `<|im_start|>system` gets those characters,
not a role. Each piece is tokenized on its own, which also makes the token sequence of a
conversation append-only across turns: the prefix the model already processed is reused.

A template that rejects a system role gets the system text folded into the first user turn.
A model with no template falls back to ChatML.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Private-use code points: no tokenizer or user text has a reason to contain them.
_OPEN, _CLOSE = "\ue000", "\ue001"


class ChatTemplateError(ValueError):
    """The model's chat template could not render this conversation."""


@dataclass(frozen=True)
class Piece:
    text: str
    special: bool  # True: the template's own markup; False: a message's text


def _raise(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    """Renders messages with one model's template; `model_name` is only for error messages."""

    def __init__(self, source: str | None, model_name: str, bos_token: str = "", eos_token: str = ""):
        self.source = source or CHATML
        self.is_fallback = source is None or not source.strip()
        self.model_name = model_name
        self.bos_token, self.eos_token = bos_token, eos_token
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(self.source)
        except TemplateError as e:
            raise ChatTemplateError(f"model {model_name}: its chat template does not parse: {e}") from None

    def pieces(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[Piece]:
        """The rendered prompt as template and message pieces, in order."""
        try:
            return self._pieces(messages, add_generation_prompt)
        except TemplateError as first:
            if not messages or messages[0]["role"] != "system":
                raise ChatTemplateError(
                    f"model {self.model_name}: its chat template failed on this conversation: {first}"
                ) from None
            folded = fold_system(messages)
            try:
                return self._pieces(folded, add_generation_prompt)
            except TemplateError as e:
                raise ChatTemplateError(
                    f"model {self.model_name}: its chat template failed on this conversation: {e}"
                ) from None

    def render_text(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return "".join(p.text for p in self.pieces(messages, add_generation_prompt))

    def _pieces(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[Piece]:
        masked = [{**m, "content": f"{_OPEN}{i}{_CLOSE}"} for i, m in enumerate(messages)]
        try:
            text = self._template.render(
                messages=masked, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token,
            )  # fmt: skip
        except TemplateError:
            raise
        except Exception as e:  # noqa: BLE001 - a template can raise anything (TypeError on odd input, ...)
            raise TemplateError(f"{type(e).__name__}: {e}") from None
        out: list[Piece] = []
        seen: list[int] = []
        rest = text
        while True:
            start = rest.find(_OPEN)
            if start < 0:
                break
            end = rest.find(_CLOSE, start)
            if end < 0:
                raise TemplateError("the template cut a message's text apart")
            if start:
                out.append(Piece(rest[:start], True))
            index = int(rest[start + 1 : end])
            seen.append(index)
            if messages[index]["content"]:
                out.append(Piece(messages[index]["content"], False))
            rest = rest[end + 1 :]
        if rest:
            out.append(Piece(rest, True))
        if seen != sorted(set(seen)):
            raise TemplateError("the template repeats or reorders message texts")
        return out


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """For templates with no system role: the system text opens the first user turn."""
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}" if m["content"] else system
            return rest
    return [{"role": "user", "content": system}, *rest]
