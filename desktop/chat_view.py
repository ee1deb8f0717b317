"""The conversation: one MessageWidget per message of the visible branch, streamed cheaply.

Streaming: `delta` signals append to a buffer; a 50 ms single-shot timer re-renders only the
answer being written (and inside it only the changed segment). Nothing else in the
conversation is touched per token, so a long answer never stalls the event loop.

`sync()` reconciles the widgets with the store's visible branch: widgets of messages still on
the branch are kept (updated only when their row changed), the rest are replaced. It runs when
a turn starts or ends and when the user moves between branches, never per token.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtWidgets import QFrame, QLabel, QPushButton, QScrollArea, QVBoxLayout, QWidget

from desktop.message_widget import MessageWidget

RENDER_INTERVAL_MS = 50
SHOWN_AT_OPEN = 40  # messages built when a chat opens; older ones on request (each widget ~4 ms)
_COMPARED = ("content", "finish_reason", "flagged", "moderation", "timings", "model")


class ChatView(QScrollArea):
    regenerate_requested = Signal(int)  # user message id
    compare_requested = Signal(int, int)  # user message id, answer id
    edit_requested = Signal(int, str)  # user message id, new text
    link_clicked = Signal(QUrl)
    branch_changed = Signal(int)  # session id: the visible branch moved (arrows)

    def __init__(self, store, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.session_id: int | None = None
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setAccessibleName("Conversation")
        self._inner = QWidget()
        self._layout = QVBoxLayout(self._inner)
        self._layout.setContentsMargins(12, 8, 12, 8)
        self._layout.setSpacing(8)
        self.placeholder = QLabel(
            "Start a new chat: type a message below.\nEnter sends, Shift+Enter starts a new line."
        )
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setStyleSheet("color: palette(placeholder-text);")
        self._layout.addWidget(self.placeholder)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setAccessibleName("Error")
        self.error_label.setStyleSheet("color: #c62828;")
        self.error_label.hide()
        self._layout.addWidget(self.error_label)
        self.earlier_button = QPushButton()
        self.earlier_button.setAccessibleName("Show earlier messages")
        self.earlier_button.clicked.connect(self.show_earlier)
        self.earlier_button.hide()
        self._layout.insertWidget(0, self.earlier_button)
        self._hidden = 0  # messages at the start of the branch not built (see SHOWN_AT_OPEN)
        self._layout.addStretch(1)
        self.setWidget(self._inner)
        self.widgets: list[MessageWidget] = []
        self._busy = False
        self._follow = True
        self.verticalScrollBar().rangeChanged.connect(self._range_changed)
        self.verticalScrollBar().valueChanged.connect(self._scrolled)
        # streaming state
        self._streaming_id: int | None = None
        self._parts: list[str] = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(RENDER_INTERVAL_MS)
        self._timer.timeout.connect(self._flush)
        self.flushes = 0
        QTimer.singleShot(0, self, self._warm_up)

    def _warm_up(self) -> None:
        """Build and drop one message while the model loads: the first MessageWidget pays ~40 ms
        of one-time Qt setup (fonts, Markdown parser), which would otherwise land on the first turn."""
        w = MessageWidget(
            {"id": 0, "role": "assistant", "content": "*a* `b`\n\n```py\nx = 1\n```", "parent_id": None}, [0]
        )
        w.deleteLater()

    # ---- which conversation ----------------------------------------------------------------
    def show_session(self, session_id: int | None) -> None:
        self._stop_stream()
        self.session_id = session_id
        self.error_label.hide()
        self._clear()
        self._follow = True
        branch = self.store.branch(session_id) if session_id is not None else []
        self._hidden = max(0, len(branch) - SHOWN_AT_OPEN)
        self.sync(branch)

    def _clear(self) -> None:
        for w in self.widgets:
            self._layout.removeWidget(w)
            w.hide()  # deleteLater waits for the event loop; until then it must not be painted
            w.deleteLater()
        self.widgets = []

    def show_earlier(self) -> None:
        """Build the older messages of a long chat too."""
        self._hidden = 0
        self._clear()
        self.sync()

    def sync(self, branch: list[dict] | None = None) -> None:
        """Make the widgets match the store's visible branch (see the module docstring)."""
        if branch is None:
            branch = self.store.branch(self.session_id) if self.session_id is not None else []
        self._hidden = min(self._hidden, max(0, len(branch) - 1))
        branch = branch[self._hidden :]
        self.earlier_button.setText(f"Show {self._hidden} earlier messages")
        self.earlier_button.setVisible(self._hidden > 0)
        keep = 0
        while (
            keep < min(len(branch), len(self.widgets))
            and self.widgets[keep].message["id"] == branch[keep]["id"]
        ):
            w, m = self.widgets[keep], branch[keep]
            if m["id"] != self._streaming_id and any(w.message.get(k) != m.get(k) for k in _COMPARED):
                w.set_message(m, self._siblings(m), self._rating(m))
            keep += 1
        for w in self.widgets[keep:]:
            self._layout.removeWidget(w)
            w.deleteLater()
        del self.widgets[keep:]
        for m in branch[keep:]:
            self._add(m)
        self.placeholder.setVisible(not self.widgets)

    def _add(self, m: dict) -> MessageWidget:
        w = MessageWidget(m, self._siblings(m), self._rating(m), self._inner)
        w.sibling_requested.connect(self.select_sibling)
        w.regenerate_requested.connect(self.regenerate_requested)
        w.compare_requested.connect(self.compare_requested)
        w.edit_submitted.connect(self.edit_requested)
        w.answer_corrected.connect(self.correct_answer)
        w.feedback_given.connect(self._feedback)
        w.link_clicked.connect(self.link_clicked)
        w.set_actions_enabled(not self._busy)
        self._layout.insertWidget(self._layout.indexOf(self.error_label), w)
        self.widgets.append(w)
        return w

    def _siblings(self, m: dict) -> list[int]:
        return [s["id"] for s in self.store.siblings(m["id"])]

    def _rating(self, m: dict) -> int:
        if m["role"] != "assistant":
            return 0
        return next((f["rating"] for f in self.store.feedback(m["id"]) if f["rater"] == "user"), 0)

    def widget_for(self, message_id: int) -> MessageWidget | None:
        return next((w for w in self.widgets if w.message["id"] == message_id), None)

    # ---- branches and feedback -------------------------------------------------------------
    def select_sibling(self, message_id: int) -> None:
        if self._busy or self.session_id is None:
            return
        self.store.select_branch(self.session_id, message_id)
        self.sync()
        self.branch_changed.emit(self.session_id)

    def correct_answer(self, message_id: int, text: str) -> None:
        """The user's own version of an answer: a new sibling shown in its place (Store.edit_answer)."""
        if self._busy or self.session_id is None:
            return
        self.store.edit_answer(message_id, text)
        self.sync()
        self.branch_changed.emit(self.session_id)

    def _feedback(self, message_id: int, rating: int) -> None:
        self.store.set_feedback(message_id, rating or None)

    def scroll_to_message(self, message_id: int) -> None:
        """Show a message (a search hit): switch to its branch if needed, then scroll to it."""
        if self.session_id is None:
            return
        if self.widget_for(message_id) is None:
            self.store.select_branch(self.session_id, message_id)
            self.sync()
        w = self.widget_for(message_id)
        if w is not None:
            self._follow = False
            self._inner.layout().activate()
            self.ensureWidgetVisible(w, 0, 40)
            w.setFocus()

    def set_busy(self, busy: bool) -> None:
        self._busy = busy
        for w in self.widgets:
            w.set_actions_enabled(not busy)

    def show_error(self, text: str) -> None:
        self.error_label.setText(text)
        self.error_label.setVisible(bool(text))

    # ---- streaming -------------------------------------------------------------------------
    def on_started(self, session_id: int, data: dict) -> None:
        if session_id != self.session_id:
            return
        self.error_label.hide()
        self._follow = True
        self._streaming_id = data.get("assistant_id")
        self._parts = []
        self.sync()

    def on_delta(self, session_id: int, text: str) -> None:
        if session_id != self.session_id or self._streaming_id is None:
            return
        self._parts.append(text)
        if not self._timer.isActive():
            self._timer.start()

    def on_replaced(self, session_id: int, text: str) -> None:
        if session_id != self.session_id or self._streaming_id is None:
            return
        self._parts = [text]
        self._flush()

    def on_finished(self, session_id: int, data: dict) -> None:
        if session_id != self.session_id:
            return
        self._flush()
        self._stop_stream()
        self.sync()

    def on_failed(self, session_id: int, text: str) -> None:
        if session_id != self.session_id:
            return
        self._stop_stream()
        self.sync()
        self.show_error(text)

    def streamed_text(self) -> str:
        return "".join(self._parts)

    def _flush(self) -> None:
        self._timer.stop()
        w = self.widget_for(self._streaming_id) if self._streaming_id is not None else None
        if w is not None:
            text = "".join(self._parts)
            self._parts = [text]
            w.set_text(text)
            self.flushes += 1

    def _stop_stream(self) -> None:
        self._timer.stop()
        self._streaming_id = None
        self._parts = []

    # ---- follow the bottom while an answer grows -------------------------------------------
    def _scrolled(self, value: int) -> None:
        bar = self.verticalScrollBar()
        self._follow = value >= bar.maximum() - 4

    def _range_changed(self, _min: int, maximum: int) -> None:
        if self._follow:
            self.verticalScrollBar().setValue(maximum)
