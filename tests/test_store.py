"""The conversation store: connection settings, the message tree, sessions, search,
feedback, migrations from a frozen v1 file, refusal of newer/foreign files, recovery from a
broken file, and the `sessions` CLI. Real SQLite files in tmp_path.

The frozen fixture tests/fixtures/store/schema_v1.db was made by `make_v1_fixture` below
(`PYTHONPATH=. .venv/bin/python tests/test_store.py --make-v1-fixture`); it is committed so
later code cannot change it.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from engine.store import (
    SCHEMA_VERSION,
    SNIPPET_END,
    SNIPPET_START,
    NewerSchemaError,
    NotChatfactoryError,
    NotFoundError,
    Store,
)
from engine.store import db as dbm

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "store" / "schema_v1.db"


@pytest.fixture
def store(tmp_path: Path):
    s = Store.open(tmp_path / "chatfactory.db")
    yield s
    s.close()


def chat(store: Store, title: str = "chat", turns: tuple[tuple[str, str], ...] = ()) -> tuple[int, list[int]]:
    sid = store.create_session(title)
    ids = []
    for user, answer in turns:
        ids.append(store.add_message(sid, "user", user))
        ids.append(store.add_message(sid, "assistant", answer, finish_reason="stop"))
    return sid, ids


# --- connection settings ---------------------------------------------------------------------


def pragmas(s: Store) -> dict:
    q = lambda name: s.db.conn.execute(f"PRAGMA {name}").fetchone()[0]
    return {n: q(n) for n in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous", "user_version")}


def test_pragmas_on_every_connection(tmp_path: Path):
    path = tmp_path / "chatfactory.db"
    first = Store.open(path)
    second = Store.open(path)  # a second connection to the same file (another window, the CLI)
    try:
        for s in (first, second):
            assert pragmas(s) == {
                "journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 5000, "synchronous": 1,
                "user_version": SCHEMA_VERSION,
            }  # fmt: skip
        sid = first.create_session("shared")
        assert second.get_session(sid)["title"] == "shared"  # WAL: the other connection sees the commit
        with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced on this connection
            second.db.execute("INSERT INTO messages (session_id, role, content, created) VALUES (999, 'user', 'x', 0)")
    finally:
        first.close()
        second.close()


def test_default_path_is_home(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CHATFACTORY_HOME", str(tmp_path / "home"))
    with Store.open() as s:
        assert s.path == tmp_path / "home" / "chatfactory.db"
        assert s.migrated_from == 0 and s.recovered_from is None
    assert s.path.exists()


def test_close_checkpoints(tmp_path: Path):
    s = Store.open(tmp_path / "c.db")
    chat(s, "x", (("hello", "hi"),) * 20)
    s.close()
    s.close()  # idempotent
    wal = tmp_path / "c.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    with pytest.raises(dbm.StoreError, match="closed"):
        s.create_session("after close")


def test_tables_and_indexes(store: Store):
    names = set(store.db.table_names())
    assert {"sessions", "messages", "feedback", "rankings", "settings", "messages_fts"} <= names
    cols = store.db["messages"].columns_dict
    for c in ("session_id", "parent_id", "hidden", "moderation", "finish_reason", "template_version", "timings"):
        assert c in cols
    plan = " ".join(
        str(r) for r in store.db.conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM sessions WHERE archived = 0 ORDER BY pinned DESC, updated DESC, id DESC"
            " LIMIT 50"
        )
    )  # fmt: skip
    assert "sessions_order" in plan and "TEMP B-TREE" not in plan


# --- sessions --------------------------------------------------------------------------------


def test_session_crud_and_errors(store: Store):
    sid = store.create_session("First", model="m", template_set="default", template_version=3)
    s = store.get_session(sid)
    assert s["title"] == "First" and s["template_version"] == 3 and s["pinned"] is False
    assert s["active_leaf_id"] is None and s["created"] == s["updated"]
    with pytest.raises(NotFoundError, match="no session with id 999"):
        store.get_session(999)
    with pytest.raises(KeyError):  # NotFoundError is a KeyError
        store.update_session(999, title="x")
    with pytest.raises(ValueError, match="unknown field.*colour"):
        store.update_session(sid, colour="red")
    with pytest.raises(ValueError, match="pinned must be"):
        store.update_session(sid, pinned="yes")
    with pytest.raises(ValueError, match="title must be a string"):
        store.create_session(None)  # type: ignore[arg-type]


def test_list_order_pinned_first_then_updated(store: Store):
    a = store.create_session("a")
    b = store.create_session("b")
    c = store.create_session("c")
    store.add_message(a, "user", "bump a")  # a becomes the most recently updated
    store.update_session(c, pinned=True)
    assert [s["id"] for s in store.list_sessions()] == [c, a, b]
    store.update_session(a, archived=True)
    assert [s["id"] for s in store.list_sessions()] == [c, b]
    assert [s["id"] for s in store.list_sessions(archived=True)] == [a]
    assert [s["id"] for s in store.list_sessions(archived=None)] == [c, a, b]
    assert store.count_sessions() == 2 and store.count_sessions(archived=None) == 3
    assert [s["id"] for s in store.list_sessions(limit=1, offset=1)] == [b]


def test_update_bumps_only_for_content_changes(store: Store):
    sid = store.create_session("x")
    before = store.get_session(sid)["updated"]
    store.update_session(sid, pinned=True, archived=False)
    assert store.get_session(sid)["updated"] == before
    store.update_session(sid, title="renamed")
    assert store.get_session(sid)["updated"] > before


def test_rename_and_pin_persist_after_reopen(tmp_path: Path):
    path = tmp_path / "chatfactory.db"
    with Store.open(path) as s:
        sid = s.create_session("old")
        s.update_session(sid, title="new name", pinned=True, model="smollm2")
    with Store.open(path) as s:
        got = s.get_session(sid)
        assert (got["title"], got["pinned"], got["model"]) == ("new name", True, "smollm2")


def test_delete_cascades(store: Store):
    sid, ids = chat(store, "doomed", (("find the aardvark", "the aardvark is here"),))
    keep, _ = chat(store, "kept", (("unrelated", "text"),))
    store.set_feedback(ids[1], 1)
    store.add_ranking(ids[0], [ids[1]])
    store.delete_session(sid)
    count = lambda t: store.db.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
    assert (count("messages"), count("feedback"), count("rankings")) == (2, 0, 0)
    assert store.search("aardvark") == []  # the FTS rows went with them
    assert store.get_session(keep)
    with pytest.raises(NotFoundError):
        store.delete_session(sid)


def test_delete_long_chain(store: Store):
    """Messages go with their session in one statement: no per-level cascade, no depth limit."""
    sid = store.create_session("long")
    with store.transaction():
        for i in range(3000):
            store.add_message(sid, "user" if i % 2 == 0 else "assistant", f"m{i}", finish_reason=None)
    store.delete_session(sid)
    assert store.db.conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


# --- the message tree ----------------------------------------------------------------------


def test_tree_branches_and_active_leaf(store: Store):
    sid = store.create_session("tree")
    u1 = store.add_message(sid, "user", "question")
    a1 = store.add_message(sid, "assistant", "answer one", finish_reason="stop")
    u2 = store.add_message(sid, "user", "follow-up on one")
    a2 = store.add_message(sid, "assistant", "reply on one", finish_reason="stop")
    # regenerate the first answer: a sibling of a1 under u1
    b1 = store.add_message(sid, "assistant", "answer two", parent_id=u1, finish_reason="stop")
    assert store.get_session(sid)["active_leaf_id"] == b1
    assert [m["id"] for m in store.branch(sid)] == [u1, b1]
    assert [m["id"] for m in store.branch(sid, a2)] == [u1, a1, u2, a2]
    assert [m["id"] for m in store.siblings(a1)] == [a1, b1]
    assert [m["id"] for m in store.siblings(b1)] == [a1, b1]
    assert [m["id"] for m in store.children(u1)] == [a1, b1]
    assert store.children(a2) == []
    # going back to answer one shows the conversation continued under it
    assert store.select_branch(sid, a1) == a2
    assert store.get_session(sid)["active_leaf_id"] == a2
    assert [m["content"] for m in store.branch(sid)] == ["question", "answer one", "follow-up on one", "reply on one"]
    # edit the follow-up: a sibling of u2; appending continues from it
    e2 = store.add_message(sid, "user", "edited follow-up", parent_id=a1)
    e3 = store.add_message(sid, "assistant", "reply to edit", finish_reason="stop")
    assert [m["id"] for m in store.branch(sid)] == [u1, a1, e2, e3]
    # from the top, the most recent child wins at each level: b1 (the regeneration) is newer than
    # a1, even though the edit under a1 is the newest message of all
    assert store.select_branch(sid, u1) == b1


def test_select_branch_follows_most_recent_child(store: Store):
    sid = store.create_session("t")
    u = store.add_message(sid, "user", "q")
    old = store.add_message(sid, "assistant", "old", finish_reason="stop")
    store.add_message(sid, "user", "under old")
    new = store.add_message(sid, "assistant", "new", parent_id=u, finish_reason="stop")
    assert store.select_branch(sid, u) == new
    leaf = store.select_branch(sid, old)
    assert store.get_message(leaf)["content"] == "under old"


def test_roots_and_parent_checks(store: Store):
    sid = store.create_session("roots")
    other = store.create_session("other")
    r1 = store.add_message(sid, "system", "be brief")
    r2 = store.add_message(sid, "system", "be verbose", parent_id=None)  # a second root
    assert [m["id"] for m in store.siblings(r1)] == [r1, r2]
    assert store.branch(other) == []
    with pytest.raises(ValueError, match="belongs to another session"):
        store.add_message(other, "user", "x", parent_id=r1)
    with pytest.raises(NotFoundError, match="no message with id 12345"):
        store.add_message(sid, "user", "x", parent_id=12345)
    with pytest.raises(ValueError, match="not in session"):
        store.branch(other, r1)
    with pytest.raises(ValueError, match="not in session"):
        store.select_branch(other, r1)
    with pytest.raises(ValueError, match="role must be one of"):
        store.add_message(sid, "tool", "x")
    with pytest.raises(NotFoundError):
        store.add_message(999, "user", "x")


def test_message_fields_roundtrip_and_update(store: Store):
    sid = store.create_session("fields")
    mid = store.add_message(
        sid, "assistant", "", hidden="<sys>secret</sys>", model="smollm2", template_set="default",
        template_version="2", moderation={"flagged": False, "scores": {"hate": 0.01}},
    )  # fmt: skip
    m = store.get_message(mid)
    assert m["finish_reason"] is None and m["hidden"] == "<sys>secret</sys>"
    assert m["moderation"] == {"flagged": False, "scores": {"hate": 0.01}}
    store.update_message(mid, content="streamed text", finish_reason="stop", prompt_tokens=12,
                         completion_tokens=3, timings={"ttft_s": 0.2}, flagged=True)  # fmt: skip
    m = store.get_message(mid)
    assert (m["content"], m["finish_reason"], m["prompt_tokens"], m["flagged"]) == ("streamed text", "stop", 12, True)
    assert m["timings"] == {"ttft_s": 0.2}
    assert store.search("streamed")[0]["message_id"] == mid  # the FTS index followed the update
    with pytest.raises(ValueError, match="finish_reason must be one of"):
        store.update_message(mid, finish_reason="done")
    with pytest.raises(ValueError, match="unknown field.*parent_id"):
        store.update_message(mid, parent_id=None)
    with pytest.raises(ValueError, match="moderation: not JSON-serializable"):
        store.update_message(mid, moderation={"x": object()})
    with pytest.raises(ValueError, match="prompt_tokens must be"):
        store.update_message(mid, prompt_tokens=-1)
    with pytest.raises(NotFoundError):
        store.update_message(999, content="x")


def test_transaction_groups_and_rolls_back(store: Store):
    sid = store.create_session("tx")
    with pytest.raises(RuntimeError), store.transaction():
        store.add_message(sid, "user", "one")
        store.add_message(sid, "assistant", "two")
        raise RuntimeError("boom")
    assert store.branch(sid) == [] and store.get_session(sid)["active_leaf_id"] is None


def test_threads_share_a_store(store: Store):
    sid = store.create_session("threads")
    errors = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                store.add_message(sid, "user", f"t{n} m{i}", parent_id=None)
        except (sqlite3.Error, ValueError, KeyError) as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(store.messages(sid)) == 80


# --- interrupted answers -------------------------------------------------------------------


def test_mark_interrupted(tmp_path: Path):
    path = tmp_path / "chatfactory.db"
    with Store.open(path) as s:
        sid = s.create_session("crash")
        s.add_message(sid, "user", "tell me a story")
        streaming = s.add_message(sid, "assistant", "Once upon a")  # finish_reason NULL: streaming
        done = s.add_message(sid, "assistant", "done", finish_reason="stop")
    with Store.open(path, mark_interrupted=False) as s:  # e.g. the CLI beside a running app
        assert s.interrupted_at_open == 0 and s.get_message(streaming)["finish_reason"] is None
    with Store.open(path) as s:  # the app's startup
        assert s.interrupted_at_open == 1
        assert s.get_message(streaming)["finish_reason"] == "interrupted"
        assert s.get_message(done)["finish_reason"] == "stop"
        assert s.mark_interrupted() == 0
        user = s.branch(sid, streaming)[0]
        assert user["finish_reason"] is None  # only assistant messages


# --- search ----------------------------------------------------------------------------------


def test_search_across_sessions(store: Store):
    a, _ = chat(store, "Cooking", (("how do I bake sourdough bread?", "Feed the starter first."),))
    b, _ = chat(store, "Travel", (("trains in Portugal", "Lisbon to Porto takes three hours."),))
    store.add_message(a, "user", "hidden words", hidden="zebra instructions")
    hits = store.search("Lisbon")
    assert len(hits) == 1
    h = hits[0]
    assert (h["session_id"], h["session_title"], h["role"]) == (b, "Travel", "assistant")
    assert f"{SNIPPET_START}Lisbon{SNIPPET_END}" in h["snippet"]
    assert store.search("baking")[0]["session_id"] == a  # porter stemming: baking ~ bake
    assert store.search("zebra") == []  # hidden text is not searchable
    assert store.search("lisbon porto")[0]["session_id"] == b  # terms are ANDed
    assert store.search("lisbon sourdough") == []
    assert store.search("sourd*")[0]["session_id"] == a  # a trailing * is a prefix search
    bracketed = store.search("starter", marks=("[", "]"))[0]["snippet"]
    assert "[starter]" in bracketed
    assert len(store.search("the", limit=1)) == 1


@pytest.mark.parametrize(
    "query",
    ['"', '""', "a OR", "OR", "-x", "*", "NEAR(", "NEAR(a b", "(", ")", "a AND (b", "col:word", "^x",
     "'", "\\", "a\"b", "   ", "", "lisbon\"", "+", "{x}", "\x00", "🙂"],
)  # fmt: skip
def test_search_survives_hostile_queries(store: Store, query: str):
    chat(store, "t", (("Lisbon OR Porto, near the sea", "a b x word"),))
    assert isinstance(store.search(query), list)


def test_search_hostile_terms_still_match_as_text(store: Store):
    chat(store, "t", (("re-use the col:word near(here)", "ok"),))
    assert store.search('"re-use"')
    assert store.search("col:word")
    assert store.search("NEAR(here")


# --- feedback, rankings, settings ------------------------------------------------------------


def test_feedback_one_per_rater(store: Store):
    _, ids = chat(store, "fb", (("q", "a"),))
    a = ids[1]
    store.set_feedback(a, 1)
    store.set_feedback(a, -1)  # replaces
    store.set_feedback(a, 1, rater="labeller")
    got = {(f["rater"], f["rating"]) for f in store.feedback(a)}
    assert got == {("user", -1), ("labeller", 1)}
    store.set_feedback(a, 0)  # clears the user's
    assert [f["rater"] for f in store.feedback(a)] == ["labeller"]
    with pytest.raises(ValueError, match="rating must be"):
        store.set_feedback(a, 5)
    with pytest.raises(NotFoundError):
        store.set_feedback(999, 1)


def test_rankings(store: Store):
    sid, ids = chat(store, "rk", (("q", "first"),))
    u, a1 = ids
    a2 = store.add_message(sid, "assistant", "second", parent_id=u, finish_reason="stop")
    rid = store.add_ranking(u, [a2, a1])
    r = store.rankings()
    assert [(x["id"], x["prompt_message_id"], x["ranked_ids"], x["rater"]) for x in r] == [(rid, u, [a2, a1], "user")]
    assert store.rankings(a1) == []
    with pytest.raises(ValueError, match="not a user message"):
        store.add_ranking(a1, [a2])
    with pytest.raises(ValueError, match="not assistant replies"):
        store.add_ranking(u, [a1, u])
    with pytest.raises(ValueError, match="distinct"):
        store.add_ranking(u, [a1, a1])


def test_edit_answer_is_a_new_active_sibling(tmp_path: Path):
    path = tmp_path / "edit.db"
    with Store.open(path) as s:
        sid = s.create_session("edit", template_set="concise")
        u = s.add_message(sid, "user", "2+2?")
        a = s.add_message(sid, "assistant", "5", finish_reason="stop", model="smollm2",
                          template_set="concise", template_version=3, hidden="<think>hm</think>")  # fmt: skip
        e = s.edit_answer(a, "4")
        m = s.get_message(e)
        assert (m["parent_id"], m["role"], m["content"], m["finish_reason"]) == (u, "assistant", "4", "edited")
        assert (m["model"], m["template_set"], m["template_version"], m["hidden"]) == ("smollm2", "concise", 3, None)
        assert s.get_message(a)["content"] == "5"  # the original stays, as a sibling
        assert [x["id"] for x in s.siblings(a)] == [a, e]
        assert s.get_session(sid)["active_leaf_id"] == e
        assert [x["content"] for x in s.branch(sid)] == ["2+2?", "4"]
        s.update_message(e, finish_reason="edited")  # a valid finish_reason for every writer
        with pytest.raises(ValueError, match="not an assistant answer"):
            s.edit_answer(u, "x")
        with pytest.raises(ValueError, match="empty"):
            s.edit_answer(a, "  ")
        with pytest.raises(NotFoundError):
            s.edit_answer(999, "x")
        assert len(s.messages(sid)) == 3  # the refused edits wrote nothing
    with Store.open(path) as s:  # persisted
        assert s.get_message(e)["finish_reason"] == "edited"


def test_settings(tmp_path: Path):
    path = tmp_path / "s.db"
    with Store.open(path) as s:
        assert s.get_setting("theme", "light") == "light"
        s.set_setting("theme", "dark")
        s.set_setting("sampling", {"temperature": 0.7, "stop": ["</s>"]})
        s.set_setting("theme", "solarized")
    with Store.open(path) as s:
        assert s.get_setting("theme") == "solarized"
        assert s.get_setting("sampling") == {"temperature": 0.7, "stop": ["</s>"]}
        with pytest.raises(ValueError, match="not JSON-serializable"):
            s.set_setting("bad", {1, 2})


# --- migrations -------------------------------------------------------------------------------


def make_v1_fixture(path: Path) -> None:
    """Write a small version-1 database with the v1 code (the migration ladder stopped at 1)."""
    path.unlink(missing_ok=True)
    db = dbm.connect(path)
    db.conn.execute("PRAGMA foreign_keys=ON")
    dbm.migrate(db, target=1)
    t = 1_700_000_000.0
    c = db.conn
    c.execute("BEGIN")
    c.execute("INSERT INTO sessions VALUES (1, 'Lisbon trip', 'smollm2-360m', 'default', ?, ?, 1, NULL)", (t, t + 50))
    c.execute("INSERT INTO sessions VALUES (2, 'Unfinished story', NULL, NULL, ?, ?, 0, NULL)", (t + 100, t + 120))
    rows = [
        (1, 1, None, "system", "", "You are a helpful assistant.", "default", "smollm2-360m", None, 0, None,
         None, None, None, t + 1),
        (2, 1, 1, "user", "Plan a weekend in Lisbon", "<hidden>be concise</hidden>Plan a weekend in Lisbon",
         "default", "smollm2-360m", '{"flagged":false}', 0, None, None, None, None, t + 2),
        (3, 1, 2, "assistant", "Visit Belem and ride tram 28.", None, "default", "smollm2-360m",
         '{"flagged":false}', 0, "stop", 40, 9, '{"ttft_s":0.12}', t + 3),
        (4, 1, 2, "assistant", "Eat pasteis de nata in Belem.", None, "default", "smollm2-360m", None, 0,
         "length", 40, 64, None, t + 4),
        (5, 1, 3, "user", "And where to eat?", None, "default", "smollm2-360m", None, 0, None, None, None, None,
         t + 5),
        (6, 2, None, "user", "Tell me a story about a lighthouse", None, None, None, None, 0, None, None, None,
         None, t + 101),
        (7, 2, 6, "assistant", "Once upon a time, a lighthouse", None, None, None, None, 0, None, None, None,
         None, t + 102),
    ]  # fmt: skip
    c.executemany("INSERT INTO messages VALUES (" + ",".join("?" * 15) + ")", rows)
    c.execute("UPDATE sessions SET active_leaf_id = 5 WHERE id = 1")
    c.execute("UPDATE sessions SET active_leaf_id = 7 WHERE id = 2")
    c.execute("INSERT INTO feedback VALUES (1, 3, 1, 'user', ?)", (t + 10,))
    c.execute("INSERT INTO settings VALUES ('theme', '\"dark\"')")
    c.execute("COMMIT")
    c.execute("VACUUM")
    c.close()


def test_fixture_is_version_1():
    c = sqlite3.connect(f"file:{FIXTURE_V1}?mode=ro", uri=True)
    try:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 1
        assert "archived" not in [r[1] for r in c.execute("PRAGMA table_info(sessions)")]
        assert c.execute("SELECT count(*) FROM messages").fetchone()[0] == 7
    finally:
        c.close()


def test_migrate_from_frozen_v1(tmp_path: Path):
    path = tmp_path / "chatfactory.db"
    shutil.copy(FIXTURE_V1, path)
    with Store.open(path) as s:
        assert s.migrated_from == 1 and s.recovered_from is None
        assert pragmas(s)["user_version"] == SCHEMA_VERSION == 2
        assert {"archived", "template_version"} <= set(s.db["sessions"].columns_dict)
        assert "template_version" in s.db["messages"].columns_dict
        assert "rankings" in s.db.table_names()
        s1 = s.get_session(1)
        assert (s1["title"], s1["pinned"], s1["archived"], s1["template_version"]) == ("Lisbon trip", True, False, None)
        assert [m["id"] for m in s.branch(1)] == [1, 2, 3, 5]
        m2 = s.get_message(2)
        assert m2["hidden"] == "<hidden>be concise</hidden>Plan a weekend in Lisbon"
        assert m2["moderation"] == {"flagged": False}
        m3 = s.get_message(3)
        assert (m3["finish_reason"], m3["prompt_tokens"], m3["timings"]) == ("stop", 40, {"ttft_s": 0.12})
        assert [m["id"] for m in s.siblings(3)] == [3, 4]
        assert s.feedback(3)[0]["rating"] == 1
        assert s.get_setting("theme") == "dark"
        assert s.search("lighthouse")[0]["session_id"] == 2  # the v1 search index still works
        assert s.interrupted_at_open == 1  # message 7 was streaming when v1 stopped
        assert s.get_message(7)["finish_reason"] == "interrupted"
        # the new features work on the upgraded file
        s.add_ranking(2, [4, 3])
        s.update_session(2, archived=True)
        assert [x["id"] for x in s.list_sessions()] == [1]
    with Store.open(path) as s:  # a second open finds nothing to do
        assert s.migrated_from == SCHEMA_VERSION


def test_failed_migration_leaves_file_as_it_was(tmp_path: Path, monkeypatch):
    path = tmp_path / "chatfactory.db"
    shutil.copy(FIXTURE_V1, path)

    def broken_step(conn):
        conn.execute("ALTER TABLE sessions ADD COLUMN archived INTEGER NOT NULL DEFAULT 0")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(dbm, "MIGRATIONS", [dbm.MIGRATIONS[0], broken_step])
    with pytest.raises(RuntimeError, match="migration bug"):
        Store.open(path)
    c = sqlite3.connect(path)
    assert c.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "archived" not in [r[1] for r in c.execute("PRAGMA table_info(sessions)")]
    c.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_newer_schema_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "chatfactory.db"
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE sessions (id INTEGER PRIMARY KEY)")
    c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    c.close()
    before = digest(path)
    with pytest.raises(NewerSchemaError, match=r"schema version 3, newer than this chatfactory understands \(2\)"):
        Store.open(path)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chatfactory.db"]  # not set aside, no -wal


def test_someone_elses_sqlite_file_is_refused(tmp_path: Path):
    path = tmp_path / "notes.db"
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    c.close()
    before = digest(path)
    with pytest.raises(NotChatfactoryError, match="not a chatfactory database.*notes"):
        Store.open(path)
    assert digest(path) == before


# --- broken databases ---------------------------------------------------------------------------


def test_garbage_file_is_set_aside(tmp_path: Path):
    path = tmp_path / "chatfactory.db"
    garbage = b"this is not a database, just some bytes\n" * 100
    path.write_bytes(garbage)
    (tmp_path / "chatfactory.db-wal").write_bytes(b"stale wal")
    with Store.open(path) as s:
        aside = s.recovered_from
        assert aside is not None and aside.parent == tmp_path
        assert aside.name.startswith("chatfactory.db.broken-") and len(aside.name) == len("chatfactory.db.broken-") + 15
        assert aside.read_bytes() == garbage
        assert Path(f"{aside}-wal").read_bytes() == b"stale wal"
        sid = s.create_session("fresh start")  # the new database works
        assert s.list_sessions()[0]["id"] == sid


def test_corrupt_pages_are_set_aside(tmp_path: Path):
    path = tmp_path / "chatfactory.db"
    with Store.open(path) as s:
        for i in range(30):
            chat(s, f"s{i}", ((f"question {i} " * 40, f"answer {i} " * 40),))
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 8 * page
    for p in range(2, len(data) // page):  # keep the header page, scramble the rest
        data[p * page + 8 : p * page + 200] = b"\xa5" * 192
    path.write_bytes(bytes(data))
    backup = tmp_path / "copy.db"
    backup.write_bytes(bytes(data))
    with Store.open(path, integrity="full") as s:
        assert s.recovered_from is not None
        assert s.count_sessions() == 0
    assert path.stat().st_size < dbm.AUTO_FULL_CHECK_BYTES  # "auto" checks a file this small
    with Store.open(backup) as s:
        assert s.recovered_from is not None and s.recovered_from.read_bytes() == bytes(data)


def test_corruption_is_not_confused_with_a_lock():
    assert not dbm.is_corruption(sqlite3.OperationalError("database is locked"))
    assert dbm.is_corruption(sqlite3.DatabaseError("file is not a database"))


def test_set_aside_never_overwrites(tmp_path: Path):
    names = []
    for _ in range(3):
        p = tmp_path / "x.db"
        p.write_bytes(b"junk")
        names.append(dbm.set_aside(p).name)
    assert len(set(names)) == 3


# --- the CLI ----------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    from engine.store import cli

    parser = argparse.ArgumentParser(prog="chatfactory")
    sub = parser.add_subparsers(dest="command")
    cli.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_list_show_search_delete(tmp_path: Path, capsys):
    db = str(tmp_path / "chatfactory.db")
    with Store.open(db) as s:
        sid, _ = chat(s, "Trip planning", (("trains to Porto", "Take the Alfa Pendular."),))
    assert run_cli(["sessions", "--db", db, "list"]) == 0
    assert "Trip planning" in capsys.readouterr().out
    assert run_cli(["sessions", "show", str(sid), "--db", db]) == 0
    out = capsys.readouterr().out
    assert "Alfa Pendular" in out and "## user" in out
    assert run_cli(["sessions", "search", "pendular", "--db", db]) == 0
    assert "[Pendular]" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no session with id 42"):
        run_cli(["sessions", "show", "42", "--db", db])
    assert run_cli(["sessions", "delete", str(sid), "--db", db]) == 0
    assert "deleted session" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no session"):
        run_cli(["sessions", "delete", str(sid), "--db", db])


def test_cli_export_import(tmp_path: Path, capsys):
    db, other = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    with Store.open(db) as s:
        chat(s, "One", (("hello", "hi"),))
        chat(s, "Two", (("bye", "ciao"),))
    out = tmp_path / "out.json"
    assert run_cli(["sessions", "export", "--format", "json", "--out", str(out), "--db", db]) == 0
    assert run_cli(["sessions", "import", str(out), "--db", other]) == 0
    assert "a chatfactory export; imported 2 session(s), 4 message(s)" in capsys.readouterr().out
    md = tmp_path / "one.md"
    assert run_cli(["sessions", "export", "--session", "1", "--format", "markdown", "--out", str(md), "--db", db]) == 0
    assert "## One" in md.read_text() and "Two" not in md.read_text()
    with pytest.raises(FileNotFoundError):
        run_cli(["sessions", "import", str(tmp_path / "missing.json"), "--db", other])
    with pytest.raises(ValueError, match="no session with id 9"):
        run_cli(["sessions", "export", "--session", "9", "--out", str(md), "--db", db])


def test_cli_newer_database_is_a_one_line_error(tmp_path: Path):
    path = tmp_path / "n.db"
    c = sqlite3.connect(path)
    c.execute("PRAGMA user_version=99")
    c.close()
    with pytest.raises(ValueError, match="newer than this chatfactory"):
        run_cli(["sessions", "list", "--db", str(path)])


if __name__ == "__main__":
    if sys.argv[1:] == ["--make-v1-fixture"]:
        FIXTURE_V1.parent.mkdir(parents=True, exist_ok=True)
        make_v1_fixture(FIXTURE_V1)
        print(f"wrote {FIXTURE_V1} ({FIXTURE_V1.stat().st_size} bytes)")
