"""A real uvicorn server on a free loopback port, in a thread, serving a tiny random-init model
(saved as a native folder) through the real engine, chat flow, moderator and store.

Import the fixtures into a test module with `from server_fixtures import *`."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from tiny_chat_model import tiny_loaded

from chatfactory.server.app import create_app
from chatfactory.server.runtime import Runtime, build_runtime
from chatfactory.server.settings import Settings
from chatfactory.server.store import keys as keystore

__all__ = ["RULES_ONLY", "ServerHandle", "keyed_server", "local_server", "start_server", "tiny_engine"]

MODEL = "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerHandle:
    runtime: Runtime
    server: uvicorn.Server
    thread: threading.Thread
    port: int
    keys: dict[str, str]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.runtime.db_engine.dispose()


def start_server(settings: Settings, engines: dict, users: tuple[str, ...] = ()) -> ServerHandle:
    runtime = build_runtime(settings, engines=engines)
    keys = {}
    with runtime.sessions() as s:
        for name in users:
            keys[name], _ = keystore.create_key(s, name)
        s.commit()
    app = create_app(runtime, manage_engines=False)  # engines are shared by the module's servers
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return ServerHandle(runtime, server, thread, settings.port, keys)


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    import chatfactory.chat
    import chatfactory.moderation

    if not hasattr(chatfactory.chat, "ChatFlow") or not hasattr(chatfactory.moderation, "Moderator"):
        pytest.skip("the chat flow / moderator are not in this checkout yet")
    from chatfactory.engine.scheduler import Engine

    loaded = tiny_loaded(tmp_path_factory.mktemp("tiny") / "model", max_seq_len=512)
    loaded.name = MODEL
    engine = Engine(loaded, max_batch=8)
    engine.start()
    yield engine
    engine.shutdown()


RULES_ONLY = str(Path(__file__).with_name("moderation_rules_only.yaml"))


def _settings(tmp: Path, **kw) -> Settings:
    return Settings(host="127.0.0.1", port=free_port(), database_url=f"sqlite:///{tmp / 'chat.db'}",
                    models=[MODEL], default_max_tokens=24, moderation_config=RULES_ONLY, **kw)


@pytest.fixture(scope="module")
def local_server(tiny_engine, tmp_path_factory):
    """Keyless: the single local user of a loopback server."""
    handle = start_server(_settings(tmp_path_factory.mktemp("local")), {MODEL: tiny_engine})
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def keyed_server(tiny_engine, tmp_path_factory):
    """Keys for alice and bob; requests without a valid key are refused."""
    handle = start_server(_settings(tmp_path_factory.mktemp("keyed")), {MODEL: tiny_engine}, users=("alice", "bob"))
    yield handle
    handle.stop()
