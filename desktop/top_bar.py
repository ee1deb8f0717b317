"""The bar above the conversation: which model, which hidden-template set, and how the turn
is going (tokens/s, context used, and a notice when old turns no longer fit)."""

from __future__ import annotations

import time

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QWidget


class TopBar(QWidget):
    model_chosen = Signal(str)
    template_chosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(12, 6, 12, 2)
        lay.addWidget(QLabel("Model:"))
        self.model = QComboBox()
        self.model.setAccessibleName("Model")
        self.model.setMinimumContentsLength(18)
        self.model.activated.connect(lambda i: self.model_chosen.emit(self.model.itemData(i)))
        lay.addWidget(self.model)
        self.model_state = QLabel()
        self.model_state.setAccessibleName("Model status")
        lay.addWidget(self.model_state)
        lay.addSpacing(12)
        lay.addWidget(QLabel("Instructions:"))
        self.template = QComboBox()
        self.template.setAccessibleName("Hidden instructions set")
        self.template.setToolTip("The hidden instructions wrapped around each turn of this chat")
        self.template.activated.connect(lambda i: self.template_chosen.emit(self.template.itemData(i)))
        lay.addWidget(self.template)
        lay.addStretch(1)
        self.dropped = QLabel()
        self.dropped.setAccessibleName("Context notice")
        self.dropped.setStyleSheet("color: #b05a00;")
        self.dropped.hide()
        lay.addWidget(self.dropped)
        self.stats = QLabel()
        self.stats.setAccessibleName("Generation statistics")
        lay.addWidget(self.stats)
        self._t_first: float | None = None
        self._pieces = 0
        self._prompt_tokens = 0
        self._n_ctx = 0

    # ---- pickers ---------------------------------------------------------------------------
    def set_models(self, names: list[str], current: str | None) -> None:
        self.model.clear()
        for n in names:
            self.model.addItem(n, n)
        if current and current not in names:
            self.model.addItem(current, current)
        self.model.setCurrentIndex(max(0, self.model.findData(current)))

    def set_model_state(self, name: str | None, state: str) -> None:
        if name:
            i = self.model.findData(name)
            if i < 0:
                self.model.addItem(name, name)
                i = self.model.count() - 1
            self.model.setCurrentIndex(i)
        self.model_state.setText(state)

    def set_templates(self, sets: list[tuple[str, str]], current: str | None) -> None:
        self.template.clear()
        for name, title in sets:
            self.template.addItem(title or name, name)
        self.template.setCurrentIndex(max(0, self.template.findData(current or "default")))

    def current_template(self) -> str:
        return self.template.currentData() or "default"

    # ---- turn statistics -------------------------------------------------------------------
    def turn_started(self, data: dict) -> None:
        self._t_first, self._pieces = None, 0
        self._prompt_tokens, self._n_ctx = data.get("prompt_tokens", 0), data.get("n_ctx", 0)
        dropped = data.get("dropped", 0)
        self.dropped.setText(
            f"{dropped} older message{'s' if dropped != 1 else ''} left out to fit the context window"
            if dropped
            else ""
        )
        self.dropped.setVisible(bool(dropped))
        self._show(None)

    def piece(self) -> None:
        """One streamed piece (about one token): counted for the live tokens/s."""
        now = time.perf_counter()
        if self._t_first is None:
            self._t_first = now
        self._pieces += 1

    def update_live(self) -> None:
        if self._t_first is None or self._pieces < 2:
            return
        elapsed = time.perf_counter() - self._t_first
        self._show((self._pieces - 1) / elapsed if elapsed > 0 else None)

    def turn_finished(self, message: dict | None) -> None:
        timings = (message or {}).get("timings") or {}
        if message and message.get("completion_tokens") is not None:
            self._pieces = message["completion_tokens"]
        self._show(timings.get("tokens_per_s"))

    def clear_stats(self) -> None:
        """Another chat is shown: the last turn's speed and context use belong to the old one."""
        self._prompt_tokens = self._pieces = 0
        self._t_first = None
        self.stats.setText("")

    def _show(self, tps: float | None) -> None:
        parts = []
        if tps:
            parts.append(f"{tps:.1f} tokens/s")
        if self._n_ctx:
            used = self._prompt_tokens + self._pieces
            parts.append(f"context {used}/{self._n_ctx}")
        self.stats.setText("  ·  ".join(parts))
