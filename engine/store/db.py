"""The database file: connection settings, the schema ladder, and recovery from a broken file.

Everything that opens the conversation database goes through `connect()`, so every connection
gets the same settings: WAL (readers never block the writer, a crash never corrupts),
`synchronous=NORMAL` (safe with WAL, no fsync per commit: a chat turn writes several times),
`foreign_keys=ON` (SQLite's default is off, per connection) and a 5 s busy timeout (the desktop
app and the CLI may write at the same moment).

The schema is a numbered ladder: `MIGRATIONS[n]` turns version n-1 into n, a fresh file climbs
from 0. The version lives in `PRAGMA user_version`. All steps run in one transaction, so a
failed upgrade leaves the file as it was. A file from a newer chatfactory is refused before
anything is written to it.

A file that is not SQLite, or is corrupt, is renamed aside (`chatfactory.db.broken-<stamp>`,
with its -wal/-shm) and a fresh database takes its place: losing the history is bad, but a
chat app that cannot start is worse, and the old file stays there for a rescue.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import sqlite_utils

SCHEMA_VERSION = 2
DB_NAME = "chatfactory.db"
BUSY_TIMEOUT_MS = 5000
# `integrity="auto"` runs the full PRAGMA integrity_check only on files up to this size. It reads
# every page and re-tokenizes the search index: ~14 ms per MiB measured on a busy 2-core machine
# (quick_check: ~8 ms), so 8 MiB (~25,000 messages) keeps startup near 100 ms. Larger files get
# the cheap checks (header, schema, version); `Store.check_integrity()` runs the full one on
# demand (a background thread in the app, or `integrity="full"`). SQLite in WAL mode survives
# crashes and power loss; what this catches is a file damaged from outside (disk, sync tools).
AUTO_FULL_CHECK_BYTES = 8 * 2**20
SQLITE_HEADER = b"SQLite format 3\x00"
ROLES = ("system", "user", "assistant")
# "edited": an answer the user wrote in place of the model's (Store.edit_answer), not generated
FINISH_REASONS = ("stop", "length", "content_filter", "cancelled", "interrupted", "edited")


class StoreError(Exception):
    """The conversation database cannot be used as it is (the message says why and where)."""


class NewerSchemaError(StoreError):
    """The file was written by a newer chatfactory: opening it here could damage it."""


class NotChatfactoryError(StoreError):
    """The file is a SQLite database, but someone else's: we do not add our tables to it."""


class BrokenDatabaseError(StoreError):
    """The file is not SQLite or is corrupt (raised by `open_database`, handled by `Store.open`)."""


# --- connection -----------------------------------------------------------------------------


def connect(path: str | Path) -> sqlite_utils.Database:
    """Open a connection with the store's settings (see the module docstring).

    The driver runs in autocommit mode (`isolation_level=None`): transactions are explicit
    (`BEGIN IMMEDIATE` ... `COMMIT`), never opened behind our back by a SELECT.
    """
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)


def apply_pragmas(db: sqlite_utils.Database) -> None:
    """The per-connection settings. Journal mode is stored in the file; the others are not."""
    conn = db.conn
    conn.execute("PRAGMA journal_mode=WAL").fetchone()
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA temp_store=MEMORY")


def user_version(db: sqlite_utils.Database) -> int:
    return int(db.conn.execute("PRAGMA user_version").fetchone()[0])


def run_script(conn: sqlite3.Connection, sql: str) -> None:
    """Run several statements inside the current transaction.

    `sqlite3.executescript` would COMMIT first, which would split a migration in two.
    """
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            conn.execute(buf)
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement at the end of a script: {buf.strip()[:60]!r}")


# --- schema ---------------------------------------------------------------------------------

# Full-text search over the visible text only (`hidden` holds instructions the user never saw).
# Hand-written triggers rather than sqlite-utils' enable_fts: its update trigger fires on ANY
# column change, so marking a message "interrupted" or flagged would rewrite its index entry.
FTS_TABLE_SQL = """
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, content='messages', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
);
"""

FTS_TRIGGERS_SQL = """
CREATE TRIGGER messages_fts_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_fts_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER messages_fts_au AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
"""

FTS_TRIGGERS = ("messages_fts_ai", "messages_fts_ad", "messages_fts_au")


def drop_fts_triggers(conn: sqlite3.Connection) -> None:
    for name in FTS_TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")


def create_fts_triggers(conn: sqlite3.Connection) -> None:
    run_script(conn, FTS_TRIGGERS_SQL)


@contextlib.contextmanager
def bulk_insert_messages(conn: sqlite3.Connection) -> Iterator[None]:
    """Inside a transaction: INSERT many messages (no updates or deletes), index them at the end.

    An FTS5 write from a trigger runs under a statement savepoint, and FTS5 flushes its pending
    terms to disk at every savepoint: one tiny index segment per row, about 8x slower than
    indexing the same rows in one statement. So the triggers are dropped for the load, the new
    rows (ids above the old maximum) indexed with one INSERT ... SELECT, and the triggers put
    back, all in the caller's transaction: a failure rolls back to the triggers in place.
    """
    if not conn.in_transaction:
        raise RuntimeError("bulk_insert_messages must run inside a transaction")
    start = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
    drop_fts_triggers(conn)
    yield
    conn.execute(
        "INSERT INTO messages_fts(rowid, content) SELECT id, content FROM messages WHERE id > ?", (start,)
    )
    create_fts_triggers(conn)


def _migrate_1(conn: sqlite3.Connection) -> None:
    """Version 1, the first release: sessions, the message tree, thumbs, settings, search.

    parent_id has no ON DELETE action on purpose: a cascade along the tree would recurse once
    per level and fail past SQLite's trigger depth (1000) on long chats. Messages are only
    deleted with their session (session_id cascades, all rows in one statement).
    """
    run_script(
        conn,
        """
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL DEFAULT 'New chat',
    model TEXT,
    template_set TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0,
    active_leaf_id INTEGER REFERENCES messages(id) ON DELETE SET NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    parent_id INTEGER REFERENCES messages(id),
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content TEXT NOT NULL DEFAULT '',
    hidden TEXT,
    template_set TEXT,
    model TEXT,
    moderation TEXT,
    flagged INTEGER NOT NULL DEFAULT 0,
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    timings TEXT,
    created REAL NOT NULL
);
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    rating INTEGER NOT NULL CHECK (rating IN (-1, 1)),
    rater TEXT NOT NULL DEFAULT 'user',
    created REAL NOT NULL,
    UNIQUE (message_id, rater)
);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT
);
CREATE INDEX sessions_order ON sessions(pinned, updated);
CREATE INDEX sessions_active_leaf ON sessions(active_leaf_id);
CREATE INDEX messages_session ON messages(session_id, id);
CREATE INDEX messages_parent ON messages(parent_id, created, id);
""",
    )
    run_script(conn, FTS_TABLE_SQL)
    run_script(conn, FTS_TRIGGERS_SQL)


def _migrate_2(conn: sqlite3.Connection) -> None:
    """Version 2: archiving, the template's version on sessions and messages, answer rankings.

    template_version has no declared type so an int stays an int and a string a string.
    """
    run_script(
        conn,
        """
ALTER TABLE sessions ADD COLUMN template_version;
ALTER TABLE sessions ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN template_version;
CREATE TABLE rankings (
    id INTEGER PRIMARY KEY,
    prompt_message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    ranked_ids TEXT NOT NULL,
    rater TEXT NOT NULL DEFAULT 'user',
    created REAL NOT NULL
);
CREATE INDEX rankings_prompt ON rankings(prompt_message_id);
DROP INDEX sessions_order;
CREATE INDEX sessions_order ON sessions(archived, pinned, updated);
CREATE INDEX messages_unfinished ON messages(id)
    WHERE role = 'assistant' AND finish_reason IS NULL;
""",
    )


# MIGRATIONS[i] takes the schema from version i to i + 1. Append, never edit a released step.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_1, _migrate_2]
assert len(MIGRATIONS) == SCHEMA_VERSION


def migrate(db: sqlite_utils.Database, target: int = SCHEMA_VERSION, where: str = "") -> int:
    """Bring the schema up to `target` in one transaction; returns the version found.

    The version is read again after `BEGIN IMMEDIATE`: another process may have upgraded the
    file between our first look and taking the write lock.
    """
    conn = db.conn
    found = user_version(db)
    if found >= target:
        return found
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = user_version(db)
        if found > SCHEMA_VERSION:
            raise NewerSchemaError(_newer_message(where, found))
        for version in range(found, target):
            MIGRATIONS[version](conn)
        conn.execute(f"PRAGMA user_version={int(target)}")
        problems = conn.execute("PRAGMA foreign_key_check").fetchall()
        if problems:
            raise StoreError(f"{where}: upgrading to schema {target} broke references: {problems[:5]}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


def _newer_message(where: str, found: int) -> str:
    return (
        f"{where}: the database has schema version {found}, newer than this chatfactory "
        f"understands ({SCHEMA_VERSION}); it was left untouched. Use a newer chatfactory, "
        "or move the file away to start a new history."
    )


# --- opening, checking, recovering ----------------------------------------------------------


def is_corruption(exc: BaseException) -> bool:
    """True for 'not a database' / 'malformed' errors; False for locks, permissions, full disks.

    OperationalError (locked, I/O) subclasses DatabaseError, so the type alone is not enough:
    a locked database must never be mistaken for a broken one and renamed away.
    """
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name:
        return name == "SQLITE_NOTADB" or name.startswith("SQLITE_CORRUPT")
    return type(exc) is sqlite3.DatabaseError


def integrity_problems(db: sqlite_utils.Database, limit: int = 20) -> list[str]:
    """PRAGMA integrity_check's findings ([] when the file is sound)."""
    rows = [r[0] for r in db.conn.execute(f"PRAGMA integrity_check({int(limit)})").fetchall()]
    return [] if rows == ["ok"] else rows


def _check_header(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return  # SQLite treats an empty file as an empty database
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_HEADER))
    if head != SQLITE_HEADER:
        raise BrokenDatabaseError(f"{path}: not a SQLite database (it starts with {head[:16]!r})")


def open_database(path: Path, integrity: str = "auto") -> tuple[sqlite_utils.Database, int]:
    """Connect, refuse newer or foreign files, check, and migrate. Returns (db, version found).

    integrity: "full" runs PRAGMA integrity_check, "quick" only the cheap checks (header,
    schema readable), "auto" is "full" for files up to AUTO_FULL_CHECK_BYTES.
    Raises BrokenDatabaseError for a corrupt file (the caller decides to set it aside),
    NewerSchemaError / NotChatfactoryError without writing anything.
    """
    if integrity not in ("auto", "full", "quick"):
        raise ValueError(f"integrity must be 'auto', 'full' or 'quick', got {integrity!r}")
    _check_header(path)
    db = connect(path)
    try:
        found = user_version(db)  # first read: fails on a file that is not a database
        if found > SCHEMA_VERSION:
            raise NewerSchemaError(_newer_message(str(path), found))
        if found == 0:
            others = [
                r[0]
                for r in db.conn.execute(
                    "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
                ).fetchall()
            ]
            if others:
                raise NotChatfactoryError(
                    f"{path}: this SQLite file is not a chatfactory database "
                    f"(it has {', '.join(sorted(others)[:5])}); it was left untouched"
                )
        db.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        full = integrity == "full" or (
            integrity == "auto" and path.exists() and path.stat().st_size <= AUTO_FULL_CHECK_BYTES
        )
        if full and found > 0:
            problems = integrity_problems(db)
            if problems:
                raise BrokenDatabaseError(f"{path}: integrity check failed: {'; '.join(problems[:3])}")
        apply_pragmas(db)
        migrate(db, where=str(path))
    except sqlite3.DatabaseError as e:
        db.close()
        if is_corruption(e):
            raise BrokenDatabaseError(f"{path}: {e}") from e
        raise
    except BaseException:
        db.close()
        raise
    return db, found


def set_aside(path: Path) -> Path:
    """Rename a broken database (and its -wal/-shm) to `<name>.broken-YYYYmmdd-HHMMSS[-n]`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = path.with_name(f"{path.name}.broken-{stamp}")
    target, n = base, 2
    while any(Path(f"{target}{s}").exists() for s in ("", "-wal", "-shm")):
        target, n = base.with_name(f"{base.name}-{n}"), n + 1
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.replace(side, Path(f"{target}{suffix}"))
    return target
