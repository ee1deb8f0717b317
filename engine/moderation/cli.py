"""`chatfactory moderation check|score|eval|train`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.paths import atomic_writer


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

    s = sub.add_parser("score", help='moderate every line of a JSONL file of {"text": ...}')
    s.add_argument("--input", required=True, help='JSONL, one {"text": "..."} object a line')
    s.add_argument(
        "--output",
        required=True,
        help='JSONL written in the same order: {"flagged", "score" (highest category score), "categories"}',
    )
    s.add_argument("--config", help="policy YAML (default: the shipped default.yaml)")
    s.add_argument("--batch-size", type=int, default=64, help="texts moderated at once (default 64)")
    s.set_defaults(func=cmd_score)

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
    from engine.cli import UserError

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


def read_texts(path: str | Path) -> list[str]:
    """The `text` of each line of a JSONL file; a bad line raises ValueError naming file:line.

    Blank lines are skipped (so a trailing newline is fine)."""
    texts = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
            text = obj.get("text") if isinstance(obj, dict) else None
            if not isinstance(text, str):
                if not isinstance(obj, dict):
                    got = f"a JSON {type(obj).__name__}, not an object"
                else:
                    got = 'no "text" key' if "text" not in obj else f'"text" is {type(text).__name__}'
                raise ValueError(f'{where}: expected {{"text": "..."}}, got {got}')  # noqa: TRY004 (bad input)
            texts.append(text)
    return texts


def cmd_score(args: argparse.Namespace) -> int:
    from engine.cli import UserError

    if args.batch_size < 1:
        raise UserError("--batch-size must be 1 or more")
    texts = read_texts(args.input)  # every line is checked before the moderator loads
    mod = _moderator(args.config)
    out = Path(args.output)
    flagged = 0
    with atomic_writer(out) as f:  # no partial output if moderation fails halfway
        for start in range(0, len(texts), args.batch_size):
            for res in mod.moderate_batch(texts[start : start + args.batch_size]):
                flagged += bool(res.flagged)
                row = {
                    "flagged": bool(res.flagged),
                    "score": max(float(v) for v in res.category_scores.values()),
                    "categories": {c: bool(v) for c, v in res.categories.items()},
                }
                f.write(json.dumps(row) + "\n")
    print(f"scored {len(texts)} texts ({flagged} flagged) -> {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .datasets import load_records
    from .evaluate import evaluate, format_report

    records = load_records(args.data, args.format)
    rep = evaluate(_moderator(args.config), records, args.limit)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from engine.cli import UserError

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
