"""Where things live on disk: the model cache and the shared test data."""

from __future__ import annotations

import os
from pathlib import Path


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
