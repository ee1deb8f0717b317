"""`chatfactory chat`: the seven-step turn in a terminal, on the same store as the desktop app.

    chatfactory chat                               # interactive; /new, /history, /sessions, /quit
    chatfactory chat --session 12                  # continue a session
    chatfactory chat --message "Hi" [--model NAME|FILE] [--max-tokens N]   # one turn, then exit

One-shot mode prints the answer as it streams, stores it and exits 0 (a template answer
included: moderation doing its job is not a failure).
"""

from __future__ import annotations

import argparse
import sys
import threading


def register(subparsers) -> None:
    p = subparsers.add_parser("chat", help="chat with a local model in the terminal (stored like the app's chats)")
    p.add_argument("--message", "-m", help="send this one message, print the answer, and exit")
    p.add_argument("--session", type=int, help="continue this session (default: a new one)")
    p.add_argument("--model", help="registry name or .gguf file (default: the last used, else the bundled model)")
    p.add_argument("--max-tokens", type=int, help="longest answer in tokens")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the app's setting)")
    p.add_argument("--seed", type=int, help="sampling seed, for a repeatable answer")
    p.add_argument("--template", help="hidden template set for a new session (default: default)")
    p.add_argument("--db", help="database file (default: the app's)")
    p.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from engine.setup import open_chat

    # a terminal chat may run beside the app: it must not mark the app's live answer interrupted
    chat = open_chat(args.model, args.db, mark_interrupted=False)
    if chat.store.recovered_from:
        print(f"chatfactory: the database was damaged; it was set aside as {chat.store.recovered_from} "
              f"and a new one started at {chat.store.path}", file=sys.stderr)  # fmt: skip
    try:
        sampling = chat.sampling
        if args.max_tokens:
            if args.max_tokens < 1:
                raise ValueError("--max-tokens must be at least 1")
            sampling.max_tokens = args.max_tokens
        if args.temperature is not None:
            sampling.temperature = args.temperature
        if args.seed is not None:
            sampling.seed = args.seed
        session = args.session or chat.new_session(template_set=args.template)
        if args.session:
            chat.store.get_session(args.session)  # a clear error for an unknown id
        if args.message is not None:
            run_turn(chat, session, args.message)
            return 0
        return interactive(chat, session)
    finally:
        if chat.runtime:
            chat.runtime.close()
        chat.store.close()


def run_turn(chat, session: int, text: str, cancel: threading.Event | None = None) -> None:
    out = sys.stdout
    for ev in chat.send(session, text, cancel=cancel):
        if ev.kind == "started" and ev.data.get("dropped"):
            print(f"[{ev.data['dropped']} old messages left out to fit the context window]", file=sys.stderr)
        elif ev.kind == "delta":
            out.write(ev.text)
            out.flush()
        elif ev.kind == "replace":
            out.write(("\n" if ev.text else "") + ev.text)
        elif ev.kind == "verdict" and ev.data.get("flagged"):
            cats = ", ".join(ev.data.get("categories") or []) or "moderation error"
            print(f"[moderation: {ev.data['stage']} flagged ({cats})]", file=sys.stderr)
        elif ev.kind == "done":
            reason = ev.data["message"].get("finish_reason")
            out.write("\n")
            if reason not in ("stop", "content_filter"):
                print(f"[{reason}]", file=sys.stderr)
    out.flush()


def interactive(chat, session: int) -> int:
    print(f"chatfactory chat, session {session} ({chat.runtime.name}). /new, /history, /sessions, /quit")
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        cmd = line.strip()
        if not cmd:
            continue
        if cmd in ("/quit", "/exit"):
            return 0
        if cmd == "/new":
            session = chat.new_session()
            print(f"new session {session}")
            continue
        if cmd == "/history":
            for m in chat.store.branch(session):
                print(f"{m['role']}: {m['content']}")
            continue
        if cmd == "/sessions":
            for s in chat.store.list_sessions(limit=20):
                print(f"{s['id']:>6}  {s['title']}")
            continue
        cancel = threading.Event()
        try:
            run_turn(chat, session, line, cancel)
        except KeyboardInterrupt:  # Ctrl+C stops the answer, not the chat
            cancel.set()
            print("\n[stopped]")
