"""The app's log file and what happens to an exception nobody caught.

A double-clicked app has no terminal: a traceback printed to stderr is lost, and the user only
sees a button that did nothing. So `main()` sends logging to `home()/logs/chatfactory.log`
(rotated, a few MB at most) and installs hooks that write any unhandled exception there and
tell the user where the file is, in a dialog. The app keeps running: PySide6 hands exceptions
raised in slots to `sys.excepthook` and returns to the event loop, so one failed click does
not cost the user their window.

The dialog must be shown on the GUI thread, but the hooks also run on the inference worker
and on Python threads: they log at once, on the thread that failed, and emit a queued signal
that the GUI thread turns into the dialog. `show_dialog` is a module attribute so that tests
can replace it instead of blocking on a modal box.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from logging.handlers import RotatingFileHandler
from pathlib import Path
from types import TracebackType

from PySide6.QtCore import QObject, Signal, Slot

log = logging.getLogger("chatfactory.crash")

LOG_NAME = "chatfactory.log"
LOG_MAX_BYTES = 1_000_000
LOG_BACKUPS = 3
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"


def log_path(home: Path | None = None) -> Path:
    """`home()/logs/chatfactory.log` (the folder is created)."""
    if home is None:
        from engine.paths import home as data_home

        home = data_home()
    folder = Path(home) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / LOG_NAME


def setup_logging(path: Path, level: int = logging.INFO) -> logging.Handler:
    """Send the root logger's records (INFO and up) to a rotating file; returns the handler so a
    caller (a test) can remove it again. stderr keeps Python's default: warnings and up."""
    handler = RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(level)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    return handler


def show_dialog(title: str, text: str, details: str) -> None:
    """The critical box naming the log file (replaced by tests: a modal box would block them)."""
    from PySide6.QtWidgets import QApplication, QMessageBox

    box = QMessageBox(QMessageBox.Icon.Critical, title, text, QMessageBox.StandardButton.Ok,
                      QApplication.activeWindow())  # fmt: skip
    box.setDetailedText(details)
    box.exec()


class CrashReporter(QObject):
    """Logs unhandled exceptions from any thread and shows one dialog at a time on the GUI thread.

    Create it on the GUI thread; `install()` makes it `sys.excepthook` and `threading.excepthook`.
    """

    report = Signal(str, str)  # summary, traceback: queued to the GUI thread when emitted elsewhere

    def __init__(self, log_file: Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.log_file = Path(log_file)
        self.reported = 0  # exceptions seen (tests, and a cap on dialogs)
        self._showing = False
        self._previous = (sys.excepthook, threading.excepthook)
        self.report.connect(self._show)

    def install(self) -> None:
        sys.excepthook = self.excepthook
        threading.excepthook = self.thread_excepthook

    def uninstall(self) -> None:
        """Put back the hooks found at construction (tests)."""
        sys.excepthook, threading.excepthook = self._previous

    def excepthook(self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):  # Ctrl+C in a terminal: Python's own behaviour
            sys.__excepthook__(exc_type, exc, tb)
            return
        self.reported += 1
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        log.critical("unhandled exception\n%s", text.rstrip())
        for h in logging.getLogger().handlers:
            h.flush()
        self.report.emit(f"{exc_type.__name__}: {exc}", text)

    def thread_excepthook(self, args: threading.ExceptHookArguments) -> None:
        if args.exc_type is SystemExit:
            return
        self.excepthook(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)

    @Slot(str, str)
    def _show(self, summary: str, details: str) -> None:
        """One dialog at a time: an error repeated on every paint must not stack up boxes."""
        if self._showing:
            return
        self._showing = True
        try:
            show_dialog(
                "chatfactory: something went wrong",
                f"An unexpected error occurred:\n\n{summary}\n\nchatfactory keeps running, but the last "
                f"action may not have completed. The details were written to the log file:\n{self.log_file}",
                details,
            )
        except Exception:  # noqa: BLE001 - never let the reporter itself loop through the hook
            print("chatfactory: could not show the error dialog", file=sys.stderr)
        finally:
            self._showing = False
