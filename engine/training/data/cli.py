"""`chatfactory data ...`: convert public data sets to conversations, write the built-in tasks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .conversations import write_conversations


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="convert conversation data sets; write the built-in task sets")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    o = sub.add_parser("convert-oasst", help="OpenAssistant message trees (flat or nested .jsonl[.gz]) -> conversations")
    o.add_argument("input")
    o.add_argument("output", help="conversations .jsonl")
    o.add_argument("--all-paths", action="store_true", help="every root-to-leaf path, not only the best-ranked one")
    o.set_defaults(func=_convert_oasst)

    h = sub.add_parser("convert-hh", help="HH-RLHF transcripts (.jsonl[.gz]) -> conversations")
    h.add_argument("input")
    h.add_argument("output", help="conversations .jsonl")
    h.add_argument("--field", default="chosen", choices=("chosen", "rejected"), help="which transcript to keep")
    h.set_defaults(func=_convert_hh)

    t = sub.add_parser("tasks", help="write the built-in tasks: train.jsonl (SFT conversations) and test.jsonl")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--tasks", default="builtin", help="'builtin' or comma-separated task names")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--scale", type=float, default=1.0, help="multiply every task's training-set size")
    t.add_argument("--evasive", type=float, default=0.0,
                   help="fraction of training replies replaced by an evasive one (\"I'm not sure.\")")
    t.set_defaults(func=_write_tasks)


def _convert_oasst(args: argparse.Namespace) -> int:
    from .converters import oasst_conversations

    convs, report = oasst_conversations(args.input, all_paths=args.all_paths)
    _write(args.output, convs, report.summary())
    return 0


def _convert_hh(args: argparse.Namespace) -> int:
    from .converters import hh_conversations

    convs, report = hh_conversations(args.input, field_name=args.field)
    _write(args.output, convs, report.summary())
    return 0


def _write(output: str, convs: list[dict], summary: str) -> None:
    if not convs:
        raise ValueError(f"no conversations to write ({summary})")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_conversations(output, convs)
    print(f"{output}: {summary}")


def _write_tasks(args: argparse.Namespace) -> int:
    from .tasks import get_tasks, training_conversations

    tasks = get_tasks(args.tasks)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = write_conversations(out / "train.jsonl", training_conversations(tasks, args.seed, args.scale, args.evasive))
    with open(out / "test.jsonl", "w", encoding="utf-8") as f:
        for t in tasks:
            for it in t.items("test", seed=args.seed):
                rec = {"task": t.name, "messages": it.messages, "answer": it.answer, **dict(it.meta)}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"{out}/train.jsonl: {n} conversations; {out}/test.jsonl: held-out prompts of {', '.join(t.name for t in tasks)}")
    return 0
