"""`chatfactory serve`: the OpenAI-compatible API (and, once there, the web page) on uvicorn."""

from __future__ import annotations

import argparse
import logging

from .settings import DEFAULT_MODEL, Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve models over an OpenAI-compatible API",
        description="Serve one or more models behind the moderated chat flow. Settings also come from "
        "CHATFACTORY_* environment variables (DATABASE_URL too) and --config; flags win.",
    )
    p.add_argument(
        "--model", action="append", dest="models", metavar="NAME|PATH",
        help=f"a registry name, a model folder or .gguf file, or NAME=PATH; repeat to serve several "
        f"(default: {DEFAULT_MODEL}, downloaded on first use)",
    )
    p.add_argument("--config", help="YAML file of settings (host, port, database_url, models, flow_config, ...)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; beyond loopback, API keys are required)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--db", dest="database_url", help="database URL: sqlite:///file.db or postgresql://... (default: a SQLite file)")
    p.add_argument("--flow-config", help="chat-flow YAML: hidden instructions and template answers")
    p.add_argument("--moderation-config", help="moderator YAML")
    p.add_argument("--max-batch", type=int, help="sequences decoded together per model (default 16)")
    p.add_argument("--max-inflight", type=int, help="requests in flight before answering 429 (default 64)")
    p.add_argument("--require-keys", action="store_true", default=None, help="require API keys even on loopback")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .runtime import build_runtime, check_exposure
    from .store.db import open_database

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations are routine at every start
    settings = Settings.load(
        args.config, host=args.host, port=args.port, database_url=args.database_url, models=args.models,
        flow_config=args.flow_config, moderation_config=args.moderation_config, max_batch=args.max_batch,
        max_inflight=args.max_inflight, require_keys=args.require_keys,
    )
    db = open_database(settings.database_url)
    check_exposure(settings, db[1])  # before loading models: fail in a second, not a minute
    runtime = build_runtime(settings, db=db)
    app = create_app(runtime)
    print(f"chatfactory: serving {', '.join(runtime.engines)} on http://{settings.host}:{settings.port}/v1", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level)
    return 0
