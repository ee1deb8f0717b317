"""`Store`: conversations as trees of messages, plus feedback, rankings and settings.

A session's messages form a tree: a regenerated answer or an edited prompt is a new sibling
under the same parent, so nothing the user saw is ever overwritten. `sessions.active_leaf_id`
picks the visible branch: the path from a root down to that leaf.

Conventions:
- Times are float unix seconds (`time.time()`), in `created` and `updated`, strictly
  increasing within one Store (`_now`): lists and sibling order never depend on a clock tie
  (Windows' clock ticks every ~16 ms) or a clock stepping back.
- Rows come back as plain dicts with the column names; JSON columns (moderation, timings,
  ranked_ids, settings values) are decoded; 0/1 columns (pinned, archived, flagged) are bools.
- Every write is one short transaction (`BEGIN IMMEDIATE`, so two processes never deadlock
  upgrading a read lock). `transaction()` groups several calls into one.
- Sibling order is creation order (created, then id); "most recent" means the last in it.
- The object may be shared between threads: calls are serialized by a lock.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlite_utils

from . import db as dbm
from . import search as searchm


class NotFoundError(dbm.StoreError, KeyError):
    """No session / message with that id. A KeyError, with a readable message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class _ActiveLeaf:
    def __repr__(self) -> str:
        return "ACTIVE_LEAF"


# `add_message(parent_id=ACTIVE_LEAF)` (the default) appends under the session's active leaf;
# `parent_id=None` starts a new root; an int puts the message under that message.
ACTIVE_LEAF: Any = _ActiveLeaf()

SESSION_COLUMNS = (
    "id", "title", "model", "template_set", "template_version", "created", "updated",
    "pinned", "archived", "active_leaf_id",
)  # fmt: skip
MESSAGE_COLUMNS = (
    "id", "session_id", "parent_id", "role", "content", "hidden", "template_set",
    "template_version", "model", "moderation", "flagged", "finish_reason", "prompt_tokens",
    "completion_tokens", "timings", "created",
)  # fmt: skip
# Session fields that describe the conversation: changing them bumps `updated` (the list is
# ordered by it). Pinning and archiving are filing, not activity: they leave it alone.
SESSION_BUMPING = ("title", "model", "template_set", "template_version")
SESSION_EDITABLE = (*SESSION_BUMPING, "pinned", "archived")
MESSAGE_EDITABLE = (
    "content", "hidden", "template_set", "template_version", "model", "moderation", "flagged",
    "finish_reason", "prompt_tokens", "completion_tokens", "timings",
)  # fmt: skip
_JSON_MESSAGE_FIELDS = ("moderation", "timings")
_BOOL_FIELDS = ("pinned", "archived", "flagged")
_SESSION_SELECT = "SELECT " + ", ".join(SESSION_COLUMNS) + " FROM sessions"
_MESSAGE_SELECT = "SELECT " + ", ".join(MESSAGE_COLUMNS) + " FROM messages"
_MAX_DEPTH_GUARD = 10_000_000  # stops a tree walk if a hand-edited file ever held a cycle
# The finish_reason of an answer the user corrected (`Store.edit_answer`): written by a person
EDITED = "edited"
_FINISH_REASONS = dbm.FINISH_REASONS


def _dumps(value: Any, field: str) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{field}: not JSON-serializable ({e})") from None


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def check_field(field: str, value: Any) -> Any:
    """Validate one editable session/message field; returns the value as stored."""
    if field == "title":
        if not isinstance(value, str):
            raise ValueError(f"title must be a string, got {type(value).__name__}")
        return value
    if field == "content":
        if not isinstance(value, str):
            raise ValueError(f"content must be a string, got {type(value).__name__}")
        return value
    if field in ("hidden", "model", "template_set"):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{field} must be a string or None, got {type(value).__name__}")
        return value
    if field == "template_version":
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise ValueError(f"template_version must be a string, an int or None, got {value!r}")
        return value
    if field in _BOOL_FIELDS:
        if value not in (0, 1) or not isinstance(value, (bool, int)):
            raise ValueError(f"{field} must be True/False (or 0/1), got {value!r}")
        return int(value)
    if field == "finish_reason":
        if value is not None and value not in _FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {', '.join(_FINISH_REASONS)} or None, got {value!r}")
        return value
    if field in ("prompt_tokens", "completion_tokens"):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{field} must be a non-negative int or None, got {value!r}")
        return value
    if field in _JSON_MESSAGE_FIELDS:
        return _dumps(value, field)
    raise ValueError(f"unknown field {field!r}")


def editable_values(what: str, fields: dict[str, Any], editable) -> dict[str, Any]:
    """`fields` checked against the columns `what` may change, values validated."""
    unknown = set(fields) - set(editable)
    if unknown:
        raise ValueError(
            f"{what}: unknown field(s) {', '.join(sorted(unknown))}; editable: {', '.join(editable)}"
        )
    return {k: check_field(k, v) for k, v in fields.items()}


def session_row(row: tuple) -> dict:
    d = dict(zip(SESSION_COLUMNS, row))
    d["pinned"], d["archived"] = bool(d["pinned"]), bool(d["archived"])
    return d


def message_row(row: tuple) -> dict:
    d = dict(zip(MESSAGE_COLUMNS, row))
    d["flagged"] = bool(d["flagged"])
    for f in _JSON_MESSAGE_FIELDS:
        d[f] = _loads(d[f])
    return d


class Store:
    """The conversation store (one SQLite file). Open with `Store.open()`.

    Attributes the app reads after opening:
    - `path`: the database file.
    - `recovered_from`: where a broken database was moved (None when the file was fine):
      the GUI should tell the user that their history was set aside there.
    - `interrupted_at_open`: answers found unfinished by a previous run and marked
      "interrupted" (0 when `mark_interrupted=False`).
    - `migrated_from`: the schema version found (== SCHEMA_VERSION when nothing was upgraded;
      0 for a new file).
    """

    def __init__(
        self, db: sqlite_utils.Database, path: Path, recovered_from: Path | None = None, migrated_from: int = 0
    ) -> None:
        self.db = db
        self.path = path
        self.recovered_from = recovered_from
        self.migrated_from = migrated_from
        self.interrupted_at_open = 0
        self._lock = threading.RLock()
        self._tx_depth = 0
        self._closed = False
        self._last_time = 0.0

    # --- opening and closing ------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | Path | None = None, *, integrity: str = "auto", mark_interrupted: bool = True
    ) -> Store:
        """Open (creating, upgrading or recovering) the database; None -> home()/chatfactory.db.

        mark_interrupted: mark answers left unfinished by a crash (`mark_interrupted()`).
        The desktop app opens with True, once, at startup. Tools that may run beside a live
        app (the CLI) pass False, or they would mark the answer it is streaming right now.
        integrity: see `db.open_database` ("auto", "full", "quick").
        Raises NewerSchemaError / NotChatfactoryError (file untouched); a corrupt file is
        set aside and reported in `recovered_from`.
        """
        if path is None:
            from engine.paths import home

            path = home() / dbm.DB_NAME
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        recovered = None
        try:
            db, found = dbm.open_database(path, integrity)
        except dbm.BrokenDatabaseError:
            recovered = dbm.set_aside(path)
            db, found = dbm.open_database(path, "quick")
        store = cls(db, path, recovered_from=recovered, migrated_from=found)
        if mark_interrupted:
            store.interrupted_at_open = store.mark_interrupted()
        return store

    def close(self) -> None:
        """Checkpoint the WAL into the main file (the .db alone is then complete) and close. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn = self.db.conn
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.execute("PRAGMA busy_timeout=200")  # a reader elsewhere: don't hang on exit
                conn.execute("PRAGMA optimize")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                pass  # another process keeps it busy: it checkpoints when it closes
            finally:
                conn.close()

    def __enter__(self) -> Store:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_integrity(self) -> list[str]:
        """Run PRAGMA integrity_check (reads the whole file); [] when sound."""
        with self._lock:
            return dbm.integrity_problems(self.db)

    # --- plumbing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; nested calls join the outer one (all or nothing)."""
        with self._lock:
            if self._closed:
                raise dbm.StoreError(f"{self.path}: the store is closed")
            conn = self.db.conn
            if self._tx_depth:
                self._tx_depth += 1
                try:
                    yield conn
                finally:
                    self._tx_depth -= 1
                return
            conn.execute("BEGIN IMMEDIATE")
            self._tx_depth = 1
            try:
                yield conn
            except BaseException:
                self._tx_depth = 0
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._tx_depth = 0
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _now(self) -> float:
        """time.time(), but always later than the last value this Store handed out."""
        with self._lock:
            self._last_time = max(time.time(), self._last_time + 1e-6)
            return self._last_time

    def _read(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        with self._lock:
            if self._closed:
                raise dbm.StoreError(f"{self.path}: the store is closed")
            return self.db.conn.execute(sql, params).fetchall()

    def _session_of(self, conn: sqlite3.Connection, mid: int) -> int:
        row = conn.execute("SELECT session_id FROM messages WHERE id = ?", (mid,)).fetchone()
        if row is None:
            raise NotFoundError(f"no message with id {mid}")
        return row[0]

    # --- sessions -----------------------------------------------------------------------------

    def create_session(
        self,
        title: str = "New chat",
        model: str | None = None,
        template_set: str | None = None,
        template_version: str | int | None = None,
    ) -> int:
        """A new, empty session; returns its id."""
        given = {"title": title, "model": model, "template_set": template_set, "template_version": template_version}
        vals = {k: check_field(k, v) for k, v in given.items()}
        now = self._now()
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO sessions (title, model, template_set, template_version, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (vals["title"], vals["model"], vals["template_set"], vals["template_version"], now, now),
            )
            return int(cur.lastrowid)

    def get_session(self, session_id: int) -> dict:
        rows = self._read(_SESSION_SELECT + " WHERE id = ?", (session_id,))
        if not rows:
            raise NotFoundError(f"no session with id {session_id}")
        return session_row(rows[0])

    @staticmethod
    def _archived_clause(archived: bool | None) -> tuple[str, tuple]:
        if archived is None:
            return "archived IN (0, 1)", ()  # lets the (archived, pinned, updated) index serve
        return "archived = ?", (int(bool(archived)),)

    def list_sessions(self, limit: int = 50, offset: int = 0, archived: bool | None = False) -> list[dict]:
        """Pinned first, then most recently updated. archived: False = not archived (the
        sidebar), True = only archived, None = all."""
        where, params = self._archived_clause(archived)
        rows = self._read(
            f"{_SESSION_SELECT} WHERE {where} ORDER BY pinned DESC, updated DESC, id DESC LIMIT ? OFFSET ?",
            (*params, int(limit), int(offset)),
        )
        return [session_row(r) for r in rows]

    def count_sessions(self, archived: bool | None = False) -> int:
        """Number of sessions (same `archived` meaning as list_sessions)."""
        where, params = self._archived_clause(archived)
        return int(self._read(f"SELECT count(*) FROM sessions WHERE {where}", params)[0][0])

    def update_session(self, session_id: int, **fields: Any) -> None:
        """Change title, pinned, archived, model, template_set, template_version.

        Bumps `updated` only for title/model/template changes (see SESSION_BUMPING).
        """
        vals = editable_values("update_session", fields, SESSION_EDITABLE)
        if not vals:
            return
        if any(k in SESSION_BUMPING for k in vals):
            vals["updated"] = self._now()
        sets = ", ".join(f"{k} = ?" for k in vals)
        with self.transaction() as conn:
            cur = conn.execute(f"UPDATE sessions SET {sets} WHERE id = ?", (*vals.values(), session_id))
            if cur.rowcount == 0:
                raise NotFoundError(f"no session with id {session_id}")

    def delete_session(self, session_id: int) -> None:
        """Delete a session with all its messages, feedback and rankings."""
        with self.transaction() as conn:
            cur = conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            if cur.rowcount == 0:
                raise NotFoundError(f"no session with id {session_id}")

    # --- messages -----------------------------------------------------------------------------

    def add_message(
        self,
        session_id: int,
        role: str,
        content: str,
        parent_id: int | None = ACTIVE_LEAF,
        hidden: str | None = None,
        **fields: Any,
    ) -> int:
        """Append a message; it becomes the session's active leaf and bumps `updated`.

        parent_id: ACTIVE_LEAF (default) = under the current active leaf; None = a new root;
        an id = under that message (a regeneration or an edit is a new child of the parent of
        the message it replaces). fields: any of MESSAGE_EDITABLE. An assistant message added
        with finish_reason None is "streaming" until update_message sets it.
        """
        if role not in dbm.ROLES:
            raise ValueError(f"role must be one of {', '.join(dbm.ROLES)}, got {role!r}")
        unknown = set(fields) - set(MESSAGE_EDITABLE)
        if unknown:
            raise ValueError(f"add_message: unknown field(s) {', '.join(sorted(unknown))}")
        vals = {"content": check_field("content", content), "hidden": check_field("hidden", hidden)}
        vals.update((k, check_field(k, v)) for k, v in fields.items())
        with self.transaction() as conn:
            row = conn.execute("SELECT active_leaf_id FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no session with id {session_id}")
            parent = row[0] if parent_id is ACTIVE_LEAF else parent_id
            if parent is not None and self._session_of(conn, parent) != session_id:
                raise ValueError(f"parent message {parent} belongs to another session, not {session_id}")
            now = self._now()
            cols = ["session_id", "parent_id", "role", "created", *vals]
            cur = conn.execute(
                f"INSERT INTO messages ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                (session_id, parent, role, now, *vals.values()),
            )
            mid = int(cur.lastrowid)
            conn.execute(
                "UPDATE sessions SET active_leaf_id = ?, updated = ? WHERE id = ?", (mid, now, session_id)
            )
            return mid

    def update_message(self, message_id: int, **fields: Any) -> None:
        """Change a message in place (streaming text, finish_reason, moderation, tokens...).

        Does not bump the session's `updated`: add_message did at the start of the turn.
        """
        vals = editable_values("update_message", fields, MESSAGE_EDITABLE)
        if not vals:
            return
        sets = ", ".join(f"{k} = ?" for k in vals)
        with self.transaction() as conn:
            cur = conn.execute(f"UPDATE messages SET {sets} WHERE id = ?", (*vals.values(), message_id))
            if cur.rowcount == 0:
                raise NotFoundError(f"no message with id {message_id}")

    def edit_answer(self, message_id: int, text: str) -> int:
        """The user corrects an assistant answer; returns the id of the corrected one.

        Nothing is overwritten: the correction is a new sibling (same parent) with
        finish_reason "edited" and the original's model and template, and becomes the
        session's active leaf. Fine-tuning reads it as a demonstration, preferred over the
        answer it replaced (engine.finetune.sources). ValueError if the message is not an
        assistant message or the text is empty.
        """
        with self.transaction():
            original = self.get_message(message_id)
            if original["role"] != "assistant":
                raise ValueError(f"message {message_id} is a {original['role']} message, not an assistant answer")
            if not isinstance(text, str) or not text.strip():
                raise ValueError("the corrected answer is empty")
            return self.add_message(
                original["session_id"], "assistant", text, parent_id=original["parent_id"],
                finish_reason=EDITED, model=original["model"], template_set=original["template_set"],
                template_version=original["template_version"],
            )  # fmt: skip

    def get_message(self, message_id: int) -> dict:
        rows = self._read(_MESSAGE_SELECT + " WHERE id = ?", (message_id,))
        if not rows:
            raise NotFoundError(f"no message with id {message_id}")
        return message_row(rows[0])

    def messages(self, session_id: int) -> list[dict]:
        """Every message of the session (all branches), in id order: parents before children."""
        self.get_session(session_id)
        rows = self._read(_MESSAGE_SELECT + " WHERE session_id = ? ORDER BY id", (session_id,))
        return [message_row(r) for r in rows]

    def branch(self, session_id: int, leaf_id: int | None = None) -> list[dict]:
        """The messages from the root down to `leaf_id` (None: the active leaf), in order.

        A recursive CTE walks up the parent links inside SQLite: no Python recursion, no query
        per level, any depth.
        """
        with self._lock:
            if leaf_id is None:
                leaf_id = self.get_session(session_id)["active_leaf_id"]
                if leaf_id is None:
                    return []
            elif self._session_of(self.db.conn, leaf_id) != session_id:
                raise ValueError(f"message {leaf_id} is not in session {session_id}")
            rows = self._read(
                f"""
                WITH RECURSIVE up(id, depth) AS (
                    SELECT ?, 0
                    UNION ALL
                    SELECT m.parent_id, up.depth + 1 FROM messages m JOIN up ON m.id = up.id
                    WHERE m.parent_id IS NOT NULL AND up.depth < {_MAX_DEPTH_GUARD}
                )
                SELECT {", ".join("m." + c for c in MESSAGE_COLUMNS)}
                FROM up JOIN messages m ON m.id = up.id ORDER BY up.depth DESC
                """,
                (leaf_id,),
            )
        return [message_row(r) for r in rows]

    def children(self, message_id: int) -> list[dict]:
        """The direct replies to a message, in creation order."""
        with self._lock:
            self._session_of(self.db.conn, message_id)
            rows = self._read(_MESSAGE_SELECT + " WHERE parent_id = ? ORDER BY created, id", (message_id,))
        return [message_row(r) for r in rows]

    def siblings(self, message_id: int) -> list[dict]:
        """The message and its alternatives (same parent, or the session's roots), in creation order."""
        with self._lock:
            rows = self._read("SELECT session_id, parent_id FROM messages WHERE id = ?", (message_id,))
            if not rows:
                raise NotFoundError(f"no message with id {message_id}")
            sid, parent = rows[0]
            if parent is None:
                rows = self._read(
                    _MESSAGE_SELECT + " WHERE session_id = ? AND parent_id IS NULL ORDER BY created, id", (sid,)
                )
            else:
                rows = self._read(_MESSAGE_SELECT + " WHERE parent_id = ? ORDER BY created, id", (parent,))
        return [message_row(r) for r in rows]

    def select_branch(self, session_id: int, message_id: int) -> int:
        """Show the branch through `message_id`; returns the new active leaf.

        The leaf is found by following the most recent child at each level, so switching to
        an older answer shows the follow-up conversation you last had under it. Does not bump
        `updated` (looking is not changing).
        """
        with self.transaction() as conn:
            if self._session_of(conn, message_id) != session_id:
                raise ValueError(f"message {message_id} is not in session {session_id}")
            leaf = conn.execute(
                f"""
                WITH RECURSIVE down(id, depth) AS (
                    SELECT ?, 0
                    UNION ALL
                    SELECT (SELECT c.id FROM messages c WHERE c.parent_id = down.id
                            ORDER BY c.created DESC, c.id DESC LIMIT 1), down.depth + 1
                    FROM down WHERE down.id IS NOT NULL AND down.depth < {_MAX_DEPTH_GUARD}
                )
                SELECT id FROM down WHERE id IS NOT NULL ORDER BY depth DESC LIMIT 1
                """,
                (message_id,),
            ).fetchone()[0]
            conn.execute("UPDATE sessions SET active_leaf_id = ? WHERE id = ?", (leaf, session_id))
            return int(leaf)

    def mark_interrupted(self) -> int:
        """Answers still streaming when the app last stopped (finish_reason NULL) become
        "interrupted"; returns how many. Store.open calls it (mark_interrupted=True)."""
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE messages SET finish_reason = 'interrupted'"
                " WHERE role = 'assistant' AND finish_reason IS NULL"
            )
            return int(cur.rowcount)

    # --- search -------------------------------------------------------------------------------

    def search(
        self, query: str, limit: int = 50, marks: tuple[str, str] = (searchm.SNIPPET_START, searchm.SNIPPET_END)
    ) -> list[dict]:
        """Full-text search over visible message text, newest first (see engine.store.search).

        Each hit: session_id, session_title, message_id, role, snippet (matches wrapped in
        `marks`, default \\x02...\\x03), created, archived. Never raises on odd input.
        """
        with self._lock:
            return searchm.search(self.db.conn, query, limit, marks)

    # --- feedback and rankings ----------------------------------------------------------------

    def set_feedback(self, message_id: int, rating: int | None, rater: str = "user") -> None:
        """Thumbs up (+1) / down (-1); one per (message, rater), setting again replaces.
        rating 0 or None removes the rater's feedback."""
        if rating not in (1, -1, 0, None) or isinstance(rating, bool):
            raise ValueError(f"rating must be +1, -1 (or 0/None to clear), got {rating!r}")
        with self.transaction() as conn:
            self._session_of(conn, message_id)
            if not rating:
                conn.execute("DELETE FROM feedback WHERE message_id = ? AND rater = ?", (message_id, rater))
                return
            conn.execute(
                "INSERT INTO feedback (message_id, rating, rater, created) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (message_id, rater) DO UPDATE SET rating = excluded.rating,"
                " created = excluded.created",
                (message_id, int(rating), rater, self._now()),
            )

    def feedback(self, message_id: int | None = None) -> list[dict]:
        """Feedback on one message (None: all feedback), oldest first."""
        cols = ("id", "message_id", "rating", "rater", "created")
        sql = f"SELECT {', '.join(cols)} FROM feedback"
        if message_id is None:
            rows = self._read(sql + " ORDER BY id")
        else:
            rows = self._read(sql + " WHERE message_id = ? ORDER BY id", (message_id,))
        return [dict(zip(cols, r)) for r in rows]

    def add_ranking(self, prompt_message_id: int, ranked_ids: list[int], rater: str = "user") -> int:
        """Record an order of preference (best first) among answers to one user message.

        Every ranked id must be an assistant reply to `prompt_message_id` (its child).
        """
        ids = list(ranked_ids)
        if not ids or len(set(ids)) != len(ids) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError(f"ranked_ids must be a non-empty list of distinct message ids, got {ranked_ids!r}")
        with self.transaction() as conn:
            row = conn.execute("SELECT role FROM messages WHERE id = ?", (prompt_message_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no message with id {prompt_message_id}")
            if row[0] != "user":
                raise ValueError(f"prompt message {prompt_message_id} is a {row[0]} message, not a user message")
            marks = ",".join("?" * len(ids))
            ok = {
                r[0]
                for r in conn.execute(
                    f"SELECT id FROM messages WHERE id IN ({marks}) AND parent_id = ? AND role = 'assistant'",
                    (*ids, prompt_message_id),
                )
            }
            bad = [i for i in ids if i not in ok]
            if bad:
                raise ValueError(f"ranked_ids {bad} are not assistant replies to message {prompt_message_id}")
            cur = conn.execute(
                "INSERT INTO rankings (prompt_message_id, ranked_ids, rater, created) VALUES (?, ?, ?, ?)",
                (prompt_message_id, json.dumps(ids), rater, self._now()),
            )
            return int(cur.lastrowid)

    def rankings(self, prompt_message_id: int | None = None) -> list[dict]:
        """Recorded rankings (of one prompt, or all), oldest first; ranked_ids decoded."""
        cols = ("id", "prompt_message_id", "ranked_ids", "rater", "created")
        sql = f"SELECT {', '.join(cols)} FROM rankings"
        if prompt_message_id is None:
            rows = self._read(sql + " ORDER BY id")
        else:
            rows = self._read(sql + " WHERE prompt_message_id = ? ORDER BY id", (prompt_message_id,))
        out = [dict(zip(cols, r)) for r in rows]
        for d in out:
            d["ranked_ids"] = json.loads(d["ranked_ids"])
        return out

    # --- settings -----------------------------------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        rows = self._read("SELECT value FROM settings WHERE key = ?", (key,))
        return default if not rows else _loads(rows[0][0])

    def set_setting(self, key: str, value: Any) -> None:
        """Store any JSON-serializable value under `key` (replacing)."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"setting key must be a non-empty string, got {key!r}")
        text = _dumps(value, f"setting {key!r}")
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, text),
            )
