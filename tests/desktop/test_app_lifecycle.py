"""The running app's life cycle: first run, no network, crashes, restarts, a second launch.

Each test has its own data folder (CHATFACTORY_HOME) and database, so they never meet the
module-shared window of the other desktop tests, nor each other's single-instance socket.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer

ROOT = Path(__file__).resolve().parents[2]
OFFSCREEN_NOISE = r"This plugin does not support propagateSizeHints"  # as in conftest.py


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CHATFACTORY_HOME", str(tmp_path))
    return tmp_path


def _close(win, qapp) -> None:
    win.close()
    win.deleteLater()
    qapp.processEvents()


# ---- first run ---------------------------------------------------------------------------------
def test_first_run_shows_the_welcome_chat_once(qapp, home):
    from desktop.app import create_window
    from desktop.welcome import WELCOME_TITLE

    db = home / "chatfactory.db"
    win = create_window(db, load_model=False, welcome=True, restore=True)
    try:
        store = win.store
        sessions = store.list_sessions(archived=None)
        assert [s["title"] for s in sessions] == [WELCOME_TITLE]
        assert win.session_id == sessions[0]["id"]
        [msg] = store.branch(win.session_id)
        assert (msg["role"], msg["finish_reason"], msg["model"]) == ("assistant", "stop", None)
        for words in ("offline", str(home), "Ctrl+N", "hidden instructions", "Settings"):
            assert words in msg["content"]
        assert [w.message["id"] for w in win.chat_view.widgets] == [msg["id"]]
        assert store.get_setting("welcomed") is True
        assert store.get_setting("last_session") == win.session_id
    finally:
        _close(win, qapp)
    win = create_window(db, load_model=False, welcome=True, restore=True)
    try:  # the next start: the welcome chat again, because it was the one open, not a second one
        assert win.store.count_sessions(archived=None) == 1
        assert win.session_id == sessions[0]["id"]
        win.store.delete_session(win.session_id)
    finally:
        _close(win, qapp)
    # never again, even once the user has deleted it
    win = create_window(db, load_model=False, welcome=True, restore=True)
    try:
        assert win.store.count_sessions(archived=None) == 0
        assert win.session_id is None
    finally:
        _close(win, qapp)


def test_no_welcome_unless_asked_or_when_history_exists(qapp, home):
    from desktop.app import create_window
    from engine.store import Store

    win = create_window(home / "a.db", load_model=False)  # what the other tests and the self-test get
    try:
        assert win.store.count_sessions(archived=None) == 0
        assert win.store.get_setting("welcomed") is None
    finally:
        _close(win, qapp)
    with Store.open(home / "b.db") as s:  # an imported history, then the first start of the app
        s.create_session("Imported")
    win = create_window(home / "b.db", load_model=False, welcome=True)
    try:
        assert [s["title"] for s in win.store.list_sessions(archived=None)] == ["Imported"]
        assert win.store.get_setting("welcomed") is True
    finally:
        _close(win, qapp)


# ---- no network --------------------------------------------------------------------------------
def test_start_with_the_model_attempts_no_connection(qtbot, qapp, home, monkeypatch):
    from desktop.app import create_window
    from desktop.single_instance import SingleInstance, notify_running, server_name

    attempts: list[str] = []

    def forbid(name):
        def refuse(*args, **kwargs):
            attempts.append(f"{name}{args[1:2] if name.startswith('socket.') else args[:1]}")
            raise OSError(f"network forbidden in this test ({name})")

        return refuse

    monkeypatch.setattr(socket.socket, "connect", forbid("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", forbid("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", forbid("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", forbid("getaddrinfo"))
    db = home / "chatfactory.db"
    name = server_name(db)  # main()'s order: knock, listen, window, model
    assert not notify_running(name)
    instance = SingleInstance(name)
    assert instance.listen()
    win = create_window(db, welcome=True, restore=True)
    failed: list[str] = []
    win.client.signals.load_failed.connect(failed.append)
    try:
        qtbot.waitUntil(lambda: win.client.model_name is not None or bool(failed), timeout=60_000)
        assert not failed, failed
        qtbot.wait(200)  # the model list, filled after the first paint
    finally:
        _close(win, qapp)
        instance.close()
    assert attempts == []


# ---- unhandled exceptions ----------------------------------------------------------------------
@pytest.fixture
def reporter(home, monkeypatch):
    """main()'s crash setup on a private log file; the dialog recorded instead of shown."""
    from desktop import crash

    shown: list[tuple[str, str, str]] = []
    monkeypatch.setattr(crash, "show_dialog", lambda *a: shown.append(a))
    path = crash.log_path()
    handler = crash.setup_logging(path)
    rep = crash.CrashReporter(path)
    rep.shown = shown
    rep.install()
    yield rep
    rep.uninstall()
    logging.getLogger().removeHandler(handler)
    handler.close()


def _raise(exc: BaseException):
    try:
        raise exc
    except BaseException as e:  # noqa: BLE001 - the test wants the (type, value, traceback) triple
        return type(e), e, e.__traceback__


def test_an_unhandled_exception_is_logged_and_reported(qtbot, home, reporter):
    assert reporter.log_file == home / "logs" / "chatfactory.log"
    sys.excepthook(*_raise(ValueError("boom in a slot")))
    text = reporter.log_file.read_text()
    assert "Traceback (most recent call last)" in text and "ValueError: boom in a slot" in text
    assert "_raise" in text  # the frame, not just the message
    [(_title, body, details)] = reporter.shown
    assert str(reporter.log_file) in body and "ValueError: boom in a slot" in details
    logging.getLogger("chatfactory.test").info("normal app logging reaches the file too")
    assert "normal app logging reaches the file too" in reporter.log_file.read_text()


def test_exceptions_in_slots_and_threads_keep_the_app_running(qtbot, qapp, home, reporter):
    def slot_that_fails():
        raise RuntimeError("a slot failed")

    QTimer.singleShot(0, slot_that_fails)  # PySide6 hands it to sys.excepthook, then goes on
    qtbot.waitUntil(lambda: len(reporter.shown) == 1)
    t = threading.Thread(target=lambda: 1 / 0, name="helper")
    t.start()
    t.join()
    qtbot.waitUntil(lambda: len(reporter.shown) == 2)  # queued to the GUI thread
    assert "ZeroDivisionError" in reporter.shown[1][2]
    text = reporter.log_file.read_text()
    assert "RuntimeError: a slot failed" in text and "[helper]" in text
    hits: list[int] = []
    QTimer.singleShot(0, lambda: hits.append(1))
    qtbot.waitUntil(lambda: hits == [1])  # the event loop still runs


# ---- restart -----------------------------------------------------------------------------------
def test_a_restart_reopens_the_last_chat_and_shows_the_cut_answer(qapp, home):
    from desktop.app import create_window

    db = home / "chatfactory.db"
    win = create_window(db, load_model=False, restore=True)
    try:
        store = win.store
        first = store.create_session("First")
        second = store.create_session("Second")
        store.add_message(second, "user", "Tell me a story")
        cut = store.add_message(second, "assistant", "Once upon")  # streaming when the app died
        win.sidebar.refresh()
        win.open_session(second)
        win.open_session(first)
        win.open_session(second)
    finally:
        _close(win, qapp)
    win = create_window(db, load_model=False, restore=True)
    try:
        assert win.store.interrupted_at_open == 1
        assert win.session_id == second
        assert win.sidebar.current_id == second
        shown = win.chat_view.widgets[-1]
        assert shown.message["id"] == cut and shown.message["finish_reason"] == "interrupted"
        assert "Interrupted" in shown.footer.text()
        win.new_chat()  # a new, unsaved chat is where the next start opens too
    finally:
        _close(win, qapp)
    win = create_window(db, load_model=False, restore=True)
    try:
        assert win.session_id is None
        win.open_session(first)
        win.store.delete_session(first)  # deleted elsewhere (or the CLI): start on a new chat
    finally:
        _close(win, qapp)
    win = create_window(db, load_model=False, restore=True)
    try:
        assert win.session_id is None
    finally:
        _close(win, qapp)


# ---- single instance ---------------------------------------------------------------------------
def test_a_second_launch_hands_over_to_the_first(qtbot, home):
    from desktop.single_instance import SingleInstance, notify_running, server_name

    name = server_name(home / "chatfactory.db")
    assert name != server_name(home / "other" / "chatfactory.db")
    assert not notify_running(name)
    first = SingleInstance(name)
    assert first.listen()
    try:
        with qtbot.waitSignal(first.activate_requested, timeout=5000):
            assert notify_running(name)
    finally:
        first.close()
    assert not notify_running(name)


@pytest.mark.skipif(sys.platform == "win32", reason="a stale socket file is a Unix matter")
def test_a_socket_left_by_a_crash_does_not_block_the_next_start(qtbot, home):
    from desktop.single_instance import SingleInstance, server_name

    name = server_name(home / "chatfactory.db")
    stale = Path(tempfile.gettempdir()) / name
    stale.touch()
    first = SingleInstance(name)
    try:
        assert first.listen()
    finally:
        first.close()
        stale.unlink(missing_ok=True)


# offscreen has no window manager; this marker replaces conftest's, so repeat its pattern
@pytest.mark.qt_log_ignore(r"This plugin does not support raise\(\)", OFFSCREEN_NOISE)
def test_the_app_launched_again_exits_and_the_window_comes_forward(qtbot, qapp, home):
    """`python -m desktop.app` (main()) as the second launch, this process as the first."""
    from desktop.app import create_window
    from desktop.single_instance import SingleInstance, bring_forward, server_name

    db = home / "chatfactory.db"
    first = SingleInstance(server_name(db))
    assert first.listen()
    win = create_window(db, load_model=False)
    first.activate_requested.connect(lambda: bring_forward(win))
    win.showMinimized()
    env = {**os.environ, "CHATFACTORY_HOME": str(home), "QT_QPA_PLATFORM": "offscreen"}
    try:
        with qtbot.waitSignal(first.activate_requested, timeout=30_000):
            proc = subprocess.Popen([sys.executable, "-m", "desktop.app"], cwd=ROOT, env=env)
            qtbot.waitUntil(lambda: proc.poll() is not None, timeout=30_000)
        assert proc.returncode == 0
        assert not win.isMinimized() and win.isVisible()
        assert "already running" in (home / "logs" / "chatfactory.log").read_text()
    finally:
        _close(win, qapp)
        first.close()
