"""`chatfactory keys create|list|revoke`: API keys, stored as sha256 hashes only."""

from __future__ import annotations

import argparse

from .settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="create, list and revoke API keys", description=__doc__)
    p.add_argument("--db", dest="database_url", help="database URL (default: the server's, from settings)")
    p.add_argument("--config", help="YAML settings file (for its database_url)")
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    c = ks.add_parser("create", help="make a key for a user (created if new); the key is printed once, on the last line")
    c.add_argument("--user", required=True, help="user name")
    c.add_argument("--label", help="a note to tell keys apart (e.g. 'laptop')")
    ks.add_parser("list", help="list keys (never the keys themselves: only their first characters)")
    r = ks.add_parser("revoke", help="revoke a key by id or by the prefix `keys list` shows")
    r.add_argument("key", metavar="ID|PREFIX")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .store import keys as keystore
    from .store.db import open_database

    settings = Settings.load(getattr(args, "config", None), database_url=args.database_url)
    engine, sessions = open_database(settings.database_url)
    try:
        with sessions() as s:
            if args.keys_command == "create":
                key, row = keystore.create_key(s, args.user, label=args.label)
                s.commit()
                print(f"created key {row.id} for user {args.user!r} (shown once; only its hash is stored):")
                print(key)  # alone on the last line, for scripts: KEY=$(chatfactory keys create ... | tail -1)
            elif args.keys_command == "list":
                rows = keystore.list_keys(s)
                if not rows:
                    print("no keys (the server accepts keyless requests on loopback only)")
                for k in rows:
                    state = "revoked " + k.revoked_at.strftime("%Y-%m-%d") if k.revoked_at else "active"
                    used = k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else "never"
                    print(f"{k.id:>4}  {k.prefix}…  {k.user.name:<20} {state:<18} last used {used}"
                          + (f"  ({k.label})" if k.label else ""))
            else:
                row = keystore.revoke_key(s, args.key)
                s.commit()
                print(f"revoked key {row.id} ({row.prefix}…) of user {row.user.name!r}")
    finally:
        engine.dispose()
    return 0
