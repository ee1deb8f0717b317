"""Where things live on disk.

- `assets_dir()`: the shipped assets (hidden templates, model catalogue, moderation data).
- `home()`: the user's data folder (database, models, logs): the platform's usual place
  (platformdirs), or `CHATFACTORY_HOME` for tests and portable installs.
- `cache_dir()`: downloads (`CHATFACTORY_CACHE`, default ~/.cache/chatfactory).
- `shared_data_dir()`: the real data sets used by tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


def assets_dir() -> Path:
    """The `assets/` folder: beside the packages in a checkout, or inside a frozen bundle."""
    env = os.environ.get("CHATFACTORY_ASSETS")
    if env:
        return Path(env)
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        return Path(frozen) / "assets"
    return Path(__file__).resolve().parent.parent / "assets"


def home() -> Path:
    """The user's data folder, created on first use."""
    env = os.environ.get("CHATFACTORY_HOME")
    if env:
        path = Path(env)
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("chatfactory", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Folder for downloaded models (`CHATFACTORY_CACHE`, default ~/.cache/chatfactory)."""
    root = os.environ.get("CHATFACTORY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "chatfactory"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data_dir() -> Path | None:
    """The real data sets used by tests and benchmarks (`../shared/data` beside the checkout)."""
    env = os.environ.get("CHATFACTORY_SHARED_DATA")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [p / "shared" / "data" for p in here.parents]
    for c in candidates:
        if c.is_dir():
            return c
    return None


@contextlib.contextmanager
def atomic_writer(path: str | Path, newline: str | None = "\n") -> Iterator[TextIO]:
    """Write a text file so that `path` only ever holds the old file or the whole new one: a temp
    file beside it, fsync, then os.replace. Nothing is left behind on failure (a crash, a full
    disk, bad input found halfway): an interrupted export never looks complete."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these are the user's ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
