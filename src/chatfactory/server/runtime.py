"""Everything a running server holds: settings, database, engines, moderator, chat flow,
metrics and the in-flight limit. Built once by `build_runtime`, shared by all routes through
`app.state.runtime`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import Engine as DBEngine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from .errors import APIError, unknown_model
from .metrics import Metrics
from .settings import Settings, is_loopback
from .store import keys as keystore
from .store.db import open_database

if TYPE_CHECKING:
    from chatfactory.chat import ChatFlow
    from chatfactory.engine.scheduler import Engine
    from chatfactory.moderation import Moderator

log = logging.getLogger("chatfactory.server")
T = TypeVar("T")


def served_name(spec: str) -> tuple[str, str]:
    """(served name, what to load) for a --model value: `NAME=PATH`, a registry name, or a path
    (served under its folder or file name, without a .gguf suffix)."""
    if "=" in spec:
        name, _, path = spec.partition("=")
        if not name.strip() or not path.strip():
            raise ValueError(f"--model {spec!r}: expected NAME=PATH")
        return name.strip(), path.strip()
    path = Path(spec)
    if not path.exists():
        return spec, spec  # a registry name (the loader reports unknown ones)
    return (path.stem if path.suffix == ".gguf" else path.resolve().name), spec


class Slot:
    """One admitted generation request; `release` is idempotent (streams release on any exit)."""

    def __init__(self, runtime: Runtime):
        self._rt: Runtime | None = runtime

    def release(self) -> None:
        if self._rt is not None:
            self._rt.inflight -= 1
            self._rt.metrics.inflight.dec()
            self._rt = None


@dataclass
class Runtime:
    settings: Settings
    db_engine: DBEngine
    sessions: sessionmaker[Session]
    engines: dict[str, Engine]
    moderator: Moderator
    flow: ChatFlow
    local_user_id: int
    metrics: Metrics = field(default_factory=Metrics)
    inflight: int = 0

    def __post_init__(self) -> None:
        self.metrics.watch_engines(self.engines)

    def engine_for(self, name: str) -> Engine:
        engine = self.engines.get(name)
        if engine is None:
            raise unknown_model(name, list(self.engines))
        return engine

    def keys_required(self) -> bool:
        """Keys are required when configured so, when the server is exposed beyond loopback, or as
        soon as any active key exists (creating the first key turns auth on)."""
        if self.settings.require_keys or not is_loopback(self.settings.host):
            return True
        with self.sessions() as s:
            return keystore.active_key_count(s) > 0

    def admit(self) -> Slot:
        """Take an in-flight slot or refuse with 429: a bounded queue keeps latency bounded under
        overload instead of letting every request slow down together."""
        if self.inflight >= self.settings.max_inflight:
            self.metrics.rejected.inc()
            raise APIError(
                429,
                f"The server is overloaded ({self.inflight} requests in flight, limit "
                f"{self.settings.max_inflight}); retry shortly",
                code="server_overloaded",
            )
        self.inflight += 1
        self.metrics.inflight.inc()
        return Slot(self)

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(session, *args)` in a worker thread (the database driver blocks)."""

        def call() -> T:
            with self.sessions() as s:
                return fn(s, *args, **kwargs)

        return await run_in_threadpool(call)

    def start(self) -> None:
        for engine in self.engines.values():
            engine.start()

    def shutdown(self) -> None:
        for engine in self.engines.values():
            engine.shutdown()
        self.db_engine.dispose()


def check_exposure(settings: Settings, sessions: sessionmaker[Session]) -> None:
    """Refuse to serve beyond loopback without keys: anyone who can reach the port would chat as
    the local user and read its conversations."""
    if is_loopback(settings.host):
        return
    with sessions() as s:
        count = keystore.active_key_count(s)
    if count == 0:
        raise ValueError(
            f"refusing to listen on {settings.host}: no API keys exist, so anyone reaching this address "
            "could use the server. Create one with `chatfactory keys create --user NAME` "
            f"(same --db), or serve on 127.0.0.1."
        )


def load_engines(settings: Settings) -> dict[str, Engine]:
    from chatfactory.engine.scheduler import Engine
    from chatfactory.loader import load

    engines: dict[str, Engine] = {}
    for spec in settings.models:
        name, target = served_name(spec)
        if name in engines:
            raise ValueError(f"model name {name!r} given twice; use NAME=PATH to serve both")
        log.info("loading model %s from %s", name, target)
        loaded = load(target)
        loaded.name = name
        engines[name] = Engine(loaded, max_batch=settings.max_batch)
    return engines


def build_runtime(
    settings: Settings,
    *,
    engines: dict[str, Engine] | None = None,
    moderator: Moderator | None = None,
    db: tuple[DBEngine, sessionmaker[Session]] | None = None,
) -> Runtime:
    """Open (and migrate) the database, check exposure, load models, moderator and chat flow."""
    from chatfactory.chat import ChatFlow, FlowConfig
    from chatfactory.moderation import Moderator

    db_engine, sessions = db or open_database(settings.database_url)
    check_exposure(settings, sessions)
    with sessions() as s:
        local_user_id = keystore.get_or_create_user(s, keystore.LOCAL_USER).id
        s.commit()
    if moderator is None:
        moderator = Moderator.from_config(settings.moderation_config)
    if engines is None:
        engines = load_engines(settings)
    flow = ChatFlow(engines, moderator, FlowConfig.load(settings.flow_config))
    return Runtime(settings, db_engine, sessions, engines, moderator, flow, local_user_id)
