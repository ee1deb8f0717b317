"""The store on SQLite and on a real PostgreSQL server: migrations from empty, keys stored
only as hashes, user isolation, and the two-commit exchange."""

from __future__ import annotations

import sqlalchemy as sa
from store_fixtures import *

from chatfactory.server.store import conversations as conv_store
from chatfactory.server.store import keys as keystore
from chatfactory.server.store.db import (
    create_db_engine,
    current_revision,
    migrate,
    normalize_url,
    open_database,
)
from chatfactory.server.store.models import Conversation, Feedback, Message, Ranking

TABLES = {"users", "api_keys", "conversations", "messages", "feedback", "rankings", "alembic_version"}


def test_migrations_from_empty_and_idempotent(db_url):
    engine = create_db_engine(db_url)
    assert current_revision(engine) is None
    migrate(engine)
    head = current_revision(engine)
    assert head == "0001"
    assert TABLES <= set(sa.inspect(engine).get_table_names())
    migrate(engine)  # a current database is left alone
    assert current_revision(engine) == head
    engine.dispose()


def test_sqlite_uses_wal_and_busy_timeout(sqlite_url):
    engine, _ = open_database(sqlite_url)
    with engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_url_forms():
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("/tmp/x.db") == "sqlite:////tmp/x.db"


def test_keys_hashed_listed_revoked(db_url):
    engine, sessions = open_database(db_url)
    with sessions() as s:
        key, row = keystore.create_key(s, "alice", label="laptop")
        s.commit()
        key_id = row.id
    assert key.startswith(keystore.KEY_PREFIX) and len(key) > 40
    with sessions() as s:
        stored = s.execute(sa.text("SELECT key_hash, prefix FROM api_keys")).all()
        assert stored == [(keystore.hash_key(key), key[:10])]  # the key itself is nowhere
        assert keystore.user_for_key(s, key).name == "alice"
        assert keystore.user_for_key(s, key + "x") is None
        assert keystore.active_key_count(s) == 1
        assert [k.user.name for k in keystore.list_keys(s)] == ["alice"]
        keystore.revoke_key(s, str(key_id))
        s.commit()
    with sessions() as s:
        assert keystore.user_for_key(s, key) is None
        assert keystore.active_key_count(s) == 0
    engine.dispose()


def test_revoke_unknown_key_is_a_clear_error(sqlite_url):
    _, sessions = open_database(sqlite_url)
    with sessions() as s:
        try:
            keystore.revoke_key(s, "cf-nope")
        except ValueError as e:
            assert "cf-nope" in str(e) and "keys list" in str(e)
        else:
            raise AssertionError("revoking an unknown key must fail")


def _users(sessions) -> tuple[int, int]:
    with sessions() as s:
        a = keystore.get_or_create_user(s, "alice").id
        b = keystore.get_or_create_user(s, "bob").id
        s.commit()
    return a, b


def test_exchange_isolation_and_cascade(db_url):
    engine, sessions = open_database(db_url)
    alice, bob = _users(sessions)
    with sessions() as s:
        ex = conv_store.begin_exchange(s, alice, [{"role": "system", "content": "be brief"},
                                                  {"role": "user", "content": "hello there"}], source="chat.completions")
    # committed before generation: a fresh session (another process) sees it
    with sessions() as s:
        c = conv_store.get_conversation(s, alice, ex.conversation_id, with_messages=True)
        assert [m.role for m in c.messages] == ["system", "user"] and c.title == "hello there"
        # bob can neither read nor list alice's conversation
        assert conv_store.get_conversation(s, bob, ex.conversation_id) is None
        assert conv_store.list_conversations(s, bob) == ([], False)
    answers = [
        conv_store.Answer("hi!", "stop", choice_index=0, model="m", input_moderation={"flagged": False},
                          output_moderation={"flagged": False}, prompt_tokens=7, completion_tokens=2),
        conv_store.Answer("template", "content_filter", choice_index=1, model="m", template_used="output"),
    ]
    with sessions() as s:
        conv_store.finish_exchange(s, ex, answers)
    with sessions() as s:
        c = conv_store.get_conversation(s, alice, ex.conversation_id, with_messages=True)
        assert [(m.role, m.position, m.choice_index) for m in c.messages] == [
            ("system", 0, 0), ("user", 1, 0), ("assistant", 2, 0), ("assistant", 2, 1)]
        assert c.messages[1].moderation == {"flagged": False}
        assert c.messages[3].flagged and c.messages[3].template_used == "output"
        # the history fed back to the model: choice 0 only
        assert conv_store.visible_history(c) == [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": "hi!"}]
        msg_id = c.messages[2].id
        s.add(Feedback(message_id=msg_id, user_id=alice, rating=1, comment="good"))
        s.add(Ranking(user_id=alice, prompt={"prompt": "q"}, responses=["a", "b", "c"], ranking=[[1], [0, 2]]))
        s.commit()
    with sessions() as s:
        s.delete(s.get(Conversation, ex.conversation_id))
        s.commit()
        assert s.scalar(sa.select(sa.func.count()).select_from(Message)) == 0  # cascaded
        assert s.scalar(sa.select(sa.func.count()).select_from(Feedback)) == 0
        assert s.scalar(sa.select(Ranking.ranking)) == [[1], [0, 2]]
    engine.dispose()


def test_crash_mid_answer_leaves_conversation_consistent(sqlite_url):
    _, sessions = open_database(sqlite_url)
    alice, _ = _users(sessions)
    with sessions() as s:
        conv = conv_store.create_conversation(s, alice, title="t")
        s.commit()
        conv_id = conv.id
    with sessions() as s:
        ex = conv_store.begin_exchange(s, alice, [{"role": "user", "content": "one"}], conversation_id=conv_id)
    # ... the process dies here, before finish_exchange: the user's message is there, nothing else
    with sessions() as s:
        c = conv_store.get_conversation(s, alice, conv_id, with_messages=True)
        assert [(m.role, m.content) for m in c.messages] == [("user", "one")]
        ex2 = conv_store.begin_exchange(s, alice, [{"role": "user", "content": "two"}], conversation_id=conv_id)
        assert ex2.first_position == ex.answer_position  # continues after it
        conv_store.abandon_exchange(s, ex2)  # refused request: undone, the first message stays
        c = conv_store.get_conversation(s, alice, conv_id, with_messages=True)
        s.refresh(c)
        assert [m.content for m in c.messages] == ["one"]


def test_listing_pages_newest_first(sqlite_url):
    _, sessions = open_database(sqlite_url)
    alice, _ = _users(sessions)
    with sessions() as s:
        ids = []
        for i in range(5):
            ids.append(conv_store.begin_exchange(s, alice, [{"role": "user", "content": f"q{i}"}]).conversation_id)
        page, more = conv_store.list_conversations(s, alice, limit=3)
        assert [c.id for c in page] == ids[::-1][:3] and more
        page2, more2 = conv_store.list_conversations(s, alice, limit=3, after=page[-1].id)
        assert [c.id for c in page2] == ids[::-1][3:] and not more2


def test_concurrent_startups_migrate_once(postgres_url):
    """Replicas sharing one PostgreSQL start at once: the advisory lock serialises migrations."""
    from concurrent.futures import ThreadPoolExecutor

    def start(_):
        engine = create_db_engine(postgres_url)
        migrate(engine)
        rev = current_revision(engine)
        engine.dispose()
        return rev

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(start, range(4))) == ["0001"] * 4
