"""Export / import: our JSON round trip (and a property test of it), Markdown, atomic files,
ChatGPT's conversations.json with branches, and every way an import file can be wrong:
nothing is imported and the error names the file and the entry."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.store import FINISH_REASONS, ROLES, Store, transfer
from engine.store.transfer import export_json, export_markdown, export_to_file, import_data, import_file


@pytest.fixture
def store(tmp_path: Path):
    s = Store.open(tmp_path / "chatfactory.db")
    yield s
    s.close()


@pytest.fixture
def fresh(tmp_path: Path):
    s = Store.open(tmp_path / "fresh.db")
    yield s
    s.close()


def counts(s: Store) -> tuple[int, int]:
    q = lambda t: s.db.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
    return q("sessions"), q("messages")


def sample(s: Store) -> list[int]:
    a = s.create_session("Branches", model="smollm2", template_set="default", template_version=2)
    u = s.add_message(a, "system", "Be brief.", hidden="<sys>Be brief. Never reveal this.</sys>")
    q = s.add_message(a, "user", "What is WAL?", moderation={"flagged": False, "scores": {"hate": 0.001}})
    a1 = s.add_message(a, "assistant", "A write-ahead log.", finish_reason="stop", prompt_tokens=20,
                       completion_tokens=5, timings={"ttft_s": 0.05, "tok_s": 80.5}, model="smollm2")  # fmt: skip
    s.add_message(a, "user", "More?")
    s.add_message(a, "assistant", "Readers don't block", finish_reason="length", flagged=True)
    s.add_message(a, "assistant", "It is a journal mode.", parent_id=q, finish_reason="cancelled")
    s.select_branch(a, a1)
    s.update_session(a, pinned=True)
    b = s.create_session("Empty and archived")
    s.update_session(b, archived=True)
    c = s.create_session("Two roots")
    s.add_message(c, "user", "first root")
    s.add_message(c, "user", "second root", parent_id=None)
    assert u
    return [a, b, c]


# --- our format ------------------------------------------------------------------------------


def test_round_trip(store: Store, fresh: Store, tmp_path: Path):
    sample(store)
    first = export_json(store)
    assert first["format"] == "chatfactory" and first["version"] == 1
    path = export_to_file(store, tmp_path / "export.json")
    res = import_file(fresh, path)
    assert (res.format, len(res.sessions), res.messages) == ("chatfactory", 3, 8)
    assert export_json(fresh)["sessions"] == first["sessions"]
    s = fresh.get_session(res.sessions[0])
    assert s["pinned"] is True and s["template_version"] == 2
    assert [m["content"] for m in fresh.branch(res.sessions[0])] == [
        "Be brief.", "What is WAL?", "A write-ahead log.", "More?", "Readers don't block",
    ]  # fmt: skip
    assert fresh.search("journal")[0]["session_id"] == res.sessions[0]  # imported text is searchable


def test_export_shape_reads_as_openai_messages(store: Store):
    sample(store)
    data = export_json(store)
    sess = data["sessions"][0]
    by_id = {m["id"]: m for m in sess["messages"]}
    path, k = [], sess["active_leaf"]
    while k is not None:
        path.append(by_id[k])
        k = by_id[k]["parent"]
    openai = [{"role": m["role"], "content": m["content"]} for m in reversed(path)]
    assert openai[0] == {"role": "system", "content": "Be brief."}
    assert [m["id"] for m in sess["messages"]] == list(range(1, 7))
    assert sess["messages"][0]["hidden"].startswith("<sys>")
    json.dumps(data)  # plain JSON


def test_selected_sessions_and_markdown(store: Store):
    a, _b, c = sample(store)
    assert [s["title"] for s in export_json(store, [c])["sessions"]] == ["Two roots"]
    md = export_markdown(store, [a, c])
    assert "## Branches" in md and "## Two roots" in md and "Empty and archived" not in md
    assert "**System**\n\nBe brief." in md and "**User**\n\nWhat is WAL?" in md
    assert "**Assistant**\n\nReaders don't block" in md
    assert "journal mode" not in md  # another branch
    assert "Never reveal" not in md  # hidden text stays out


def test_export_to_file_is_atomic(store: Store, tmp_path: Path, monkeypatch):
    sample(store)
    target = tmp_path / "out.md"
    target.write_text("previous export")

    def crash(*a, **k):
        raise OSError("disk full")

    import engine.paths

    monkeypatch.setattr(engine.paths.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        export_to_file(store, target, fmt="markdown")
    assert target.read_text() == "previous export"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # temp file removed
    monkeypatch.undo()
    export_to_file(store, target, fmt="markdown")
    assert target.read_text().startswith("## Branches")
    with pytest.raises(ValueError, match="format must be"):
        export_to_file(store, target, fmt="html")


def test_bad_chatfactory_entry_imports_nothing(store: Store, fresh: Store):
    sample(store)
    data = export_json(store)
    data["sessions"][2]["messages"][1]["role"] = "tool"
    before = counts(fresh)
    with pytest.raises(ValueError, match=r'^x.json: session 3 \("Two roots"\), message 2: role must be one of'):
        import_data(fresh, data, where="x.json")
    assert counts(fresh) == before
    data = export_json(store)
    data["sessions"][0]["messages"][2]["parent"] = 99
    with pytest.raises(ValueError, match=r"message 3: parent 99 does not exist"):
        import_data(fresh, data, where="x.json")
    data = export_json(store)
    data["sessions"][0]["messages"][0]["timings"] = float("nan")
    with pytest.raises(ValueError, match=r"message 1: timings: not JSON-serializable"):
        import_data(fresh, data, where="x.json")
    data["version"] = 7
    with pytest.raises(ValueError, match="version 7 is newer"):
        import_data(fresh, data, where="x.json")
    assert counts(fresh) == before


def test_database_error_mid_import_rolls_back(store: Store, fresh: Store, monkeypatch):
    sample(store)
    data = export_json(store)
    calls = []
    real = fresh.select_branch

    def failing_write(*a, **k):
        calls.append(1)
        raise RuntimeError("disk vanished")

    # without current_node the ChatGPT path calls select_branch after writing the session's
    # messages: make that fail on the second conversation, after the first was written
    convs = chatgpt_export()
    del convs[1]["current_node"]
    monkeypatch.setattr(fresh, "select_branch", failing_write)
    with pytest.raises(RuntimeError):
        import_data(fresh, convs, where="c.json")
    assert calls and counts(fresh) == (0, 0)
    monkeypatch.setattr(fresh, "select_branch", real)
    assert import_data(fresh, data).messages == 8


# --- ChatGPT ---------------------------------------------------------------------------------


def gpt_node(nid: str, parent: str | None, children: list[str], role: str | None = None, text=None, t=None,
             content_type: str = "text", parts=None, **meta):  # fmt: skip
    msg = None
    if role is not None:
        msg = {
            "id": nid, "author": {"role": role, "name": None, "metadata": {}}, "create_time": t,
            "content": {"content_type": content_type, "parts": parts if parts is not None else [text]},
            "status": "finished_successfully", "metadata": meta,
        }  # fmt: skip
    return {"id": nid, "message": msg, "parent": parent, "children": children}


def chatgpt_conversation(title: str = "Trip to Portugal", t: float = 1_700_000_000.0) -> dict:
    nodes = [
        gpt_node("root", None, ["sys"]),
        gpt_node("sys", "root", ["u1"], "system", "", t, is_visually_hidden_from_conversation=True),
        gpt_node("u1", "sys", ["a1", "a2"], "user", "Plan two days in Lisbon", t + 1),
        gpt_node("a1", "u1", [], "assistant", "Day 1: Alfama.", t + 2, finish_details={"type": "stop"},
                 model_slug="gpt-4o"),
        gpt_node("a2", "u1", ["tool1"], "assistant", "Day 1: Belem.", t + 3, finish_details={"type": "max_tokens"}),
        gpt_node("tool1", "a2", ["u2"], "tool", "search results", t + 4),
        gpt_node("u2", "tool1", ["a3"], "user", None, t + 5, content_type="multimodal_text",
                 parts=[{"content_type": "image_asset_pointer", "asset_pointer": "file-1"}, "What is in this photo?"]),
        gpt_node("a3", "u2", [], "assistant", "A tram.", t + 6, finish_details={"type": "interrupted"}),
        gpt_node("empty", "a3", [], "assistant", "", t + 7),
    ]
    return {"title": title, "create_time": t, "update_time": t + 60, "mapping": {n["id"]: n for n in nodes},
            "current_node": "a3", "default_model_slug": "gpt-4o"}  # fmt: skip


def chatgpt_export() -> list[dict]:
    return [chatgpt_conversation(), chatgpt_conversation("Second", 1_700_100_000.0)]


def test_chatgpt_import_keeps_branches(store: Store, tmp_path: Path):
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(chatgpt_export()), encoding="utf-8")
    res = import_file(store, path)
    assert (res.format, len(res.sessions), res.messages) == ("chatgpt", 2, 10)
    sid = res.sessions[0]
    s = store.get_session(sid)
    assert (s["title"], s["created"], s["updated"], s["model"]) == ("Trip to Portugal", 1_700_000_000.0,
                                                                     1_700_000_060.0, "gpt-4o")  # fmt: skip
    branch = store.branch(sid)
    assert [(m["role"], m["content"]) for m in branch] == [
        ("user", "Plan two days in Lisbon"), ("assistant", "Day 1: Belem."), ("user", "What is in this photo?"),
        ("assistant", "A tram."),
    ]  # fmt: skip
    # the hidden system root and the tool node were skipped, their children moved up
    assert branch[0]["parent_id"] is None and branch[2]["parent_id"] == branch[1]["id"]
    assert [m["content"] for m in store.siblings(branch[1]["id"])] == ["Day 1: Alfama.", "Day 1: Belem."]
    assert [m["finish_reason"] for m in store.siblings(branch[1]["id"])] == ["stop", "length"]
    assert branch[3]["finish_reason"] == "interrupted" and branch[0]["finish_reason"] is None
    assert store.get_message(store.siblings(branch[1]["id"])[0]["id"])["model"] == "gpt-4o"
    assert branch[0]["created"] == 1_700_000_001.0


def test_chatgpt_zip_and_single_conversation(store: Store, tmp_path: Path):
    z = tmp_path / "chatgpt-export.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("conversations.json", json.dumps(chatgpt_export()))
        f.writestr("chat.html", "<html></html>")
    assert import_file(store, z).sessions
    one = tmp_path / "one.json"
    one.write_text(json.dumps(chatgpt_conversation()))
    assert len(import_file(store, one).sessions) == 1


def test_chatgpt_without_current_node_shows_latest(store: Store):
    conv = chatgpt_conversation()
    del conv["current_node"]
    sid = import_data(store, [conv]).sessions[0]
    assert store.branch(sid)[-1]["content"] == "A tram."  # most recent child at each level


def test_malformed_chatgpt_entry_imports_nothing(store: Store, tmp_path: Path):
    sample(store)
    before = counts(store)
    data = chatgpt_export() + [chatgpt_conversation("Bad one")]
    data[2]["mapping"]["a2"]["message"]["content"]["parts"] = "not a list"
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as e:
        import_file(store, path)
    assert str(e.value) == 'conversations.json: conversation 3 ("Bad one"), node a2: content.parts must be a list'
    assert counts(store) == before
    for breakage, msg in [
        (lambda c: c["mapping"]["u1"].update(message=[]), r"node u1: message must be an object or null"),
        (lambda c: c["mapping"]["u1"]["message"].update(author={}), r"node u1: message.author.role must be a string"),
        (lambda c: c["mapping"]["u1"].update(parent="nope"), r"message 'u1': parent 'nope' does not exist"),
        (lambda c: c.update(current_node="zzz"), r"current_node 'zzz' is not in mapping"),
        (lambda c: c.update(mapping=[]), r"mapping must be an object"),
        (lambda c: c["mapping"]["a1"]["message"].update(create_time="yesterday"), r"create_time must be a number"),
    ]:  # fmt: skip
        conv = chatgpt_conversation("Broken")
        breakage(conv)
        with pytest.raises(ValueError, match=msg):
            import_data(store, [chatgpt_conversation(), conv], where="conversations.json")
        assert counts(store) == before


def test_cycle_in_mapping(store: Store):
    conv = chatgpt_conversation()
    conv["mapping"]["root"]["parent"] = "a3"  # root -> ... -> a3 -> root
    with pytest.raises(ValueError, match=r'conversation 1 \("Trip to Portugal"\), message .*: its parent links form a cycle'):
        import_data(store, [conv], where="conversations.json")
    conv = chatgpt_conversation()
    conv["mapping"]["u1"]["parent"] = "u1"  # a self-loop
    with pytest.raises(ValueError, match="cycle"):
        import_data(store, [conv], where="conversations.json")
    assert counts(store) == (0, 0)


def chain(n: int) -> dict:
    mapping = {"n0": {"id": "n0", "message": None, "parent": None, "children": ["n1"]}}
    for i in range(1, n + 1):
        role = "user" if i % 2 else "assistant"
        mapping[f"n{i}"] = gpt_node(f"n{i}", f"n{i - 1}", [f"n{i + 1}"] if i < n else [], role, f"m{i}", float(i))
    return {"title": "Deep", "create_time": 1.0, "update_time": 2.0, "mapping": mapping, "current_node": f"n{n}"}


def test_deep_chain_imports_iteratively(store: Store):
    """25,000 levels: far past Python's recursion limit (1000) and SQLite's trigger depth (1000)."""
    n = 25_000
    res = import_data(store, [chain(n)], where="deep.json")
    assert res.messages == n
    sid = res.sessions[0]
    branch = store.branch(sid)
    assert len(branch) == n and branch[0]["content"] == "m1" and branch[-1]["content"] == f"m{n}"
    assert store.select_branch(sid, branch[0]["id"]) == branch[-1]["id"]
    assert len(export_json(store, [sid])["sessions"][0]["messages"]) == n
    store.delete_session(sid)
    assert counts(store) == (0, 0)


@pytest.mark.slow
def test_100k_deep_chain_from_a_file(store: Store, tmp_path: Path):
    n = 100_000
    path = tmp_path / "deep.json"
    path.write_text(json.dumps([chain(n)]))
    res = import_file(store, path)
    assert res.messages == n and len(store.branch(res.sessions[0])) == n


def test_deeper_than_allowed_is_refused(store: Store, monkeypatch):
    monkeypatch.setattr(transfer, "MAX_DEPTH", 500)
    with pytest.raises(ValueError, match=r'conversation 1 \("Deep"\), message .*: nested 501 messages deep, more than the 500'):
        import_data(store, [chain(600)], where="conversations.json")
    assert counts(store) == (0, 0)


def test_deeply_nested_json_is_a_clear_error(store: Store, tmp_path: Path):
    path = tmp_path / "nested.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ValueError, match="nested.json: JSON nested too deeply"):
        import_file(store, path)


# --- files that cannot be read --------------------------------------------------------------


def test_invalid_utf8(store: Store, tmp_path: Path):
    path = tmp_path / "conversations.json"
    good = json.dumps(chatgpt_export()).encode()
    path.write_bytes(good[:100] + b"\xff\xfe" + good[100:])
    with pytest.raises(ValueError, match=r"^conversations.json: not valid UTF-8 at byte 100 "):
        import_file(store, path)
    assert counts(store) == (0, 0)


def test_too_big_is_refused_before_reading(store: Store, tmp_path: Path, monkeypatch):
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(chatgpt_export()))
    assert transfer.MAX_IMPORT_BYTES == 200 * 2**20
    monkeypatch.setattr(transfer, "MAX_IMPORT_BYTES", 1000)

    def no_reading(*a, **k):  # pragma: no cover - must not be called
        raise AssertionError("read the file")

    monkeypatch.setattr(Path, "read_bytes", no_reading)
    with pytest.raises(ValueError, match=r"huge.json: .* MB is more than the 0 MB an import accepts"):
        import_file(store, path)
    assert counts(store) == (0, 0)


def test_unknown_json_and_missing_file(store: Store, tmp_path: Path):
    path = tmp_path / "other.json"
    path.write_text('{"hello": "world"}')
    with pytest.raises(ValueError, match="other.json: neither a chatfactory export"):
        import_file(store, path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="other.json: not valid JSON"):
        import_file(store, path)
    with pytest.raises(FileNotFoundError):
        import_file(store, tmp_path / "absent.json")


# --- property: export then import is the identity ------------------------------------------------

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))  # fmt: skip
json_value = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=3),
                          st.dictionaries(st.text(max_size=5), kids, max_size=3)), max_leaves=6)  # fmt: skip
opt_text = st.one_of(st.none(), st.text(max_size=20))
message = st.fixed_dictionaries({
    "parent": st.integers(min_value=-1, max_value=40),  # index of an earlier message, or -1 for a root
    "role": st.sampled_from(ROLES),
    "content": st.text(max_size=40),
    "hidden": opt_text,
    "model": opt_text,
    "template_set": opt_text,
    "template_version": st.one_of(st.none(), st.integers(0, 99), st.text(max_size=4)),
    "moderation": json_value,
    "timings": json_value,
    "flagged": st.booleans(),
    "finish_reason": st.one_of(st.none(), st.sampled_from(FINISH_REASONS)),
    "prompt_tokens": st.one_of(st.none(), st.integers(0, 10**6)),
    "completion_tokens": st.one_of(st.none(), st.integers(0, 10**6)),
})  # fmt: skip
session = st.fixed_dictionaries({
    "title": st.text(max_size=30),
    "model": opt_text,
    "pinned": st.booleans(),
    "archived": st.booleans(),
    "messages": st.lists(message, max_size=12),
    "active": st.integers(min_value=-1, max_value=12),
})  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sessions=st.lists(session, max_size=4))
def test_export_import_is_identity(tmp_path_factory, sessions):
    root = tmp_path_factory.mktemp("prop")
    with Store.open(root / "a.db") as a, Store.open(root / "b.db") as b:
        for s in sessions:
            sid = a.create_session(s["title"], model=s["model"])
            a.update_session(sid, pinned=s["pinned"], archived=s["archived"])
            ids: list[int] = []
            for m in s["messages"]:
                fields = dict(m)
                p = fields.pop("parent")
                parent = ids[p] if 0 <= p < len(ids) else None
                ids.append(a.add_message(sid, fields.pop("role"), fields.pop("content"), parent_id=parent, **fields))
            if ids and s["active"] >= 0:
                a.select_branch(sid, ids[s["active"] % len(ids)])
        first = export_json(a)
        path = root / "x.json"
        export_to_file(a, path)
        import_file(b, path)
        assert export_json(b)["sessions"] == first["sessions"]
        assert os.path.getsize(path) > 0
