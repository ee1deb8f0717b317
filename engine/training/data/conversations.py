"""Conversations for SFT: reading and validating JSONL, fitting to the context, splitting, packing.

Accepted lines (the OpenAI / TRL conversational formats):
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
    {"prompt": "..." | [messages], "completion": "..." | [messages]}
A string prompt is a user turn, a string completion an assistant turn. In the prompt/completion
form only the completion is trained (as TRL does); in the messages form every assistant turn is.
Content may also be OpenAI's list of parts ([{"type": "text", "text": ...}]); text parts are joined.

Rules: roles are system, user, assistant; a system message may only come first; no content is
empty; at least one trained assistant turn. A bad line is skipped, counted and warned about
(the first few are named in full) unless `strict=True`, which raises at the first bad line.
Every error names the file, the line and the problem.

Conversations longer than the context are truncated from the oldest turns, keeping the system
message and starting again at a user turn, or dropped when even the last exchange does not
fit (or with `overflow="drop"`). Both are counted.

Packing puts several conversations in one row of `seq_len` tokens with `doc_ids`, so the
model's attention never crosses from one conversation to another and positions restart at
each (see GPT.hidden_states); the alternative, one conversation per row padded, is kept for
comparison (`pack=False`) — measured in BENCHMARKS.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.training.tokenizer import Tokenizer
from engine.training.tokenizer.chat_template import ROLES, render

log = logging.getLogger(__name__)
MAX_NAMED_ERRORS = 5  # bad lines named one by one in the log before only counting


class ConversationError(ValueError):
    """A line that is not a valid conversation; str() names the file, the line and the problem."""

    def __init__(self, where: str, problem: str, kind: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem, self.kind = where, problem, kind


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    train_from: int = 0  # assistant turns before this message index are context, not trained
    source: str = ""  # "file:line", for messages about this conversation

    def to_json(self) -> dict[str, Any]:
        if self.train_from == 0:
            return {"messages": self.messages}
        return {"prompt": self.messages[: self.train_from], "completion": self.messages[self.train_from :]}


@dataclass
class ReadReport:
    lines: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # error kind -> count

    def summary(self) -> str:
        s = f"{self.kept} conversations from {self.lines} lines"
        if self.skipped:
            s += ", skipped " + ", ".join(f"{n} ({k})" for k, n in self.skipped.most_common())
        return s


# ---- parsing and validation ------------------------------------------------------------------
def parse_conversation(obj: Any, where: str = "<record>") -> Conversation:
    """A JSON object (already decoded) -> Conversation, or ConversationError."""
    if not isinstance(obj, dict):
        raise ConversationError(where, f"expected a JSON object, got {type(obj).__name__}", "not an object")
    if "messages" in obj:
        messages = _messages(obj["messages"], where, "messages")
        train_from = 0
    elif "prompt" in obj and "completion" in obj:
        prompt = _messages(obj["prompt"], where, "prompt", default_role="user")
        completion = _messages(obj["completion"], where, "completion", default_role="assistant")
        messages, train_from = prompt + completion, len(prompt)
    else:
        keys = ", ".join(sorted(obj)) or "none"
        raise ConversationError(
            where, f'expected a "messages" list or "prompt" and "completion" fields (keys: {keys})', "unknown format"
        )
    for i, m in enumerate(messages):
        if m["role"] == "system" and i > 0:
            raise ConversationError(where, f"message {i}: a system message may only come first", "misplaced system")
    if not any(m["role"] == "assistant" for m in messages[train_from:]):
        raise ConversationError(where, "no assistant turn to train on", "no assistant turn")
    return Conversation(messages, train_from, where)


def _messages(value: Any, where: str, name: str, default_role: str | None = None) -> list[dict[str, str]]:
    if isinstance(value, str) and default_role:
        value = [{"role": default_role, "content": value}]
    if not isinstance(value, list) or not value:
        raise ConversationError(where, f'"{name}" must be a non-empty list of messages', "bad messages")
    out = []
    for i, m in enumerate(value):
        at = f'"{name}"[{i}]'
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ConversationError(where, f'{at}: a message needs "role" and "content"', "bad message")
        role = m["role"]
        if role not in ROLES:
            raise ConversationError(where, f"{at}: unknown role {role!r} (expected one of {', '.join(ROLES)})", "unknown role")
        content = _text(m["content"])
        if content is None:
            raise ConversationError(where, f"{at}: content must be a string", "bad content")
        if not content.strip():
            raise ConversationError(where, f"{at}: empty content", "empty content")
        out.append({"role": role, "content": content})
    return out


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        parts = [p.get("text") for p in content if p.get("type") == "text"]
        if parts and all(isinstance(p, str) for p in parts):
            return "".join(parts)
    return None


def read_conversations(path: str | Path, strict: bool = False) -> tuple[list[Conversation], ReadReport]:
    """Every valid conversation of a JSONL file (blank lines ignored) and the count of bad ones."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    report = ReadReport()
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            report.lines += 1
            where = f"{path}:{n}"
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConversationError(where, f"not valid JSON ({e.msg} at column {e.colno})", "invalid JSON") from None
                out.append(parse_conversation(obj, where))
            except ConversationError as e:
                if strict:
                    raise
                report.skipped[e.kind] += 1
                if sum(report.skipped.values()) <= MAX_NAMED_ERRORS:
                    log.warning("skipping %s", e)
    report.kept = len(out)
    if report.skipped:
        log.warning("%s: %s (use --strict to stop at the first bad line)", path, report.summary())
    return out, report


def write_conversations(path: str | Path, conversations: Iterable[Conversation | dict]) -> int:
    """JSONL, one conversation a line; returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for c in conversations:
            f.write(json.dumps(c.to_json() if isinstance(c, Conversation) else c, ensure_ascii=False) + "\n")
            n += 1
    return n


# ---- fitting to the context ------------------------------------------------------------------
@dataclass
class Example:
    """A rendered conversation: ids and loss mask of equal length."""

    ids: list[int]
    mask: list[int]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class FitReport:
    kept: int = 0
    truncated: int = 0
    dropped: int = 0

    def summary(self) -> str:
        return f"{self.kept} kept ({self.truncated} truncated from the oldest turns), {self.dropped} dropped as too long"


def fit(conv: Conversation, tokenizer: Tokenizer, max_len: int, overflow: str = "truncate") -> tuple[Example | None, bool]:
    """Render within `max_len` tokens. Returns (example or None if dropped, was_truncated).

    Truncation drops the oldest turns after the system message, then any leading assistant
    turns, so the kept part starts at a user turn; it gives up (drops) when no trained
    assistant turn would remain.
    """
    if overflow not in ("truncate", "drop"):
        raise ValueError(f"overflow must be 'truncate' or 'drop', got {overflow!r}")
    msgs, train_from = conv.messages, conv.train_from
    ids, mask = render(msgs, tokenizer, train_from=train_from)
    if len(ids) <= max_len:
        return Example(ids, mask), False
    if overflow == "drop":
        return None, False
    head = 1 if msgs[0]["role"] == "system" else 0
    body = list(range(head, len(msgs)))
    while len(body) > 1:
        body.pop(0)
        while body and msgs[body[0]]["role"] != "user":
            body.pop(0)
        keep = list(range(head)) + body
        new_from = sum(1 for i in keep if i < train_from)
        kept = [msgs[i] for i in keep]
        if not any(m["role"] == "assistant" for m in kept[new_from:]):
            break
        ids, mask = render(kept, tokenizer, train_from=new_from)
        if len(ids) <= max_len:
            return Example(ids, mask), True
    return None, False


def fit_all(
    conversations: Iterable[Conversation], tokenizer: Tokenizer, max_len: int, overflow: str = "truncate"
) -> tuple[list[Example], FitReport]:
    report, out = FitReport(), []
    for c in conversations:
        ex, truncated = fit(c, tokenizer, max_len, overflow)
        if ex is None:
            report.dropped += 1
            continue
        report.kept += 1
        report.truncated += truncated
        out.append(ex)
    return out, report


# ---- splitting -------------------------------------------------------------------------------
def is_held_out(conv: Conversation, fraction: float) -> bool:
    """Decided by a hash of the content: a conversation lands on the same side whatever else
    is in the file, and duplicates never straddle train and held-out."""
    h = hashlib.sha256(json.dumps(conv.messages, sort_keys=True).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def split(conversations: Sequence[Conversation], fraction: float = 0.05) -> tuple[list[Conversation], list[Conversation]]:
    """(train, held_out). At least one held-out conversation when there are two or more."""
    train, held = [], []
    for c in conversations:
        (held if is_held_out(c, fraction) else train).append(c)
    if not held and len(train) > 1 and fraction > 0:
        held.append(train.pop())
    return train, held


# ---- batching: packed or padded ----------------------------------------------------------------
@dataclass
class Row:
    """One training row of seq_len + 1 tokens (inputs are [:-1], targets [1:])."""

    ids: list[int]
    mask: list[int]
    doc: list[int]  # conversation index within the row; -1 for padding


def pack(examples: Sequence[Example], seq_len: int, pad_id: int, seed: int = 0) -> list[Row]:
    """First-fit-decreasing into rows of seq_len + 1 tokens, then shuffled.

    The +1: a row's inputs and targets are its tokens shifted by one, so seq_len inputs need
    seq_len + 1 tokens. A target that crosses into the next conversation is its <|im_start|>,
    whose mask is 0, so no loss ever spans two conversations.
    """
    cap = seq_len + 1
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]))
    rows: list[list[int]] = []  # example indices per row
    free: list[int] = []
    for i in order:
        n = len(examples[i])
        if n > cap:
            raise ValueError(f"example of {n} tokens does not fit seq_len + 1 = {cap}; fit() it first")
        for r, room in enumerate(free):
            if room >= n:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(cap - n)
    random.Random(seed).shuffle(rows)
    return [_row([examples[i] for i in members], cap, pad_id) for members in rows]


def pad_rows(examples: Sequence[Example], seq_len: int, pad_id: int, seed: int = 0) -> list[Row]:
    """One conversation per row (the unpacked alternative), in shuffled order."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [_row([examples[i]], min(seq_len + 1, len(examples[i])), pad_id) for i in order]


def _row(members: Sequence[Example], cap: int, pad_id: int) -> Row:
    ids, mask, doc = [], [], []
    for d, ex in enumerate(members):
        ids += ex.ids
        mask += ex.mask
        doc += [d] * len(ex)
    n = cap - len(ids)
    return Row(ids + [pad_id] * n, mask + [0] * n, doc + [-1] * n)


def collate(rows: Sequence[Row], pad_id: int, doc_ids: bool = True) -> dict[str, torch.Tensor]:  # noqa: F821
    """A batch for GPT.forward: input_ids, targets (-100 where not trained), doc_ids.

    Rows of different lengths (padded mode) are right-padded to the longest; padding gets its
    own doc id. doc_ids=False leaves them out, for rows of one conversation each: padding is
    only ever on the right, which causal attention never looks at, so the model can take its
    plain causal path (no explicit mask).
    """
    T = max(len(r.ids) for r in rows) - 1
    B = len(rows)
    import torch  # here, not at the top: reading and checking data (the app) needs no torch

    ids = torch.full((B, T + 1), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T + 1), dtype=torch.bool)
    doc = torch.full((B, T + 1), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r.ids)
        ids[b, :n] = torch.tensor(r.ids)
        mask[b, :n] = torch.tensor(r.mask, dtype=torch.bool)
        doc[b, :n] = torch.tensor(r.doc)
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
    batch = {"input_ids": ids[:, :-1], "targets": targets}
    if doc_ids:
        batch["doc_ids"] = doc[:, :-1]
    return batch


def batches(rows: Sequence[Row], batch_size: int, pad_id: int, seed: int = 0, epochs: int | None = None) -> Iterator[dict]:
    """Endless (or `epochs`) shuffled batches over the rows."""
    rng = random.Random(seed)
    order = list(range(len(rows)))
    epoch = 0
    if not rows:
        raise ValueError("no training rows")
    bs = min(batch_size, len(rows))  # fewer rows than a batch: each batch is all of them
    while epochs is None or epoch < epochs:
        rng.shuffle(order)
        for s in range(0, len(order) - bs + 1, bs):  # the ragged tail waits for the next epoch
            yield collate([rows[i] for i in order[s : s + bs]], pad_id)
        epoch += 1


def trained_tokens(rows: Iterable[Row]) -> int:
    return sum(sum(r.mask[1:]) for r in rows)
