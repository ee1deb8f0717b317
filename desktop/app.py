"""`chatfactory-desktop`: start the app.

Startup order is what makes the window appear fast: open the store (milliseconds) and show
the window first; the model is loaded afterwards, on the inference thread, while the user can
already read and search their chats.

    chatfactory-desktop [--db FILE] [--model NAME|FILE]
    chatfactory-desktop --self-test    # window (offscreen is fine) + one real answer, exit 0 / 1
"""

from __future__ import annotations

import argparse
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
    db: str | Path | None = None, model: str | None = None, *, show: bool = True, load_model: bool = True
):
    """Open the store, build and show the window, then ask the worker to load the model
    (`load_model=False`: a window for browsing only, as tests of the history use).
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
    if show:
        window.show()
    if load_model:
        QTimer.singleShot(0, lambda: client.open(store.path, model))
    return window


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.self_test:
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and sys.platform.startswith(
            "linux"
        ):
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        return self_test(args)
    app = make_app()
    try:
        create_window(args.db, args.model)
    except Exception as e:  # noqa: BLE001 - a newer or foreign database, an unreadable folder: say so
        from PySide6.QtWidgets import QMessageBox

        QMessageBox.critical(None, "chatfactory cannot start", str(e))
        return 2
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
