"""Pages that later versions fill: the Fine-tuning tab (SFT, reward model, PPO/DPO on the
user's machine). Its own issue builds it; here it exists so the window's shape is final.
(The Models page is `desktop.models_page`.)"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget


class PlaceholderPage(QWidget):
    def __init__(self, title: str, text: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName(title)
        lay = QVBoxLayout(self)
        head = QLabel(f"<h2>{title}</h2>")
        body = QLabel(text)
        body.setWordWrap(True)
        for w in (head, body):
            w.setAlignment(Qt.AlignmentFlag.AlignCenter)
            lay.addWidget(w)
        lay.addStretch(1)
        lay.insertStretch(0, 1)


def finetune_page() -> PlaceholderPage:
    return PlaceholderPage(
        "Fine-tuning",
        "Teach your own model on this machine (SFT on your demonstrations, a reward model from your "
        "rankings, PPO or DPO): coming in a later version. The answers you rank with Compare and rate "
        "with Good / Bad are already kept for it.",
    )
