"""Background work that is not inference (imports, exports): one way to run it off the GUI
thread and come back with the result.

`run_in_background(fn)` runs `fn()` on Qt's global thread pool and returns a `Task` whose
`done(result)` / `failed(message)` signals arrive on the GUI thread when connected to a bound
method of a GUI-thread QObject (PySide6 runs a lambda in the emitting pool thread instead).
`fn` must not touch widgets, and must open its own store connection (a sqlite3 connection
belongs to its thread).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

log = logging.getLogger(__name__)
_running: set[Task] = set()  # keeps each Task alive until its signal was delivered


class Task(QObject):
    """Lives on the GUI thread; its signals are emitted from the pool and queued to it."""

    done = Signal(object)
    failed = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.done.connect(self._forget)
        self.failed.connect(self._forget)

    def _forget(self, *_: object) -> None:
        _running.discard(self)


class _Runnable(QRunnable):
    def __init__(self, fn: Callable[[], Any], task: Task) -> None:
        super().__init__()
        self.fn, self.task = fn, task

    def run(self) -> None:
        try:
            result = self.fn()
        except Exception as e:  # noqa: BLE001 - reported to the GUI as `failed`, never lost in a pool thread
            log.warning("background task failed: %s", e)
            self.task.failed.emit(str(e) or type(e).__name__)
        else:
            self.task.done.emit(result)


def run_in_background(
    fn: Callable[[], Any],
    done: Callable[[Any], None] | None = None,
    failed: Callable[[str], None] | None = None,
) -> Task:
    """Start `fn` in the pool; `done` / `failed` are connected before it starts (a fast failure
    must not fire before anyone listens)."""
    task = Task()
    _running.add(task)
    if done is not None:
        task.done.connect(done)
    if failed is not None:
        task.failed.connect(failed)
    QThreadPool.globalInstance().start(_Runnable(fn, task))
    return task


def wait_all(timeout_ms: int = 30_000) -> bool:
    """At shutdown: let running imports/exports finish rather than cut a file in half."""
    return QThreadPool.globalInstance().waitForDone(timeout_ms)
