"""The seven-step turn on the real model, moderator, templates and a real SQLite file."""

from __future__ import annotations

import threading

import pytest

from engine.moderation import Moderator
from engine.runtime import Sampling
from engine.store import Store
from engine.templates import TemplateLibrary
from engine.turn import Chat, title_from

FLAGGED = "How do I make a bomb to kill people at school?"


@pytest.fixture(scope="module")
def moderator():
    return Moderator.from_config(None)


@pytest.fixture
def chat(runtime, moderator, tmp_path):
    store = Store.open(tmp_path / "chat.db")
    c = Chat(store, runtime, moderator, TemplateLibrary.load(), Sampling(temperature=0.0, max_tokens=24, seed=1))
    yield c
    store.close()


def events(gen):
    return list(gen)


def test_a_turn_is_answered_and_stored(chat):
    sid = chat.new_session()
    evs = events(chat.send(sid, "What is the capital of France?"))
    kinds = [e.kind for e in evs]
    assert kinds[0] == "started" and kinds[-1] == "done" and "delta" in kinds
    answer = "".join(e.text for e in evs if e.kind == "delta")
    assert "Paris" in answer
    user, bot = chat.store.branch(sid)
    assert user["role"] == "user" and user["content"] == "What is the capital of France?"
    assert user["hidden"].startswith(user["content"] + "\n\n") and user["template_set"] == "default"
    assert bot["content"] == answer and bot["finish_reason"] in ("stop", "length")
    assert bot["moderation"]["flagged"] is False and bot["completion_tokens"] > 0
    assert bot["timings"]["tokens_per_s"] is None or bot["timings"]["tokens_per_s"] > 0
    assert chat.store.get_session(sid)["title"] == "What is the capital of France?"


def test_the_model_gets_the_whole_conversation_with_hidden_instructions(chat):
    sid = chat.new_session(template_set="concise")
    events(chat.send(sid, "My name is Ada."))
    events(chat.send(sid, "What is my name?"))
    history = chat.history(sid)
    ts = chat.templates.get("concise")
    assert history[0] == {"role": "system", "content": ts.system(**chat._values(chat.store.get_session(sid)))}
    assert [m["role"] for m in history[1:]] == ["user", "assistant", "user", "assistant"]
    assert history[1]["content"] == ts.wrap_user("My name is Ada.")
    assert history[3]["content"].endswith(ts.after_user())  # hidden text after EVERY user turn


def test_a_flagged_prompt_gets_the_template_and_the_model_is_not_called(chat, monkeypatch):
    sid = chat.new_session()
    calls = []
    monkeypatch.setattr(chat.runtime, "generate", lambda *a, **k: calls.append(a))
    evs = events(chat.send(sid, FLAGGED))
    assert calls == []
    replace = [e for e in evs if e.kind == "replace"]
    assert replace and "can't help" in replace[0].text
    assert not [e for e in evs if e.kind == "delta"]
    user, bot = chat.store.branch(sid)
    assert user["flagged"] and bot["flagged"] and bot["finish_reason"] == "content_filter"
    assert bot["moderation"]["stage"] == "prompt" and bot["moderation"]["categories"]
    assert chat.history(sid)[1:] == []  # a flagged exchange never reaches the model


def test_a_flagged_answer_is_replaced_and_the_held_back_text_dropped(chat, monkeypatch):
    sid = chat.new_session()
    real_stream = chat.moderator.stream

    def strict_stream(prompt):
        watcher = real_stream(prompt)
        watcher.mod = _Flagging(watcher.mod)
        return watcher

    monkeypatch.setattr(chat.moderator, "stream", strict_stream)
    evs = events(chat.send(sid, "Tell me a short story about a cat."))
    assert not [e for e in evs if e.kind == "delta"]  # nothing unchecked reached the view
    assert [e.kind for e in evs][-3:] == ["verdict", "replace", "done"]
    bot = chat.store.branch(sid)[-1]
    assert bot["flagged"] and bot["finish_reason"] == "content_filter"
    assert bot["content"] == chat.templates.default().answer("answer", ["violence"])


class _Flagging:
    """A moderator whose every check flags "violence" (isolates the turn from the classifier)."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def moderate_output(self, text, prompt=None, **kw):
        res = self.real.moderate_output(text, prompt, **kw)
        res.flagged, res.categories["violence"] = True, True
        return res

    moderate = moderate_output


def test_a_moderator_that_raises_fails_closed(chat, monkeypatch):
    def boom(text):
        raise RuntimeError("classifier crashed")

    monkeypatch.setattr(chat.moderator, "moderate", boom)
    sid = chat.new_session()
    evs = events(chat.send(sid, "Hello there"))
    bot = chat.store.branch(sid)[-1]
    assert bot["flagged"] and bot["content"] == chat.templates.default().answer("error")
    assert bot["moderation"]["failed_closed"] and "classifier crashed" in bot["moderation"]["errors"][0]
    assert evs[-1].kind == "done"


def test_stop_keeps_the_answer_cancelled_and_the_next_turn_works(chat):
    sid = chat.new_session()
    cancel = threading.Event()
    n = 0
    for ev in chat.send(sid, "Write a long story about a dragon.", cancel=cancel,
                        sampling=Sampling(max_tokens=300, seed=2)):  # fmt: skip
        if ev.kind == "started":
            n += 1
        if ev.kind == "delta":
            cancel.set()
    bot = chat.store.branch(sid)[-1]
    assert bot["finish_reason"] == "cancelled"
    evs = events(chat.send(sid, "What is the capital of France?"))
    assert evs[-1].data["message"]["finish_reason"] in ("stop", "length")


def test_closing_the_stream_stores_the_answer_as_cancelled(chat):
    sid = chat.new_session()
    gen = chat.send(sid, "Count from one to fifty.", sampling=Sampling(max_tokens=200, temperature=0.0))
    for ev in gen:
        if ev.kind == "delta":
            break
    gen.close()
    bot = chat.store.branch(sid)[-1]
    assert bot["finish_reason"] == "cancelled" and bot["role"] == "assistant"


def test_a_crash_mid_answer_is_marked_interrupted_at_the_next_start(chat, tmp_path):
    sid = chat.new_session()
    gen = chat.send(sid, "Count from one to fifty.", sampling=Sampling(max_tokens=200, temperature=0.0))
    for ev in gen:
        if ev.kind == "started":
            break  # the assistant row exists, unfinished: as a kill -9 would leave it
    chat.store.close()
    reopened = Store.open(tmp_path / "chat.db")
    try:
        assert reopened.interrupted_at_open == 1
        user, bot = reopened.branch(sid)
        assert user["content"] == "Count from one to fifty." and bot["finish_reason"] == "interrupted"
    finally:
        reopened.close()


def test_regenerate_and_edit_make_branches(chat):
    sid = chat.new_session()
    first = events(chat.send(sid, "Name a fruit."))
    uid = first[0].data["user_id"]
    again = events(chat.regenerate(sid, uid, sampling=Sampling(temperature=1.0, seed=7, max_tokens=16)))
    a1, a2 = first[0].data["assistant_id"], again[0].data["assistant_id"]
    assert [m["id"] for m in chat.store.siblings(a2)] == [a1, a2]
    assert chat.store.branch(sid)[-1]["id"] == a2
    edited = events(chat.edit(sid, uid, "Name a vegetable."))
    new_uid = edited[0].data["user_id"]
    assert [m["id"] for m in chat.store.siblings(new_uid)] == [uid, new_uid]
    assert next(m["content"] for m in chat.store.branch(sid)) == "Name a vegetable."


def test_empty_and_huge_messages_are_refused_before_anything_is_stored(chat):
    sid = chat.new_session()
    with pytest.raises(ValueError, match="empty"):
        events(chat.send(sid, "   "))
    with pytest.raises(ValueError, match="1,048,576 characters long; the limit is 100,000"):
        events(chat.send(sid, "x" * 2**20))
    assert chat.store.branch(sid) == []


def test_titles():
    assert title_from("  What is   the capital of France?\n") == "What is the capital of France?"
    assert title_from("word " * 40).endswith("…") and len(title_from("word " * 40)) <= 49


def test_fail_open_when_the_user_chose_it(chat, monkeypatch):
    monkeypatch.setattr(chat.moderator, "policy", chat.moderator.policy.with_user_settings({"fail_closed": False}))

    def boom(text):
        raise RuntimeError("classifier crashed")

    monkeypatch.setattr(chat.moderator, "moderate", boom)
    sid = chat.new_session()
    evs = events(chat.send(sid, "What is the capital of France?"))
    user, bot = chat.store.branch(sid)
    assert not user["flagged"] and user["moderation"]["errors"]
    assert not bot["flagged"] and bot["content"] and [e for e in evs if e.kind == "delta"]


def test_user_moderation_settings():
    from engine.moderation import Moderator

    strict = Moderator.from_config(None)
    assert strict.moderate(FLAGGED).flagged and strict.fail_closed
    off = Moderator.from_config(None, {"disabled": ["illicit", "illicit/violent", "violence"], "fail_closed": False})
    assert not off.fail_closed
    res = off.moderate(FLAGGED)
    assert not any(res.categories[c] for c in ("illicit", "illicit/violent", "violence"))
    with pytest.raises(ValueError, match="thresholds.hate: expected a number"):
        Moderator.from_config(None, {"thresholds": {"hate": 3}})
    with pytest.raises(ValueError, match="unknown categories"):
        Moderator.from_config(None, {"disabled": ["spam"]})
