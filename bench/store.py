"""Conversation store at scale: 10,000 sessions, 1,000,000 messages, in a temp folder.

Measures what the desktop app waits for:
- open + list the newest 50 sessions (the sidebar at startup)   goal <= 200 ms
- a full-text search (median over rare, common, two-word, prefix)  goal <= 100 ms
- appending a message through Store.add_message, p50 / p95       goal <= 5 ms p95

The data is synthetic: 100 messages per session on average, a user/assistant chain with a
regenerated answer (a sibling branch) on about 1 assistant turn in 10; text drawn from a
Zipf-distributed vocabulary of made-up words (so "the most common word" is in most messages)
plus a few planted rare words. The bulk load goes through engine.store.db.bulk_insert_messages
(triggers dropped while loading, the index built in one statement, triggers put back); the
timed appends use the normal trigger path.

    .venv/bin/python bench/store.py [--sessions 10000] [--messages 1000000] [--dir DIR] [--keep]

Timings are wall clock on whatever machine runs it, with the file just written (warm page cache).
"""

from __future__ import annotations

import argparse
import itertools
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.store import Store
from engine.store import db as dbm

RARE = ["zanzibarite", "quokkavore", "lighthousekeeper"]
SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "sa", "vel", "do", "qui", "ne", "bar", "sto", "li", "fen", "or"]


def vocabulary(n: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words, key=lambda w: (len(w), w))  # short words first: they get the Zipf mass


def build(path: Path, n_sessions: int, n_messages: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    vocab = vocabulary(5000, rng)
    weights = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
    Store.open(path).close()  # schema, triggers, indexes
    db = dbm.connect(path)
    dbm.apply_pragmas(db)
    conn = db.conn
    t0 = time.perf_counter()
    now = time.time() - 400 * 86400
    per = n_messages // n_sessions
    words_per_msg = 20
    next_id = 1
    plant = {i: w for w in RARE for i in rng.sample(range(n_messages), 25)}  # each rare word: ~25 messages
    seen = 0
    chunk: list[tuple] = []
    sessions: list[tuple] = []
    leaves: list[tuple] = []

    def flush() -> None:
        conn.execute("BEGIN IMMEDIATE")
        with dbm.bulk_insert_messages(conn):
            conn.executemany(
                "INSERT INTO sessions (id, title, model, template_set, template_version, created, updated,"
                " pinned, archived) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                sessions,
            )
            conn.executemany(
                "INSERT INTO messages (id, session_id, parent_id, role, content, model, finish_reason,"
                " prompt_tokens, completion_tokens, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                chunk,
            )
            conn.executemany("UPDATE sessions SET active_leaf_id = ? WHERE id = ?", leaves)
        conn.execute("COMMIT")
        chunk.clear()
        sessions.clear()
        leaves.clear()

    for sid in range(1, n_sessions + 1):
        created = now + sid * 3000.0
        count = per + (n_messages - per * n_sessions if sid == n_sessions else 0)
        words = rng.choices(vocab, cum_weights=weights, k=count * words_per_msg)
        parent = None
        prev_user = None
        t = created
        for j in range(count):
            text_words = words[j * words_per_msg : (j + 1) * words_per_msg]
            if seen in plant:
                text_words[rng.randrange(len(text_words))] = plant[seen]
            seen += 1
            t += 7.0
            user = j % 2 == 0
            if not user and prev_user is not None and rng.random() < 0.1 and j + 1 < count:
                # a regenerated answer: a sibling under the same user message, then continue on it
                chunk.append((next_id, sid, prev_user, "assistant", " ".join(text_words), "bench", "stop",
                              30, 20, t))  # fmt: skip
                next_id += 1
                t += 1.0
            chunk.append((next_id, sid, parent, "user" if user else "assistant",
                          " ".join(text_words), None if user else "bench", None if user else "stop",
                          None if user else 30, None if user else 20, t))  # fmt: skip
            if user:
                prev_user = next_id
            parent = next_id
            next_id += 1
        sessions.append((sid, f"Session {sid} " + " ".join(words[:3]), "bench", "default", 1, created, t,
                         1 if sid % 500 == 0 else 0, 1 if sid % 20 == 0 else 0))  # fmt: skip
        leaves.append((parent, sid))
        if len(chunk) >= 100_000:
            flush()
    if chunk or sessions:
        flush()
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    total = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    conn.close()
    return {"seconds": time.perf_counter() - t0, "messages": total, "common": vocab[0]}


def ms(t: float) -> str:
    return f"{t * 1000:.1f} ms"


def measure(path: Path, common: str) -> None:
    opens = []
    for _ in range(5):
        t = time.perf_counter()
        s = Store.open(path)
        rows = s.list_sessions(limit=50)
        opens.append(time.perf_counter() - t)
        s.close()
    assert rows, "no sessions listed"
    print(f"open + list newest 50 sessions: first {ms(opens[0])}, median of 5 {ms(statistics.median(opens))}"
          "   (goal <= 200 ms)")  # fmt: skip

    store = Store.open(path)
    queries = {
        "rare word": RARE[0],
        "common word": common,
        "two words": f"{common} {RARE[2]}",
        "prefix": "quokka*",
        "hostile": 'NEAR( "a OR -x',
    }
    medians = []
    for label, q in queries.items():
        times = []
        for _ in range(5):
            t = time.perf_counter()
            hits = store.search(q, limit=50)
            times.append(time.perf_counter() - t)
        medians.append(statistics.median(times))
        print(f"  search {label:<12} {q!r:<26} {len(hits):>3} hits  median {ms(medians[-1])}")
    print(f"full-text search: median over the queries {ms(statistics.median(medians))}, "
          f"worst {ms(max(medians))}   (goal <= 100 ms)")  # fmt: skip

    rng = random.Random(1)
    n_sessions = store.count_sessions(archived=None)
    times = []
    for i in range(200):
        sid = rng.randint(1, n_sessions)
        role = "user" if i % 2 == 0 else "assistant"
        t = time.perf_counter()
        store.add_message(sid, role, f"appended message {i} about {RARE[1]} and tea", finish_reason=None if role == "user" else "stop")
        times.append(time.perf_counter() - t)
    times.sort()
    found = len(store.search(RARE[1], limit=1000))
    assert found >= 200, f"the appended messages are not searchable ({found} hits): FTS triggers missing?"
    print(f"add_message x200: p50 {ms(times[100])}, p95 {ms(times[189])}, max {ms(times[-1])}   (goal <= 5 ms p95)")
    t = time.perf_counter()
    ok = store.check_integrity() == []
    print(f"(for reference) PRAGMA integrity_check: {ms(time.perf_counter() - t)}, ok={ok}")
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--dir", help="where to build (default: a temp folder, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the database")
    args = ap.parse_args()
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="chatfactory-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    path = root / "chatfactory.db"
    try:
        if path.exists():
            print(f"reusing {path}")
            common = vocabulary(5000, random.Random(0))[0]
        else:
            info = build(path, args.sessions, args.messages)
            common = info["common"]
            print(f"built {args.sessions} sessions / {info['messages']} messages in {info['seconds']:.0f} s "
                  f"({path.stat().st_size / 2**20:.0f} MiB)")  # fmt: skip
        measure(path, common)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
