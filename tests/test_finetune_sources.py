"""Fine-tuning data sources: the user's chats (real SQLite stores in tmp_path) and data files in
every accepted format, with the per-line problems named as FILE:LINE."""

from __future__ import annotations

import gzip
import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from engine.finetune.sources import (
    MAX_LISTED,
    DataError,
    Dataset,
    chats_options,
    from_store,
    read_source,
    validate_file,
)
from engine.store import Store


@pytest.fixture
def store(tmp_path: Path):
    s = Store.open(tmp_path / "chats.db")
    yield s
    s.close()


def set_times(store: Store, sid: int, created: float, updated: float) -> None:
    with store.transaction() as conn:
        conn.execute("UPDATE sessions SET created = ?, updated = ? WHERE id = ?", (created, updated, sid))


def ts(day: str) -> float:
    return datetime.fromisoformat(day).timestamp()


def build_chats(store: Store) -> dict:
    """Three sessions covering every kind of signal; returns their ids."""
    ids: dict = {}
    # A: a system prompt, one question with four answers, a follow-up with two unusable answers
    a = ids["A"] = store.create_session("maths", template_set="concise")
    store.add_message(a, "system", "Be brief.")
    u1 = ids["u1"] = store.add_message(a, "user", "2+2?", hidden="<tpl>answer with a number</tpl>")
    a1 = ids["a1"] = store.add_message(a, "assistant", "5", finish_reason="stop", model="m")
    a2 = ids["a2"] = store.add_message(a, "assistant", "4", parent_id=u1, finish_reason="stop")
    store.set_feedback(a1, -1)
    store.set_feedback(a2, 1)
    store.set_feedback(a1, 1, rater="labeller")  # only the user's thumbs count
    e1 = ids["e1"] = store.edit_answer(a1, "It is 4.")
    f1 = ids["f1"] = store.add_message(a, "assistant", "bad words", parent_id=u1, flagged=True,
                                       finish_reason="content_filter")  # fmt: skip
    store.add_ranking(u1, [e1, a2, f1, a1])  # the flagged one drops out
    store.select_branch(a, a2)
    u2 = ids["u2"] = store.add_message(a, "user", "and 3+3?")
    i1 = ids["i1"] = store.add_message(a, "assistant", "6 and then som", finish_reason="interrupted")
    store.set_feedback(i1, 1)
    s1 = ids["s1"] = store.add_message(a, "assistant", "", parent_id=u2)  # still streaming
    store.set_feedback(s1, 1)
    # B: a plain chat, thumbed up; a second question whose two answers are ranked, one thumbed down
    b = ids["B"] = store.create_session("greeting")
    store.add_message(b, "user", "hi")
    b1 = ids["b1"] = store.add_message(b, "assistant", "Hello! How can I help?", finish_reason="stop")
    store.set_feedback(b1, 1)
    # C: the user's own message was flagged: nothing under it is used
    c = ids["C"] = store.create_session("flagged")
    cu = ids["cu"] = store.add_message(c, "user", "something nasty", flagged=True)
    c1 = ids["c1"] = store.add_message(c, "assistant", "I can't help with that.", finish_reason="stop")
    c2 = store.add_message(c, "assistant", "Sure...", parent_id=cu, finish_reason="stop")
    store.set_feedback(c1, 1)
    store.add_ranking(cu, [c1, c2])
    set_times(store, a, ts("2026-01-05"), ts("2026-01-10"))
    set_times(store, b, ts("2026-02-03"), ts("2026-02-04"))
    set_times(store, c, ts("2025-12-01"), ts("2025-12-02"))
    return ids


def by_from(ds: Dataset) -> dict:
    return {c.extra["from"]: c for c in ds.comparisons}


def test_demonstrations_from_thumbs_and_edits(store: Store):
    ids = build_chats(store)
    ds = from_store(store)
    got = {c.source: c for c in ds.conversations}
    assert set(got) == {f"chats:session {ids['A']} message {ids[k]}" for k in ("a2", "e1")} | {
        f"chats:session {ids['B']} message {ids['b1']}"
    }
    a2 = got[f"chats:session {ids['A']} message {ids['a2']}"]
    assert a2.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},  # visible text only, never `hidden`
        {"role": "assistant", "content": "4"},
    ]
    assert a2.train_from == 2  # only the endorsed answer is trained; the turns before are context
    e1 = got[f"chats:session {ids['A']} message {ids['e1']}"]
    assert e1.messages[-1] == {"role": "assistant", "content": "It is 4."}
    rep = ds.report["chats"]
    assert (rep["sessions"], rep["conversations"], rep["comparisons"]) == (3, 3, 3)
    assert rep["reasons"]["interrupted"] >= 1 and rep["reasons"]["unfinished"] >= 1
    assert rep["reasons"]["flagged"] >= 2
    problems = "\n".join(rep["problems"])
    assert f"chats:session {ids['A']} message {ids['i1']}: interrupted" in problems
    assert f"chats:session {ids['C']} message {ids['c1']}: message {ids['cu']} before it is flagged" in problems


def test_three_kinds_of_preferences(store: Store):
    ids = build_chats(store)
    ds = from_store(store)
    comps = by_from(ds)
    assert set(comps) == {"ranking", "edit", "thumbs"}
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    r = comps["ranking"]
    assert r.prompt == prompt
    assert r.responses == ["It is 4.", "4", "5"]  # the flagged answer left out, the order kept
    assert r.ranking == [[0], [1], [2]]
    assert r.extra["session"] == ids["A"] and r.extra["message"] == ids["u1"]
    assert r.extra["answers"] == [ids["e1"], ids["a2"], ids["a1"]]
    assert r.where == f"chats:session {ids['A']} message {ids['u1']}"
    # the edit beats the answer it replaced; the thumbed-up sibling is not "replaced"
    e = comps["edit"]
    assert (e.prompt, e.responses, e.ranking) == (prompt, ["It is 4.", "5"], [[0], [1]])
    t = comps["thumbs"]
    assert (t.prompt, t.responses, t.ranking) == (prompt, ["4", "5"], [[0], [1]])
    assert ds.report["chats"]["comparison_sources"] == {"ranking": 1, "edit": 1, "thumbs": 1}
    # the flagged session's ranking is skipped with its reason
    assert any(f"session {ids['C']}" in p and "ranking" in p for p in ds.report["chats"]["problems"])


def test_identical_comparisons_are_kept_once(store: Store):
    sid = store.create_session("dup")
    u = store.add_message(sid, "user", "q")
    good = store.add_message(sid, "assistant", "good", finish_reason="stop")
    bad = store.add_message(sid, "assistant", "bad", parent_id=u, finish_reason="stop")
    store.set_feedback(good, 1)
    store.set_feedback(bad, -1)
    store.add_ranking(u, [good, bad])  # says the same as the thumbs
    store.add_ranking(u, [good, bad])
    ds = from_store(store)
    assert len(ds.comparisons) == 1 and ds.comparisons[0].responses == ["good", "bad"]


def test_edit_ties_the_answers_it_replaced(store: Store):
    sid = store.create_session("ties")
    u = store.add_message(sid, "user", "Capital of France?")
    x = store.add_message(sid, "assistant", "Lyon", finish_reason="stop")
    store.add_message(sid, "assistant", "Marseille", parent_id=u, finish_reason="length")
    store.add_message(sid, "assistant", "Paris", parent_id=u, finish_reason="stop")
    e = store.edit_answer(x, "Paris")  # the same text as an earlier answer: not compared with it
    later = store.add_message(sid, "assistant", "Nice", parent_id=u, finish_reason="stop")  # after the edit
    ds = from_store(store)
    (c,) = ds.comparisons
    assert c.responses == ["Paris", "Lyon", "Marseille"] and c.ranking == [[0], [1, 2]]
    assert c.pairs() == [(0, 1), (0, 2)]
    assert later not in c.extra["answers"] and c.extra["answers"][0] == e


def test_filters(store: Store):
    ids = build_chats(store)
    only = lambda **kw: {c.source.split(" message")[0] for c in from_store(store, **kw).conversations}
    assert only(template_set="concise") == {f"chats:session {ids['A']}"}
    assert only(session_ids=[ids["B"]]) == {f"chats:session {ids['B']}"}
    assert only(since=ts("2026-02-01")) == {f"chats:session {ids['B']}"}
    assert only(until=ts("2026-02-01")) == {f"chats:session {ids['A']}"}
    # a session counts when it was active in the window: created before until, updated after since
    assert only(since=ts("2026-01-08"), until=ts("2026-01-09")) == {f"chats:session {ids['A']}"}
    assert only(since=ts("2026-03-01")) == set()
    ds = from_store(store, template_set="nope")
    assert ds.conversations == [] and ds.comparisons == [] and ds.report["chats"]["sessions"] == 0
    with pytest.raises(ValueError, match="chats: no session with id 999"):
        from_store(store, session_ids=[999])
    # archived sessions still count
    store.update_session(ids["B"], archived=True)
    assert only(session_ids=[ids["B"]]) == {f"chats:session {ids['B']}"}
    assert f"chats:session {ids['B']}" in only()


def test_chats_spec(store: Store):
    ids = build_chats(store)
    ds = read_source(f"chats:since=2026-01-01,until=2026-02-01,session={ids['A']}+{ids['B']},template=concise", store=store)
    assert {c.extra["session"] for c in ds.comparisons} == {ids["A"]}
    assert list(ds.report) == [
        f"chats:since=2026-01-01,until=2026-02-01,session={ids['A']}+{ids['B']},template=concise"
    ]
    assert len(read_source("chats", store=store).conversations) == 3
    assert chats_options("") == {}
    assert chats_options(" session = 3 + 5 , template=x") == {"session_ids": [3, 5], "template_set": "x"}
    assert chats_options("since=2026-01-01T10:00+00:00")["since"] == ts("2026-01-01T10:00+00:00")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("chats:after=2026-01-01", "chats: unknown option 'after' (known: since, until, session, template)"),
        ("chats:since=2026-13-01", "chats: since='2026-13-01' is not an ISO date"),
        ("chats:until=yesterday", "chats: until='yesterday' is not an ISO date"),
        ("chats:session=3+x", "chats: session='3+x' must be session ids joined by '+'"),
        ("chats:since=2026-02-01,until=2026-01-01", "'since' must be before 'until'"),
        ("chats:template", "chats: option 'template' needs a value"),
        ("chats:template=a,template=b", "given twice"),
    ],
)
def test_chats_spec_errors(store: Store, spec: str, message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        read_source(spec, store=store)


def test_chats_spec_needs_the_store():
    with pytest.raises(ValueError, match="needs the conversation store"):
        read_source("chats")


# ---- files ------------------------------------------------------------------------------------
def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}
OPENAI = [{"messages": [{"role": "system", "content": "Be nice."}, U, A]}, {"messages": [U, A, U, A]}]


def test_openai_jsonl(tmp_path: Path):
    path = write_jsonl(tmp_path / "sft.jsonl", [*OPENAI, {"prompt": "2+2?", "completion": "4"}])
    ds = read_source(str(path))
    assert [len(c.messages) for c in ds.conversations] == [3, 4, 2]
    assert ds.conversations[2].train_from == 1
    assert ds.conversations[0].source == f"{path}:1"
    assert ds.comparisons == []
    rep = ds.report[str(path)]
    assert (rep["format"], rep["detected"], rep["records"], rep["conversations"], rep["skipped"]) == (
        "openai", True, 3, 3, 0,
    )  # fmt: skip


def test_trl_and_kwise_preferences(tmp_path: Path):
    rows = [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "go away"}]},
        {"chosen": [U, A], "rejected": [U, {"role": "assistant", "content": "no"}]},
        {"messages": [U], "responses": ["a", "b", "c"], "ranking": [0, [2, 1]], "task": "t"},
    ]
    ds = validate_file(write_jsonl(tmp_path / "prefs.jsonl", rows))
    assert ds.report[str(tmp_path / "prefs.jsonl")]["format"] == "prefs"
    assert [c.responses for c in ds.comparisons] == [["4", "5"], ["hello", "go away"], ["hello", "no"], ["a", "b", "c"]]
    assert ds.comparisons[3].ranking == [[0], [2, 1]] and ds.comparisons[3].extra == {"task": "t"}
    assert ds.conversations == []


def test_hh_rlhf(tmp_path: Path):
    base = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant:"
    path = write_jsonl(tmp_path / "hh.jsonl.gz", [{"chosen": base + " 4", "rejected": base + " Fish."}] * 2, gz=True)
    ds = read_source(str(path))
    assert ds.report[str(path)]["format"] == "hh"
    c = ds.comparisons[0]
    assert [m["role"] for m in c.prompt] == ["user", "assistant", "user"] and c.responses == ["4", "Fish."]
    assert len(ds.comparisons) == 2


def _oasst(mid, parent, role, text, rank=None, **kw):
    return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "rank": rank, **kw}


OASST_FLAT = [
    _oasst("r", None, "prompter", "Hi?"),
    _oasst("a1", "r", "assistant", "Second best", rank=1),
    _oasst("a0", "r", "assistant", "Best", rank=0),
    _oasst("p2", "a0", "prompter", "More?"),
    _oasst("b0", "p2", "assistant", "Yes, more."),
    _oasst("x", "r", "assistant", "deleted", rank=2, deleted=True),
]


def test_oasst_flat_and_nested(tmp_path: Path):
    flat = write_jsonl(tmp_path / "oasst.jsonl", [*OASST_FLAT, _oasst("bad", "r", "robot", "?")])
    ds = read_source(str(flat))
    assert [[m["content"] for m in c.messages] for c in ds.conversations] == [["Hi?", "Best", "More?", "Yes, more."]]
    rep = ds.report[str(flat)]
    assert rep["format"] == "oasst"
    assert rep["problems"] == [f"{flat}:7: message bad: role must be 'prompter' or 'assistant', got 'robot'"]
    tree = {
        "message_tree_id": "t1",
        "prompt": {"message_id": "r", "role": "prompter", "text": "Hi?", "replies": [
            {"message_id": "a", "role": "assistant", "text": "Hello", "rank": 0, "replies": []},
        ]},
    }  # fmt: skip
    nested = write_jsonl(tmp_path / "trees.jsonl", [tree])
    assert [c.messages[-1]["content"] for c in read_source(str(nested)).conversations] == ["Hello"]
    # an explicit prefix skips detection
    assert len(read_source(f"oasst:{flat}").conversations) == 1


def test_json_list_file(tmp_path: Path):
    path = tmp_path / "sft.json"
    path.write_text(json.dumps([*OPENAI, {"messages": [U]}]))
    ds = read_source(str(path))
    assert len(ds.conversations) == 2
    assert ds.report[str(path)]["problems"] == [f"{path}: record 2: no assistant turn to train on"]


def test_explicit_prefixes(tmp_path: Path):
    prefs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}] * 2)
    assert len(read_source(f"prefs:{prefs}").comparisons) == 2
    with pytest.raises(DataError, match="not an HH-RLHF record"):
        read_source(f"hh:{prefs}")
    with pytest.raises(DataError, match='expected a "messages" list'):
        read_source(f"openai:{prefs}")
    with pytest.raises(ValueError, match="no file after 'prefs:'"):
        read_source("prefs:")


def test_bad_lines_are_named_and_the_good_ones_kept(tmp_path: Path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps(OPENAI[0]).encode(),
        b'{"messages": [',
        '{"messages": [{"role": "user", "content": "caf\u00e9"}]}'.encode("latin-1"),  # not UTF-8
        json.dumps({"messages": [{"role": "robot", "content": "x"}, A]}).encode(),
        json.dumps({"messages": [U, {"role": "assistant", "content": "  "}]}).encode(),
        json.dumps({"messages": [U]}).encode(),
        b"",
        json.dumps({"messages": [U, A, {"role": "system", "content": "late"}, U, A]}).encode(),
        json.dumps(OPENAI[1]).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    ds = validate_file(path)
    assert [c.source for c in ds.conversations] == [f"{path}:1", f"{path}:9"]
    rep = ds.report[str(path)]
    assert rep["records"] == 8 and rep["skipped"] == 6
    assert rep["problems"] == [
        f"{path}:2: not valid JSON (Expecting value at column 15)",
        f"{path}:3: not valid UTF-8 (0xe9 at byte 47; save the file as UTF-8)",
        f'{path}:4: "messages"[0]: unknown role \'robot\' (expected one of system, user, assistant)',
        f'{path}:5: "messages"[1]: empty content',
        f"{path}:6: no assistant turn to train on",
        f"{path}:8: message 2: a system message may only come first",
    ]
    assert rep["reasons"] == {
        "invalid JSON": 1, "invalid UTF-8": 1, "unknown role": 1, "empty content": 1,
        "no assistant turn": 1, "misplaced system": 1,
    }  # fmt: skip
    assert ds.problems == rep["problems"] and ds.skipped == 6
    assert "2 demonstrations, 0 comparisons; skipped 6" in ds.summary()


def test_bad_preference_lines(tmp_path: Path):
    rows = [
        {"prompt": "q", "responses": ["a", "b", "c"], "ranking": [0, 1]},
        {"prompt": "q", "responses": ["a", "b"]},
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "chosen": "", "rejected": "x"},
        {"prompt": "q", "responses": ["a", "b"], "ranking": [[0, 1]]},
        {"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
    ]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    ds = validate_file(path)
    assert len(ds.comparisons) == 1 and ds.comparisons[0].where == f"{path}:7"
    p = ds.report[str(path)]["problems"]
    assert p[0].startswith(f"{path}:1: 'ranking' [0, 1] must name each of the 3 responses")
    assert p[1].startswith(f"{path}:2: no 'ranking'")
    assert p[2] == f"{path}:3: chosen and rejected are the same text but ranked apart"
    assert p[3] == f"{path}:4: chosen is empty"
    assert p[4] == f"{path}:5: the ranking orders nothing (a single response, or all tied)"
    assert p[5] == f"{path}:6: 'prompt' must end with a user message (the answers reply to it)"


def test_missing_empty_and_unknown_files(tmp_path: Path):
    with pytest.raises(DataError, match=f"^{tmp_path / 'nope.jsonl'}: no such file$"):
        read_source(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="no such file"):
        read_source(f"prefs:{tmp_path / 'nope.jsonl'}")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no records"):
        validate_file(tmp_path / "empty.jsonl")
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match=rf"{odd}:1: not a format I know \(fields \['text'\]\).*openai:, prefs:"):
        validate_file(odd)
    with pytest.raises(DataError, match="a folder"):
        validate_file(tmp_path)
    with pytest.raises(ValueError, match="kind must be one of"):
        validate_file(odd, kind="csv")


def test_a_file_of_only_bad_lines_raises_with_the_lines(tmp_path: Path):
    path = write_jsonl(tmp_path / "bad.jsonl", ["not json"] * 3 + [json.dumps({"messages": [U]})] * 12)
    with pytest.raises(DataError) as info:
        validate_file(path)
    e = info.value
    text = str(e).splitlines()
    assert text[0] == f"{path}: no usable records (all 15 are invalid):"
    assert text[1] == f"  {path}:1: not valid JSON (Expecting value at column 1)"
    assert text[4] == f"  {path}:4: no assistant turn to train on"
    assert len(text) == 1 + MAX_LISTED + 1 and text[-1] == "  and 5 more"
    assert len(e.problems) == 15
    # every line undecodable: the same error, before any format could be told
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"\xff\xfe\n{oops\n")
    with pytest.raises(DataError, match=rf"(?s)all 2 are invalid.*{junk}:1: not valid UTF-8.*{junk}:2: not valid JSON"):
        read_source(str(junk))


def test_data_error_message():
    e = DataError([f"f:{i}: bad" for i in range(1, 13)])
    assert str(e).splitlines() == [f"f:{i}: bad" for i in range(1, 11)] + ["and 2 more"]
    assert isinstance(e, ValueError)
    assert str(DataError(["f: no such file"])) == "f: no such file"


def test_builtin_and_merge(store: Store, tmp_path: Path):
    b = read_source("builtin:identity")
    assert b.conversations and b.comparisons == []
    assert b.conversations[0].messages[-1]["role"] == "assistant"
    assert b.report["builtin:identity"]["conversations"] == len(b.conversations)
    with pytest.raises(ValueError, match="unknown task"):
        read_source("builtin:nope")
    build_chats(store)
    path = write_jsonl(tmp_path / "sft.jsonl", OPENAI)
    ds = b + read_source("chats", store=store) + read_source(str(path)) + read_source(str(path))
    assert len(ds.conversations) == len(b.conversations) + 3 + 2 + 2
    assert len(ds.comparisons) == 3
    assert list(ds.report) == ["builtin:identity", "chats", str(path), f"{path} #2"]
    assert json.loads(json.dumps(ds.report)) == ds.report  # the job writes it as report.json
    assert Dataset().merge(ds, b).conversations[-1] is b.conversations[-1]
    with pytest.raises(ValueError, match="must be 'chats', 'builtin' or a file path"):
        read_source("")


def test_byte_order_mark_broken_gzip_and_broken_json_list(tmp_path: Path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(OPENAI[0]).encode() + b"\r\n")  # as Windows editors save it
    assert len(validate_file(bom).conversations) == 1
    gz = tmp_path / "cut.jsonl.gz"
    gz.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in OPENAI))[:-12])
    with pytest.raises(DataError, match=f"{gz}: cannot be read"):
        validate_file(gz)
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"messages": []},\n{oops}\n]')
    with pytest.raises(DataError, match=rf"^{broken}:3: not valid JSON"):
        validate_file(broken)
    not_list = tmp_path / "one.json"
    not_list.write_text(json.dumps(OPENAI[0]))
    with pytest.raises(DataError, match="must hold a list of records, not a dict"):
        validate_file(not_list)
