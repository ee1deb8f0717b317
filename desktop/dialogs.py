"""The small questions the app asks the user, in one place.

Callers use them as `dialogs.confirm(...)` (module attribute, looked up at call time), so tests
can replace a question with an answer (`monkeypatch.setattr(dialogs, "confirm", ...)`) instead
of blocking on a modal dialog.
"""

from __future__ import annotations

from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices, QFontDatabase
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QMessageBox,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
)

SAFE_SCHEMES = ("http", "https", "mailto")


def confirm(parent: QWidget | None, title: str, text: str) -> bool:
    """Yes/No, No by default."""
    answer = QMessageBox.question(
        parent, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )  # fmt: skip
    return answer == QMessageBox.StandardButton.Yes


def too_big(parent: QWidget | None, text: str, smaller: int | None) -> str:
    """A model that may not fit: "smaller" (use a `smaller`-token context), "anyway" or "cancel"."""
    box = QMessageBox(QMessageBox.Icon.Warning, "This model may not fit in memory", text, parent=parent)
    use_smaller = box.addButton(f"Use a {smaller:,}-token context", QMessageBox.ButtonRole.AcceptRole) if smaller else None
    anyway = box.addButton("Load anyway", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    clicked = box.clickedButton()
    return "smaller" if clicked is use_smaller and smaller else "anyway" if clicked is anyway else "cancel"


def save_path(parent: QWidget | None, title: str, suggested: str, filters: str) -> str | None:
    path, _ = QFileDialog.getSaveFileName(parent, title, suggested, filters)
    return path or None


def open_path(parent: QWidget | None, title: str, filters: str) -> str | None:
    path, _ = QFileDialog.getOpenFileName(parent, title, "", filters)
    return path or None


def error(parent: QWidget | None, title: str, text: str) -> None:
    QMessageBox.warning(parent, title, text)


def open_link(parent: QWidget | None, url: QUrl) -> bool:
    """Open a link from a chat message, after showing the user the full address.

    Links come from the model's text, so they are never followed silently; only web and mail
    links are offered at all (no file:, no custom schemes)."""
    if url.scheme().lower() not in SAFE_SCHEMES:
        error(
            parent, "Link not opened", f"Only web and mail links are opened from chats:\n\n{url.toString()}"
        )
        return False
    if not confirm(parent, "Open link?", f"Open this address in your browser?\n\n{url.toString()}"):
        return False
    return QDesktopServices.openUrl(url)


class TextDialog(QDialog):
    """A read-only text, in monospace: used for the hidden instructions of a chat."""

    def __init__(self, parent: QWidget | None, title: str, text: str):
        super().__init__(parent)
        self.setWindowTitle(title)
        self.resize(720, 520)
        lay = QVBoxLayout(self)
        self.view = QPlainTextEdit(text)
        self.view.setReadOnly(True)
        self.view.setAccessibleName(title)
        self.view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        lay.addWidget(self.view)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
