"""The OpenAI-compatible API, driven by the official `openai` client against a real uvicorn
server on loopback (tiny random-init model, real engine, chat flow, moderator and SQLite)."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from server_fixtures import *
from server_fixtures import MODEL

from chatfactory.moderation.taxonomy import validate_openai_result
from chatfactory.server.store.models import Conversation, Message

openai = pytest.importorskip("openai")

HARMFUL = "I am going to kill you and your whole family tonight"
HELLO = [{"role": "user", "content": "Hello there, how are you?"}]


@pytest.fixture(scope="module")
def client(local_server):
    return openai.OpenAI(base_url=local_server.base_url, api_key="unused-on-loopback", max_retries=0, timeout=60)


def result_only(item) -> dict:
    """A moderation result of a completion, without the `model`/`type` fields it adds."""
    return {k: v for k, v in item.model_dump().items() if k not in ("model", "type")}


def stored(server, conversation_id: str) -> list[Message]:
    with server.runtime.sessions() as s:
        return list(s.scalars(sa.select(Message).where(Message.conversation_id == conversation_id)
                              .order_by(Message.position, Message.choice_index)))


def test_models_health_metrics(local_server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx.get(f"http://127.0.0.1:{local_server.port}/health").json()
    assert health["status"] == "ok" and health["database"] == "ok" and health["models"] == [MODEL]
    text = httpx.get(f"http://127.0.0.1:{local_server.port}/metrics").text
    assert 'chatfactory_http_requests_total{method="GET",route="/v1/models",status="200"}' in text
    # the engine's own counters: one generation later its token count has grown by what it made
    def engine_tokens() -> float:
        text = httpx.get(f"http://127.0.0.1:{local_server.port}/metrics").text
        line = next(x for x in text.splitlines() if x.startswith(f'chatfactory_engine_tokens_total{{model="{MODEL}"}}'))
        return float(line.rsplit(" ", 1)[1])

    before = engine_tokens()
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    assert engine_tokens() - before >= r.usage.completion_tokens >= 1
    text = httpx.get(f"http://127.0.0.1:{local_server.port}/metrics").text
    for name in ("chatfactory_engine_decode_steps_total", "chatfactory_engine_running", "chatfactory_prefix_cache_reused_tokens_total",
                 "chatfactory_engine_admitted_total", "chatfactory_engine_queue_wait_seconds_total"):
        assert f'{name}{{model="{MODEL}"}}' in text
    # where the engine's time went: both phases ran for that answer
    for phase in ("decode", "admit"):
        line = next(x for x in text.splitlines() if x.startswith(f'chatfactory_engine_seconds_total{{model="{MODEL}",phase="{phase}"}}'))
        assert float(line.rsplit(" ", 1)[1]) > 0


def test_chat_completion_usage_moderation_and_storage(local_server, client):
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == MODEL
    assert choice.finish_reason in ("stop", "length") and isinstance(choice.message.content, str)
    assert r.usage.prompt_tokens > 0 and 1 <= r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # OpenAI's moderated-completions shape: typed by the official client
    assert r.moderation.input.type == r.moderation.output.type == "moderation_results"
    for side in (r.moderation.input, r.moderation.output):
        validate_openai_result(result_only(side.results[0]))
    assert not r.moderation.input.results[0].flagged
    # the exchange is in the database: prompt side and answer, with its record
    rows = stored(local_server, r.model_extra["conversation_id"])
    assert [(m.role, m.content) for m in rows] == [("user", HELLO[0]["content"]), ("assistant", choice.message.content)]
    answer = rows[1]
    assert answer.id == r.model_extra["message_id"]
    assert answer.finish_reason == choice.finish_reason and answer.completion_tokens == r.usage.completion_tokens
    assert answer.sampling["temperature"] == 0 and answer.sampling["max_tokens"] == 8
    assert answer.hidden_version and answer.total_ms > 0
    assert rows[0].moderation["flagged"] is False


def test_streaming_with_usage(local_server, client):
    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason in ("stop", "length")
    assert finish[0].moderation.output.results[0].flagged is False  # on the finishing chunk
    finish = [finish[0].choices[0]]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    # same answer as without streaming (greedy), and stored as shown
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)
    assert text == plain.choices[0].message.content
    rows = stored(local_server, chunks[0].model_extra["conversation_id"])
    assert rows[-1].content == text and rows[-1].finish_reason == finish[0].finish_reason


def test_sse_wire_format_ends_with_done(local_server):
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{local_server.base_url}/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_n2_seed_reproducible(client):
    kw = {"model": MODEL, "messages": HELLO, "max_tokens": 16, "temperature": 1.0, "n": 2}
    a = client.chat.completions.create(seed=1234, **kw)
    b = client.chat.completions.create(seed=1234, **kw)
    c = client.chat.completions.create(seed=99, **kw)
    texts = lambda r: [ch.message.content for ch in sorted(r.choices, key=lambda ch: ch.index)]
    assert [ch.index for ch in a.choices] == [0, 1]
    assert texts(a) == texts(b)  # same seed, same answers
    assert texts(a)[0] != texts(a)[1]  # the n choices differ
    assert texts(a) != texts(c)
    assert a.usage.completion_tokens == b.usage.completion_tokens > 0


def test_stop_sequence(client):
    full = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    if len(text.strip()) < 6:
        pytest.skip(f"the random model's answer is too short to cut: {text!r}")
    stop = text[3:6]
    cut = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_moderations_endpoint(client):
    r = client.moderations.create(input=["What a lovely day for a walk.", HARMFUL])
    assert [x.flagged for x in r.results] == [False, True]
    for x in r.results:
        validate_openai_result(x.model_dump(by_alias=True))
    assert client.moderations.create(input="hello").results[0].flagged is False


def test_flagged_input_gets_template_and_never_reaches_model(local_server, client):
    engine = local_server.runtime.engines[MODEL]
    before = engine.requests_submitted
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": HARMFUL}], max_tokens=8)
    assert engine.requests_submitted == before  # step 4: the model was not called
    choice = r.choices[0]
    assert choice.finish_reason == "content_filter" and choice.message.content
    assert choice.model_extra["template_used"] == "input"
    assert r.moderation.input.results[0].flagged and r.moderation.input.results[0].categories["violence"]
    assert r.moderation.output.type == "error"  # no output was generated
    rows = stored(local_server, r.model_extra["conversation_id"])
    assert rows[0].flagged and rows[1].flagged and rows[1].template_used == "input"


def test_completions_raw(client):
    r = client.completions.create(model=MODEL, prompt="Hello there, how are you?", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 6
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Hello there, how are you?", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text
    flagged = client.completions.create(model=MODEL, prompt=HARMFUL, max_tokens=6)
    assert flagged.choices[0].finish_reason == "content_filter" and flagged.choices[0].text == ""


def test_bad_requests_are_400_in_openai_shape(client, local_server):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=HELLO, temperature=5)
    assert e.value.status_code == 400 and e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 600}], max_tokens=4)
    assert e.value.code == "context_length_exceeded"
    r = httpx.post(f"{local_server.base_url}/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_overload_is_429(local_server, client):
    settings = local_server.runtime.settings
    old = settings.max_inflight
    settings.max_inflight = 0
    try:
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
        assert e.value.code == "server_overloaded"
    finally:
        settings.max_inflight = old


def test_keys_required_401(keyed_server):
    wrong = openai.OpenAI(base_url=keyed_server.base_url, api_key="cf-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.models.list()
    assert e.value.code == "invalid_api_key"
    r = httpx.get(f"{keyed_server.base_url}/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    good = openai.OpenAI(base_url=keyed_server.base_url, api_key=keyed_server.keys["alice"], max_retries=0)
    assert [m.id for m in good.models.list().data] == [MODEL]


def test_client_disconnect_stores_what_was_shown(local_server):
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 200, "temperature": 1.0, "seed": 7, "stream": True}
    received, conv_id = "", None
    import json

    with httpx.stream("POST", f"{local_server.base_url}/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            conv_id = conv_id or chunk.get("conversation_id")
            if chunk["choices"]:
                received += chunk["choices"][0]["delta"].get("content") or ""
            if len(received) >= 5:
                break  # leave mid-answer
    import time

    deadline = time.time() + 20
    while time.time() < deadline:
        rows = stored(local_server, conv_id)
        if len(rows) == 2:
            break
        time.sleep(0.1)
    assert [m.role for m in rows] == ["user", "assistant"]
    assert rows[1].finish_reason == "cancelled"
    assert rows[1].content.startswith(received)  # what was shown (plus what was in flight)
    with local_server.runtime.sessions() as s:
        assert s.get(Conversation, conv_id) is not None


def test_stream_n2_and_stored_choices(local_server, client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, n=2, seed=5, stream=True))
    texts = {0: "", 1: ""}
    finished = set()
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finished.add(ch.index)
    assert finished == {0, 1}
    rows = [m for m in stored(local_server, chunks[0].model_extra["conversation_id"]) if m.role == "assistant"]
    assert {m.choice_index: m.content for m in rows} == texts


def test_flagged_output_is_replaced_by_the_template(tiny_engine, tmp_path):
    """Steps 6-7 through the API: a policy whose one rule flags any non-ASCII character — which
    the tiny random model writes and the prompt lacks — so the answer, not the prompt, is flagged."""
    from server_fixtures import free_port, start_server

    from chatfactory.server.settings import Settings

    rules = tmp_path / "rules.yaml"
    rules.write_text('categories:\n  violence:\n    0.99:\n      - "re:[^\\x00-\\x7f]"\n')
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"layers:\n  - type: rules\n    path: {rules}\n")
    settings = Settings(port=free_port(), database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", models=[MODEL],
                        moderation_config=str(policy))
    server = start_server(settings, {MODEL: tiny_engine})
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        template = server.runtime.flow.config.template_output_flagged
        for stream in (False, True):
            kw = {"model": MODEL, "messages": HELLO, "max_tokens": 64, "temperature": 1.0, "seed": 3}
            if stream:
                chunks = list(client.chat.completions.create(stream=True, **kw))
                content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                end = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
                choice, moderation, conv_id = end.choices[0], end.moderation, chunks[0].model_extra["conversation_id"]
            else:
                r = client.chat.completions.create(**kw)
                choice, moderation, conv_id = r.choices[0], r.moderation, r.model_extra["conversation_id"]
                content = choice.message.content
            assert choice.finish_reason == "content_filter" and choice.model_extra["template_used"] == "output"
            assert content.endswith(template) and content.isascii()  # the flagged text was never shown
            assert not moderation.input.results[0].flagged and moderation.output.results[0].flagged
            answer = stored(server, conv_id)[-1]
            assert answer.content == content and answer.flagged and answer.template_used == "output"
    finally:
        server.stop()
