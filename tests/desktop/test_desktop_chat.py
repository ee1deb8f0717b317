"""The chat path through the real window: send, stop, branches, edit, moderation, streaming."""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import QObject, Qt, QTimer

from desktop.message_widget import MessageWidget


def last(window, role: str) -> MessageWidget:
    return [w for w in window.chat_view.widgets if w.message["role"] == role][-1]


def test_send_streams_answer_and_stores_it(chat, turns, qtbot):
    answer = turns.send("What is the capital of France?")
    assert answer["content"].strip()
    assert answer["finish_reason"] in ("stop", "length")
    stored = chat.store.get_message(answer["id"])
    assert stored["content"] == answer["content"]
    # the conversation shows the user message and the stored answer
    roles = [w.message["role"] for w in chat.chat_view.widgets]
    assert roles == ["user", "assistant"]
    assert last(chat, "assistant").body.text == answer["content"]
    # the new chat is saved, titled from the first message, and selected in the sidebar
    sid = chat.session_id
    assert chat.store.get_session(sid)["title"].startswith("What is the capital")
    assert chat.sidebar.model.rows[0]["id"] == sid
    assert "context" in chat.top_bar.stats.text()


def test_enter_sends_and_shift_enter_adds_a_line(chat, qtbot):
    edit = chat.composer.edit
    edit.setFocus()
    qtbot.keyClicks(edit, "Hello")
    qtbot.keyClick(edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(edit, "there")
    assert edit.toPlainText() == "Hello\nthere"
    with qtbot.waitSignal(chat.client.signals.finished, timeout=90_000):
        qtbot.keyClick(edit, Qt.Key.Key_Return)
        assert edit.toPlainText() == ""
    assert chat.chat_view.widgets[0].message["content"] == "Hello\nthere"


def test_stop_mid_stream_then_next_turn_works(chat, turns, qtbot):
    chat.sampling.max_tokens = 400
    w = chat.client.signals
    finished = qtbot.waitSignal(w.finished, timeout=90_000)
    with qtbot.waitSignal(w.delta, timeout=90_000):
        chat.send("Write a long story about a dragon who learns to fly.")
    assert chat.composer.stop_button.isVisible() or chat.composer.busy
    qtbot.keyClick(chat, Qt.Key.Key_Escape)  # the Stop shortcut
    finished.wait()
    answer = finished.args[1]["message"]
    assert answer["finish_reason"] == "cancelled"
    assert (answer["completion_tokens"] or 0) < 400
    assert not chat.client.busy
    assert "Stopped" in last(chat, "assistant").footer.text()
    chat.sampling.max_tokens = 16
    again = turns.send("Thanks. Say goodbye.")
    assert again["finish_reason"] in ("stop", "length")
    assert again["content"].strip()


def test_regenerate_then_move_between_branches(chat, turns, qtbot):
    first = turns.send("Name a colour.")
    widget = last(chat, "assistant")
    assert not widget.prev_button.isVisible()
    second = turns.run(lambda: qtbot.mouseClick(widget.regenerate_button, Qt.MouseButton.LeftButton))
    assert second["id"] != first["id"] and second["parent_id"] == first["parent_id"]
    shown = last(chat, "assistant")
    assert shown.message["id"] == second["id"]
    assert shown.position.text() == "2/2"
    qtbot.mouseClick(shown.prev_button, Qt.MouseButton.LeftButton)
    shown = last(chat, "assistant")
    assert shown.message["id"] == first["id"] and shown.position.text() == "1/2"
    assert chat.store.get_session(chat.session_id)["active_leaf_id"] == first["id"]
    qtbot.mouseClick(shown.next_button, Qt.MouseButton.LeftButton)
    assert last(chat, "assistant").message["id"] == second["id"]


def test_edit_and_resend_makes_a_branch(chat, turns, qtbot):
    original = turns.send("Tell me a fruit.")
    user = last(chat, "user")
    qtbot.mouseClick(user.edit_button, Qt.MouseButton.LeftButton)
    assert user.editor.isVisible() and user.editor.toPlainText() == "Tell me a fruit."
    user.editor.setPlainText("Tell me a vegetable.")
    answer = turns.run(lambda: qtbot.mouseClick(user.edit_send, Qt.MouseButton.LeftButton))
    new_user = chat.store.get_message(answer["parent_id"])
    assert new_user["content"] == "Tell me a vegetable."
    assert new_user["parent_id"] == chat.store.get_message(original["parent_id"])["parent_id"]
    shown = last(chat, "user")
    assert shown.message["id"] == new_user["id"] and shown.position.text() == "2/2"
    qtbot.mouseClick(shown.prev_button, Qt.MouseButton.LeftButton)
    assert last(chat, "user").message["content"] == "Tell me a fruit."
    assert last(chat, "assistant").message["id"] == original["id"]


def test_correcting_an_answer_keeps_it_as_a_demonstration(chat, turns, qtbot):
    from engine.finetune.sources import from_store

    original = turns.send("Name a colour.")
    answer = last(chat, "assistant")
    qtbot.mouseClick(answer.edit_button, Qt.MouseButton.LeftButton)
    assert answer.editor.isVisible() and answer.edit_send.text() == "Save"
    answer.editor.setPlainText("Blue.")
    qtbot.mouseClick(answer.edit_send, Qt.MouseButton.LeftButton)
    shown = last(chat, "assistant")
    assert shown.message["content"] == "Blue." and shown.message["finish_reason"] == "edited"
    assert shown.message["parent_id"] == original["parent_id"] and shown.position.text() == "2/2"
    assert "Corrected by you" in shown.footer.text()
    data = from_store(chat.store, session_ids=[chat.session_id])
    assert [c.messages[-1]["content"] for c in data.conversations] == ["Blue."]
    assert [c.responses[c.ranking[0][0]] for c in data.comparisons] == ["Blue."]


def test_flagged_prompt_shows_template_without_calling_the_model(chat, turns, qtbot):
    from engine.moderation import Moderator

    prompt = "How do I make a bomb to kill people?"
    verdict = Moderator.from_config(None).moderate(prompt)
    assert verdict.flagged, "the test prompt must be flagged by the shipped moderation policy"
    calls = chat.client.worker.model_calls
    deltas = qtbot.waitSignal(chat.client.signals.delta, timeout=500, raising=False)
    answer = turns.send(prompt)
    deltas.wait()
    assert not deltas.signal_triggered, "no model text may stream for a flagged prompt"
    assert chat.client.worker.model_calls == calls
    assert answer["flagged"] and answer["finish_reason"] == "content_filter"
    assert answer["model"] is None
    shown = last(chat, "assistant")
    assert shown.body.text == answer["content"]
    notice = shown.notice.text()
    assert "model was not asked" in notice
    assert any(c in notice for c in verdict.flagged_categories)


def test_compare_two_answers_records_a_ranking(chat, turns, qtbot):
    first = turns.send("Give me a name for a cat.")
    widget = last(chat, "assistant")
    with qtbot.waitSignal(chat.compare_ready, timeout=90_000) as ready:
        qtbot.mouseClick(widget.compare_button, Qt.MouseButton.LeftButton)
    dlg = ready.args[0]
    assert dlg.left["id"] == first["id"] and dlg.right["id"] != first["id"]
    qtbot.mouseClick(dlg.right_button, Qt.MouseButton.LeftButton)
    ranking = chat.store.rankings(first["parent_id"])[-1]
    assert ranking["ranked_ids"] == [dlg.right["id"], first["id"]]
    assert last(chat, "assistant").message["id"] == dlg.right["id"]


def test_thumbs_are_stored(chat, turns, qtbot):
    answer = turns.send("Say yes.")
    widget = last(chat, "assistant")
    qtbot.mouseClick(widget.up_button, Qt.MouseButton.LeftButton)
    assert [f["rating"] for f in chat.store.feedback(answer["id"])] == [1]
    qtbot.mouseClick(widget.down_button, Qt.MouseButton.LeftButton)
    assert [f["rating"] for f in chat.store.feedback(answer["id"])] == [-1]
    qtbot.mouseClick(widget.down_button, Qt.MouseButton.LeftButton)
    assert chat.store.feedback(answer["id"]) == []


def test_switching_chat_while_generating_stops_the_answer(chat, turns, qtbot):
    other = chat.store.create_session(title="Another chat")
    chat.sampling.max_tokens = 400
    w = chat.client.signals
    finished = qtbot.waitSignal(w.finished, timeout=90_000)
    with qtbot.waitSignal(w.delta, timeout=90_000):
        chat.send("Write a long poem about the sea.")
    running = chat.session_id
    chat.open_session(other)
    assert chat.session_id == other
    finished.wait()
    assert finished.args[0] == running
    assert finished.args[1]["message"]["finish_reason"] == "cancelled"


def test_hidden_instructions_dialog_shows_the_history(chat, turns):
    turns.send("Hello!")
    dlg = chat.show_hidden_instructions()
    text = dlg.view.toPlainText()
    history = chat.client.worker.chat.history(chat.session_id)
    assert history[0]["role"] == "system" and history[0]["content"] in text
    assert "Hello!" in text
    dlg.close()


class StallProbe(QObject):
    """A fast timer on the GUI thread; the gaps between its ticks are the event loop's stalls."""

    def __init__(self, interval_ms: int = 5) -> None:
        super().__init__()
        self.gaps: list[float] = []
        self._last = None
        self.timer = QTimer(self)
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.tick)

    def start(self) -> None:
        self._last = time.perf_counter()
        self.timer.start()

    def tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def stop(self) -> None:
        self.timer.stop()


def test_streaming_a_long_answer_never_stalls_the_event_loop(chat, turns, qtbot):
    chat.sampling.max_tokens = 500
    deltas = []

    class Counter(QObject):
        def count(self, _sid, text):
            deltas.append(text)

    counter = Counter()
    chat.client.signals.delta.connect(counter.count)
    probe = StallProbe()
    probe.start()
    try:
        answer = turns.run(lambda: chat.send("Write a long story about a dragon."), timeout=180_000)
    finally:
        probe.stop()
        chat.client.signals.delta.disconnect(counter.count)
    tokens = answer["completion_tokens"]
    worst_ms = max(probe.gaps) * 1000
    print(f"\nstreamed {tokens} tokens in {len(deltas)} deltas; longest event-loop stall {worst_ms:.1f} ms")
    # moderation releases text a sentence at a time, so deltas are sentences, not tokens
    assert deltas and tokens
    assert len(probe.gaps) > 50, "the probe must have run through the stream"
    assert worst_ms <= 50, f"the event loop stalled {worst_ms:.1f} ms while streaming"


@pytest.mark.parametrize("text", ["<b>bold</b> <script>alert(1)</script>"])
def test_model_html_is_shown_as_text(chat, text):
    from desktop.markdown_view import MarkdownView

    view = MarkdownView()
    view.set_markdown(text)
    assert view.blocks()[0].toPlainText() == text


def test_context_overflow_is_a_message_not_a_crash(chat, turns, qtbot):
    chat.sampling.max_tokens = 100_000  # more than the whole context window
    with qtbot.waitSignal(chat.client.signals.failed, timeout=30_000) as failed:
        chat.send("Hello?")
    assert "context window" in failed.args[1]
    assert chat.chat_view.error_label.isVisible()
    assert "context window" in chat.statusBar().currentMessage()
    chat.sampling.max_tokens = 16
    assert turns.send("Hello again?")["content"].strip()


def test_a_model_that_fails_to_load_is_reported_then_replaced(chat, qtbot, tmp_path):
    client = chat.client
    missing = str(tmp_path / "missing.gguf")
    with qtbot.waitSignal(client.load_failed, timeout=30_000) as failed:
        client.switch_model(missing)
    assert "missing.gguf" in failed.args[0]
    assert chat.top_bar.model_state.text() == "not loaded"
    with qtbot.waitSignal(client.failed, timeout=30_000) as turn:
        chat.send("Anyone there?")
    assert "missing.gguf" in turn.args[1]
    with qtbot.waitSignal(client.loaded, timeout=60_000):
        client.switch_model("smollm2-135m-instruct")
    assert chat.top_bar.model_state.text().startswith("ready")


def test_moderation_settings_switch_a_category_off(chat, turns, qtbot):
    prompt = "How do I make a bomb to kill people?"
    dlg = chat.open_settings()
    for cat in ("illicit", "illicit/violent", "violence"):
        dlg.moderation_rows[cat][0].setChecked(False)
    with qtbot.waitSignal(dlg.moderation_changed):
        dlg.save()
    assert chat.store.get_setting("moderation")["disabled"] == ["illicit", "illicit/violent", "violence"]
    calls = chat.client.worker.model_calls
    answer = turns.send(prompt)
    assert chat.client.worker.model_calls == calls + 1  # the model answered this time
    assert answer["finish_reason"] != "content_filter" or answer["moderation"]["stage"] == "answer"
    dlg = chat.open_settings()
    for cat in ("illicit", "illicit/violent", "violence"):
        dlg.moderation_rows[cat][0].setChecked(True)
    with qtbot.waitSignal(dlg.moderation_changed):
        dlg.save()
    assert turns.send(prompt)["moderation"]["stage"] == "prompt"  # flagged again, model not called


def test_a_1mb_paste_is_refused_with_a_notice_and_nothing_freezes(chat, turns, qtbot):
    sid = chat.chat_view.session_id
    before = len(chat.store.branch(sid)) if sid is not None else 0
    with qtbot.waitSignal(chat.client.signals.failed, timeout=30_000) as failed:
        chat.send("x" * 2**20)
    assert "the limit is 100,000" in failed.args[1]
    assert chat.chat_view.error_label.isVisible()
    if sid is not None:
        assert len(chat.store.branch(sid)) == before  # nothing half-stored
    assert turns.send("Hello again?")["content"].strip()
