"""The one inference worker: a QObject living in its own QThread, owning the llama.cpp model.

llama.cpp's context is not thread-safe and a sqlite3 connection belongs to the thread that made
it, so everything the engine does for a turn happens on this one thread: the worker opens its
own `Chat` (model, store connection, moderator, templates) in `open()`, which runs after the
thread has started. The GUI talks to it only through queued signals, via `InferenceClient`,
which also re-emits the worker's signals on the GUI thread for the rest of the GUI.

Stop is a `threading.Event` per request, set from the GUI thread: the engine checks it on every
token and llama.cpp's abort callback checks it during prompt processing, so the GUI never waits.
An exception in a turn (context overflow, a model that failed to load, ...) becomes `failed`:
a message for the user, never a crash of the window.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

log = logging.getLogger(__name__)


@dataclass
class TurnRequest:
    """One thing for the model to do. kind: "send" | "regenerate" | "edit"."""

    kind: str
    session_id: int
    text: str = ""
    message_id: int | None = None  # the user message to regenerate / edit
    sampling: Any = None  # engine.runtime.Sampling, or None for the worker's defaults
    cancel: threading.Event = field(default_factory=threading.Event)


class InferenceWorker(QObject):
    """Lives in the inference thread. Call only through queued signals (see InferenceClient)."""

    loading = Signal(str)  # model being loaded (a name, or "" for the last used / bundled)
    loaded = Signal(str, int)  # model name, context window
    load_failed = Signal(str)
    started = Signal(int, object)  # session id, TurnEvent data (user_id, assistant_id, dropped, ...)
    delta = Signal(int, str)  # session id, released answer text to append
    verdict = Signal(int, object)  # session id, moderation verdict dict
    replaced = Signal(int, str)  # session id, the template answer that replaces what was shown
    finished = Signal(int, object)  # session id, done data (message, template, total_s)
    failed = Signal(int, str)  # session id, what went wrong, in words
    closed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.chat = None  # engine.turn.Chat, created in open() on the worker thread
        self.load_error: str | None = None
        self.model_calls = 0  # turns that reached the model (tests: a flagged prompt must not)

    # ---- the model -------------------------------------------------------------------------
    @Slot(object, object)
    def open(self, db: str | None, model: str | None) -> None:
        """Open the store connection and load the model (the last used one when `model` is None)."""
        from engine.setup import open_chat

        self.loading.emit(model or "")
        try:
            self.chat = open_chat(model, db, load_model=False, mark_interrupted=False)
        except Exception as e:  # a database that cannot be opened: say so, keep the window
            log.exception("the inference worker could not open the store")
            self._fail_load(f"cannot open the database: {e}")
            return
        last_used = self.chat.store.get_setting("model")
        self._load(model or last_used)
        if self.chat.runtime is None and not model and last_used:
            # the last used model is gone (file moved, registry entry removed): the bundled one still chats
            log.warning("last used model %r did not load; falling back to the bundled model", last_used)
            self._load(None)

    @Slot(object)
    def switch_model(self, model: str | None) -> None:
        """Load another model (registry name or .gguf path); the old one is closed first."""
        if self.chat is None:
            return
        self.loading.emit(model or "")
        self._load(model)

    @Slot()
    def reload_model(self) -> None:
        """Reload the current model with the runtime settings now in the store."""
        if self.chat is not None:
            name = self.chat.runtime.name if self.chat.runtime else self.chat.store.get_setting("model")
            self.loading.emit(name or "")
            self._load(name)

    @Slot(object)
    def load_anyway(self, model: str | None) -> None:
        """Load a model the memory estimate says will not fit: the user asked for it."""
        if self.chat is not None:
            self.loading.emit(model or "")
            self._load(model, check_memory=False)

    def _load(self, model: str | None, check_memory: bool = True) -> None:
        from engine.setup import load_runtime, runtime_settings

        chat = self.chat
        if chat.runtime is not None:
            chat.runtime.close()
            chat.runtime = None
        try:
            settings = runtime_settings(chat.store)
            settings.check_memory = settings.check_memory and check_memory
            chat.runtime = load_runtime(model, settings)
        except Exception as e:  # noqa: BLE001 - ModelLoadError, unknown name, bad settings: all told to the user
            log.warning("model %r not loaded: %s", model, e)
            self._fail_load(str(e))
            return
        self.load_error = None
        if model:
            chat.store.set_setting(
                "model", chat.runtime.name if Path(str(model)).suffix != ".gguf" else str(model)
            )
        self.loaded.emit(chat.runtime.name, chat.runtime.n_ctx)

    def _fail_load(self, message: str) -> None:
        self.load_error = message
        self.load_failed.emit(message)

    @Slot()
    def reload_templates(self) -> None:
        """The user saved a template set in Settings: read the library again."""
        if self.chat is not None:
            from engine.templates import TemplateLibrary

            self.chat.templates = TemplateLibrary.load()

    @Slot()
    def reload_moderation(self) -> None:
        """The user changed moderation in Settings: rebuild the moderator from the saved settings."""
        if self.chat is not None:
            from engine.moderation import Moderator

            self.chat.moderator = Moderator.from_config(None, self.chat.store.get_setting("moderation"))

    # ---- turns -----------------------------------------------------------------------------
    @Slot(object)
    def run(self, req: TurnRequest) -> None:
        """Run one turn, re-emitting its events as signals; errors become `failed`."""
        sid = req.session_id
        try:
            chat = self.chat
            if chat is None or chat.runtime is None:
                # a flagged prompt never needs the model, but without one we cannot promise an answer
                raise RuntimeError(self.load_error or "no model is loaded")
            kw = {"cancel": req.cancel, "sampling": req.sampling}
            if req.kind == "send":
                events = chat.send(sid, req.text, **kw)
            elif req.kind == "regenerate":
                events = chat.regenerate(sid, req.message_id, **kw)
            elif req.kind == "edit":
                events = chat.edit(sid, req.message_id, req.text, **kw)
            else:
                raise ValueError(f"unknown request {req.kind!r}")
            for ev in events:
                if ev.kind == "delta":
                    self.delta.emit(sid, ev.text)
                elif ev.kind == "started":
                    if "n_ctx" in ev.data:
                        self.model_calls += 1
                    self.started.emit(sid, dict(ev.data))
                elif ev.kind == "verdict":
                    self.verdict.emit(sid, dict(ev.data))
                elif ev.kind == "replace":
                    self.replaced.emit(sid, ev.text)
                elif ev.kind == "done":
                    self.finished.emit(sid, dict(ev.data))
                    return
            self.failed.emit(sid, "the answer ended without a result")
        except Exception as e:
            log.warning("turn failed in session %s: %s", sid, e, exc_info=not _expected(e))
            self.failed.emit(sid, _describe(e))

    @Slot()
    def close(self) -> None:
        """Free the model and the store connection on this thread, then end the thread."""
        chat, self.chat = self.chat, None
        if chat is not None:
            if chat.runtime is not None:
                chat.runtime.close()
            chat.store.close()
        self.closed.emit()
        thread = self.thread()
        if thread is not None:
            thread.quit()


def _expected(e: Exception) -> bool:
    """Errors that are the user's situation, not a bug: no traceback in the log."""
    from engine.runtime import ContextOverflowError, ModelLoadError

    return isinstance(e, (ContextOverflowError, ModelLoadError, RuntimeError, ValueError))


def _describe(e: Exception) -> str:
    from engine.runtime import ContextOverflowError

    if isinstance(e, ContextOverflowError):
        return f"The conversation does not fit the model's context window: {e}"
    if isinstance(e, (RuntimeError, ValueError)):
        return str(e)
    return f"{type(e).__name__}: {e}"


class InferenceClient(QObject):
    """The GUI thread's handle on the worker: starts the thread, queues requests, stops turns.

    It re-emits the worker's signals from the GUI thread (same names and arguments), so GUI code
    and tests connect to the client and may use any callable: PySide6 runs a plain function
    connected straight to a worker signal on the worker thread, where it must not touch widgets.

    `busy` is True from a request until its `finished` / `failed` arrives (and is already False
    when those are re-emitted). One turn runs at a time (one model slot).
    """

    loading = Signal(str)
    loaded = Signal(str, int)
    load_failed = Signal(str)
    started = Signal(int, object)
    delta = Signal(int, str)
    verdict = Signal(int, object)
    replaced = Signal(int, str)
    finished = Signal(int, object)
    failed = Signal(int, str)
    busy_changed = Signal(bool)

    _open = Signal(object, object)
    _switch = Signal(object)
    _anyway = Signal(object)
    _reload = Signal()
    _templates = Signal()
    _moderation = Signal()
    _run = Signal(object)
    _close = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.thread = QThread()
        self.thread.setObjectName("inference")
        self.worker = InferenceWorker()
        self.worker.moveToThread(self.thread)
        self._open.connect(self.worker.open)
        self._switch.connect(self.worker.switch_model)
        self._anyway.connect(self.worker.load_anyway)
        self._reload.connect(self.worker.reload_model)
        self._templates.connect(self.worker.reload_templates)
        self._moderation.connect(self.worker.reload_moderation)
        self._run.connect(self.worker.run)
        self._close.connect(self.worker.close)
        w = self.worker  # bound methods of this GUI-thread object: queued to the GUI thread
        w.loading.connect(self._on_loading)
        w.loaded.connect(self._on_loaded)
        w.load_failed.connect(self._on_load_failed)
        w.started.connect(self._on_started)
        w.delta.connect(self._on_delta)
        w.verdict.connect(self._on_verdict)
        w.replaced.connect(self._on_replaced)
        w.finished.connect(self._on_finished)
        w.failed.connect(self._on_failed)
        self.current: TurnRequest | None = None
        self.model_name: str | None = None
        self.n_ctx = 0
        self.thread.start()

    @property
    def signals(self) -> InferenceClient:
        """Where to connect: the client's own, GUI-thread signals."""
        return self

    @property
    def busy(self) -> bool:
        return self.current is not None

    def open(self, db: str | Path | None, model: str | None = None) -> None:
        self._open.emit(str(db) if db else None, model)

    def switch_model(self, model: str | None) -> None:
        self.stop()
        self._switch.emit(model)

    def load_anyway(self, model: str | None) -> None:
        """Load without the memory check (the user saw the warning and chose to)."""
        self.stop()
        self._anyway.emit(model)

    def reload_model(self) -> None:
        self.stop()
        self._reload.emit()

    def reload_templates(self) -> None:
        self._templates.emit()

    def reload_moderation(self) -> None:
        self._moderation.emit()

    def submit(self, req: TurnRequest) -> TurnRequest:
        """Queue a turn. The GUI only calls this when not busy."""
        if req.sampling is not None:
            req.sampling = dataclasses.replace(req.sampling)  # the worker gets its own copy
        self.current = req
        self.busy_changed.emit(True)
        self._run.emit(req)
        return req

    def stop(self) -> None:
        """Ask the running turn to stop; returns at once (the worker ends it within a token)."""
        if self.current is not None:
            self.current.cancel.set()

    def shutdown(self, timeout_ms: int = 10_000) -> None:
        """Stop any turn, free the model on its thread, and wait for the thread to end."""
        if not self.thread.isRunning():
            return
        self.stop()
        self._close.emit()
        if not self.thread.wait(timeout_ms):
            log.warning("the inference thread did not stop in %d ms", timeout_ms)

    # ---- relays (GUI thread) ---------------------------------------------------------------
    def _on_loading(self, name: str) -> None:
        self.loading.emit(name)

    def _on_loaded(self, name: str, n_ctx: int) -> None:
        self.model_name, self.n_ctx = name, n_ctx
        self.loaded.emit(name, n_ctx)

    def _on_load_failed(self, text: str) -> None:
        self.load_failed.emit(text)

    def _on_started(self, sid: int, data: object) -> None:
        self.started.emit(sid, data)

    def _on_delta(self, sid: int, text: str) -> None:
        self.delta.emit(sid, text)

    def _on_verdict(self, sid: int, data: object) -> None:
        self.verdict.emit(sid, data)

    def _on_replaced(self, sid: int, text: str) -> None:
        self.replaced.emit(sid, text)

    def _turn_ended(self) -> None:
        self.current = None
        self.busy_changed.emit(False)

    def _on_finished(self, sid: int, data: object) -> None:
        self._turn_ended()
        self.finished.emit(sid, data)

    def _on_failed(self, sid: int, text: str) -> None:
        self._turn_ended()
        self.failed.emit(sid, text)
