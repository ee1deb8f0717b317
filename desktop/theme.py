"""Light, dark, or whatever the system uses (Qt 6.5+ reports it through styleHints).

The app uses the Fusion style everywhere so that one palette decides the look on every
platform, and a manual override really overrides. In "system" mode the palette follows
`styleHints().colorScheme()`, also when the user switches the system theme while the app runs.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

MODES = ("system", "light", "dark")
_state = {"mode": "system", "connected": False}


def dark_palette() -> QPalette:
    p = QPalette()
    R = QPalette.ColorRole
    base, window, text = QColor(30, 30, 32), QColor(43, 43, 46), QColor(230, 230, 230)
    for role, color in (
        (R.Window, window), (R.WindowText, text), (R.Base, base), (R.AlternateBase, QColor(52, 52, 56)),
        (R.ToolTipBase, window), (R.ToolTipText, text), (R.Text, text), (R.Button, QColor(53, 53, 57)),
        (R.ButtonText, text), (R.BrightText, QColor(255, 80, 80)), (R.Highlight, QColor(58, 110, 200)),
        (R.HighlightedText, QColor(255, 255, 255)), (R.Link, QColor(110, 160, 255)),
        (R.PlaceholderText, QColor(150, 150, 150)), (R.Mid, QColor(70, 70, 74)),
    ):  # fmt: skip
        p.setColor(role, color)
    for role in (R.Text, R.WindowText, R.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(120, 120, 120))
    return p


def system_is_dark() -> bool:
    return QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark


def effective_dark(mode: str) -> bool:
    return mode == "dark" or (mode == "system" and system_is_dark())


def apply_theme(mode: str = "system") -> None:
    """Apply a theme mode ("system", "light" or "dark") to the running QApplication."""
    if mode not in MODES:
        mode = "system"
    app = QApplication.instance()
    _state["mode"] = mode
    if app.style().name().lower() != "fusion":
        app.setStyle("Fusion")
    if not _state["connected"]:
        QGuiApplication.styleHints().colorSchemeChanged.connect(lambda _s: apply_theme(_state["mode"]))
        _state["connected"] = True
    app.setPalette(dark_palette() if effective_dark(mode) else app.style().standardPalette())


def current_mode() -> str:
    return _state["mode"]
