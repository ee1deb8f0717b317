"""The main window: pages (Chat, Models, Fine-tuning), menus, and the wiring between the
sessions sidebar, the conversation, the composer and the inference worker.

The window owns the GUI thread's store connection (listing, searching, renaming, branch
moves, feedback) and never touches the model: turns go to the worker as `TurnRequest`s, and
the worker's signals come back here. After a turn the sidebar and the conversation are read
again from the store, which the worker has just written.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QGuiApplication, QKeySequence
from PySide6.QtWidgets import QMainWindow, QSplitter, QTabWidget, QVBoxLayout, QWidget

from desktop import dialogs, tasks, theme
from desktop.chat_view import ChatView
from desktop.compare_dialog import CompareDialog
from desktop.composer import Composer
from desktop.finetune_page import FinetunePage
from desktop.inference_worker import InferenceClient, TurnRequest
from desktop.models_page import ModelsPage
from desktop.session_list import SessionSidebar
from desktop.top_bar import TopBar

log = logging.getLogger(__name__)
LIVE_STATS_MS = 500


class MainWindow(QMainWindow):
    session_shown = Signal(object)  # session id, or None for a new (not yet saved) chat
    import_finished = Signal(object)  # engine.store.transfer.ImportResult
    export_finished = Signal(str)  # the file written
    task_failed = Signal(str)
    compare_ready = Signal(object)  # the CompareDialog, once both answers exist

    def __init__(self, store, templates, client: InferenceClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store, self.templates, self.client = store, templates, client
        self._sampling = None  # see `sampling`
        self.closed = False  # set when the window closed its store
        self.session_id: int | None = None
        self.draft_template = "default"
        self._compare: tuple[int, int] | None = None  # (user id, first answer id) while comparing
        self.compare_dialog: CompareDialog | None = None
        self.setWindowTitle("chatfactory")
        self.resize(1100, 720)

        self.sidebar = SessionSidebar(store)
        self.top_bar = TopBar()
        self.chat_view = ChatView(store)
        self.composer = Composer()
        chat_page = QWidget()
        right = QVBoxLayout(chat_page)
        right.setContentsMargins(0, 0, 0, 0)
        right.setSpacing(0)
        right.addWidget(self.top_bar)
        right.addWidget(self.chat_view, 1)
        right.addWidget(self.composer)
        split = QSplitter()
        split.addWidget(self.sidebar)
        split.addWidget(chat_page)
        split.setStretchFactor(1, 1)
        split.setSizes([260, 840])
        self.pages = QTabWidget()
        self.pages.setAccessibleName("Pages")
        self.pages.addTab(split, "Chat")
        self.models_page = ModelsPage(store, client)
        self.models_page.models_changed.connect(self._fill_models)
        self.pages.addTab(self.models_page, "Models")
        self.finetune_page = FinetunePage(store, templates)
        self.finetune_page.models_changed.connect(self._fill_models)
        self.finetune_page.chat_with.connect(self.chat_with_model)
        self.pages.addTab(self.finetune_page, "Fine-tuning")
        self.setCentralWidget(self.pages)
        self._menus()
        self._wire()
        self.top_bar.set_model_state(None, "loading…")
        # after the first paint: the model registry imports numpy and reads GGUF headers
        QTimer.singleShot(0, self, self._fill_models)
        self.top_bar.set_templates([(t.name, t.title) for t in templates], "default")
        self._live = QTimer(self)
        self._live.setInterval(LIVE_STATS_MS)
        self._live.timeout.connect(self.top_bar.update_live)
        self._startup_notes()
        self.new_chat()

    @property
    def sampling(self):
        """The sampling settings sent with every turn (engine.runtime.Sampling); Settings updates
        them. Read on first use: importing the engine's runtime package costs ~0.1 s at startup."""
        if self._sampling is None:
            self._reload_sampling()
        return self._sampling

    # ---- construction ----------------------------------------------------------------------
    def _action(self, menu, text: str, slot, shortcut=None, name: str | None = None) -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
        a.triggered.connect(lambda _checked=False: slot())
        menu.addAction(a)
        self.addAction(a)  # shortcuts work wherever the focus is in the window
        if name:
            a.setObjectName(name)
        return a

    def _menus(self) -> None:
        bar = self.menuBar()
        f = bar.addMenu("&File")
        self._action(f, "&New chat", self.new_chat, QKeySequence.StandardKey.New)
        self._action(f, "&Import chats…", self.ask_import, QKeySequence.StandardKey.Open)
        exp = f.addMenu("&Export all chats")
        self._action(exp, "As &JSON…", lambda: self.ask_export("json"))
        self._action(exp, "As &Markdown…", lambda: self.ask_export("markdown"))
        self._action(f, "Export &this chat…", lambda: self.ask_export("json", self.session_id))
        f.addSeparator()
        self._action(f, "&Settings…", self.open_settings, "Ctrl+,")
        f.addSeparator()
        self._action(f, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        c = bar.addMenu("&Chat")
        self.stop_action = self._action(c, "&Stop answer", self.stop, "Esc")
        self.stop_action.setEnabled(False)
        self._action(c, "&Rename chat", self.sidebar.rename_current, "F2")
        self._action(c, "&Pin / unpin chat", self._toggle_pin)
        self._action(c, "&Archive / unarchive chat", self._toggle_archive)
        self._action(c, "&Delete chat…", self._delete_current)
        c.addSeparator()
        self._action(c, "Show &hidden instructions", self.show_hidden_instructions, "Ctrl+Shift+H")
        self._action(
            c, "Find in chats", lambda: self.sidebar.search.setFocus(), QKeySequence.StandardKey.Find
        )
        self._action(c, "Focus message box", lambda: self.composer.edit.setFocus(), "Ctrl+L")
        v = bar.addMenu("&View")
        for i, title in enumerate(("Chat", "Models", "Fine-tuning")):
            self._action(v, title, lambda i=i: self.pages.setCurrentIndex(i), f"Ctrl+{i + 1}")
        v.addSeparator()
        tm = v.addMenu("&Theme")
        group = QActionGroup(self)
        self.theme_actions: dict[str, QAction] = {}
        for mode in theme.MODES:
            a = self._action(tm, mode.capitalize(), lambda m=mode: self.set_theme(m))
            a.setCheckable(True)
            a.setChecked(mode == theme.current_mode())
            group.addAction(a)
            self.theme_actions[mode] = a

    def _wire(self) -> None:
        w = self.client.signals
        self.sidebar.session_activated.connect(self.open_session)
        self.sidebar.hit_activated.connect(self.open_session)
        self.sidebar.new_chat_requested.connect(self.new_chat)
        self.sidebar.session_deleted.connect(self._deleted)
        self.sidebar.export_requested.connect(lambda sid: self.ask_export("json", sid))
        self.composer.send_requested.connect(self.send)
        self.composer.stop_requested.connect(self.stop)
        self.chat_view.regenerate_requested.connect(self.regenerate)
        self.chat_view.edit_requested.connect(self.edit)
        self.chat_view.compare_requested.connect(self.compare)
        self.chat_view.link_clicked.connect(self._link)
        self.top_bar.model_chosen.connect(self.client.switch_model)
        self.top_bar.template_chosen.connect(self.set_template)
        self.client.busy_changed.connect(self._busy)
        QGuiApplication.styleHints().colorSchemeChanged.connect(self._system_theme_changed)
        w.loading.connect(self._loading)
        w.loaded.connect(self._loaded)
        w.load_failed.connect(self._load_failed)
        w.started.connect(self._started)
        w.started.connect(self.chat_view.on_started)
        w.delta.connect(self._delta)
        w.delta.connect(self.chat_view.on_delta)
        w.replaced.connect(self.chat_view.on_replaced)
        w.finished.connect(self.chat_view.on_finished)
        w.finished.connect(self._finished)
        w.failed.connect(self.chat_view.on_failed)
        w.failed.connect(self._failed)

    def _fill_models(self) -> None:
        if self.closed:
            return
        self.top_bar.set_models(
            self._model_names(), self.client.model_name or self.store.get_setting("model")
        )

    def chat_with_model(self, name: str) -> None:
        """A model the Fine-tuning tab made: load it (as the top bar's picker does) in a new chat."""
        self._fill_models()
        self.client.switch_model(name)
        self.new_chat()

    def _model_names(self) -> list[str]:
        from engine.models.registry import list_models

        try:
            return [m.name for m in list_models() if m.available]
        except (OSError, ValueError) as e:
            log.warning("model list: %s", e)
            return []

    def _startup_notes(self) -> None:
        notes = []
        if self.store.recovered_from:
            notes.append(f"The chat database was damaged and set aside at {self.store.recovered_from}; "
                         "a fresh one was started.")  # fmt: skip
        if self.store.interrupted_at_open:
            notes.append(
                f"{self.store.interrupted_at_open} answer(s) left unfinished last time are marked interrupted."
            )
        if self.templates.errors:
            notes.append(
                "Some of your template sets could not be loaded: " + "; ".join(self.templates.errors)
            )
        if notes:
            self.statusBar().showMessage(" ".join(notes))

    # ---- sessions --------------------------------------------------------------------------
    def new_chat(self) -> None:
        """A fresh chat; it is saved when its first message is sent."""
        self._leave_running_turn(None)
        self.session_id = None
        self.sidebar.select(None, emit=False)
        self.chat_view.show_session(None)
        self.top_bar.clear_stats()
        self.top_bar.set_templates([(t.name, t.title) for t in self.templates], self.draft_template)
        self.pages.setCurrentIndex(0)
        self.composer.edit.setFocus()
        self.session_shown.emit(None)

    def open_session(self, session_id: int, message_id: int | None = None) -> None:
        self._leave_running_turn(session_id)
        if session_id != self.session_id:
            self.session_id = session_id
            self.chat_view.show_session(session_id)
            self.top_bar.clear_stats()
            session = self.store.get_session(session_id)
            self.top_bar.set_templates(
                [(t.name, t.title) for t in self.templates], session.get("template_set")
            )
        self.sidebar.select(session_id, emit=False)
        if message_id is not None:
            self.chat_view.scroll_to_message(message_id)
        self.session_shown.emit(session_id)

    def _leave_running_turn(self, target: int | None) -> None:
        """Switching away from a chat whose answer is being written: stop it first."""
        cur = self.client.current
        if cur is not None and cur.session_id != target:
            self.client.stop()

    def _deleted(self, session_id: int) -> None:
        if session_id == self.session_id:
            self.new_chat()

    def _toggle_pin(self) -> None:
        if self.session_id is not None:
            s = self.store.get_session(self.session_id)
            self.sidebar.set_pinned(self.session_id, not s["pinned"])

    def _toggle_archive(self) -> None:
        if self.session_id is not None:
            s = self.store.get_session(self.session_id)
            self.sidebar.set_archived(self.session_id, not s["archived"])

    def _delete_current(self) -> None:
        if self.session_id is not None:
            self.delete_session(self.session_id)

    def delete_session(self, session_id: int) -> bool:
        cur = self.client.current
        if cur is not None and cur.session_id == session_id:
            self.statusBar().showMessage("Stop the answer being written before deleting this chat.", 5000)
            return False
        return self.sidebar.delete(session_id)

    def set_template(self, name: str) -> None:
        ts = self.templates.get(name)
        if self.session_id is None:
            self.draft_template = name
        else:
            self.store.update_session(self.session_id, template_set=ts.name, template_version=ts.version)
            self.sidebar.refresh()

    # ---- turns -----------------------------------------------------------------------------
    def send(self, text: str) -> TurnRequest | None:
        """Send a message in the current chat (creating it if new); None while busy."""
        text = text.strip()
        if not text or self.client.busy:
            return None
        if self.session_id is None:
            ts = self.templates.get(self.draft_template)
            sid = self.store.create_session(
                title="New chat",
                model=self.client.model_name,
                template_set=ts.name,
                template_version=ts.version,
            )
            self.session_id = sid
            self.chat_view.show_session(sid)
            self.sidebar.current_id = sid
            self.sidebar.refresh()
            self.session_shown.emit(sid)
        return self.client.submit(TurnRequest("send", self.session_id, text, sampling=self.sampling))

    def regenerate(self, user_id: int) -> TurnRequest | None:
        if self.client.busy or self.session_id is None:
            return None
        return self.client.submit(
            TurnRequest("regenerate", self.session_id, message_id=user_id, sampling=self.sampling)
        )

    def edit(self, message_id: int, text: str) -> TurnRequest | None:
        if self.client.busy or self.session_id is None or not text.strip():
            return None
        req = TurnRequest(
            "edit", self.session_id, text.strip(), message_id=message_id, sampling=self.sampling
        )
        return self.client.submit(req)

    def compare(self, user_id: int, answer_id: int) -> TurnRequest | None:
        """Write a second answer to the same prompt; when it is done, show both side by side."""
        req = self.regenerate(user_id)
        if req is not None:
            self._compare = (user_id, answer_id)
        return req

    def stop(self) -> None:
        self.client.stop()

    def _busy(self, busy: bool) -> None:
        self.composer.set_busy(busy)
        self.chat_view.set_busy(busy)
        self.stop_action.setEnabled(busy)
        cur = self.client.current
        self.sidebar.busy_session = cur.session_id if busy and cur else None
        if busy:
            self._live.start()
        else:
            self._live.stop()

    def _started(self, session_id: int, data: dict) -> None:
        if session_id == self.session_id:
            self.top_bar.turn_started(data)

    def _delta(self, session_id: int, _text: str) -> None:
        self.top_bar.piece()

    def _finished(self, session_id: int, data: dict) -> None:
        msg = data.get("message") or {}
        if session_id == self.session_id:
            self.top_bar.turn_finished(msg)
        self.sidebar.refresh()  # the title of a first message, and the order, changed
        if self._compare is not None:
            user_id, first_id = self._compare
            self._compare = None
            if msg.get("parent_id") == user_id and msg.get("id") != first_id:
                self._show_compare(user_id, first_id, msg["id"])

    def _failed(self, session_id: int, text: str) -> None:
        self._compare = None
        self.statusBar().showMessage(text, 15000)
        self.sidebar.refresh()

    def _show_compare(self, user_id: int, left_id: int, right_id: int) -> None:
        store = self.store
        dlg = CompareDialog(
            store.get_message(user_id), store.get_message(left_id), store.get_message(right_id), self
        )
        dlg.chosen.connect(lambda winner, loser: self._ranked(user_id, winner, loser))
        self.compare_dialog = dlg
        dlg.show()
        self.compare_ready.emit(dlg)

    def _ranked(self, user_id: int, winner: int, loser: int) -> None:
        self.store.add_ranking(user_id, [winner, loser])
        if self.session_id is not None:
            self.store.select_branch(self.session_id, winner)
            self.chat_view.sync()
        self.statusBar().showMessage("Thanks: your choice is kept for fine-tuning.", 5000)

    # ---- model -----------------------------------------------------------------------------
    def _loading(self, name: str) -> None:
        self.top_bar.set_model_state(name or None, "loading…")

    def _loaded(self, name: str, n_ctx: int) -> None:
        self.top_bar.set_model_state(name, f"ready · context {n_ctx}")
        self.statusBar().showMessage(f"{name} loaded", 3000)

    def _load_failed(self, text: str) -> None:
        self.top_bar.set_model_state(None, "not loaded")
        self.statusBar().showMessage(f"The model could not be loaded: {text}")
        self.chat_view.show_error(f"The model could not be loaded: {text}")

    # ---- dialogs ---------------------------------------------------------------------------
    def show_hidden_instructions(self) -> dialogs.TextDialog | None:
        """The exact messages the model gets for this chat, hidden instructions included."""
        from engine.turn import Chat

        if self.session_id is None:
            self.statusBar().showMessage("Send a message first: a new chat has no history yet.", 5000)
            return None
        history = Chat(self.store, None, None, self.templates).history(self.session_id)
        text = "\n\n".join(f"── {m['role']} ──\n{m['content']}" for m in history)
        dlg = dialogs.TextDialog(self, "Hidden instructions and history sent to the model", text)
        dlg.show()
        return dlg

    def open_settings(self):
        from desktop.settings_dialog import SettingsDialog

        dlg = SettingsDialog(self.store, self.templates, self)
        dlg.sampling_changed.connect(self._reload_sampling)
        dlg.runtime_changed.connect(self.client.reload_model)
        dlg.templates_saved.connect(self._templates_saved)
        dlg.theme_changed.connect(self.set_theme)
        dlg.moderation_changed.connect(self.client.reload_moderation)
        dlg.open()
        return dlg

    def _reload_sampling(self) -> None:
        from engine.setup import sampling_settings

        self._sampling = sampling_settings(self.store)

    def _templates_saved(self, _name: str) -> None:
        self.client.reload_templates()
        current = (
            self.store.get_session(self.session_id)["template_set"]
            if self.session_id
            else self.draft_template
        )
        self.top_bar.set_templates([(t.name, t.title) for t in self.templates], current)

    def set_theme(self, mode: str) -> None:
        theme.apply_theme(mode)
        self.store.set_setting("theme", mode)
        if mode in self.theme_actions:
            self.theme_actions[mode].setChecked(True)
        self._restyle()

    def _system_theme_changed(self, _scheme=None) -> None:
        if theme.current_mode() == "system":
            self._restyle()

    def _restyle(self) -> None:
        """Rebuild the shown messages: Markdown link colours and style sheets are resolved from
        the palette when a message is rendered. Skipped mid-answer; the next chat opened is fresh."""
        if not self.client.busy:
            self.chat_view.show_session(self.session_id)

    def _link(self, url: QUrl) -> None:
        dialogs.open_link(self, url)

    # ---- import / export -------------------------------------------------------------------
    def ask_export(self, fmt: str, session_id: int | None = None) -> None:
        suffix, filters = (".json", "JSON (*.json)") if fmt == "json" else (".md", "Markdown (*.md)")
        name = "chatfactory-chats" if session_id is None else f"chat-{session_id}"
        path = dialogs.save_path(self, "Export chats", str(Path.home() / (name + suffix)), filters)
        if path:
            self.export_to(path, fmt, [session_id] if session_id is not None else None)

    def export_to(self, path: str, fmt: str = "json", session_ids: list[int] | None = None) -> tasks.Task:
        from engine.store import Store
        from engine.store.transfer import export_to_file

        db = self.store.path

        def work() -> str:
            with Store.open(db, mark_interrupted=False) as s:
                return str(export_to_file(s, path, fmt, session_ids))

        self.statusBar().showMessage("Exporting…")
        self._transfer_busy(True)
        return tasks.run_in_background(work, self._exported, self._export_failed)  # bound methods: GUI thread

    def _transfer_busy(self, busy: bool) -> None:
        """A busy bar in the status bar while an import or export runs in the background (the
        store's transfer is one transaction with no progress of its own to report)."""
        from PySide6.QtWidgets import QProgressBar

        bar = getattr(self, "transfer_progress", None)
        if bar is None:
            bar = self.transfer_progress = QProgressBar()
            bar.setRange(0, 0)
            bar.setMaximumWidth(160)
            bar.setAccessibleName("Import or export in progress")
            self.statusBar().addPermanentWidget(bar)
        bar.setVisible(busy)

    def _exported(self, path: str) -> None:
        self._transfer_busy(False)
        self.statusBar().showMessage(f"Exported to {path}", 8000)
        self.export_finished.emit(path)

    def ask_import(self) -> None:
        path = dialogs.open_path(
            self,
            "Import chats",
            "Chats (*.json *.zip);;chatfactory JSON (*.json);;ChatGPT export (conversations.json *.zip)",
        )
        if path:
            self.import_from(path)

    def import_from(self, path: str) -> tasks.Task:
        """Import our JSON or ChatGPT's conversations.json, off the GUI thread (all or nothing)."""
        from engine.store import Store
        from engine.store.transfer import import_file

        db = self.store.path

        def work():
            with Store.open(db, mark_interrupted=False) as s:
                return import_file(s, path)

        self.statusBar().showMessage("Importing…")
        self._transfer_busy(True)
        return tasks.run_in_background(work, self._imported, self._import_failed)

    def _imported(self, result) -> None:
        self._transfer_busy(False)
        self.sidebar.refresh()
        n = len(result.sessions)
        self.statusBar().showMessage(
            f"Imported {n} chat{'s' if n != 1 else ''} ({result.messages} messages)", 8000
        )
        self.import_finished.emit(result)

    def _export_failed(self, message: str) -> None:
        self._task_failed("Export failed", message)

    def _import_failed(self, message: str) -> None:
        self._task_failed("Import failed", message)

    def _task_failed(self, title: str, message: str) -> None:
        self._transfer_busy(False)
        self.statusBar().showMessage(f"{title}: {message}")
        self.task_failed.emit(message)
        dialogs.error(self, title, message)

    # ---- closing ---------------------------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:
        """Stop the answer (kept as 'cancelled'), free the model, finish file tasks, close the store."""
        self.closed = True
        self._live.stop()
        self.client.shutdown()
        self.models_page.shutdown()  # running downloads pause; their .part is resumed next time
        self.finetune_page.shutdown()  # a running job checkpoints and stops; it offers Resume next time
        tasks.wait_all()
        self.store.close()
        super().closeEvent(event)
