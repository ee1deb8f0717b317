"""Compare two answers to the same prompt side by side; the user's pick becomes a ranking
(`Store.add_ranking(prompt, [winner, loser])`): the comparisons a reward model learns from."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDialog,
    QGridLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QWidget,
)

from desktop.markdown_view import MarkdownView


def _scrolled(view: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setWidget(view)
    return area


class CompareDialog(QDialog):
    chosen = Signal(int, int)  # winner id, loser id

    def __init__(self, prompt: dict, left: dict, right: dict, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Which answer is better?")
        self.resize(900, 560)
        self.prompt, self.left, self.right = prompt, left, right
        grid = QGridLayout(self)
        question = QLabel(f"Prompt: {prompt['content']}")
        question.setWordWrap(True)
        question.setTextFormat(question.textFormat().PlainText)
        grid.addWidget(question, 0, 0, 1, 2)
        self.views = []
        for col, (label, msg) in enumerate((("Answer A", left), ("Answer B", right))):
            grid.addWidget(QLabel(f"<b>{label}</b>"), 1, col)
            view = MarkdownView()
            view.setAccessibleName(label)
            view.set_markdown(msg["content"])
            self.views.append(view)
            grid.addWidget(_scrolled(view), 2, col)
        self.left_button = QPushButton("A is better")
        self.left_button.setAccessibleName("Answer A is better")
        self.right_button = QPushButton("B is better")
        self.right_button.setAccessibleName("Answer B is better")
        self.left_button.clicked.connect(lambda: self.pick(left["id"]))
        self.right_button.clicked.connect(lambda: self.pick(right["id"]))
        grid.addWidget(self.left_button, 3, 0)
        grid.addWidget(self.right_button, 3, 1)
        grid.setRowStretch(2, 1)

    def pick(self, winner: int) -> None:
        loser = self.right["id"] if winner == self.left["id"] else self.left["id"]
        self.chosen.emit(winner, loser)
        self.accept()
