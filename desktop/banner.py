"""The message line at the top of a page (Models, Fine-tuning): an error in red, news in green.

A page mixes in `MessageBanner` and owns `self.message` (a QLabel) and a `message_shown` signal.
"""

from __future__ import annotations

ERROR_STYLE = "background: #fdecea; color: #8a1c1c; padding: 6px; border-radius: 4px;"
INFO_STYLE = "background: #e8f4ea; color: #1b5e20; padding: 6px; border-radius: 4px;"


class MessageBanner:
    def show_error(self, text: str) -> None:
        self.message.setStyleSheet(ERROR_STYLE)
        self._show_message(text)

    def show_info(self, text: str) -> None:
        self.message.setStyleSheet(INFO_STYLE)
        self._show_message(text)

    def _show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.show()
        self.message_shown.emit(text)

    def clear_message(self) -> None:
        self.message.clear()
        self.message.hide()
