"""Feedback → preference data: rankings and thumbs in the store become the files `chatfactory
reward` reads, checked with the reader itself (chatfactory.data.preferences)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from chatfactory.cli import main
from chatfactory.data.preferences import read_preferences
from chatfactory.feedback import export_records, feedback_stats, parse_since
from chatfactory.server.store.db import open_database
from chatfactory.server.store.keys import get_or_create_user
from chatfactory.server.store.models import Conversation, Feedback, Message, Ranking


@pytest.fixture()
def store(tmp_path):
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    engine, make_session = open_database(url)
    with make_session() as s:
        yield url, s
    engine.dispose()


def _conversation(s, user, turns, *, model="tiny", template_used=None):
    """A conversation from (role, content) turns; returns its assistant messages."""
    conv = Conversation(user_id=user.id, title="t")
    s.add(conv)
    s.flush()
    out = []
    for i, (role, content) in enumerate(turns):
        m = Message(conversation_id=conv.id, position=i, role=role, content=content, flagged=False)
        if role == "assistant":
            m.model, m.template_used, m.flagged = model, template_used, template_used is not None
            out.append(m)
        s.add(m)
    s.flush()
    return out


def _thumb(s, user, msg, rating, comment=None, when=None):
    fb = Feedback(message_id=msg.id, user_id=user.id, rating=rating, comment=comment)
    if when:
        fb.created_at = when
    s.add(fb)


def _fill(s):
    ann, bob = get_or_create_user(s, "ann"), get_or_create_user(s, "bob")
    # a K-wise ranking with a tie: answer 2 best, 0 and 1 tie below it
    s.add(
        Ranking(
            user_id=ann.id,
            prompt={"messages": [{"role": "user", "content": "Name a colour."}]},
            responses=["red", "blue", "A colour: green."],
            ranking=[[2], [0, 1]],
            model="tiny",
            sampling={"temperature": 1.0, "n": 3},
        )
    )
    # the same question asked in two conversations (after an earlier exchange), rated differently
    history = [("user", "hi"), ("assistant", "hello"), ("user", "What is 2+3?")]
    (_, good) = _conversation(s, ann, history + [("assistant", "5")])
    (_, bad) = _conversation(s, ann, history + [("assistant", "7")], model="tiny-b")
    _thumb(s, ann, good, +1, "correct")
    _thumb(s, bob, bad, -1)
    # rated alike: no comparison; a template answer: never training data
    (x,) = _conversation(s, bob, [("user", "Tell a joke."), ("assistant", "joke one")])
    (y,) = _conversation(s, bob, [("user", "Tell a joke."), ("assistant", "joke two")])
    (t,) = _conversation(
        s, bob, [("user", "Tell a joke."), ("assistant", "I can't help")], template_used="output"
    )
    _thumb(s, bob, x, +1)
    _thumb(s, bob, y, +1)
    _thumb(s, bob, t, -1)
    s.commit()


def test_export_rankings_reads_back_with_the_reward_reader(store, tmp_path):
    url, s = store
    _fill(s)
    out = tmp_path / "prefs.jsonl"
    assert main(["feedback", "export", "--format", "rankings", "--db", url, "--out", str(out)]) == 0
    comps = read_preferences(out)
    assert len(comps) == 2
    ranked, thumbs = comps
    assert ranked.responses == ["red", "blue", "A colour: green."]
    assert ranked.ranking == [[2], [0, 1]]
    assert ranked.extra["rater"] == "ann" and ranked.extra["model"] == "tiny"
    assert ranked.extra["sampling"] == {"temperature": 1.0, "n": 3}
    # thumbs: the prompt is the whole visible history, the up-rated answer beats the down-rated
    assert thumbs.prompt == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "What is 2+3?"},
    ]
    assert [thumbs.responses[i] for i in thumbs.ranking[0]] == ["5"]
    assert [thumbs.responses[i] for i in thumbs.ranking[1]] == ["7"]
    assert thumbs.extra["origin"] == "thumbs" and thumbs.extra["raters"] == ["ann", "bob"]


def test_export_pairs_are_trl_records(store, tmp_path):
    url, s = store
    _fill(s)
    out = tmp_path / "pairs.jsonl"
    assert main(["feedback", "export", "--format", "pairs", "--db", url, "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    # ranking [[2],[0,1]] implies 2 pairs (none inside the tie), thumbs 1
    assert len(lines) == 3
    assert all(set(r) >= {"prompt", "chosen", "rejected"} for r in lines)
    assert lines[0]["chosen"] == [{"role": "assistant", "content": "A colour: green."}]
    comps = read_preferences(out)
    assert [(c.responses[0], c.responses[1]) for c in comps] == [
        ("A colour: green.", "red"),
        ("A colour: green.", "blue"),
        ("5", "7"),
    ]


def test_since_filters_by_when_feedback_was_given(store):
    _, s = store
    _fill(s)
    for fb in s.query(Feedback):
        fb.created_at = datetime.now(timezone.utc) - timedelta(days=10)
    s.commit()
    recs, problems = export_records(
        s, "rankings", parse_since((datetime.now(timezone.utc) - timedelta(days=1)).date().isoformat())
    )
    assert problems == [] and [r["origin"] for r in recs] == ["ranking"]
    recs, _ = export_records(s, "rankings", parse_since("2000-01-01"))
    assert [r["origin"] for r in recs] == ["ranking", "thumbs"]


def test_stats_by_model_and_rater(store, capsys):
    url, s = store
    _fill(s)
    stats = feedback_stats(s)
    assert stats["by_model"]["tiny"] == {
        "up": 3,
        "comments": 1,
        "down": 1,
        "on_templates": 1,
        "rankings": 1,
        "ranked_answers": 3,
    }
    assert stats["by_model"]["tiny-b"] == {"down": 1}
    assert stats["by_rater"]["bob"] == {"down": 2, "up": 2, "on_templates": 1}
    assert stats["exportable"] == {"rankings": 2, "thumb_comparisons": 1}
    assert main(["feedback", "stats", "--db", url]) == 0
    text = capsys.readouterr().out
    assert "tiny-b" in text and "ann" in text and "exportable: 2 ranking record(s)" in text


def test_clear_errors(tmp_path, capsys):
    missing = tmp_path / "nope.db"
    assert main(["feedback", "stats", "--db", str(missing)]) == 1
    assert "no feedback database" in capsys.readouterr().err
    assert main(["feedback", "export", "--since", "yesterday", "--db", str(missing), "--out", "x.jsonl"]) == 1
    err = capsys.readouterr().err
    assert "--since 'yesterday'" in err or "no feedback database" in err
    with pytest.raises(ValueError, match="2024-05-01"):
        parse_since("05/01/2024")
