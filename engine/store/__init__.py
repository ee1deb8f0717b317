"""The conversation store: one SQLite file (WAL) holding sessions, message trees, feedback,
rankings and settings, with full-text search. No Qt, no torch: the desktop app, the CLI and
the tests all use it directly.

    from engine.store import Store
    store = Store.open()                       # home()/chatfactory.db; created, upgraded, recovered
    if store.recovered_from: ...               # a broken file was set aside there: tell the user
    sid = store.create_session("New chat")
    mid = store.add_message(sid, "user", "Hello")
    aid = store.add_message(sid, "assistant", "")          # streaming: finish_reason None
    store.update_message(aid, content="Hi!", finish_reason="stop")
    store.branch(sid)                          # the visible path, root first

Modules: `db` (connection, schema ladder, recovery), `store` (the Store class), `search` (safe
FTS5 queries), `transfer` (JSON / Markdown export, chatfactory / ChatGPT import), `cli`.
"""

from .db import (
    DB_NAME,
    FINISH_REASONS,
    ROLES,
    SCHEMA_VERSION,
    NewerSchemaError,
    NotChatfactoryError,
    StoreError,
)
from .search import SNIPPET_END, SNIPPET_START
from .store import ACTIVE_LEAF, NotFoundError, Store

__all__ = [
    "ACTIVE_LEAF",
    "DB_NAME",
    "FINISH_REASONS",
    "ROLES",
    "SCHEMA_VERSION",
    "SNIPPET_END",
    "SNIPPET_START",
    "NewerSchemaError",
    "NotChatfactoryError",
    "NotFoundError",
    "Store",
    "StoreError",
]
