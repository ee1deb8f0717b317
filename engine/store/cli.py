"""`chatfactory sessions list|show|search|export|import|delete`: the history from a terminal.

The CLI opens the store with `mark_interrupted=False`: it may run while the desktop app is
streaming an answer, which must not be marked "interrupted" under its feet.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import NotFoundError, Store, StoreError


def register(subparsers) -> None:
    p = subparsers.add_parser("sessions", help="list, show, search, export or import conversations")
    p.add_argument("--db", help="database file (default: the app's, in the data folder)")
    sub = p.add_subparsers(dest="sessions_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    # --db is accepted after the subcommand too; SUPPRESS keeps a subparser from resetting it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, help="database file")

    ls = sub.add_parser("list", parents=[common], help="sessions, pinned first, newest first")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--archived", action="store_true", help="only archived sessions")
    ls.add_argument("--all", action="store_true", help="archived and not")
    ls.set_defaults(func=cmd_list)

    sh = sub.add_parser("show", parents=[common], help="print a session's visible branch")
    sh.add_argument("id", type=int)
    sh.add_argument("--hidden", action="store_true", help="print what the model saw, hidden text included")
    sh.set_defaults(func=cmd_show)

    se = sub.add_parser("search", parents=[common], help="full-text search over message text")
    se.add_argument("query", nargs="+")
    se.add_argument("--limit", type=int, default=20)
    se.set_defaults(func=cmd_search)

    ex = sub.add_parser("export", parents=[common], help="write sessions to a JSON or Markdown file")
    ex.add_argument("--session", type=int, action="append", help="a session id (repeat; default: all)")
    ex.add_argument("--format", choices=["json", "markdown"], default="json")
    ex.add_argument("--out", required=True, help="output file ('-' = stdout)")
    ex.set_defaults(func=cmd_export)

    im = sub.add_parser("import", parents=[common], help="import a chatfactory export or ChatGPT conversations.json")
    im.add_argument("file")
    im.set_defaults(func=cmd_import)

    de = sub.add_parser("delete", parents=[common], help="delete a session and all its messages")
    de.add_argument("id", type=int)
    de.set_defaults(func=cmd_delete)


def _open(args: argparse.Namespace) -> Store:
    try:
        store = Store.open(getattr(args, "db", None), mark_interrupted=False)
    except StoreError as e:
        raise ValueError(str(e)) from None
    if store.recovered_from:
        print(f"warning: the database was unreadable and was moved to {store.recovered_from}; "
              "a new, empty one was created", file=sys.stderr)  # fmt: skip
    return store


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def cmd_list(args: argparse.Namespace) -> int:
    archived = None if args.all else bool(args.archived)
    with _open(args) as store:
        rows = store.list_sessions(limit=args.limit, archived=archived)
        total = store.count_sessions(archived=archived)
    for s in rows:
        flags = ("*" if s["pinned"] else " ") + ("a" if s["archived"] else " ")
        print(f"{s['id']:>6} {flags} {_when(s['updated'])}  {s['title']}")
    if not rows:
        print("no sessions")
    elif total > len(rows):
        print(f"({len(rows)} of {total}; --limit N for more)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _open(args) as store:
        try:
            s = store.get_session(args.id)
            msgs = store.branch(args.id)
        except NotFoundError as e:
            raise ValueError(str(e)) from None
    print(f"# {s['title']}  (session {s['id']}, {_when(s['created'])}" + (f", {s['model']}" if s["model"] else "") + ")")
    for m in msgs:
        extra = f" [{m['finish_reason']}]" if m["finish_reason"] not in (None, "stop") else ""
        print(f"\n## {m['role']} (message {m['id']}){extra}\n")
        print(m["hidden"] if args.hidden and m["hidden"] is not None else m["content"])
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    with _open(args) as store:
        hits = store.search(" ".join(args.query), limit=args.limit, marks=("[", "]"))
    for h in hits:
        print(f"session {h['session_id']} ({h['session_title']}), message {h['message_id']} {h['role']}: {h['snippet']}")
    if not hits:
        print("no matches")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import json

    from .transfer import export_json, export_markdown, export_to_file

    with _open(args) as store:
        try:
            if args.out == "-":
                if args.format == "json":
                    print(json.dumps(export_json(store, args.session), ensure_ascii=False, indent=1))
                else:
                    print(export_markdown(store, args.session))
                return 0
            path = export_to_file(store, args.out, fmt=args.format, session_ids=args.session)
            n = len(args.session) if args.session else store.count_sessions(archived=None)
        except NotFoundError as e:
            raise ValueError(str(e)) from None
    print(f"exported {n} session(s) to {path} ({args.format})", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .transfer import import_file

    with _open(args) as store:
        res = import_file(store, args.file)
    name = {"chatfactory": "a chatfactory export", "chatgpt": "a ChatGPT export"}[res.format]
    print(f"{args.file}: {name}; imported {len(res.sessions)} session(s), {res.messages} message(s)")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _open(args) as store:
        try:
            s = store.get_session(args.id)
            n = len(store.messages(args.id))
            store.delete_session(args.id)
        except NotFoundError as e:
            raise ValueError(str(e)) from None
    print(f'deleted session {args.id} ("{s["title"]}", {n} message(s))')
    return 0

