"""Full-text search over message text (FTS5), safe for whatever the user types.

The user's words are never passed to FTS5 as syntax: each whitespace-separated term becomes a
quoted string (inner quotes doubled), so `"`, `-x`, `a OR`, `NEAR(`, `col:word` or unbalanced
parentheses are searched as text instead of raising "fts5: syntax error". Terms are ANDed.
A trailing `*` on a term keeps its meaning, a prefix search (`summar*`). A term with no letter
or digit has no tokens and is dropped; a query left with no terms finds nothing.

Snippets wrap each match in SNIPPET_START / SNIPPET_END (\\x02 / \\x03 by default: control
characters that never occur in chat text, so a GUI can split on them without ambiguity;
pass `marks=("[", "]")` for plain text). Hits come newest first: FTS5 can walk its index by
descending rowid and stop after `limit` rows, where ranking by relevance would score every
match of a common word (a million messages: seconds, not milliseconds).
"""

from __future__ import annotations

import sqlite3

SNIPPET_START = "\x02"
SNIPPET_END = "\x03"
SNIPPET_ELLIPSIS = "…"
SNIPPET_TOKENS = 12


def fts_query(text: str) -> str | None:
    """The FTS5 MATCH expression for a user's search box text, or None if nothing to search."""
    terms = []
    for raw in str(text).split():
        prefix = raw.endswith("*")
        word = raw.rstrip("*")
        if not any(ch.isalnum() for ch in word):
            continue
        terms.append('"' + word.replace('"', '""') + '"' + ("*" if prefix else ""))
    return " ".join(terms) if terms else None


def search(
    conn: sqlite3.Connection, query: str, limit: int = 50, marks: tuple[str, str] = (SNIPPET_START, SNIPPET_END)
) -> list[dict]:
    """Messages whose visible text matches every term of `query`, newest first."""
    match = fts_query(query)
    if match is None or limit <= 0:
        return []
    start, end = marks
    rows = conn.execute(
        """
        WITH hits AS (
            SELECT rowid AS id, snippet(messages_fts, 0, ?, ?, ?, ?) AS snippet
            FROM messages_fts WHERE messages_fts MATCH ? ORDER BY rowid DESC LIMIT ?
        )
        SELECT m.session_id, s.title, m.id, m.role, hits.snippet, m.created, s.archived
        FROM hits JOIN messages m ON m.id = hits.id JOIN sessions s ON s.id = m.session_id
        ORDER BY m.id DESC
        """,
        (start, end, SNIPPET_ELLIPSIS, SNIPPET_TOKENS, match, int(limit)),
    ).fetchall()
    return [
        {
            "session_id": r[0],
            "session_title": r[1],
            "message_id": r[2],
            "role": r[3],
            "snippet": r[4],
            "created": r[5],
            "archived": bool(r[6]),
        }
        for r in rows
    ]
