"""A small line chart drawn with QPainter (PySide6-Essentials has no QtCharts).

    chart = LineChart("Loss", x_label="step")
    chart.add_point("sft loss", 1, 2.31)

Series of (x, y) points, axes with a few "nice" ticks (1, 2, 5 × 10ⁿ), a legend, colours that read
on the light and the dark palette, no animation. Points that are not finite are skipped. The
accessible description says the last value of each series, for screen readers and tests.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPaintEvent, QPalette, QPen, QPolygonF
from PySide6.QtWidgets import QSizePolicy, QWidget

# readable on white and on the dark theme's near-black (blue, orange, green, magenta, violet, teal)
SERIES_COLOURS = ("#3b82f6", "#f08c00", "#16a34a", "#db2777", "#8b5cf6", "#0d9488")
MAX_DRAWN_POINTS = 2000  # a longer series is drawn with a stride: a line chart has no more pixels


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round values covering [lo, hi] (steps of 1, 2 or 5 × 10ⁿ)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) * 0.1 or 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, v = [], first
    while v <= hi + step * 0.5:
        ticks.append(round(v, 12))
        v += step
    return ticks


def tick_text(v: float, step: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.1e}"
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 2
    return f"{v:.{min(decimals, 4)}f}"


class LineChart(QWidget):
    def __init__(self, title: str, x_label: str = "step", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title, self.x_label = title, x_label
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.colours: dict[str, QColor] = {}
        self.setAccessibleName(f"{title} chart")
        self.setMinimumSize(220, 150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self._describe()

    def sizeHint(self) -> QSize:
        return QSize(340, 210)

    # ---- data ---------------------------------------------------------------------------------
    def add_point(self, name: str, x: float, y: float) -> None:
        """Append (x, y) to the series `name` (made on first use); non-finite values are ignored."""
        try:
            x, y = float(x), float(y)
        except (TypeError, ValueError):
            return
        if not (math.isfinite(x) and math.isfinite(y)):
            return
        if name not in self.series:
            self.series[name] = []
            self.colours[name] = QColor(SERIES_COLOURS[(len(self.colours)) % len(SERIES_COLOURS)])
        self.series[name].append((x, y))
        self._describe()
        self.update()

    def clear(self) -> None:
        self.series.clear()
        self.colours.clear()
        self._describe()
        self.update()

    def point_count(self) -> int:
        return sum(len(s) for s in self.series.values())

    def _describe(self) -> None:
        if not self.series:
            self.setAccessibleDescription(f"{self.title}: no data yet")
            return
        parts = [f"{name} {pts[-1][1]:.4g} at {self.x_label} {pts[-1][0]:g}" for name, pts in self.series.items()]
        self.setAccessibleDescription(f"{self.title}: " + "; ".join(parts))

    # ---- drawing ------------------------------------------------------------------------------
    def _bounds(self) -> tuple[float, float, float, float]:
        xs = [p[0] for pts in self.series.values() for p in pts]
        ys = [p[1] for pts in self.series.values() for p in pts]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        if x1 <= x0:
            x1 = x0 + 1
        if y1 <= y0:
            pad = abs(y0) * 0.05 or 0.5
            y0, y1 = y0 - pad, y1 + pad
        return x0, x1, y0, y1

    def _legend_rows(self, fm: QFontMetrics, width: float) -> list[list[str]]:
        """The series names in rows that fit `width` (a swatch and a gap before each name)."""
        rows: list[list[str]] = [[]]
        used = 0.0
        for name in self.series:
            w = 28 + fm.horizontalAdvance(name)
            if rows[-1] and used + w > width:
                rows.append([])
                used = 0.0
            rows[-1].append(name)
            used += w
        return rows

    def paintEvent(self, _event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        text = pal.color(QPalette.ColorRole.WindowText)
        faint = QColor(text)
        faint.setAlpha(40)
        muted = QColor(text)
        muted.setAlpha(150)
        p.fillRect(self.rect(), pal.color(QPalette.ColorRole.Base))
        fm = QFontMetrics(self.font())
        line_h = fm.height()
        title_font = self.font()
        title_font.setBold(True)
        p.setFont(title_font)
        p.setPen(text)
        p.drawText(QRectF(8, 4, self.width() - 16, line_h), Qt.AlignmentFlag.AlignLeft, self.title)
        p.setFont(self.font())
        if not self.series:
            p.setPen(muted)
            p.drawText(QRectF(self.rect()), Qt.AlignmentFlag.AlignCenter, "No data yet")
            p.end()
            return

        x0, x1, y0, y1 = self._bounds()
        yt = [t for t in nice_ticks(y0, y1) if y0 <= t <= y1] or [y0, y1]
        xt = [t for t in nice_ticks(x0, x1, 6) if x0 <= t <= x1] or [x0, x1]
        ystep = (yt[1] - yt[0]) if len(yt) > 1 else (y1 - y0)
        xstep = (xt[1] - xt[0]) if len(xt) > 1 else (x1 - x0)
        ylabels = [tick_text(t, ystep) for t in yt]
        left = 10 + max(fm.horizontalAdvance(s) for s in ylabels)
        rows = self._legend_rows(fm, self.width() - 16)
        legend_h = len(rows) * line_h + 4
        plot = QRectF(left + 6, 8 + line_h + legend_h, self.width() - left - 18,
                      self.height() - (8 + line_h + legend_h) - (line_h * 2 + 8))
        if plot.width() < 20 or plot.height() < 20:
            p.end()
            return

        def px(x: float) -> float:
            return plot.left() + (x - x0) / (x1 - x0) * plot.width()

        def py(y: float) -> float:
            return plot.bottom() - (y - y0) / (y1 - y0) * plot.height()

        # grid and tick labels
        for t, label in zip(yt, ylabels):
            y = py(t)
            p.setPen(QPen(faint, 1))
            p.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            p.setPen(muted)
            p.drawText(QRectF(0, y - line_h / 2, left, line_h),
                       Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, label)  # fmt: skip
        for t in xt:
            x = px(t)
            p.setPen(QPen(faint, 1))
            p.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
            p.setPen(muted)
            p.drawText(QRectF(x - 40, plot.bottom() + 2, 80, line_h), Qt.AlignmentFlag.AlignHCenter,
                       tick_text(t, xstep))  # fmt: skip
        p.drawText(QRectF(plot.left(), plot.bottom() + line_h + 2, plot.width(), line_h),
                   Qt.AlignmentFlag.AlignHCenter, self.x_label)  # fmt: skip
        p.setPen(QPen(muted, 1))
        p.drawLine(plot.bottomLeft(), plot.bottomRight())
        p.drawLine(plot.bottomLeft(), plot.topLeft())

        # the lines, clipped to the plot
        p.save()
        p.setClipRect(plot.adjusted(-2, -2, 2, 2))
        for name, pts in self.series.items():
            stride = max(1, math.ceil(len(pts) / MAX_DRAWN_POINTS))
            shown = pts[::stride]
            if shown[-1] is not pts[-1]:
                shown.append(pts[-1])
            pen = QPen(self.colours[name], 2)
            pen.setCosmetic(True)
            p.setPen(pen)
            if len(shown) == 1:
                p.setBrush(self.colours[name])
                p.drawEllipse(QPointF(px(shown[0][0]), py(shown[0][1])), 3, 3)
                p.setBrush(Qt.BrushStyle.NoBrush)
            else:
                p.drawPolyline(QPolygonF([QPointF(px(x), py(y)) for x, y in shown]))
        p.restore()

        # legend, right-aligned above the plot, as many rows as it needs
        for r, row in enumerate(rows):
            x = self.width() - 8.0
            top = 8 + line_h + r * line_h
            for name in reversed(row):
                w = fm.horizontalAdvance(name)
                x -= w
                p.setPen(text)
                p.drawText(QRectF(x, top, w + 2, line_h), Qt.AlignmentFlag.AlignLeft, name)
                x -= 16
                p.setPen(QPen(self.colours[name], 3))
                p.drawLine(QPointF(x, top + line_h / 2), QPointF(x + 12, top + line_h / 2))
                x -= 12
        p.end()
