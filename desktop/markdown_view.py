"""Safe, incremental Markdown rendering for one chat message.

Why not one big QTextBrowser for the conversation: re-rendering the whole conversation on each
token is what made GPT4All's window freeze on long code answers. Here a message is a column of
segments (prose, or a fenced code block); while an answer streams only the segments whose text
changed (almost always just the last one) are rendered again.

Safety: the model's text is untrusted. Markdown is parsed with `MarkdownNoHTML`, so raw HTML is
shown as text, never interpreted; images are turned into plain links and `loadResource` returns
nothing, so no file:// or remote resource is ever read; links are not followed by the widget
(`setOpenLinks(False)`): a click emits `link_clicked`, and the window asks before opening it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication, QTextDocument
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.syntax import CodeHighlighter

_MD_FEATURES = (
    QTextDocument.MarkdownFeature.MarkdownNoHTML | QTextDocument.MarkdownFeature.MarkdownDialectGitHub
)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(")


@dataclass(frozen=True)
class Segment:
    kind: str  # "text" | "code"
    text: str
    language: str = ""


def split_segments(markdown: str) -> list[Segment]:
    """Prose and fenced code blocks, in order. An unclosed fence (an answer still streaming)
    runs to the end, so code shows as code while it is being written."""
    out: list[Segment] = []
    prose: list[str] = []
    code: list[str] = []
    fence = ""
    lang = ""
    for line in markdown.split("\n"):
        if not fence:
            m = _FENCE.match(line)
            if m:
                if prose:
                    out.append(Segment("text", "\n".join(prose)))
                    prose = []
                fence, lang, code = m.group(1), m.group(2), []
            else:
                prose.append(line)
        else:
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) <= {fence[0]}:
                out.append(Segment("code", "\n".join(code), lang))
                fence = ""
            else:
                code.append(line)
    if fence:
        out.append(Segment("code", "\n".join(code), lang))
    elif prose and any(p.strip() for p in prose):
        out.append(Segment("text", "\n".join(prose)))
    return [s for s in out if s.kind == "code" or s.text.strip()]


def safe_markdown(text: str) -> str:
    """Markdown that loads nothing: `![alt](url)` becomes the link `[alt](url)`."""
    return _IMAGE.sub(r"[\1](", text)


class SafeBrowser(QTextBrowser):
    """A read-only, auto-height QTextBrowser that never loads resources nor follows links."""

    link_clicked = Signal(QUrl)

    def __init__(self, parent: QWidget | None = None, *, wrap: bool = True):
        super().__init__(parent)
        self.setOpenLinks(False)
        self.setOpenExternalLinks(False)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(self.verticalScrollBarPolicy().ScrollBarAlwaysOff)
        if not wrap:
            self.setLineWrapMode(QTextBrowser.LineWrapMode.NoWrap)
        else:
            self.setHorizontalScrollBarPolicy(self.horizontalScrollBarPolicy().ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.viewport().setAutoFillBackground(False)
        self.setStyleSheet("QTextBrowser { background: transparent; }")
        self.anchorClicked.connect(self.link_clicked)
        self.document().documentLayout().documentSizeChanged.connect(self._fit)
        self.setFixedHeight(self._height_for(self.document().size().height()))

    def loadResource(self, kind: int, url: QUrl):
        """Nothing is ever loaded: no images, no style sheets, no files, no network."""
        return

    def _height_for(self, doc_height: float) -> int:
        extra = 2 * self.frameWidth()
        bar = self.horizontalScrollBar()
        if self.lineWrapMode() == QTextBrowser.LineWrapMode.NoWrap and bar.maximum() > 0:
            extra += bar.sizeHint().height()
        return max(1, math.ceil(doc_height) + extra)

    def _fit(self, size) -> None:
        h = self._height_for(size.height())
        if h != self.height():
            self.setFixedHeight(h)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit(self.document().size())


class CodeBlock(QFrame):
    """A fenced code block: monospace on a distinct background, with a Copy button."""

    def __init__(self, segment: Segment, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("codeBlock")
        self.setStyleSheet(
            "QFrame#codeBlock { background: palette(alternate-base); border: 1px solid palette(mid);"
            " border-radius: 4px; }"
        )
        self.segment = segment
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 2, 6, 4)
        lay.setSpacing(0)
        head = QHBoxLayout()
        self.language = QLabel(segment.language or "code")
        self.language.setStyleSheet("color: palette(placeholder-text);")
        self.copy_button = QToolButton(text="Copy")
        self.copy_button.setAccessibleName("Copy code")
        self.copy_button.setAutoRaise(True)
        self.copy_button.clicked.connect(self.copy)
        head.addWidget(self.language)
        head.addStretch(1)
        head.addWidget(self.copy_button)
        lay.addLayout(head)
        self.view = SafeBrowser(self, wrap=False)
        self.view.setAccessibleName("Code")
        self.view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.highlighter = CodeHighlighter(self.view.document(), segment.language)
        self.view.setPlainText(segment.text)
        lay.addWidget(self.view)

    def update_segment(self, segment: Segment) -> None:
        if segment.language != self.segment.language:
            self.language.setText(segment.language or "code")
            self.highlighter.set_language(segment.language)
        self.segment = segment
        self.view.setPlainText(segment.text)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.segment.text)


class TextBlock(SafeBrowser):
    """Prose, rendered from Markdown without HTML."""

    def __init__(self, segment: Segment, parent: QWidget | None = None):
        super().__init__(parent)
        self.setAccessibleName("Message text")
        self.segment = segment
        self._render()

    def update_segment(self, segment: Segment) -> None:
        self.segment = segment
        self._render()

    def _render(self) -> None:
        self.document().setMarkdown(safe_markdown(self.segment.text), _MD_FEATURES)


class MarkdownView(QWidget):
    """A message body: a column of TextBlock / CodeBlock widgets, updated segment by segment."""

    link_clicked = Signal(QUrl)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(4)
        self._blocks: list[TextBlock | CodeBlock] = []
        self.text = ""
        self.renders = 0  # segments (re)rendered: lets tests check streaming stays incremental

    def set_markdown(self, text: str) -> None:
        if text == self.text:
            return
        self.text = text
        segments = split_segments(text)
        for i, seg in enumerate(segments):
            if i < len(self._blocks):
                block = self._blocks[i]
                if block.segment == seg:
                    continue
                if (seg.kind == "code") == isinstance(block, CodeBlock):
                    block.update_segment(seg)
                    self.renders += 1
                    continue
                self._layout.removeWidget(block)
                block.deleteLater()
                self._blocks[i] = self._make(seg)
                self._layout.insertWidget(i, self._blocks[i])
            else:
                self._blocks.append(self._make(seg))
                self._layout.addWidget(self._blocks[-1])
        for block in self._blocks[len(segments) :]:
            self._layout.removeWidget(block)
            block.deleteLater()
        del self._blocks[len(segments) :]

    def _make(self, seg: Segment) -> TextBlock | CodeBlock:
        self.renders += 1
        if seg.kind == "code":
            return CodeBlock(seg, self)
        block = TextBlock(seg, self)
        block.link_clicked.connect(self.link_clicked)
        return block

    def blocks(self) -> list[TextBlock | CodeBlock]:
        return list(self._blocks)
