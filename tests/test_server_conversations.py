"""Conversations held by the server (isolation between users, continuation, rename, delete),
the keys command, keyless-exposure refusal, and the terminal chat client."""

from __future__ import annotations

import io
import json
from argparse import Namespace

import httpx
import pytest
from server_fixtures import *
from server_fixtures import MODEL

from chatfactory.server.chat_cli import ChatClient, chat_loop
from chatfactory.server.runtime import build_runtime
from chatfactory.server.settings import Settings


def api(server, user: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.keys[user]}"} if user else {}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=60)


def test_conversation_lifecycle_and_isolation(keyed_server):
    alice, bob = api(keyed_server, "alice"), api(keyed_server, "bob")
    conv = alice.post("/conversations", json={"title": "first", "model": MODEL}).json()
    cid = conv["id"]
    assert conv["object"] == "conversation" and conv["title"] == "first"

    r = alice.post(f"/conversations/{cid}/messages", json={"content": "Hello there", "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200, r.text
    one = r.json()
    assert one["object"] == "chat.completion" and one["conversation_id"] == cid
    # continue it, streaming: only the new message is sent; the server holds the history
    with alice.stream("POST", f"/conversations/{cid}/messages",
                      json={"content": "And then?", "max_tokens": 6, "stream": True}) as s:
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    streamed = "".join((c["choices"][0]["delta"].get("content") or "") for c in map(json.loads, events[:-1]) if c["choices"])

    detail = alice.get(f"/conversations/{cid}").json()
    assert [(m["role"], m["position"]) for m in detail["messages"]] == [
        ("user", 0), ("assistant", 1), ("user", 2), ("assistant", 3)]
    assert detail["messages"][1]["content"] == one["choices"][0]["message"]["content"]
    assert detail["messages"][3]["content"] == streamed
    assert detail["messages"][1]["usage"]["completion_tokens"] >= 1

    # bob sees nothing of it, and cannot change it: 404, exactly like a missing conversation
    assert [c["id"] for c in bob.get("/conversations").json()["data"]] == []
    for method, path, body in [("GET", f"/conversations/{cid}", None), ("PATCH", f"/conversations/{cid}", {"title": "x"}),
                               ("DELETE", f"/conversations/{cid}", None),
                               ("POST", f"/conversations/{cid}/messages", {"content": "hi"})]:
        r = bob.request(method, path, json=body)
        assert r.status_code == 404, (method, r.text)
        assert r.json()["error"]["code"] == "conversation_not_found"

    assert alice.patch(f"/conversations/{cid}", json={"title": "renamed"}).json()["title"] == "renamed"
    listed = alice.get("/conversations", params={"source": "conversation"}).json()
    assert [c["id"] for c in listed["data"]] == [cid] and listed["data"][0]["title"] == "renamed"
    assert alice.delete(f"/conversations/{cid}").json() == {"id": cid, "object": "conversation.deleted", "deleted": True}
    assert alice.get(f"/conversations/{cid}").status_code == 404


def test_openai_client_sees_404_for_foreign_conversation(keyed_server):
    openai = pytest.importorskip("openai")
    cid = api(keyed_server, "alice").post("/conversations", json={}).json()["id"]
    bob = openai.OpenAI(base_url=keyed_server.base_url, api_key=keyed_server.keys["bob"], max_retries=0)
    with pytest.raises(openai.NotFoundError):
        bob.get(f"/conversations/{cid}", cast_to=object)


def test_flagged_turn_is_never_fed_back(keyed_server):
    alice = api(keyed_server, "alice")
    cid = alice.post("/conversations", json={}).json()["id"]
    r = alice.post(f"/conversations/{cid}/messages", json={"content": "I am going to kill you and your family"}).json()
    assert r["choices"][0]["finish_reason"] == "content_filter" and r["choices"][0]["template_used"] == "input"
    alice.post(f"/conversations/{cid}/messages", json={"content": "Sorry. Hello!", "max_tokens": 4})
    msgs = alice.get(f"/conversations/{cid}").json()["messages"]
    assert [m["flagged"] for m in msgs] == [True, True, False, False]


def test_refuses_non_loopback_without_keys(tmp_path, tiny_engine):
    settings = Settings(host="0.0.0.0", port=1, database_url=f"sqlite:///{tmp_path / 'x.db'}", models=[MODEL])
    with pytest.raises(ValueError, match="refusing to listen on 0.0.0.0: no API keys"):
        build_runtime(settings, engines={MODEL: tiny_engine})


def test_keys_cli_prints_key_last_and_it_works(keyed_server, capsys):
    from chatfactory.cli import main

    url = keyed_server.runtime.settings.database_url
    assert main(["keys", "--db", url, "create", "--user", "carol"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    r = httpx.get(f"{keyed_server.base_url}/models", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    assert main(["keys", "--db", url, "list"]) == 0
    assert "carol" in capsys.readouterr().out
    assert main(["keys", "--db", url, "revoke", key[:10]]) == 0
    r = httpx.get(f"{keyed_server.base_url}/models", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401


def test_chat_cli_streams_keeps_conversation_and_shows_templates(keyed_server):
    client = ChatClient(keyed_server.base_url, keyed_server.keys["alice"])
    out = io.StringIO()
    args = Namespace(conversation=None, model=None, temperature=0.0, max_tokens=5, seed=None)
    lines = "Hello there\nI am going to kill you and your family\n/quit\n"
    assert chat_loop(client, args, io.StringIO(lines), out) == 0
    text = out.getvalue()
    assert text.count("[conversation ") == 1  # both turns in one conversation
    assert "[moderation: your message was flagged (" in text and "violence" in text
    cid = text.split("[conversation ")[1].split("]")[0]
    msgs = api(keyed_server, "alice").get(f"/conversations/{cid}").json()["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
