"""The feedback routes against a real server (tiny model, real engine, flow and store): thumbs
with comments, Compare mode and its rankings, Regenerate keeping the earlier answer, edit and
resend, who-am-I, and the page served with its security headers."""

from __future__ import annotations

import json

import httpx
import pytest
from server_fixtures import *
from server_fixtures import MODEL, free_port, start_server

from chatfactory.data.preferences import parse_record
from chatfactory.feedback import export_records
from chatfactory.server.store.models import Feedback, Ranking


def client(server, user: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.keys[user]}"} if user else {}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=60)


def chat(c: httpx.Client, cid: str, text: str) -> dict:
    r = c.post(f"/conversations/{cid}/messages", json={"content": text, "max_tokens": 5, "temperature": 1.0})
    assert r.status_code == 200, r.text
    return r.json()


def stream_events(c: httpx.Client, path: str, body: dict) -> list[dict]:
    with c.stream("POST", path, json={**body, "stream": True}) as s:
        assert s.status_code == 200, s.read()
        data = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_thumbs_are_stored_replaced_listed_and_private(keyed_server):
    alice, bob = client(keyed_server, "alice"), client(keyed_server, "bob")
    cid = alice.post("/conversations", json={"model": MODEL}).json()["id"]
    answer_id = chat(alice, cid, "Hello there")["message_id"]
    user_msg = alice.get(f"/conversations/{cid}").json()["messages"][0]

    r = alice.put(f"/messages/{answer_id}/feedback", json={"rating": -1, "comment": "  made up  "})
    assert r.status_code == 200, r.text
    assert r.json()["rating"] == -1 and r.json()["comment"] == "made up"
    # one judgement per person and answer: a second one replaces it
    alice.put(f"/messages/{answer_id}/feedback", json={"rating": 1})
    with keyed_server.runtime.sessions() as s:
        rows = s.query(Feedback).filter_by(message_id=answer_id).all()
        assert [(f.rating, f.comment) for f in rows] == [(1, None)]
    listed = alice.get(f"/conversations/{cid}/feedback").json()["data"]
    assert [(f["message_id"], f["rating"]) for f in listed] == [(answer_id, 1)]

    # bad input is named; someone else's answer is "not found", like a missing one
    r = alice.put(f"/messages/{answer_id}/feedback", json={"rating": 5})
    assert r.status_code == 400 and "rating must be 1" in r.json()["error"]["message"]
    r = alice.put(f"/messages/{user_msg['id']}/feedback", json={"rating": 1})
    assert r.status_code == 400 and "assistant" in r.json()["error"]["message"]
    assert bob.put(f"/messages/{answer_id}/feedback", json={"rating": -1}).status_code == 404
    assert bob.get(f"/conversations/{cid}/feedback").status_code == 404
    assert (
        alice.put("/messages/msg_nope/feedback", json={"rating": 1}).json()["error"]["code"]
        == "message_not_found"
    )

    assert alice.delete(f"/messages/{answer_id}/feedback").json()["deleted"] is True
    assert alice.get(f"/conversations/{cid}/feedback").json()["data"] == []


def test_compare_streams_n_answers_and_stores_the_ranking(keyed_server):
    alice, bob = client(keyed_server, "alice"), client(keyed_server, "bob")
    body = {
        "model": MODEL,
        "prompt": "Name a colour.",
        "system": "Be brief.",
        "n": 3,
        "max_tokens": 6,
        "temperature": 1.0,
        "seed": 7,
    }
    chunks = stream_events(alice, "/compare", body)
    cid = chunks[0]["conversation_id"]
    texts = ["", "", ""]
    for c in chunks:
        for ch in c["choices"]:
            texts[ch["index"]] += ch["delta"].get("content") or ""
    # compare runs are recorded, but not listed among the person's chats
    assert cid not in [
        c["id"] for c in alice.get("/conversations", params={"source": "conversation"}).json()["data"]
    ]

    r = alice.post("/rankings", json={"conversation_id": cid, "ranking": [2, [0, 1]]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["responses"] == texts and out["ranking"] == [[2], [0, 1]] and out["rater"] == "alice"
    with keyed_server.runtime.sessions() as s:
        row = s.get(Ranking, out["id"])
        assert row.prompt == {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Name a colour."},
            ]
        }
        assert row.responses == texts and row.ranking == [[2], [0, 1]] and row.model == MODEL
        assert row.sampling["temperature"] == 1.0 and row.sampling["n"] == 3 and row.sampling["seed"] == 7
        # what the export writes is what the reward stage reads
        records, problems = export_records(s, "rankings")
        assert problems == []
        mine = [parse_record(r) for r in records if r.get("ranking_id") == row.id]
        assert mine[0].ranking == [[2], [0, 1]] and mine[0].responses == texts

    # the person changes their mind
    r = alice.put(f"/rankings/{out['id']}", json={"ranking": [[0, 1, 2]]})
    assert r.status_code == 200 and r.json()["ranking"] == [[0, 1, 2]]

    # a ranking must place every answer once; other people's runs are not found
    r = alice.post("/rankings", json={"conversation_id": cid, "ranking": [0, 1]})
    assert r.status_code == 400 and "exactly once" in r.json()["error"]["message"]
    assert bob.post("/rankings", json={"conversation_id": cid, "ranking": [0, 1, 2]}).status_code == 404
    assert bob.put(f"/rankings/{out['id']}", json={"ranking": [0, 1, 2]}).status_code == 404
    # only compare runs can be ranked; n is 2..4
    chat_id = alice.post("/conversations", json={"model": MODEL}).json()["id"]
    assert alice.post("/rankings", json={"conversation_id": chat_id, "ranking": [0]}).status_code == 404
    assert alice.post("/compare", json={**body, "n": 5}).status_code == 400


def test_regenerate_keeps_the_earlier_answer_as_an_alternative(local_server):
    c = client(local_server)
    cid = c.post("/conversations", json={"model": MODEL}).json()["id"]
    first = chat(c, cid, "Hello there")
    first_id = first["message_id"]
    c.put(f"/messages/{first_id}/feedback", json={"rating": -1})
    events = stream_events(
        c, f"/conversations/{cid}/regenerate", {"max_tokens": 5, "temperature": 1.0, "seed": 3}
    )
    second_text = "".join(ch["delta"].get("content") or "" for e in events for ch in e["choices"])
    msgs = c.get(f"/conversations/{cid}").json()["messages"]
    assert [(m["role"], m["position"], m["choice_index"]) for m in msgs] == [
        ("user", 0, 0),
        ("assistant", 1, 0),
        ("assistant", 1, 1),
    ]
    newest, older = msgs[1], msgs[2]
    assert older["id"] == first_id and newest["content"] == second_text
    # the next turn follows the newest answer; thumbs on both become a training pair
    c.put(f"/messages/{newest['id']}/feedback", json={"rating": 1})
    if newest["content"] != older["content"]:
        with local_server.runtime.sessions() as s:
            recs, _ = export_records(s, "pairs")
        pair = [
            r for r in recs if r.get("origin") == "thumbs" and r["prompt"][-1]["content"] == "Hello there"
        ]
        assert pair and pair[0]["chosen"][0]["content"] == newest["content"]
        assert pair[0]["rejected"][0]["content"] == older["content"]
    chat(c, cid, "And then?")
    assert len(c.get(f"/conversations/{cid}").json()["messages"]) == 5


def test_edit_replaces_a_message_and_what_followed(local_server):
    c = client(local_server)
    cid = c.post("/conversations", json={"model": MODEL}).json()["id"]
    chat(c, cid, "first question")
    chat(c, cid, "second question")
    msgs = c.get(f"/conversations/{cid}").json()["messages"]
    events = stream_events(
        c,
        f"/conversations/{cid}/edit",
        {"message_id": msgs[0]["id"], "content": "better question", "max_tokens": 4},
    )
    assert events[0]["conversation_id"] == cid
    after = c.get(f"/conversations/{cid}").json()["messages"]
    assert [(m["role"], m["content"]) for m in after][:1] == [("user", "better question")] and len(after) == 2
    r = c.post(f"/conversations/{cid}/edit", json={"message_id": after[1]["id"], "content": "x"})
    assert r.status_code == 400 and "not a user message" in r.json()["error"]["message"]


def test_me_and_the_page(keyed_server, local_server):
    assert client(keyed_server, "bob").get("/me").json()["name"] == "bob"
    assert client(keyed_server).get("/me").status_code == 401
    assert client(local_server).get("/me").json() == {
        "object": "user",
        "name": "local",
        "keys_required": False,
    }
    root = keyed_server.base_url.removesuffix("/v1")
    page = httpx.get(root + "/")  # the page itself needs no key: it asks for one
    assert page.status_code == 200 and "<title>chatfactory</title>" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "object-src 'none'" in csp
    js = httpx.get(root + "/static/app.js")
    assert js.status_code == 200 and js.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(root + "/static/vendor/purify.min.js").status_code == 200
    assert httpx.get(root + "/static/../server/app.py").status_code == 404


@pytest.mark.parametrize("path", ["/compare", "/rankings"])
def test_feedback_routes_need_a_key_when_keys_exist(keyed_server, path):
    assert client(keyed_server).post(path, json={}).status_code == 401


def test_conversations_and_feedback_survive_a_restart(local_server, tiny_engine):
    """A new server process on the same database (a restart, or a second replica) serves them."""
    c = client(local_server)
    cid = c.post("/conversations", json={"model": MODEL}).json()["id"]
    answer_id = chat(c, cid, "Remember me")["message_id"]
    c.put(f"/messages/{answer_id}/feedback", json={"rating": 1, "comment": "kept"})
    settings = local_server.runtime.settings.model_copy(update={"port": free_port()})
    again = start_server(settings, {MODEL: tiny_engine})
    try:
        c2 = client(again)
        assert c2.get(f"/conversations/{cid}").json()["messages"][0]["content"] == "Remember me"
        assert c2.get(f"/conversations/{cid}/feedback").json()["data"][0]["comment"] == "kept"
    finally:
        again.stop()
