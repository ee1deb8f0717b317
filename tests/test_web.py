"""The chat page in a real browser (Debian's Chromium via Playwright) against a real server with
tiny models: streaming, Stop, persistence, rename/delete/search, thumbs, regenerate and edit,
hostile text, template notices, Compare mode, sign-in with per-user lists, keyboard and phone
width — each checked in the database too — and screenshots of the main views under
test-artifacts/web/."""

from __future__ import annotations

import json

import pytest
from server_fixtures import MODEL
from web_fixtures import *
from web_fixtures import PHONE, SECOND_MODEL, screenshot

from chatfactory.cli import main
from chatfactory.data.preferences import read_preferences
from chatfactory.server.store import keys as keystore
from chatfactory.server.store.models import Conversation, Feedback, Message, Ranking

pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")

TIMEOUT = 60_000  # generous: the test machine's cores are shared


# ---------------------------------------------------------------- helpers
def open_app(page, hash_: str = "") -> None:
    """Load the page afresh (at `hash_`): going from one hash to another is a same-document
    navigation that would leave the previous conversation on screen for a moment."""
    if hash_:
        page.goto("about:blank")
    page.goto(page.root + hash_)
    page.wait_for_selector("#app:not([hidden])", timeout=TIMEOUT)


def completed(page) -> int:
    """How many actions (send, regenerate, edit, compare) the page has finished."""
    return page.evaluate("() => Number(document.body.dataset.completed || 0)")


def act(page, do) -> None:
    """Run `do()` (a click or key press that starts an action) and wait until the page has
    finished it: generation over and the conversation re-read from the server."""
    before = completed(page)
    do()
    page.wait_for_function(f"() => Number(document.body.dataset.completed || 0) > {before}", timeout=TIMEOUT)


def send(page, text: str) -> None:
    page.fill("#input", text)
    act(page, lambda: page.press("#input", "Enter"))


def current_conv_id(page) -> str:
    page.wait_for_function("() => location.hash.startsWith('#/c/')", timeout=TIMEOUT)
    return page.evaluate("() => location.hash.slice(4)")


def db(server):
    return server.runtime.sessions()


def add_conversation(
    server, user_id: int, title: str, turns: list[tuple[str, str]], **assistant_fields
) -> str:
    """Store a conversation directly (as the server would have), to show given text in the page."""
    with db(server) as s:
        conv = Conversation(user_id=user_id, title=title, model=MODEL)
        s.add(conv)
        s.flush()
        for i, (role, content) in enumerate(turns):
            m = Message(conversation_id=conv.id, position=i, role=role, content=content, flagged=False)
            if role == "assistant":
                m.model, m.finish_reason = MODEL, "stop"
                for k, v in assistant_fields.items():
                    setattr(m, k, v)
            s.add(m)
        s.commit()
        return conv.id


SHOWCASE = """A classification algorithm learns to put inputs into **categories** from labelled examples.

### How it works
1. **Collect examples** with known labels (spam / not spam).
2. **Train**: the model adjusts its parameters so its predictions match the labels.
3. **Predict**: for a new input it outputs the most likely class, often with a probability.

A tiny example with scikit-learn:

```python
from sklearn.linear_model import LogisticRegression

model = LogisticRegression().fit(X_train, y_train)
print(model.predict(X_test[:3]))
```

> The model only learns the boundary the data shows it: check it on examples it has never seen."""


# ---------------------------------------------------------------- tests
def test_send_streams_reload_keeps_it_and_the_model_picker_is_used(page, web_server):
    open_app(page)
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == [MODEL, SECOND_MODEL]
    page.select_option("#model", SECOND_MODEL)
    # Shift+Enter is a new line, not a send
    page.click("#input")
    page.keyboard.type("Hello there")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("friend")
    assert page.input_value("#input") == "Hello there\nfriend"
    assert page.locator(".msg").count() == 0
    act(page, lambda: page.press("#input", "Enter"))
    cid = current_conv_id(page)
    with db(web_server) as s:
        conv = s.get(Conversation, cid)
        msgs = sorted(conv.messages, key=lambda m: m.position)
        assert conv.model == SECOND_MODEL and conv.title == "Hello there friend"
        assert (msgs[0].role, msgs[0].content) == ("user", "Hello there\nfriend")
        assert msgs[1].role == "assistant" and msgs[1].model == SECOND_MODEL and msgs[1].content is not None
    shown = page.inner_text(".msg-assistant .md")
    page.reload()
    page.wait_for_selector(".msg-assistant[data-id]", timeout=TIMEOUT)
    assert page.inner_text(".msg-user .bubble") == "Hello there\nfriend"
    assert page.inner_text(".msg-assistant .md") == shown
    assert page.locator(f".conv-item[data-id='{cid}']").inner_text().strip() == "Hello there friend"
    assert page.input_value("#model") == SECOND_MODEL


@pytest.fixture()
def paced(web_server):
    """The test model at 40 ms a token: an answer then takes several frames to arrive, on any
    machine (unpaced, a tiny model writes its whole answer within one frame)."""
    engines = list(web_server.runtime.engines.values())
    for e in engines:
        e.pace = 0.04
    yield
    for e in engines:
        e.pace = 0.0


def test_answers_stream_in(page, web_server, paced):
    """The answer grows on screen while it is generated (not all at once at the end)."""
    open_app(page)
    for attempt in range(5):  # a random model sometimes ends at once: such an answer cannot show growth
        page.click("#new-chat")
        page.evaluate(
            """() => { window.__seen = [];
            new MutationObserver(() => { const s = document.querySelector('.streaming .md');
              if (s && !document.getElementById('stop').hidden) window.__seen.push(s.textContent.length); })
            .observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true}); }"""
        )
        send(page, f"Tell me about the sea, take {attempt}")
        final = len(page.inner_text(".msg-assistant .md"))
        if final >= 40:
            break
    else:
        pytest.fail("no answer was long enough to watch it stream")
    partial = [n for n in page.evaluate("window.__seen") if 0 < n < final]
    assert partial, f"the {final}-character answer appeared all at once"


def test_stop_cancels_generation_and_keeps_what_was_shown(page, web_server, paced):
    open_app(page)
    for attempt in range(6):  # a random model may end its answer before Stop lands: try again
        page.click("#new-chat")
        page.fill("#input", f"Tell me a long story, take {attempt}")
        before = completed(page)
        page.press("#input", "Enter")
        page.wait_for_function(
            f"() => {{ const s = document.querySelector('.streaming .md');"
            f" return (s && s.textContent.length > 0) || Number(document.body.dataset.completed || 0) > {before}; }}",
            timeout=TIMEOUT,
        )
        page.keyboard.press("Escape")  # Esc stops, like the Stop button
        page.wait_for_function(
            f"() => Number(document.body.dataset.completed || 0) > {before}", timeout=TIMEOUT
        )
        cid = current_conv_id(page)
        with db(web_server) as s:
            answers = [m for m in s.get(Conversation, cid).messages if m.role == "assistant"]
        if answers and answers[0].finish_reason == "cancelled":
            break
    else:
        pytest.fail("every answer ended before Stop could cancel it")
    page.wait_for_selector(".msg-assistant .stopped", timeout=TIMEOUT)
    assert page.inner_text(".msg-assistant .stopped").startswith("Stopped")
    assert page.is_hidden("#stop") and page.is_visible("#send")
    # the partial answer is stored as shown and stays after a reload
    shown = page.inner_text(".msg-assistant .md")
    page.reload()
    page.wait_for_selector(".msg-assistant .stopped", timeout=TIMEOUT)
    assert page.inner_text(".msg-assistant .md") == shown


def test_rename_search_and_delete(page, web_server):
    open_app(page)
    send(page, "Something to rename")
    cid = current_conv_id(page)
    item = page.locator(f".conv-item[data-id='{cid}']")
    item.hover()
    item.get_by_label("Rename chat").click()
    page.fill(".conv-rename", "Renamed chat")
    page.press(".conv-rename", "Enter")
    page.wait_for_selector(f".conv-item[data-id='{cid}'] >> text=Renamed chat", timeout=TIMEOUT)
    with db(web_server) as s:
        assert s.get(Conversation, cid).title == "Renamed chat"
    page.fill("#search", "renamed")
    assert page.locator(".conv-item").all_inner_texts() == ["Renamed chat"]
    page.fill("#search", "zzz-no-such-chat")
    assert page.locator(".conv-item").count() == 0 and page.is_visible("#conv-empty")
    page.fill("#search", "")
    page.reload()
    page.wait_for_selector(f".conv-item[data-id='{cid}'] >> text=Renamed chat", timeout=TIMEOUT)

    page.once("dialog", lambda d: d.accept())
    item = page.locator(f".conv-item[data-id='{cid}']")
    item.hover()
    item.get_by_label("Delete chat").click()
    page.wait_for_selector(f".conv-item[data-id='{cid}']", state="detached", timeout=TIMEOUT)
    assert page.evaluate("location.hash") == ""
    with db(web_server) as s:
        assert s.get(Conversation, cid) is None


def test_thumbs_with_a_comment_are_stored(page, web_server):
    open_app(page)
    send(page, "Rate this answer")
    answer_id = page.get_attribute(".msg-assistant[data-id]", "data-id")
    page.click(".msg-assistant .thumb-down")
    page.fill(".feedback-comment", "It did not answer the question.")
    page.click(".feedback-box .btn-primary")
    page.wait_for_selector(".feedback-box", state="detached", timeout=TIMEOUT)
    with db(web_server) as s:
        fb = s.query(Feedback).filter_by(message_id=answer_id).one()
        assert (fb.rating, fb.comment, fb.user_id) == (
            -1,
            "It did not answer the question.",
            web_server.runtime.local_user_id,
        )
    page.reload()
    page.wait_for_selector(".msg-assistant .thumb-down[aria-pressed=true]", timeout=TIMEOUT)
    page.click(".msg-assistant .thumb-up")
    page.wait_for_selector(".msg-assistant .thumb-up[aria-pressed=true]", timeout=TIMEOUT)
    with db(web_server) as s:
        fb = s.query(Feedback).filter_by(message_id=answer_id).one()
        assert fb.rating == 1 and fb.comment == "It did not answer the question."


def test_regenerate_and_edit(page, web_server):
    open_app(page)
    send(page, "First try")
    cid = current_conv_id(page)
    act(page, lambda: page.click(".msg-assistant .regenerate"))
    page.wait_for_selector(".alt-nav >> text=2 / 2", timeout=TIMEOUT)
    with db(web_server) as s:
        answers = [
            (m.position, m.choice_index) for m in s.get(Conversation, cid).messages if m.role == "assistant"
        ]
        assert sorted(answers) == [(1, 0), (1, 1)]
    page.get_by_label("Previous answer").click()
    assert page.inner_text(".alt-nav").strip().startswith("1 / 2")

    page.locator(".msg-user").hover()
    page.get_by_label("Edit message").click()
    page.fill(".edit-box textarea", "Second try")
    act(page, lambda: page.press(".edit-box textarea", "Enter"))
    page.wait_for_function(
        "() => document.querySelectorAll('.msg-assistant[data-id]').length === 1", timeout=TIMEOUT
    )
    assert page.inner_text(".msg-user .bubble") == "Second try"
    with db(web_server) as s:
        msgs = sorted(s.get(Conversation, cid).messages, key=lambda m: (m.position, m.choice_index))
        assert [(m.role, m.position) for m in msgs] == [("user", 0), ("assistant", 1)]
        assert msgs[0].content == "Second try"


def test_hostile_text_is_shown_as_text_and_runs_nothing(page, web_server):
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    open_app(page)
    payload = '<img src=x onerror="window.__xss=1;alert(1)"><script>window.__xss=2;alert(2)</script>'
    send(page, payload)
    assert page.inner_text(".msg-user .bubble") == payload
    # a model that writes markup: stored like any answer, rendered by the Markdown path
    answer = (
        'Here: <img src=x onerror="window.__xss=3;alert(3)"> and <script>window.__xss=4</script>\n\n'
        "[click me](javascript:window.__xss=5) ![pic](https://example.invalid/x.png)\n\n"
        '<a href="javascript:window.__xss=6" onclick="window.__xss=7">raw link</a> <svg onload="window.__xss=8"></svg>'
    )
    cid = add_conversation(
        web_server, web_server.runtime.local_user_id, "hostile", [("user", "hi"), ("assistant", answer)]
    )
    open_app(page, f"#/c/{cid}")
    md = page.locator(".msg-assistant .md")
    md.wait_for(timeout=TIMEOUT)
    text = md.inner_text()
    assert (
        '<img src=x onerror="window.__xss=3;alert(3)">' in text and "<script>window.__xss=4</script>" in text
    )
    assert (
        page.locator(
            ".messages img, .messages script, .messages svg:not(.icon), .messages [onerror], .messages [onclick]"
        ).count()
        == 0
    )
    assert page.locator(".messages a[href^='javascript']").count() == 0
    page.get_by_text("click me").click()
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None and dialogs == []


def test_template_answers_are_announced(page, web_server):
    # a message the moderator flags: the model is not called, a standard reply is shown, and said so
    open_app(page)
    send(page, "I am going to kill you and your whole family tonight")
    note = page.locator(".msg-assistant .notice")
    assert (
        "flagged by content moderation" in note.inner_text() and "not sent to the model" in note.inner_text()
    )
    with db(web_server) as s:
        answer = next(m for m in s.get(Conversation, current_conv_id(page)).messages if m.role == "assistant")
        assert answer.template_used == "input" and answer.flagged
    # an answer flagged on the way out (random bytes rarely are, so this one is stored as such)
    cid = add_conversation(
        web_server,
        web_server.runtime.local_user_id,
        "flagged out",
        [("user", "hi"), ("assistant", "Standard reply.")],
        template_used="output",
        flagged=True,
        finish_reason="content_filter",
    )
    open_app(page, f"#/c/{cid}")
    page.wait_for_selector(".msg-assistant .notice >> text=answer was flagged", timeout=TIMEOUT)


def _run_compare(page, prompt: str, max_tokens: int) -> None:
    """Run Compare (3 answers) until all three answers are rankable."""
    page.fill("#compare-prompt", prompt)
    page.fill("#compare-max", str(max_tokens))
    for _attempt in range(4):
        act(page, lambda: page.click("#compare-run"))
        # all three rankable (9 place buttons), or moderation replaced one of the random model's
        # answers (the card says so): then there are not three to rank, so compare again
        page.wait_for_function(
            "() => document.querySelectorAll('.rank-btn').length === 9"
            " || /Not rankable|nothing to rank/.test(document.getElementById('compare-view').innerText)",
            timeout=TIMEOUT,
        )
        if page.locator(".rank-btn").count() == 9:
            return
        screenshot(page, "compare-moderated")
    pytest.fail("four compare runs in a row had an answer replaced by moderation")


def _rank_three(page, places: dict[str, int], prompt: str) -> list[str]:
    """Run Compare with 3 answers, give each card its place, save; returns the cards' texts."""
    _run_compare(page, prompt, 32)
    for letter, place in places.items():
        page.get_by_label(f"Place {place} for answer {letter}").click()
    page.click("#compare-save")
    page.wait_for_selector("#toast >> text=Ranking saved", timeout=TIMEOUT)
    return page.locator(".answer-body").all_inner_texts()


def test_compare_mode_ranks_three_answers_into_the_database(page, web_server):
    open_app(page)
    page.click("#open-compare")
    page.wait_for_selector("#compare-view:not([hidden])")
    with db(web_server) as s:
        before = {r.id for r in s.query(Ranking)}
    _run_compare(page, "Name a colour.", 48)
    assert page.is_disabled("#compare-save")
    page.get_by_label("Place 1 for answer B").click()
    page.get_by_label("Place 2 for answer A").click()
    page.get_by_label("Place 2 for answer C").click()  # a tie with A
    assert "B > A = C" in page.inner_text("#compare-summary")
    screenshot(page, "compare-desktop")
    page.click("#compare-save")
    page.wait_for_selector("#toast >> text=Ranking saved", timeout=TIMEOUT)
    with db(web_server) as s:
        (row,) = [r for r in s.query(Ranking).all() if r.id not in before]
        assert row.ranking == [[1], [0, 2]] and len(row.responses) == 3
        assert row.prompt == {"messages": [{"role": "user", "content": "Name a colour."}]}
        assert row.model == MODEL and row.user_id == web_server.runtime.local_user_id
        assert (
            row.sampling["temperature"] == 0.9 and row.sampling["max_tokens"] == 48 and row.sampling["n"] == 3
        )
        run = s.get(Conversation, row.sampling["conversation_id"])
        stored = [
            m.content for m in sorted(run.messages, key=lambda m: m.choice_index) if m.role == "assistant"
        ]
        assert row.responses == stored
    # changing one's mind updates the same ranking
    page.get_by_label("Place 1 for answer A").click()
    with page.expect_response(
        lambda r: f"/v1/rankings/{row.id}" in r.url and r.request.method == "PUT"
    ) as put:
        page.click("#compare-save")
    assert put.value.ok
    with db(web_server) as s:
        s.expire_all()
        assert s.get(Ranking, row.id).ranking == [[0, 1], [2]]


def test_rankings_from_the_page_train_a_reward_model(page, web_server, tmp_path):
    """The loop: rank in the page -> `feedback export` -> `chatfactory reward`, no hand conversion."""
    open_app(page, "#/compare")
    page.wait_for_selector("#compare-view:not([hidden])")
    _rank_three(page, {"A": 1, "B": 2, "C": 3}, "What is 2+3?")
    _rank_three(page, {"C": 1, "A": 2, "B": 2}, "Say hello.")
    url = str(web_server.runtime.db_engine.url)
    prefs = tmp_path / "rankings.jsonl"
    assert main(["feedback", "export", "--format", "rankings", "--db", url, "--out", str(prefs)]) == 0
    ranked = [c for c in read_preferences(prefs) if c.prompt[-1]["content"] in ("What is 2+3?", "Say hello.")]
    assert [c.ranking for c in ranked][-2:] == [[[0], [1], [2]], [[2], [0, 1]]]
    pairs = tmp_path / "pairs.jsonl"
    assert main(["feedback", "export", "--format", "pairs", "--db", url, "--out", str(pairs)]) == 0
    out = tmp_path / "rm"
    rc = main(
        [
            "reward",
            "--model",
            str(web_server.model_folder),
            "--data",
            str(prefs),
            str(pairs),
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--threads",
            "1",
            "--held-out",
            "0",
        ]
    )
    assert rc == 0
    assert (out / "model" / "reward_head.safetensors").exists()
    results = json.loads((out / "results.json").read_text())
    exported = len(read_preferences(prefs)) + len(read_preferences(pairs))
    assert results["train_comparisons"] == exported and results["train_pairs"] >= 2 * 3 + 2


def test_keyboard_focus_and_phone_width(page, web_server):
    open_app(page)
    page.click(".welcome h1")  # moves the keyboard's starting point there
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "suggestion"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid", "keyboard focus must be visible"
    page.set_viewport_size(PHONE)
    page.wait_for_function(
        "() => document.getElementById('sidebar').getBoundingClientRect().right <= 0"
    )  # a drawer
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.click("#open-sidebar")
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().left >= 0")
    page.keyboard.press("Escape")
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().right <= 0")


def test_screenshots_of_the_main_views(browser, web_server):
    """Desktop and phone: welcome, a rendered conversation, compare, the drawer, sign-in."""
    cid = add_conversation(
        web_server,
        web_server.runtime.local_user_id,
        "How do classifiers work?",
        [("user", "Explain how a classification algorithm works"), ("assistant", SHOWCASE)],
    )
    root = web_server.base_url.removesuffix("/v1") + "/"
    for name, viewport in (("desktop", {"width": 1280, "height": 800}), ("phone", PHONE)):
        ctx = browser.new_context(viewport=viewport, device_scale_factor=1)
        pg = ctx.new_page()
        pg.root = root
        open_app(pg)
        screenshot(pg, f"welcome-{name}")
        open_app(pg, f"#/c/{cid}")
        pg.wait_for_selector(".code-block", timeout=TIMEOUT)
        pg.locator(".msg-assistant .thumb-up" if name == "desktop" else ".msg-assistant .thumb-down").click()
        pg.wait_for_selector(".feedback-box")
        screenshot(pg, f"chat-{name}")
        if name == "phone":
            pg.click("#open-sidebar")
            pg.wait_for_timeout(300)
            screenshot(pg, "sidebar-phone")
            pg.keyboard.press("Escape")
            open_app(pg, "#/compare")
            pg.fill("#compare-prompt", "Name a colour.")
            pg.fill("#compare-max", "32")
            act(pg, lambda pg=pg: pg.click("#compare-run"))
            pg.wait_for_function("() => document.querySelectorAll('.rank-btn').length === 9", timeout=TIMEOUT)
            pg.get_by_label("Place 1 for answer A").click()
            screenshot(pg, "compare-phone")
        ctx.close()


def test_sign_in_and_each_user_sees_only_their_chats(browser, web_server):
    with db(web_server) as s:
        alice_key, alice_row = keystore.create_key(s, "alice")
        bob_key, bob_row = keystore.create_key(s, "bob")
        s.commit()
    root = web_server.base_url.removesuffix("/v1") + "/"
    try:
        for name, viewport in (("desktop", {"width": 1280, "height": 800}), ("phone", PHONE)):
            ctx = browser.new_context(viewport=viewport)
            pg = ctx.new_page()
            pg.goto(root)
            pg.wait_for_selector("#signin:not([hidden])", timeout=TIMEOUT)
            screenshot(pg, f"signin-{name}")
            ctx.close()
        ctx = browser.new_context()
        pg = ctx.new_page()
        pg.goto(root)
        pg.fill("#signin-key", "cf-not-a-key")
        pg.press("#signin-key", "Enter")
        pg.wait_for_selector("#signin-error:not([hidden])", timeout=TIMEOUT)
        assert "not accepted" in pg.inner_text("#signin-error")
        pg.fill("#signin-key", alice_key)
        pg.press("#signin-key", "Enter")
        pg.wait_for_selector("#app:not([hidden])", timeout=TIMEOUT)
        assert pg.inner_text("#who-name") == "alice" and pg.is_visible("#signout")
        assert pg.locator(".conv-item").count() == 0  # the local user's chats are not alice's
        pg.root = root
        send(pg, "Alice's question")
        alice_conv = current_conv_id(pg)
        pg.reload()  # the key is remembered
        pg.wait_for_selector(f".conv-item[data-id='{alice_conv}']", timeout=TIMEOUT)
        pg.click("#signout")
        pg.wait_for_selector("#signin:not([hidden])", timeout=TIMEOUT)
        pg.fill("#signin-key", bob_key)
        pg.press("#signin-key", "Enter")
        pg.wait_for_selector("#app:not([hidden])", timeout=TIMEOUT)
        assert pg.inner_text("#who-name") == "bob" and pg.locator(".conv-item").count() == 0
        pg.goto(root + f"#/c/{alice_conv}")  # not even by its address
        pg.wait_for_selector("#toast >> text=no longer exists", timeout=TIMEOUT)
        assert pg.locator(".msg").count() == 0
        ctx.close()
    finally:
        with db(web_server) as s:  # back to keyless local mode for the other tests
            keystore.revoke_key(s, str(alice_row.id))
            keystore.revoke_key(s, str(bob_row.id))
            s.commit()
