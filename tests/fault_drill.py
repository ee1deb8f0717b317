"""Crash drills: kill -9 a chat turn while it streams and check that nothing was lost.

Used by tests/test_faults.py (a few cycles) and bench/faults.py (the larger counts). Each cycle
starts `chatfactory chat --message ...` in its own process on one database, kills it with
SIGKILL at a random moment while the answer streams (or just before, or during prompt
processing), then opens the database as the app does at its next start and checks:

- `PRAGMA integrity_check` is ok;
- every user message that was sent is stored;
- every answer cut by the kill is kept, with finish reason `interrupted`;
- the next turn works (every few cycles, and at the end).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PROMPTS = [
    "Write a long story about a dragon who learns to cook.",
    "Explain how a classification algorithm works, step by step.",
    "List twenty animals and one fact about each.",
]


@dataclass
class DrillReport:
    cycles: int = 0
    killed_while_streaming: int = 0
    sent: int = 0
    failures: list[str] = field(default_factory=list)


def chat_command(session: int | None, text: str, max_tokens: int) -> list[str]:
    cmd = [sys.executable, "-m", "engine.cli", "chat", "--message", text, "--max-tokens", str(max_tokens)]
    return cmd + (["--session", str(session)] if session else [])


def kill_drill(
    home: Path, cycles: int, seed: int = 0, max_tokens: int = 200, check_every: int = 5, p_streaming: float = 0.8
) -> DrillReport:
    """Run `cycles` kill -9 cycles against the database in `home` (CHATFACTORY_HOME). With
    probability `p_streaming` a cycle waits for the answer's first bytes before its random delay."""
    from engine.store import Store

    rng = random.Random(seed)
    env = {**os.environ, "CHATFACTORY_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    report = DrillReport()
    sent: list[str] = []
    session = None
    done: set[int] = set()  # sessions finished (their turn after the kills ran)
    for cycle in range(cycles):
        text = f"[{cycle}] {rng.choice(PROMPTS)}"
        proc = subprocess.Popen(chat_command(session, text, max_tokens), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        # kill after the first bytes of the answer, plus a random delay (sometimes before any)
        if rng.random() < p_streaming:
            os.set_blocking(proc.stdout.fileno(), True)
            proc.stdout.read(1)
        time.sleep(rng.uniform(0.0, 1.0))
        streaming = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        report.cycles += 1
        store = Store.open(home / "chatfactory.db")  # as the app starts: marks interrupted answers
        try:
            problems = store.check_integrity()
            if problems:
                report.failures.append(f"cycle {cycle}: integrity_check: {problems[:3]}")
            if session is None:
                listed = store.list_sessions(limit=1)
                session = listed[0]["id"] if listed and listed[0]["id"] not in done else None
            users = [m for m in store.messages(session) if m["role"] == "user"] if session else []
            stored = {m["content"] for m in users}
            for m in store.messages(session) if session else []:
                if m["role"] == "assistant" and m["finish_reason"] is None:
                    report.failures.append(f"cycle {cycle}: answer {m['id']} left unfinished after a restart")
            if text in stored:
                sent.append(text)
                answer = [m for m in store.messages(session) if m["parent_id"] == _id_of(users, text)]
                if streaming and answer and answer[-1]["finish_reason"] == "interrupted":
                    report.killed_while_streaming += 1
            everywhere = Counter(r[0] for r in store.db.execute("SELECT content FROM messages WHERE role = 'user'"))
            missing = list((Counter(sent) - everywhere).elements())
            if missing:
                report.failures.append(f"cycle {cycle}: sent messages missing: {missing[:2]}")
        finally:
            store.close()
        if (cycle + 1) % check_every == 0 or cycle == cycles - 1:
            # the turn after the kills, in the same session; then a fresh session, so the
            # replayed history (prefilled from cold by every new process) stays short
            ok = subprocess.run(chat_command(session, "What is the capital of France?", 16), env=env,
                                capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
            if ok.returncode != 0 or not ok.stdout.strip():
                report.failures.append(f"cycle {cycle}: the next turn failed: {ok.stderr.strip()[-300:]}")
            else:
                sent.append("What is the capital of France?")
            done.add(session)
            session = None
    report.sent = len(sent)
    return report


def _id_of(users: list[dict], text: str) -> int | None:
    return next((m["id"] for m in users if m["content"] == text), None)
