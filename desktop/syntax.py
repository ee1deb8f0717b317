"""A small, language-agnostic code highlighter for code blocks in answers.

Not a full lexer (no dependency on Pygments): keywords of the languages small models write most,
strings, numbers and line comments. Colours are mid-tones that read on light and dark themes.
"""

from __future__ import annotations

import re

from PySide6.QtGui import QColor, QFont, QSyntaxHighlighter, QTextCharFormat, QTextDocument

_KEYWORDS = {
    "python": "and as assert async await break class continue def del elif else except False finally for from "
    "global if import in is lambda None nonlocal not or pass raise return True try while with yield self",
    "c": "auto break case char const continue default do double else enum extern float for goto if int long "
    "register return short signed sizeof static struct switch typedef union unsigned void volatile while "
    "class public private protected new delete template typename namespace using bool true false nullptr",
    "js": "break case catch class const continue debugger default delete do else export extends finally for "
    "function if import in instanceof let new return super switch this throw try typeof var void while with "
    "yield async await true false null undefined",
    "shell": "if then else elif fi for while do done case esac function in echo export local return",
    "rust": "as break const continue crate else enum extern false fn for if impl in let loop match mod move mut "
    "pub ref return self Self static struct super trait true type unsafe use where while",
    "go": "break case chan const continue default defer else fallthrough for func go goto if import interface "
    "map package range return select struct switch type var true false nil",
    "sql": "select from where insert into values update set delete create table drop alter join left right "
    "inner outer on group by order having limit and or not null as distinct",
}
_ALIASES = {
    "py": "python", "python3": "python", "cpp": "c", "c++": "c", "h": "c", "java": "c", "cs": "c", "csharp": "c",
    "javascript": "js", "ts": "js", "typescript": "js", "jsx": "js", "tsx": "js", "bash": "shell", "sh": "shell",
    "zsh": "shell", "console": "shell", "rs": "rust", "golang": "go",
}  # fmt: skip
_LINE_COMMENT = {"python": "#", "shell": "#", "sql": "--"}


def _fmt(color: str, bold: bool = False, italic: bool = False) -> QTextCharFormat:
    f = QTextCharFormat()
    f.setForeground(QColor(color))
    if bold:
        f.setFontWeight(QFont.Weight.Bold)
    f.setFontItalic(italic)
    return f


class CodeHighlighter(QSyntaxHighlighter):
    """Keywords, strings, numbers and line comments for a fenced block's language."""

    _STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`")
    _NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")

    def __init__(self, document: QTextDocument, language: str = ""):
        super().__init__(document)
        self.formats = {
            "keyword": _fmt("#3b7dd8", bold=True),
            "string": _fmt("#3a9a4a"),
            "number": _fmt("#c0792b"),
            "comment": _fmt("#8a8a8a", italic=True),
        }
        self.set_language(language)

    def set_language(self, language: str) -> None:
        lang = (language or "").lower()
        lang = _ALIASES.get(lang, lang)
        words = _KEYWORDS.get(lang, "")
        flags = re.IGNORECASE if lang == "sql" else 0
        self._keywords = re.compile(r"\b(?:" + "|".join(words.split()) + r")\b", flags) if words else None
        self._comment = _LINE_COMMENT.get(lang, "//") if lang else None
        self.rehighlight()

    def highlightBlock(self, text: str) -> None:
        if not text:
            return
        if self._keywords is not None:
            for m in self._keywords.finditer(text):
                self.setFormat(m.start(), m.end() - m.start(), self.formats["keyword"])
        for m in self._NUMBER.finditer(text):
            self.setFormat(m.start(), m.end() - m.start(), self.formats["number"])
        strings = [(m.start(), m.end()) for m in self._STRING.finditer(text)]
        for a, b in strings:
            self.setFormat(a, b - a, self.formats["string"])
        if self._comment:
            i = text.find(self._comment)
            while i >= 0 and any(a <= i < b for a, b in strings):
                i = text.find(self._comment, i + 1)
            if i >= 0:
                self.setFormat(i, len(text) - i, self.formats["comment"])
