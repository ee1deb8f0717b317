"""Shared fixtures for the desktop tests: one real window, worker and bundled model per module.

Everything is real: the SmolLM2-135M GGUF run by llama.cpp on the worker thread, the moderation
filter, and a SQLite file in a temporary data folder (CHATFACTORY_HOME), so tests never touch the
user's data. Loading the model takes about half a second, so a module shares one window; each
test starts from a new chat.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any QApplication exists

import pytest
from PySide6.QtCore import QEventLoop, QObject, QTimer

# The offscreen platform plugin warns on every window size-hint change: its limitation, not ours.
OFFSCREEN_NOISE = r"This plugin does not support propagateSizeHints"
ANSWER_TIMEOUT_MS = 90_000


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/desktop" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.qt_log_ignore(OFFSCREEN_NOISE))


@pytest.fixture(scope="module")
def desktop_home(tmp_path_factory):
    """A private data folder for the module (database, templates, model registry)."""
    home = tmp_path_factory.mktemp("chatfactory-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHATFACTORY_HOME", str(home))
        yield home


class _Waiter(QObject):
    """Quits an event loop when the worker reports; a QObject so the signal is queued here."""

    def __init__(self, loop: QEventLoop) -> None:
        super().__init__()
        self.loop, self.outcome = loop, "timed out"

    def loaded(self, *_: object) -> None:
        self.outcome = "loaded"
        self.loop.quit()

    def failed(self, text: str) -> None:
        self.outcome = text
        self.loop.quit()


def wait_for_model(win, timeout_ms: int = 60_000) -> str:
    """Run the event loop until the worker has loaded the model (module fixtures have no qtbot)."""
    loop = QEventLoop()
    waiter = _Waiter(loop)
    win.client.signals.loaded.connect(waiter.loaded)
    win.client.signals.load_failed.connect(waiter.failed)
    QTimer.singleShot(timeout_ms, loop.quit)
    if win.client.model_name is None:
        loop.exec()
    else:
        waiter.outcome = "loaded"
    win.client.signals.loaded.disconnect(waiter.loaded)
    win.client.signals.load_failed.disconnect(waiter.failed)
    return waiter.outcome


@pytest.fixture(scope="module")
def window(qapp, desktop_home):
    """The app's main window with the bundled model loaded, answers kept short."""
    from desktop import dialogs
    from desktop.app import create_window

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dialogs, "confirm", lambda *a, **k: True)
        mp.setattr(dialogs, "error", lambda *a, **k: None)
        win = create_window(desktop_home / "chatfactory.db")
        outcome = wait_for_model(win)
        assert outcome == "loaded", f"the bundled model did not load: {outcome}"
        win.sampling.max_tokens = 24
        win.sampling.temperature = 0.7
        yield win
        win.close()
        win.deleteLater()
        qapp.processEvents()


@pytest.fixture
def chat(window, qtbot):
    """The shared window, idle, on a new chat."""
    if window.client.busy:
        window.stop()
        qtbot.waitUntil(lambda: not window.client.busy, timeout=ANSWER_TIMEOUT_MS)
    window.sampling.max_tokens = 24
    window.new_chat()
    return window


class Turns:
    """Run turns in the shared window and wait for their answers (signals, never sleeps)."""

    def __init__(self, qtbot, window) -> None:
        self.qtbot, self.window = qtbot, window

    def send(self, text: str, timeout: int = ANSWER_TIMEOUT_MS) -> dict:
        """Send `text` in the current chat; returns the stored answer row."""
        return self.run(lambda: self.window.send(text), timeout)

    def run(self, start, timeout: int = ANSWER_TIMEOUT_MS) -> dict:
        """Call `start()` (a click, a regenerate, ...) and wait for the answer row."""
        with self.qtbot.waitSignal(self.window.client.signals.finished, timeout=timeout) as blocker:
            start()
            assert self.window.client.busy, "no turn was started"
        return blocker.args[1]["message"]


@pytest.fixture
def turns(qtbot, chat) -> Turns:
    return Turns(qtbot, chat)
