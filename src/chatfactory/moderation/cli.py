"""`chatfactory moderation check|eval|train`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("moderation", help="check text, evaluate or train the moderation component")
    sub = p.add_subparsers(dest="moderation_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    c = sub.add_parser("check", help="moderate TEXT (or stdin) and print OpenAI-shaped results")
    c.add_argument("text", nargs="*", help="text to moderate; none = read stdin")
    c.add_argument("--prompt", help="judge TEXT as the answer to this prompt (output side)")
    c.add_argument("--config", help="policy YAML (default: the shipped default.yaml)")
    c.add_argument("--details", action="store_true", help="also print per-layer scores and signals")
    c.set_defaults(func=cmd_check)

    e = sub.add_parser("eval", help="precision/recall/F1/AUPRC/latency on labelled data")
    e.add_argument("--data", required=True, help="labelled file")
    e.add_argument(
        "--format", choices=["toxicchat", "dices", "openai"], help="default: guessed from the file"
    )
    e.add_argument("--config", help="policy YAML")
    e.add_argument("--limit", type=int, help="only the first N messages")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("train", help="train the classifier head on labelled JSONL")
    t.add_argument("--data", required=True, help='JSONL of {"text", "categories": {...}}, or ToxicChat data')
    t.add_argument("--format", choices=["toxicchat", "openai"], help="default: guessed from the file")
    t.add_argument("--encoder", choices=["static", "minilm"], default="static")
    t.add_argument("--out", required=True, help="where to write the head (.npz)")
    t.add_argument("--no-seed", action="store_true", help="leave out the shipped seed examples")
    t.add_argument("--epochs", type=int, default=300)
    t.add_argument("--l2", type=float, default=1e-3)
    t.set_defaults(func=cmd_train)


def _moderator(config: str | None):
    from .moderator import Moderator

    return Moderator.from_config(config)


def cmd_check(args: argparse.Namespace) -> int:
    from chatfactory.cli import UserError

    text = " ".join(args.text) if args.text else sys.stdin.read()
    if not text.strip():
        raise UserError("nothing to moderate: give TEXT or pipe it on stdin")
    mod = _moderator(args.config)
    res = mod.moderate_output(text, args.prompt) if args.prompt else mod.moderate(text)
    out = res.to_openai()
    if args.details:
        out["details"] = res.details
    print(json.dumps(out, indent=2, default=float))
    return 1 if res.flagged else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .datasets import load_records
    from .evaluate import evaluate, format_report

    records = load_records(args.data, args.format)
    rep = evaluate(_moderator(args.config), records, args.limit)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from chatfactory.cli import UserError

    from .datasets import load_records
    from .head import train_head
    from .seed import seed_records

    records = load_records(args.data, args.format)
    if not records:
        raise UserError(f"{args.data}: no examples")
    if not args.no_seed:
        records = records + seed_records()
    head = train_head(records, args.encoder, epochs=args.epochs, l2=args.l2)
    path = head.save(Path(args.out))
    print(f"trained a {args.encoder} head on {len(records)} examples -> {path}")
    print(f"use it with a policy whose classifier layer has `head: {path}`")
    return 0
