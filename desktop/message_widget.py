"""One message of the conversation: header, rendered body, notices and per-message actions.

A user message offers Edit (resend as a new branch) and Copy; an answer offers Copy, Correct
(write the answer you wanted: a new branch, kept as a demonstration for fine-tuning),
Regenerate, Compare and thumbs up/down. When a message has siblings (other answers to the same
prompt, or edited versions of a prompt) the header shows ‹ i/n › to move between branches.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.markdown_view import MarkdownView

_FINISH_NOTES = {
    "cancelled": "Stopped.",
    "interrupted": "Interrupted: the app stopped while this answer was being written.",
    "length": "Cut at the answer length limit (Settings → Max tokens).",
    "edited": "Corrected by you (kept as a demonstration for fine-tuning).",
}


def moderation_notice(message: dict) -> str:
    """Why a template answer is shown, naming the flagged categories (from `moderation`)."""
    if not message.get("flagged"):
        return ""
    mod = message.get("moderation") or {}
    cats = ", ".join(mod.get("categories") or []) or (
        "a moderation error" if mod.get("failed_closed") else ""
    )
    cats = f" ({cats})" if cats else ""
    if message["role"] == "user":
        return f"Flagged by moderation{cats}."
    if mod.get("stage") == "prompt":
        return f"Your message was flagged{cats}; the model was not asked. A template answer is shown."
    return f"The model's answer was flagged{cats}; a template answer replaced it."


def footer_text(message: dict) -> str:
    """Finish reason and speed of a finished answer."""
    parts = []
    note = _FINISH_NOTES.get(message.get("finish_reason") or "")
    if note:
        parts.append(note)
    timings = message.get("timings") or {}
    if timings.get("tokens_per_s"):
        parts.append(f"{timings['tokens_per_s']:.1f} tokens/s")
    return "  ·  ".join(parts)


def _tool(text: str, name: str, tip: str) -> QToolButton:
    b = QToolButton(text=text)
    b.setAccessibleName(name)
    b.setToolTip(tip)
    b.setAutoRaise(True)
    b.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
    return b


class MessageWidget(QFrame):
    sibling_requested = Signal(int)  # the sibling message to show
    regenerate_requested = Signal(int)  # the user message to answer again
    compare_requested = Signal(int, int)  # user message, the answer to compare against
    edit_submitted = Signal(int, str)  # the user message edited, the new text
    answer_corrected = Signal(int, str)  # the answer corrected by the user, the new text
    feedback_given = Signal(int, int)  # message id, +1 / -1 / 0 (cleared)
    link_clicked = Signal(QUrl)

    def __init__(
        self, message: dict, siblings: list[int], rating: int = 0, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.message = message
        self.siblings = siblings
        self.setObjectName("userMessage" if message["role"] == "user" else "assistantMessage")
        self.setFrameShape(QFrame.Shape.StyledPanel if message["role"] == "user" else QFrame.Shape.NoFrame)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 6, 8, 6)
        lay.setSpacing(2)

        head = QHBoxLayout()
        self.role = QLabel()
        self.role.setStyleSheet("font-weight: bold;")
        head.addWidget(self.role)
        head.addStretch(1)
        self.prev_button = _tool("‹", "Previous version", "Show the previous version")
        self.position = QLabel()
        self.position.setAccessibleName("Version")
        self.next_button = _tool("›", "Next version", "Show the next version")
        self.prev_button.clicked.connect(lambda: self._step(-1))
        self.next_button.clicked.connect(lambda: self._step(+1))
        for w in (self.prev_button, self.position, self.next_button):
            head.addWidget(w)
        lay.addLayout(head)

        self.notice = QLabel()
        self.notice.setWordWrap(True)
        self.notice.setAccessibleName("Moderation notice")
        self.notice.setStyleSheet("color: #b05a00;")
        lay.addWidget(self.notice)

        self.body = MarkdownView(self)
        self.body.link_clicked.connect(self.link_clicked)
        lay.addWidget(self.body)

        self.editor: QPlainTextEdit | None = None  # built on first Edit (most messages never are)
        self._body_layout = lay

        self.footer = QLabel()
        self.footer.setStyleSheet("color: palette(placeholder-text);")
        self.footer.setAccessibleName("Answer details")
        lay.addWidget(self.footer)

        actions = QHBoxLayout()
        actions.setSpacing(2)
        self.copy_button = _tool("Copy", "Copy message", "Copy this message's text")
        self.copy_button.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.message["content"]))
        self.action_buttons: list[QToolButton] = []
        if message["role"] == "user":
            self.edit_button = _tool(
                "Edit", "Edit and resend", "Edit this message and send it again (a new branch)"
            )
            self.edit_button.clicked.connect(lambda: self.set_editing(True))
            actions.addWidget(self.edit_button)
            self.action_buttons.append(self.edit_button)
            actions.addWidget(self.copy_button)
        else:
            actions.addWidget(self.copy_button)
            self.regenerate_button = _tool(
                "Regenerate", "Regenerate answer", "Write another answer (a new branch)"
            )
            self.regenerate_button.clicked.connect(self._regenerate)
            self.compare_button = _tool(
                "Compare", "Compare answers", "Write a second answer and pick the better one"
            )
            self.compare_button.clicked.connect(self._compare)
            # words, not emoji: minimal Linux installs have no emoji font (the thumbs became boxes)
            self.up_button = _tool("Good", "Thumbs up", "A good answer (kept for fine-tuning)")
            self.down_button = _tool("Bad", "Thumbs down", "A bad answer (kept for fine-tuning)")
            for b, value in ((self.up_button, 1), (self.down_button, -1)):
                b.setCheckable(True)
                b.clicked.connect(lambda checked, v=value: self._rate(v if checked else 0))
            self.edit_button = _tool(
                "Correct", "Correct answer", "Write the answer you wanted (a new branch, kept for fine-tuning)"
            )
            self.edit_button.clicked.connect(lambda: self.set_editing(True))
            for b in (self.regenerate_button, self.compare_button, self.edit_button, self.up_button, self.down_button):
                actions.addWidget(b)
            self.action_buttons += [self.regenerate_button, self.compare_button, self.edit_button]
            if message.get("parent_id") is None:  # no prompt to answer again (the welcome chat)
                self.regenerate_button.hide()
                self.compare_button.hide()
        actions.addStretch(1)
        lay.addLayout(actions)

        self.set_message(message, siblings, rating)

    # ---- content ---------------------------------------------------------------------------
    def set_message(
        self, message: dict, siblings: list[int] | None = None, rating: int | None = None
    ) -> None:
        """Show a stored row (after a turn ended, or when the conversation is loaded)."""
        self.message = message
        if siblings is not None:
            self.siblings = siblings
        who = "You" if message["role"] == "user" else (message.get("model") or "Assistant")
        self.role.setText(who)
        self.body.set_markdown(message["content"])
        self.notice.setText(moderation_notice(message))
        self.notice.setVisible(bool(self.notice.text()))
        self.footer.setText(footer_text(message) if message["role"] == "assistant" else "")
        self.footer.setVisible(bool(self.footer.text()))
        self._update_position()
        if rating is not None and message["role"] == "assistant":
            self.up_button.setChecked(rating > 0)
            self.down_button.setChecked(rating < 0)

    def set_text(self, text: str) -> None:
        """Streaming: the answer so far (only changed segments re-render)."""
        self.message = {**self.message, "content": text}
        self.body.set_markdown(text)

    def set_notice(self, text: str) -> None:
        self.notice.setText(text)
        self.notice.setVisible(bool(text))

    def set_actions_enabled(self, enabled: bool) -> None:
        """Branching actions wait while a turn runs (one model, one turn at a time)."""
        for b in self.action_buttons:
            b.setEnabled(enabled)
        self.prev_button.setEnabled(enabled and self._index() > 0)
        self.next_button.setEnabled(enabled and self._index() < len(self.siblings) - 1)

    def _index(self) -> int:
        try:
            return self.siblings.index(self.message["id"])
        except ValueError:
            return 0

    def _update_position(self) -> None:
        many = len(self.siblings) > 1
        for w in (self.prev_button, self.position, self.next_button):
            w.setVisible(many)
        i = self._index()
        self.position.setText(f"{i + 1}/{len(self.siblings)}")
        self.prev_button.setEnabled(i > 0)
        self.next_button.setEnabled(i < len(self.siblings) - 1)

    # ---- actions ---------------------------------------------------------------------------
    def _step(self, step: int) -> None:
        i = self._index() + step
        if 0 <= i < len(self.siblings):
            self.sibling_requested.emit(self.siblings[i])

    def go_previous(self) -> None:
        self._step(-1)

    def go_next(self) -> None:
        self._step(+1)

    def _regenerate(self) -> None:
        self.regenerate_requested.emit(self.message["parent_id"])

    def _compare(self) -> None:
        self.compare_requested.emit(self.message["parent_id"], self.message["id"])

    def _rate(self, value: int) -> None:
        self.up_button.setChecked(value > 0)
        self.down_button.setChecked(value < 0)
        self.feedback_given.emit(self.message["id"], value)

    def _build_editor(self) -> None:
        self.editor = QPlainTextEdit()
        self.editor.setAccessibleName("Edit message")
        self.editor.setMaximumHeight(140)
        self.editor_bar = QWidget()
        bar = QHBoxLayout(self.editor_bar)
        bar.setContentsMargins(0, 0, 0, 0)
        user = self.message["role"] == "user"
        self.edit_send = QPushButton("Send" if user else "Save")
        self.edit_send.setAccessibleName("Send edited message" if user else "Save corrected answer")
        self.edit_cancel = QPushButton("Cancel")
        self.edit_cancel.setAccessibleName("Cancel editing")
        bar.addStretch(1)
        bar.addWidget(self.edit_cancel)
        bar.addWidget(self.edit_send)
        self.edit_send.clicked.connect(self._submit_edit)
        self.edit_cancel.clicked.connect(lambda: self.set_editing(False))
        at = self._body_layout.indexOf(self.body) + 1
        self._body_layout.insertWidget(at, self.editor)
        self._body_layout.insertWidget(at + 1, self.editor_bar)

    def set_editing(self, on: bool) -> None:
        if self.editor is None:
            if not on:
                return
            self._build_editor()
        if on:
            self.editor.setPlainText(self.message["content"])
            self.editor.setFocus()
        self.editor.setVisible(on)
        self.editor_bar.setVisible(on)
        self.body.setVisible(not on)

    def _submit_edit(self) -> None:
        text = self.editor.toPlainText().strip()
        if not text:
            return
        self.set_editing(False)
        if self.message["role"] == "user":
            self.edit_submitted.emit(self.message["id"], text)
        elif text != self.message["content"].strip():
            self.answer_corrected.emit(self.message["id"], text)
