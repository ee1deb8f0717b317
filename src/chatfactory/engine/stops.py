"""Which generated text may be released yet: incremental detokenization and stop strings.

Both hold text back: the detokenizer until the bytes of a character are complete (a byte-level
BPE token may end in the middle of a UTF-8 sequence; decoding it alone gives U+FFFD), the stop
matcher while the text's tail could still grow into a stop string (the stop string itself is
never released, as in OpenAI's API).
"""

from __future__ import annotations

from collections.abc import Sequence

from chatfactory.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"  # what a decoder gives for an incomplete UTF-8 sequence


class IncrementalDetokenizer:
    """Text deltas for a growing list of token ids, in whole characters only.

    Decodes a short window (`ids[prefix:]`) rather than everything so far, and diffs it with the
    window's already-released part (`ids[prefix:read]`): tokenizers whose decoders depend on
    context (SentencePiece's leading-space rule) then still give the right text, because both
    decodes start at the same token. The window is seeded with the prompt's last tokens so the
    first generated token keeps its leading space too.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_tail: Sequence[int] = ()):
        self.tokenizer = tokenizer
        tail = list(prompt_tail)[-4:]
        # a prompt ending mid-character would glue its bytes to the answer's first character
        self.ids: list[int] = [] if self._decode(tail).endswith(REPLACEMENT) else tail
        self.prefix = 0  # window start
        self.read = len(self.ids)  # tokens before this are released

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special=True)

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now complete (maybe "")."""
        self.ids.append(token_id)
        released = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        if text.endswith(REPLACEMENT) or len(text) <= len(released):
            return ""  # an incomplete character (or nothing visible yet): wait for more bytes
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(released) :]

    def flush(self) -> str:
        """At the end: whatever is left, invalid bytes shown as U+FFFD."""
        released = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return text[len(released) :]


class StopStrings:
    """Finds the first stop string in streamed text; holds back a tail that could start one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to release, whether a stop string was reached). After a stop, the text
        from the stop string on is dropped."""
        if not self.stops:
            return text, False
        buf = self.pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buf[: min(hits)], True
        # The longest tail of buf that is a proper prefix of some stop string must wait.
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:n]):
                    hold = n
                    break
        self.pending = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
