"""The server on a real PostgreSQL database (started by the test): migrations from empty at
startup, exchanges stored under concurrency, and user isolation as 404."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa
from server_fixtures import *  # the fixtures
from server_fixtures import MODEL, RULES_ONLY, free_port, start_server
from store_fixtures import *  # the fixtures

from chatfactory.server.settings import Settings
from chatfactory.server.store.db import current_revision
from chatfactory.server.store.models import Message

openai = pytest.importorskip("openai")


@pytest.fixture
def pg_served(tiny_engine, postgres_url):
    settings = Settings(host="127.0.0.1", port=free_port(), database_url=postgres_url, models=[MODEL],
                        default_max_tokens=8, moderation_config=RULES_ONLY)
    handle = start_server(settings, {MODEL: tiny_engine}, users=("alice", "bob"))
    yield handle
    handle.stop()


def test_server_on_postgres(pg_served):
    assert current_revision(pg_served.runtime.db_engine) == "0001"  # migrated from empty at startup
    alice = openai.OpenAI(base_url=pg_served.base_url, api_key=pg_served.keys["alice"], max_retries=0)

    def ask(i: int) -> str:
        stream = alice.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"Hello {i}"}],
                                               max_tokens=6, seed=i, stream=True)
        chunks = list(stream)
        return chunks[0].model_extra["conversation_id"], "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(ask, range(6)))
    with pg_served.runtime.sessions() as s:
        for conv_id, text in done:
            rows = s.scalars(sa.select(Message).where(Message.conversation_id == conv_id).order_by(Message.position)).all()
            assert [m.role for m in rows] == ["user", "assistant"] and rows[1].content == text

    bob = httpx.Client(base_url=pg_served.base_url, headers={"Authorization": f"Bearer {pg_served.keys['bob']}"})
    r = bob.get(f"/conversations/{done[0][0]}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "conversation_not_found"
    assert bob.get("/conversations").json()["data"] == []
    mine = httpx.get(f"{pg_served.base_url}/conversations",
                     headers={"Authorization": f"Bearer {pg_served.keys['alice']}"}).json()["data"]
    assert {c["id"] for c in mine} == {c for c, _ in done}
