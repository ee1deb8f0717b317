"""`chatfactory demo` (what `make demo` runs): the tiny pipeline, then the chat server.

Trains the tiny assistant through every stage (about 15 minutes on a 2-core CPU; a re-run
resumes and skips finished stages), then serves the PPO model beside the bundled
SmolLM2-135M-Instruct and prints the chat page's address.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train the tiny assistant through every stage, then serve it",
                              description=__doc__)
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-serve", action="store_true", help="stop after the pipeline and its report")
    p.add_argument("--no-smollm2", action="store_true", help="serve only the model trained here")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from chatfactory.pipeline import run_pipeline

    out = Path(args.out)
    run_pipeline("tiny", out)
    report = out / "report.md"
    print(f"\nreport: {report}\n")
    if args.no_serve:
        return 0
    from chatfactory.server import cli as server_cli

    models = [f"tiny-ppo={out / 'ppo' / 'model'}", f"tiny-sft={out / 'sft' / 'model'}"]
    if not args.no_smollm2:
        models.append("smollm2-135m-instruct")
    print(f"chat page: http://127.0.0.1:{args.port}/  (Ctrl-C stops the server)", flush=True)
    return server_cli.run(_serve_namespace(models, args.port))


def _serve_namespace(models: list[str], port: int) -> argparse.Namespace:
    """The same namespace `chatfactory serve --model ... --port ...` would parse."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    from chatfactory.server import cli as server_cli

    server_cli.register(sub)
    argv = ["serve", "--port", str(port)]
    for m in models:
        argv += ["--model", m]
    return parser.parse_args(argv)
