"""The sessions sidebar: chats newest first (pinned on top), full-text search, and filing.

The list is a QAbstractListModel that reads the store a page at a time (`fetchMore`), so a
history of 10,000 chats opens as fast as one of ten. Renaming is in place (F2 or double-click)
and written straight to the store. Search goes through `Store.search` (FTS5); a hit shows its
snippet and jumps to the message.
"""

from __future__ import annotations

import html
import time

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPoint, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop import dialogs

PAGE = 100
SESSION_ID_ROLE = Qt.ItemDataRole.UserRole
SEARCH_DELAY_MS = 200


class SessionModel(QAbstractListModel):
    """Sessions from the store, loaded in pages as the view scrolls."""

    renamed = Signal(int, str)

    def __init__(self, store, parent=None) -> None:
        super().__init__(parent)
        self.store = store
        self.archived = False
        self.rows: list[dict] = []
        self.total = 0

    def reload(self) -> None:
        self.beginResetModel()
        self.total = self.store.count_sessions(archived=self.archived)
        self.rows = self.store.list_sessions(limit=PAGE, offset=0, archived=self.archived)
        self.endResetModel()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def canFetchMore(self, parent: QModelIndex = QModelIndex()) -> bool:  # noqa: B008
        return not parent.isValid() and len(self.rows) < self.total

    def fetchMore(self, parent: QModelIndex = QModelIndex()) -> None:  # noqa: B008
        more = self.store.list_sessions(limit=PAGE, offset=len(self.rows), archived=self.archived)
        if not more:
            self.total = len(self.rows)
            return
        self.beginInsertRows(QModelIndex(), len(self.rows), len(self.rows) + len(more) - 1)
        self.rows += more
        self.endInsertRows()

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= len(self.rows):
            return None
        s = self.rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return ("★ " if s["pinned"] else "") + (s["title"] or "Untitled")
        if role == Qt.ItemDataRole.EditRole:
            return s["title"]
        if role == Qt.ItemDataRole.ToolTipRole:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["updated"]))
            return f"{s['title']}\n{when}" + (f" · {s['model']}" if s["model"] else "")
        if role == SESSION_ID_ROLE:
            return s["id"]
        return None

    def flags(self, index: QModelIndex) -> Qt.ItemFlag:
        return super().flags(index) | Qt.ItemFlag.ItemIsEditable

    def setData(self, index: QModelIndex, value, role: int = Qt.ItemDataRole.EditRole) -> bool:
        title = str(value).strip()
        if role != Qt.ItemDataRole.EditRole or not index.isValid() or not title:
            return False
        s = self.rows[index.row()]
        self.store.update_session(s["id"], title=title)
        s["title"] = title
        self.dataChanged.emit(index, index)
        self.renamed.emit(s["id"], title)
        return True

    def row_of(self, session_id: int) -> int:
        return next((i for i, s in enumerate(self.rows) if s["id"] == session_id), -1)


class SessionSidebar(QWidget):
    session_activated = Signal(int)
    hit_activated = Signal(int, int)  # session id, message id
    new_chat_requested = Signal()
    session_deleted = Signal(int)
    export_requested = Signal(int)  # one session

    def __init__(self, store, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 0, 6)
        self.new_button = QPushButton("New chat")
        self.new_button.setAccessibleName("New chat")
        self.new_button.setToolTip("New chat (Ctrl+N)")
        self.new_button.clicked.connect(self.new_chat_requested)
        lay.addWidget(self.new_button)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search all chats")
        self.search.setAccessibleName("Search chats")
        self.search.setClearButtonEnabled(True)
        lay.addWidget(self.search)

        self.model = SessionModel(store, self)
        self.view = QListView()
        self.view.setAccessibleName("Chats")
        self.view.setModel(self.model)
        self.view.setUniformItemSizes(True)
        self.view.setEditTriggers(
            QAbstractItemView.EditTrigger.EditKeyPressed | QAbstractItemView.EditTrigger.DoubleClicked
        )
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._menu)
        self.view.clicked.connect(self._activate)
        self.view.activated.connect(self._activate)
        lay.addWidget(self.view, 1)

        self.results = QListWidget()
        self.results.setAccessibleName("Search results")
        self.results.setWordWrap(True)
        self.results.itemActivated.connect(self._hit)
        self.results.itemClicked.connect(self._hit)
        self.results.hide()
        lay.addWidget(self.results, 1)
        self.no_results = QLabel("No chats contain these words.")
        self.no_results.hide()
        lay.addWidget(self.no_results)

        row = QHBoxLayout()
        self.show_archived = QCheckBox("Archived")
        self.show_archived.setAccessibleName("Show archived chats")
        self.show_archived.toggled.connect(self._toggle_archived)
        row.addWidget(self.show_archived)
        row.addStretch(1)
        lay.addLayout(row)

        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self.run_search)
        self.search.textChanged.connect(lambda _t: self._search_timer.start())
        self.current_id: int | None = None
        self.busy_session: int | None = None  # the chat whose answer is being written
        self.model.reload()

    # ---- list ------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Reload from the store (after a turn, an import, a rename elsewhere), keeping the selection."""
        self.model.reload()
        self.select(self.current_id, emit=False)

    def select(self, session_id: int | None, emit: bool = True) -> None:
        self.current_id = session_id
        row = self.model.row_of(session_id) if session_id is not None else -1
        while row < 0 and session_id is not None and self.model.canFetchMore():
            self.model.fetchMore()
            row = self.model.row_of(session_id)
        sel = self.view.selectionModel()
        if row < 0:
            sel.clearSelection()
        else:
            index = self.model.index(row)
            sel.setCurrentIndex(index, sel.SelectionFlag.ClearAndSelect)
            self.view.scrollTo(index)
        if emit and session_id is not None:
            self.session_activated.emit(session_id)

    def _activate(self, index: QModelIndex) -> None:
        sid = index.data(SESSION_ID_ROLE)
        if sid is not None and sid != self.current_id:
            self.current_id = sid
            self.session_activated.emit(sid)

    def rename_current(self) -> None:
        index = self.view.currentIndex()
        if index.isValid():
            self.view.setFocus()
            self.view.edit(index)

    def _toggle_archived(self, on: bool) -> None:
        self.model.archived = on
        self.refresh()

    # ---- filing ----------------------------------------------------------------------------
    def _menu(self, pos: QPoint) -> None:
        index = self.view.indexAt(pos)
        if not index.isValid():
            return
        s = self.model.rows[index.row()]
        menu = QMenu(self)
        menu.addAction("Rename", lambda: self.view.edit(index))
        menu.addAction("Unpin" if s["pinned"] else "Pin", lambda: self.set_pinned(s["id"], not s["pinned"]))
        menu.addAction(
            "Unarchive" if s["archived"] else "Archive", lambda: self.set_archived(s["id"], not s["archived"])
        )
        menu.addAction("Export…", lambda: self.export_requested.emit(s["id"]))
        menu.addSeparator()
        menu.addAction("Delete…", lambda: self.delete(s["id"]))
        menu.popup(self.view.viewport().mapToGlobal(pos))

    def set_pinned(self, session_id: int, pinned: bool) -> None:
        self.store.update_session(session_id, pinned=pinned)
        self.refresh()

    def set_archived(self, session_id: int, archived: bool) -> None:
        self.store.update_session(session_id, archived=archived)
        self.refresh()

    def rename(self, session_id: int, title: str) -> None:
        self.store.update_session(session_id, title=title)
        self.refresh()

    def delete(self, session_id: int) -> bool:
        """Delete a chat and all its branches, after the user confirms (not while it is answering)."""
        if session_id == self.busy_session:
            return False
        title = self.store.get_session(session_id)["title"]
        if not dialogs.confirm(
            self, "Delete chat?", f"Delete “{title}” and all its messages? This cannot be undone."
        ):
            return False
        self.store.delete_session(session_id)
        if self.current_id == session_id:
            self.current_id = None
        self.refresh()
        self.session_deleted.emit(session_id)
        return True

    # ---- search ----------------------------------------------------------------------------
    def run_search(self) -> list[dict]:
        query = self.search.text().strip()
        searching = bool(query)
        self.view.setVisible(not searching)
        self.results.setVisible(searching)
        self.results.clear()
        hits = self.store.search(query, limit=50) if searching else []
        for hit in hits:
            item = QListWidgetItem()
            item.setData(SESSION_ID_ROLE, (hit["session_id"], hit["message_id"]))
            plain = hit["snippet"].replace("\x02", "").replace("\x03", "")
            item.setData(Qt.ItemDataRole.AccessibleTextRole, f"{hit['session_title']}: {plain}")
            label = QLabel(snippet_html(hit["session_title"], hit["snippet"]))
            label.setTextFormat(Qt.TextFormat.RichText)
            label.setWordWrap(True)
            label.setContentsMargins(4, 2, 4, 2)
            label.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
            self.results.addItem(item)
            item.setSizeHint(label.sizeHint())
            self.results.setItemWidget(item, label)
        self.no_results.setVisible(searching and not hits)
        return hits

    def _hit(self, item: QListWidgetItem) -> None:
        sid, mid = item.data(SESSION_ID_ROLE)
        self.current_id = sid
        self.hit_activated.emit(sid, mid)


def snippet_html(title: str, snippet: str) -> str:
    """A search hit as safe rich text: everything escaped, then the match markers made bold."""
    from engine.store import SNIPPET_END, SNIPPET_START

    body = html.escape(snippet).replace(SNIPPET_START, "<b>").replace(SNIPPET_END, "</b>")
    return f"<b>{html.escape(title or 'Untitled')}</b><br><span>{body}</span>"
