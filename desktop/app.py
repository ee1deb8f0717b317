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

SELF_TEST_PROMPT = "Say hello in one short sentence."
SELF_TEST_TIMEOUT_S = 180


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="chatfactory-desktop", description="chatfactory: chat with a local model")
    p.add_argument("--db", help="conversation database file (default: the data folder's chatfactory.db)")
    p.add_argument("--model", help="registry name or .gguf file (default: the last used, else the bundled model)")
    p.add_argument(
        "--self-test", action="store_true",
        help="open the window, send one message to the model, print the answer and exit (0 = it works)",
    )  # fmt: skip
    return p.parse_args(argv)


def make_app():
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("chatfactory")
    app.setApplicationDisplayName("chatfactory")
    app.setOrganizationName("chatfactory")
    return app


def create_window(db: str | Path | None = None, model: str | None = None, *, show: bool = True):
    """Open the store, build and show the window, then ask the worker to load the model.
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
    QTimer.singleShot(0, lambda: client.open(store.path, model))
    return window


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
    except Exception as e:
        print(f"self-test FAILED: the window could not open: {e}", file=sys.stderr)
        return 1
    print(f"window shown in {time.perf_counter() - t0:.2f} s (database {db})")
    outcome: dict[str, object] = {}
    w = window.client.signals

    def loaded(name: str, n_ctx: int) -> None:
        print(f"model {name} loaded (context {n_ctx}) at {time.perf_counter() - t0:.2f} s")
        window.sampling.max_tokens = 32
        print(f"> {SELF_TEST_PROMPT}")
        window.send(SELF_TEST_PROMPT)

    def finished(_sid: int, data: dict) -> None:
        outcome["answer"] = data["message"]["content"]
        app.quit()

    def failed(what: str):
        def fail(*a) -> None:
            outcome["error"] = f"{what}: {a[-1]}"
            app.quit()

        return fail

    w.loaded.connect(loaded)
    w.finished.connect(finished)
    w.failed.connect(failed("the turn failed"))
    w.load_failed.connect(failed("the model did not load"))
    timer = QTimer()
    timer.setSingleShot(True)
    timer.timeout.connect(lambda: (outcome.setdefault("error", f"no answer within {SELF_TEST_TIMEOUT_S} s"), app.quit()))
    timer.start(SELF_TEST_TIMEOUT_S * 1000)
    app.exec()
    window.close()
    if tmp is not None:
        tmp.cleanup()
    if "error" in outcome:
        print(f"self-test FAILED: {outcome['error']}", file=sys.stderr)
        return 1
    answer = str(outcome.get("answer", "")).strip()
    if not answer:
        print("self-test FAILED: the model's answer was empty", file=sys.stderr)
        return 1
    print(answer)
    print(f"self-test passed in {time.perf_counter() - t0:.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.self_test:
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and sys.platform.startswith("linux"):
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        return self_test(args)
    app = make_app()
    try:
        create_window(args.db, args.model)
    except Exception as e:  # a database from a newer version, or someone else's file
        from PySide6.QtWidgets import QMessageBox

        QMessageBox.critical(None, "chatfactory cannot start", str(e))
        return 2
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
