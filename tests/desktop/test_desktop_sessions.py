"""The history side of the window: sidebar, search, filing, restart, export/import, settings,
safe rendering. None of it needs the model, so these windows skip loading it."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import Qt, QUrl
from PySide6.QtWidgets import QApplication, QLineEdit

from desktop import dialogs


@pytest.fixture(scope="module")
def browse(qapp, desktop_home):
    """A window over a fresh database, without a model (browsing, filing, files)."""
    from desktop.app import create_window

    win = create_window(desktop_home / "browse.db", load_model=False)
    yield win
    win.close()
    win.deleteLater()
    qapp.processEvents()


@pytest.fixture
def yes(monkeypatch):
    monkeypatch.setattr(dialogs, "confirm", lambda *a, **k: True)


def add_chat(store, title: str, *pairs: tuple[str, str]) -> tuple[int, list[int]]:
    sid = store.create_session(title=title)
    ids = []
    for q, a in pairs:
        ids.append(store.add_message(sid, "user", q))
        ids.append(store.add_message(sid, "assistant", a, finish_reason="stop"))
    return sid, ids


def test_search_finds_a_message_in_another_chat_and_jumps_to_it(browse, qtbot):
    store = browse.store
    target, ids = add_chat(
        store, "Travel", ("Where is Zanzibar?", "Off the coast of Tanzania; quokkas live elsewhere.")
    )
    other_branch = store.add_message(target, "assistant", "A quokka answer on another branch.", parent_id=ids[0],
                                     finish_reason="stop")  # fmt: skip
    store.select_branch(target, ids[1])
    here, _ = add_chat(store, "Cooking", ("How long do I boil an egg?", "About nine minutes."))
    browse.sidebar.refresh()
    browse.open_session(here)
    browse.sidebar.search.setText("quokka")
    results = browse.sidebar.results
    qtbot.waitUntil(lambda: results.count() == 2, timeout=3000)
    assert results.isVisible() and not browse.sidebar.view.isVisible()
    label = results.itemWidget(results.item(0))
    assert "<b>quokka</b>" in label.text().lower()
    # the newest hit is on the branch that is not shown: clicking it switches branch and chat
    item = results.item(0)
    assert item.data(Qt.ItemDataRole.UserRole) == (target, other_branch)
    with qtbot.waitSignal(browse.session_shown, timeout=3000):
        qtbot.mouseClick(
            results.viewport(), Qt.MouseButton.LeftButton, pos=results.visualItemRect(item).center()
        )
    assert browse.session_id == target
    assert browse.chat_view.widget_for(other_branch) is not None
    browse.sidebar.search.clear()
    qtbot.waitUntil(lambda: browse.sidebar.view.isVisible(), timeout=3000)


def test_search_treats_odd_input_as_text(browse, qtbot):
    browse.sidebar.search.setText('"unbalanced (NEAR OR -x')
    assert browse.sidebar.run_search() == []
    assert browse.sidebar.no_results.isVisible()
    browse.sidebar.search.clear()
    browse.sidebar.run_search()


def test_rename_pin_delete_persist_after_restart(qapp, desktop_home, qtbot, yes):
    from desktop.app import create_window

    db = desktop_home / "restart.db"
    first = create_window(db, load_model=False)
    store = first.store
    a, _ = add_chat(store, "Alpha", ("a?", "a."))
    b, _ = add_chat(store, "Beta", ("b?", "b."))
    c, _ = add_chat(store, "Gamma", ("c?", "c."))
    first.sidebar.refresh()
    # rename in place: F2 on the selected chat, type, Enter
    first.open_session(a)
    first.activateWindow()
    qtbot.waitUntil(first.isActiveWindow, timeout=3000)
    view = first.sidebar.view
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_F2)
    editor = QApplication.focusWidget()
    assert isinstance(editor, QLineEdit)
    editor.selectAll()
    qtbot.keyClicks(editor, "Alpha renamed")
    qtbot.keyClick(editor, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: store.get_session(a)["title"] == "Alpha renamed", timeout=3000)  # a queued commit
    first.sidebar.set_pinned(a, True)  # oldest, but pinned: on top
    assert first.delete_session(c)
    first.close()

    second = create_window(db, load_model=False)
    rows = second.sidebar.model.rows
    assert [r["id"] for r in rows] == [a, b]
    assert rows[0]["title"] == "Alpha renamed" and rows[0]["pinned"]
    assert second.sidebar.model.index(0).data().startswith("★")
    second.close()


def test_archive_moves_a_chat_out_of_the_list(browse):
    sid, _ = add_chat(browse.store, "Old stuff", ("x?", "y."))
    browse.sidebar.refresh()
    assert browse.sidebar.model.row_of(sid) >= 0
    browse.sidebar.set_archived(sid, True)
    assert browse.sidebar.model.row_of(sid) < 0
    browse.sidebar.show_archived.setChecked(True)
    assert browse.sidebar.model.row_of(sid) >= 0
    browse.sidebar.show_archived.setChecked(False)


def test_long_history_loads_in_pages(browse):
    store = browse.store
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO sessions (title, created, updated) VALUES (?, ?, ?)",
            [(f"Bulk {i}", 1000.0 + i, 1000.0 + i) for i in range(1000)],
        )
    browse.sidebar.refresh()
    model = browse.sidebar.model
    assert model.rowCount() == 100 and model.canFetchMore()
    model.fetchMore()
    assert model.rowCount() == 200


def test_export_then_import_round_trips(browse, qtbot, tmp_path):
    store = browse.store
    sid, ids = add_chat(store, "Round trip", ("What is 2+2?", "**4**, of course."), ("And 3+3?", "6."))
    store.add_message(sid, "assistant", "Six.", parent_id=ids[2], finish_reason="stop")  # a second branch
    out = tmp_path / "chats.json"
    with qtbot.waitSignal(browse.export_finished, timeout=10_000):
        browse.export_to(str(out), "json", [sid])
        assert not browse.transfer_progress.isHidden()  # a busy bar while it runs
    assert browse.transfer_progress.isHidden()
    assert json.loads(out.read_text())["sessions"][0]["title"] == "Round trip"
    with qtbot.waitSignal(browse.import_finished, timeout=10_000) as done:
        browse.import_from(str(out))
    (new,) = done.args[0].sessions
    assert [(m["role"], m["content"]) for m in store.messages(new)] == [
        (m["role"], m["content"]) for m in store.messages(sid)
    ]
    assert [m["content"] for m in store.branch(new)] == [m["content"] for m in store.branch(sid)]
    assert browse.sidebar.model.row_of(new) >= 0
    md = tmp_path / "chats.md"
    with qtbot.waitSignal(browse.export_finished, timeout=10_000):
        browse.export_to(str(md), "markdown", [sid])
    assert "**4**, of course." in md.read_text()


def test_import_chatgpt_conversations(browse, qtbot, tmp_path):
    def node(key, parent, role, text, children):
        msg = None if role is None else {
            "author": {"role": role}, "content": {"content_type": "text", "parts": [text]}, "create_time": 1.0,
        }  # fmt: skip
        return {"id": key, "parent": parent, "children": children, "message": msg}

    mapping = {
        "root": node("root", None, None, "", ["u1"]),
        "u1": node("u1", "root", "user", "Hello from ChatGPT", ["a1"]),
        "a1": node("a1", "u1", "assistant", "Hi! Imported.", []),
    }
    path = tmp_path / "conversations.json"
    path.write_text(
        json.dumps([{"title": "From ChatGPT", "create_time": 1.0, "mapping": mapping, "current_node": "a1"}])
    )
    with qtbot.waitSignal(browse.import_finished, timeout=10_000) as done:
        browse.import_from(str(path))
    assert done.args[0].format == "chatgpt"
    (sid,) = done.args[0].sessions
    assert [m["content"] for m in browse.store.branch(sid)] == ["Hello from ChatGPT", "Hi! Imported."]


def test_a_bad_import_is_reported_not_raised(browse, qtbot, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(dialogs, "error", lambda parent, title, text: shown.append(text))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with qtbot.waitSignal(browse.task_failed, timeout=10_000):
        browse.import_from(str(bad))
    assert shown and "bad.json" in shown[0]


def test_rendering_is_safe(browse, qtbot, monkeypatch):
    from PySide6.QtGui import QDesktopServices

    from desktop.markdown_view import MarkdownView, SafeBrowser

    view = MarkdownView()
    view.set_markdown("<img src='file:///etc/passwd'> ![x](file:///etc/hosts) [site](https://example.com)\n\n"
                      "```python\nprint('<b>hi</b>')\n```")  # fmt: skip
    text_block, code_block = view.blocks()
    assert "<img src='file:///etc/passwd'>" in text_block.toPlainText()
    assert text_block.loadResource(2, QUrl("file:///etc/hosts")) is None
    assert not text_block.openLinks() and not text_block.openExternalLinks()
    assert code_block.view.toPlainText() == "print('<b>hi</b>')"
    assert isinstance(code_block.view, SafeBrowser)
    code_block.copy_button.click()
    assert QApplication.clipboard().text() == "print('<b>hi</b>')"

    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toString()) or True)
    monkeypatch.setattr(dialogs, "confirm", lambda *a: False)
    assert not dialogs.open_link(None, QUrl("https://example.com"))
    monkeypatch.setattr(dialogs, "confirm", lambda *a: True)
    monkeypatch.setattr(dialogs, "error", lambda *a: None)
    assert not dialogs.open_link(None, QUrl("file:///etc/passwd"))
    assert dialogs.open_link(None, QUrl("https://example.com"))
    assert opened == ["https://example.com"]


def test_streaming_updates_only_the_changed_segment():
    from desktop.markdown_view import MarkdownView, split_segments

    assert [s.kind for s in split_segments("a\n```py\nx\n```\nb")] == ["text", "code", "text"]
    assert split_segments("a\n```py\nx = 1")[-1].kind == "code"  # an unclosed fence while streaming
    view = MarkdownView()
    view.set_markdown("Intro.\n\n```py\nx = 1")
    first = view.blocks()[0]
    renders = view.renders
    view.set_markdown("Intro.\n\n```py\nx = 1\ny = 2")
    assert view.blocks()[0] is first and view.renders == renders + 1


def test_settings_are_saved_and_applied(browse, qtbot):
    dlg = browse.open_settings()
    dlg.max_tokens.setValue(77)
    dlg.temperature.setValue(0.3)
    with qtbot.waitSignal(dlg.sampling_changed):
        dlg.save()
    assert browse.store.get_setting("sampling")["max_tokens"] == 77
    assert browse.sampling.max_tokens == 77 and abs(browse.sampling.temperature - 0.3) < 1e-9
    assert browse.store.get_setting("runtime")["n_ctx"] == 4096


def test_template_editor_validates_and_saves_a_user_set(browse, desktop_home):
    dlg = browse.open_settings()
    text = dlg.yaml.toPlainText()
    dlg.save_name.setText("mine")
    dlg.yaml.setPlainText(text.replace("name: default", "name: mine"))
    assert dlg.validate(), dlg.template_status.text()
    dlg.yaml.setPlainText("name: mine\nversion: x\n")
    assert not dlg.validate() and "❌" in dlg.template_status.text()
    dlg.yaml.setPlainText(text.replace("name: default", "name: mine"))
    assert dlg.save_set()
    assert (desktop_home / "templates" / "mine.yaml").exists()
    assert "mine" in browse.templates
    assert browse.top_bar.template.findData("mine") >= 0
    dlg.reject()


def test_template_picker_is_stored_on_the_chat(browse):
    sid, _ = add_chat(browse.store, "Tutor chat", ("Teach me", "OK."))
    browse.open_session(sid)
    browse.set_template("tutor")
    assert browse.store.get_session(sid)["template_set"] == "tutor"


def test_theme_override(browse):
    from PySide6.QtGui import QPalette

    browse.set_theme("dark")
    assert QApplication.palette().color(QPalette.ColorRole.Window).lightness() < 100
    browse.set_theme("light")
    assert QApplication.palette().color(QPalette.ColorRole.Window).lightness() > 150
    assert browse.store.get_setting("theme") == "light"
    browse.set_theme("system")


def test_pages_and_new_chat_shortcut(browse, qtbot):
    assert [browse.pages.tabText(i) for i in range(browse.pages.count())] == ["Chat", "Models", "Fine-tuning"]
    sid, _ = add_chat(browse.store, "Something", ("q", "a"))
    browse.open_session(sid)
    browse.activateWindow()  # shortcuts act in the active window
    qtbot.waitUntil(browse.isActiveWindow, timeout=3000)
    with qtbot.waitSignal(browse.session_shown) as shown:
        qtbot.keyClick(browse, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert shown.args == [None] and browse.session_id is None
    for w in (browse.composer.edit, browse.composer.send_button, browse.sidebar.search, browse.sidebar.view):
        assert w.accessibleName()


def test_a_vanished_last_model_falls_back_to_the_bundled_one(qapp, desktop_home, qtbot):
    from desktop.app import create_window
    from engine.store import Store

    db = desktop_home / "fallback.db"
    with Store.open(db) as store:
        store.set_setting("model", str(desktop_home / "gone.gguf"))
    win = create_window(db)  # the worker is asked to load after the event loop runs again
    try:
        with qtbot.waitSignal(win.client.loaded, timeout=60_000) as loaded:
            pass
        assert loaded.args[0] == "smollm2-135m-instruct"
    finally:
        win.close()
