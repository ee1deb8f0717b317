"""One entry point: `chatfactory <command>`.

Each command lives next to the code it drives; a module named here exposes
`register(subparsers)` which adds its parser and sets `func(args) -> int | None`.
Modules are imported only when their command is registered, so adding a command
means adding one line to COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module that registers it (in `chatfactory --help` order)
COMMANDS: dict[str, str] = {
    "chat": "engine.chat_cli",
    "sessions": "engine.store.cli",
    "models": "engine.models.cli",
    "moderation": "engine.moderation.cli",
    "pretrain": "engine.training.train.pretrain",
    "sft": "engine.training.train.sft",
    "sample": "engine.training.train.sample",
    "rank": "engine.training.train.labeller",
    "reward": "engine.training.train.reward",
    "dpo": "engine.training.train.dpo",
    "ppo": "engine.training.train.ppo",
    "eval": "engine.training.eval.tasks",
    "eval-rlhf": "engine.training.eval.rlhf",
    "data": "engine.training.data.cli",
    "pipeline": "engine.training.pipeline",
    "finetune": "engine.finetune.cli",
}


class UserError(Exception):
    """An error caused by the user's input: printed without a traceback."""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatfactory", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None
    if argv:
        first = next((a for a in argv if not a.startswith("-")), None)
        if first in COMMANDS:
            wanted = first  # import only the module we need: keeps `chatfactory X` fast
    for name, module in COMMANDS.items():
        if wanted is not None and name != wanted:
            sub.add_parser(name)
            continue
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except (UserError, FileNotFoundError, ValueError, KeyError) as e:  # bad input: one line, no traceback
        print(f"chatfactory {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"chatfactory {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
