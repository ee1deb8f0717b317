"""`chatfactory-desktop`: start the app.

Startup order is what makes the window appear fast: open the store (milliseconds) and show
the window first; the model is loaded afterwards, on the inference thread, while the user can
already read and search their chats.

    chatfactory-desktop [--db FILE] [--model NAME|FILE]
    chatfactory-desktop --self-test    # window (offscreen is fine) + one real answer, exit 0 / 1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QObject

SELF_TEST_PROMPT = "Say hello in one short sentence."
SELF_TEST_TIMEOUT_S = 180


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="chatfactory-desktop", description="chatfactory: chat with a local model"
    )
    p.add_argument("--db", help="conversation database file (default: the data folder's chatfactory.db)")
    p.add_argument(
        "--model", help="registry name or .gguf file (default: the last used, else the bundled model)"
    )
    p.add_argument(
        "--self-test", action="store_true",
        help="open the window, send one message to the model, print the answer and exit (0 = it works)",
    )  # fmt: skip
    return p.parse_args(argv)


def _quiet_offscreen() -> None:
    """The offscreen platform (self-test, benchmarks) warns on every window size-hint change,
    a limitation of that plugin, not a problem of the app: drop just that line."""
    from PySide6.QtCore import qInstallMessageHandler

    def handler(_mode, _context, message: str) -> None:
        if "does not support propagateSizeHints" not in message:
            print(message, file=sys.stderr)

    qInstallMessageHandler(handler)


def make_app():
    from PySide6.QtWidgets import QApplication

    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        _quiet_offscreen()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("chatfactory")
    app.setApplicationDisplayName("chatfactory")
    app.setOrganizationName("chatfactory")
    return app


def create_window(
    db: str | Path | None = None,
    model: str | None = None,
    *,
    show: bool = True,
    load_model: bool = True,
    welcome: bool = False,
    restore: bool = False,
):
    """Open the store, build and show the window, then ask the worker to load the model
    (`load_model=False`: a window for browsing only, as tests of the history use).

    welcome: on a brand-new database, write and show the welcome chat (desktop.welcome).
    restore: open the chat that was open when the app last stopped. Both are the app's own
    start (`main()`); off by default so tests and the self-test start on an empty new chat.
    The open chat is always remembered, so a later start with `restore` finds it.
    Raises engine.store.StoreError when the database cannot be used (newer, not ours)."""
    from PySide6.QtCore import QTimer

    from desktop import theme
    from desktop.inference_worker import InferenceClient
    from desktop.main_window import MainWindow
    from engine.store import Store
    from engine.templates import TemplateLibrary

    store = Store.open(db)  # the app's one start: marks answers a crash left unfinished
    theme.apply_theme(store.get_setting("theme", "system"))
    client = InferenceClient()
    window = MainWindow(store, TemplateLibrary.load(), client)
    _first_chat(window, welcome, restore)
    if show:
        window.show()
    if load_model:
        QTimer.singleShot(0, lambda: client.open(store.path, model))
    return window


def _first_chat(window, welcome: bool, restore: bool) -> None:
    """Which chat the window opens on: the welcome chat (first run), else the last one open."""
    from desktop.welcome import ensure_welcome, last_session, remember_session

    store = window.store
    window.session_shown.connect(lambda s: None if window.closed else remember_session(store, s))
    sid = ensure_welcome(store) if welcome else None
    if sid is None and restore:
        sid = last_session(store)
    if sid is not None:
        window.sidebar.refresh()
        window.open_session(sid)


class _SelfTest(QObject):
    """Drives the self-test from the GUI thread (a QObject, so worker signals are queued here)."""

    def __init__(self, window, app) -> None:
        super().__init__()
        self.window, self.app, self.t0 = window, app, time.perf_counter()
        self.answer, self.error = "", ""
        w = window.client.signals
        w.loaded.connect(self.loaded)
        w.finished.connect(self.finished)
        w.failed.connect(self.failed)
        w.load_failed.connect(self.load_failed)

    def loaded(self, name: str, n_ctx: int) -> None:
        print(f"model {name} loaded (context {n_ctx}) at {time.perf_counter() - self.t0:.2f} s")
        self.window.sampling.max_tokens = 32
        print(f"> {SELF_TEST_PROMPT}")
        self.window.send(SELF_TEST_PROMPT)

    def finished(self, _sid: int, data: dict) -> None:
        self.answer = data["message"]["content"]
        self.app.quit()

    def failed(self, _sid: int, text: str) -> None:
        self.error = f"the turn failed: {text}"
        self.app.quit()

    def load_failed(self, text: str) -> None:
        self.error = f"the model did not load: {text}"
        self.app.quit()

    def timed_out(self) -> None:
        self.error = f"no answer within {SELF_TEST_TIMEOUT_S} s"
        self.app.quit()


def self_test(args: argparse.Namespace) -> int:
    """Prove the whole path works here: window, worker thread, model, moderation, store."""
    from PySide6.QtCore import QTimer

    app = make_app()
    tmp = None
    db = args.db
    if db is None:  # keep the user's history out of it
        tmp = tempfile.TemporaryDirectory(prefix="chatfactory-self-test-")
        db = Path(tmp.name) / "chatfactory.db"
    t0 = time.perf_counter()
    try:
        window = create_window(db, args.model)
    except Exception as e:  # noqa: BLE001 - the self-test reports any failure, then exits 1
        print(f"self-test FAILED: the window could not open: {e}", file=sys.stderr)
        return 1
    print(f"window shown in {time.perf_counter() - t0:.2f} s (database {db})")
    probe = _SelfTest(window, app)
    timer = QTimer()
    timer.setSingleShot(True)
    timer.timeout.connect(probe.timed_out)
    timer.start(SELF_TEST_TIMEOUT_S * 1000)
    app.exec()
    window.close()
    if tmp is not None:
        tmp.cleanup()
    if probe.error:
        print(f"self-test FAILED: {probe.error}", file=sys.stderr)
        return 1
    answer = probe.answer.strip()
    if not answer:
        print("self-test FAILED: the model's answer was empty", file=sys.stderr)
        return 1
    print(answer)
    print(f"self-test passed in {time.perf_counter() - t0:.2f} s")
    return 0


def _database(args: argparse.Namespace) -> Path:
    """The database this launch will open (the single-instance key)."""
    if args.db:
        return Path(args.db).expanduser()
    from engine.paths import home
    from engine.store import DB_NAME

    return home() / DB_NAME


def main(argv: list[str] | None = None) -> int:
    """The double-clicked app: log file and crash dialog first, then hand over to an instance
    already running on this database, else open the window on the welcome or last chat."""
    args = parse_args(argv)
    if args.self_test:
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and sys.platform.startswith(
            "linux"
        ):
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        return self_test(args)
    # downloads are the user's explicit choice (Models page); nothing else may phone home
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from desktop import crash

    log_file = crash.log_path()
    crash.setup_logging(log_file)
    app = make_app()
    reporter = crash.CrashReporter(log_file, app)
    reporter.install()
    logging.getLogger(__name__).info("chatfactory starting (log %s)", log_file)

    from desktop.single_instance import SingleInstance, bring_forward, notify_running, server_name

    db = _database(args)
    name = server_name(db)
    if notify_running(name):
        logging.getLogger(__name__).info("already running on %s: asked it to come forward", db)
        return 0
    instance = SingleInstance(name, app)
    instance.listen()
    try:
        window = create_window(db, args.model, welcome=True, restore=True)
    except Exception as e:  # a newer or foreign database, an unreadable folder: say so
        from PySide6.QtWidgets import QMessageBox

        logging.getLogger(__name__).exception("the window could not open")
        QMessageBox.critical(None, "chatfactory cannot start", str(e))
        return 2
    instance.activate_requested.connect(lambda: bring_forward(window))
    code = app.exec()
    instance.close()
    logging.getLogger(__name__).info("chatfactory stopped (%s)", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
