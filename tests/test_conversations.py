"""SFT data: every kind of bad line, skip-or-stop, truncation, split, and packing without leaks."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from engine.training.data.conversations import (
    Conversation,
    ConversationError,
    batches,
    collate,
    fit,
    fit_all,
    pack,
    pad_rows,
    parse_conversation,
    read_conversations,
    split,
    write_conversations,
)
from engine.training.model import GPT, ModelConfig
from engine.training.tokenizer import IM_START, Tokenizer
from engine.training.tokenizer.chat_template import render

TEXT = "Hello there, who are you? I am a small assistant. What is 12 + 30? It is 42. To be or not to be.\n"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([TEXT] * 20, vocab_size=320)


def _msgs(*turns: str, system: str | None = None) -> list[dict]:
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


GOOD = {"messages": _msgs("Hi", "Hello!")}
BAD_LINES = {
    "invalid JSON": '{"messages": [',
    "not an object": "[1, 2]",
    "unknown format": '{"text": "hello"}',
    "unknown role": json.dumps({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
    "empty content": json.dumps({"messages": _msgs("Hi", "   ")}),
    "no assistant turn": json.dumps({"messages": _msgs("Hi")}),
    "bad message": json.dumps({"messages": [{"role": "user"}]}),
    "misplaced system": json.dumps({"messages": _msgs("Hi", "Hello") + [{"role": "system", "content": "late"}]}),
    "bad content": json.dumps({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]}),
}
EXPECTED_TEXT = {
    "invalid JSON": "not valid JSON",
    "not an object": "expected a JSON object",
    "unknown format": 'expected a "messages" list',
    "unknown role": "unknown role 'bot'",
    "empty content": "empty content",
    "no assistant turn": "no assistant turn",
    "bad message": 'needs "role" and "content"',
    "misplaced system": "system message may only come first",
    "bad content": "content must be a string",
}


def test_formats_are_parsed():
    c = parse_conversation({"prompt": "What is 2+2?", "completion": "4"})
    assert c.messages == _msgs("What is 2+2?", "4") and c.train_from == 1
    c = parse_conversation({"prompt": _msgs("a", "b", "c"), "completion": [{"role": "assistant", "content": "d"}]})
    assert c.train_from == 3 and len(c.messages) == 4
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    c = parse_conversation({"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": "ok"}]})
    assert c.messages[0]["content"] == "Hello"


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_every_bad_line_is_named_and_skipped_or_stops(kind, tmp_path, caplog):
    f = tmp_path / "data.jsonl"
    f.write_text(json.dumps(GOOD) + "\n\n" + BAD_LINES[kind] + "\n" + json.dumps(GOOD) + "\n")
    with caplog.at_level(logging.WARNING):
        convs, report = read_conversations(f)
    assert len(convs) == 2 and report.skipped == {kind: 1} and report.lines == 3
    assert f"{f}:3: " in caplog.text and EXPECTED_TEXT[kind] in caplog.text  # file, line, problem
    with pytest.raises(ConversationError) as e:
        read_conversations(f, strict=True)
    assert str(e.value).startswith(f"{f}:3: ") and EXPECTED_TEXT[kind] in str(e.value)


def test_roundtrip_and_missing_file(tmp_path):
    convs = [Conversation(_msgs("a", "b")), Conversation(_msgs("q", "a"), train_from=1)]
    write_conversations(tmp_path / "c.jsonl", convs)
    back, _ = read_conversations(tmp_path / "c.jsonl")
    assert [(c.messages, c.train_from) for c in back] == [(c.messages, c.train_from) for c in convs]
    with pytest.raises(FileNotFoundError):
        read_conversations(tmp_path / "nope.jsonl")


def test_truncation_keeps_system_and_drops_oldest_turns(tok):
    long = "To be or not to be. " * 6
    conv = Conversation(_msgs(long, long, long, long, "Who are you?", "I am a small assistant.", system="Be brief."))
    full = len(render(conv.messages, tok)[0])
    ex, truncated = fit(conv, tok, max_len=full - 5)
    assert truncated and len(ex) <= full - 5
    text = tok.decode(ex.ids)
    assert text.startswith(f"{IM_START}system\nBe brief.") and f"{IM_START}user\n" in text.split("Be brief.")[1][:30]
    assert "I am a small assistant." in text
    assert fit(conv, tok, max_len=full - 5, overflow="drop") == (None, False)
    assert fit(conv, tok, max_len=10) == (None, False)  # even the last exchange does not fit
    _exs, report = fit_all([conv, Conversation(_msgs("Hi", "Hello"))], tok, max_len=full - 5)
    assert (report.kept, report.truncated, report.dropped) == (2, 1, 0)


def test_split_is_stable_and_disjoint():
    convs = [Conversation(_msgs(f"q{i}", f"a{i}")) for i in range(200)]
    train, held = split(convs, 0.1)
    _train2, held2 = split(list(reversed(convs)) + [Conversation(_msgs("new", "one"))], 0.1)
    key = lambda cs: {json.dumps(c.messages) for c in cs}
    assert key(held) <= key(held2) and not key(train) & key(held)
    assert 5 <= len(held) <= 40


def _examples(tok, n=12):
    convs = [Conversation(_msgs("Hello there " * (i % 4 + 1), "I am a small assistant. " * (i % 3 + 1))) for i in range(n)]
    return fit_all(convs, tok, 64)[0]


def test_packing_never_lets_attention_cross_conversations(tok):
    """A conversation's logits packed with others equal its logits alone."""
    torch.manual_seed(0)
    exs = _examples(tok)
    rows = pack(exs, seq_len=64, pad_id=tok.pad_id)
    assert len(rows) < len(exs) and all(len(r.ids) == 65 for r in rows)
    assert sum(sum(r.mask) for r in rows) == sum(sum(e.mask) for e in exs)  # nothing lost
    for family in ("gpt2", "llama"):
        model = GPT(ModelConfig(family=family, vocab_size=tok.vocab_size, d_model=32, n_layer=2, n_head=4, max_seq_len=64)).eval()
        batch = collate(rows, tok.pad_id)
        logits = model(batch["input_ids"], doc_ids=batch["doc_ids"])
        for b, r in enumerate(rows):
            start = 0
            for d in sorted(set(r.doc) - {-1}):
                n = r.doc.count(d)
                alone = model(torch.tensor([r.ids[start : start + n]]))[0]
                got = logits[b, start : start + n] if start + n <= 64 else logits[b, start:]
                torch.testing.assert_close(got, alone[: got.shape[0]], atol=1e-4, rtol=1e-4)
                start += n


def test_targets_only_on_assistant_tokens(tok):
    exs = _examples(tok, 4)
    for rows in (pack(exs, 64, tok.pad_id), pad_rows(exs, 64, tok.pad_id)):
        batch = collate(rows, tok.pad_id)
        trained = batch["targets"][batch["targets"] != -100].tolist()
        assert len(trained) == sum(sum(e.mask) for e in exs)
    batch = next(batches(pad_rows(exs, 64, tok.pad_id), 2, tok.pad_id))
    assert batch["input_ids"].shape[0] == 2 and batch["targets"].shape == batch["input_ids"].shape
