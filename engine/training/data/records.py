"""JSON records from a file, each with where it came from ("file:line"), for error messages
that point at the line: .jsonl (blank lines skipped) or a .json list, either gzipped or not."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def open_text(path: Path, mode: str = "r"):
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def iter_json_records(path: str | Path) -> Iterator[tuple[Any, str]]:
    """(record, "file:line") for a .jsonl[.gz] file (blank lines skipped) or a .json list."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    with open_text(path) as f:
        if path.name.endswith((".json", ".json.gz")):
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(data, list):
                raise ValueError(f"{path}: a .json file must hold a list of records")
            for i, rec in enumerate(data):
                yield rec, f"{path}: record {i}"
            return
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            yield rec, f"{path}:{lineno}"
