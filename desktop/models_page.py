"""The Models page: the download catalogue (size, memory estimate, fits / tight / too big),
downloads with progress, pause / resume and cancel, and the installed models (use, set as
default, delete, add a GGUF file, details).

Downloads run `engine.models.download.Download.run()` on this page's own thread pool (not Qt's
global one, which imports and exports share), one runnable per file. A `DownloadControls` row
widget lives on the GUI thread and owns its `Download`; the engine's progress callback emits
that widget's signal from the download thread, and since the receivers are bound methods of
GUI-thread objects, Qt queues every delivery to the GUI thread. Pause keeps the `.part` and a
later Resume runs the same `Download` again, which continues it with a byte range.

Nothing on this page raises into Qt: every engine error (gated repo, disk full, corrupt file,
not a GGUF, ...) becomes text in the page's message banner.

The page fills itself the first time it is shown (the registry and the memory estimate import
numpy and read GGUF headers; the app's start should not pay for that), or on `refresh()`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from PySide6.QtCore import QRunnable, Qt, QThreadPool, Signal
from PySide6.QtGui import QBrush, QColor, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop import dialogs
from desktop.banner import MessageBanner

log = logging.getLogger(__name__)
DEFAULT_N_CTX = 4096
BADGE_COLOURS = {"fits": "#2e7d32", "tight": "#b26a00", "too big": "#c62828"}
SOURCE_TITLES = {
    "bundled": "bundled",
    "added": "added",
    "downloaded": "downloaded",
    "finetuned": "fine-tuned",
}


def human(n: float | None) -> str:
    if n is None:
        return "?"
    from engine.models.download import human as _human

    return _human(n)


def duration(s: float | None) -> str:
    if s is None:
        return "time left unknown"
    s = round(s)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min left"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s left"
    return f"{s} s left"


def progress_text(p) -> str:
    """'12.0 MB of 105.5 MB · 4.2 MB/s · 20 s left' for a DownloadProgress."""
    parts = [f"{human(p.done_bytes)} of {human(p.total_bytes)}"]
    if p.rate_bytes_per_s > 0:
        parts.append(f"{human(p.rate_bytes_per_s)}/s")
    if p.total_bytes is not None and p.done_bytes < p.total_bytes:
        parts.append(duration(p.eta_s))
    return " · ".join(parts)


# ---- one download ------------------------------------------------------------------------------
class _Run(QRunnable):
    """Runs one `Download.run()` in the pool; reports through the controls' (queued) signals."""

    def __init__(self, controls: DownloadControls) -> None:
        super().__init__()
        self.download = controls.download
        self.ended, self.error = controls.ended, controls.error

    def run(self) -> None:
        try:
            result = self.download.run()
        except Exception as e:  # noqa: BLE001 - every failure is shown in the page, never raised in a pool thread
            log.warning("download of %s failed: %s", self.download.filename, e)
            self.error.emit(str(e) or type(e).__name__)
        else:
            self.ended.emit(result)


class DownloadControls(QWidget):
    """Progress bar, status and Download / Pause-Resume / Cancel buttons for one catalogue file."""

    progress = Signal(object)  # DownloadProgress; emitted in the download thread, delivered queued
    ended = Signal(object)  # DownloadResult (done, paused or cancelled)
    error = Signal(str)
    finished = Signal(str)  # registry name, once the file is downloaded and registered
    failed = Signal(str)  # the message, in words

    def __init__(self, page: ModelsPage, model, quant: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.page, self.model, self.quant = page, model, quant
        self.file = model.file(quant)
        self.name = model.registry_name(quant)
        self.download = None  # engine.models.download.Download, made on the first start
        self.state = "idle"  # idle | running | pausing | paused | done | failed
        label = f"{model.name} {quant}"
        lay = QHBoxLayout(self)
        lay.setContentsMargins(4, 2, 4, 2)
        col = QVBoxLayout()
        col.setSpacing(0)
        self.bar = QProgressBar()
        self.bar.setAccessibleName(f"Download progress of {label}")
        self.bar.setTextVisible(False)
        self.bar.setMaximumHeight(10)
        self.bar.hide()
        self.status = QLabel()
        self.status.setAccessibleName(f"Download status of {label}")
        col.addWidget(self.bar)
        col.addWidget(self.status)
        lay.addLayout(col, 1)
        self.start_button = QPushButton("Download")
        self.start_button.setAccessibleName(f"Download {label}")
        self.pause_button = QPushButton("Pause")
        self.pause_button.setAccessibleName(f"Pause or resume download of {label}")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setAccessibleName(f"Cancel download of {label}")
        for b in (self.start_button, self.pause_button, self.cancel_button):
            lay.addWidget(b)
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress.connect(self._progress)
        self.ended.connect(self._ended)
        self.error.connect(self._error)
        self._show_idle()

    # ---- state shown -------------------------------------------------------------------------
    def _buttons(self, start: bool, pause: bool, cancel: bool, pause_text: str = "Pause") -> None:
        self.start_button.setVisible(start)
        self.pause_button.setVisible(pause)
        self.pause_button.setText(pause_text)
        self.cancel_button.setVisible(cancel)

    def _show_idle(self) -> None:
        part = self._part_path()
        if part is not None and part.exists() and self.state == "idle":
            self.state = "paused"
            have = part.stat().st_size
            self.bar.show()
            self._set_bar(have, self.file.size)
            self.status.setText(f"Paused at {human(have)} of {human(self.file.size)}")
            self._buttons(False, True, True, "Resume")
            return
        self.bar.hide()
        self.status.setText("")
        self.start_button.setText("Download")
        self._buttons(True, False, False)

    def set_installed(self, installed: bool) -> None:
        if self.state in ("running", "pausing", "paused"):
            return
        if installed:
            self.state = "done"
            self.bar.hide()
            self.status.setText("Installed")
            self._buttons(False, False, False)
        elif self.state == "done":
            self.state = "idle"
            self._show_idle()

    def _part_path(self) -> Path | None:
        try:
            return self.page.dest_dir() / (Path(self.file.filename).name + ".part")
        except OSError:
            return None

    def _set_bar(self, done: int, total: int | None) -> None:
        if total:
            self.bar.setRange(0, 1000)
            self.bar.setValue(min(1000, int(done * 1000 / total)))
        else:
            self.bar.setRange(0, 0)

    # ---- actions ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the download, or resume a paused one (the same Download continues its .part)."""
        if self.state in ("running", "pausing"):
            return
        if self.download is None or self.download.endpoint != self.page.endpoint:
            from engine.models.download import Download

            try:
                self.download = Download(
                    self.model.repo, self.file.filename, self.page.dest_dir(), endpoint=self.page.endpoint,
                    token=self.page.token, expected_sha256=self.file.sha256, name=self.name,
                    **({"chunk_size": self.page.chunk_size} if self.page.chunk_size else {}),
                )  # fmt: skip
            except (ValueError, OSError) as e:
                self._error(str(e))
                return
            self.download.gated = self.model.gated  # a 401 then reads "gated", not "no such repo"
            self.download.progress = self.progress.emit
        self.state = "running"
        self.bar.show()
        if self.bar.maximum() == 0 or self.bar.value() <= 0:
            self.bar.setRange(0, 0)  # busy until the first progress report
        self.status.setText("Starting…")
        self._buttons(False, True, True, "Pause")
        self.page.download_started.emit(self.name)
        self.page.pool.start(_Run(self))

    def toggle_pause(self) -> None:
        if self.state == "running":
            self.pause()
        elif self.state == "paused":
            self.start()

    def pause(self) -> None:
        if self.state == "running" and self.download is not None:
            self.state = "pausing"
            self.download.pause()
            self.status.setText("Pausing…")

    def cancel(self) -> None:
        if self.state in ("running", "pausing") and self.download is not None:
            self.download.cancel()
            self.status.setText("Cancelling…")
        elif self.state == "paused":
            part = self._part_path()
            if part is not None:
                with contextlib.suppress(OSError):
                    part.unlink(missing_ok=True)
            self.state = "idle"
            self._show_idle()
            self.page.download_ended.emit(self.name, "cancelled")

    # ---- reports (GUI thread) -----------------------------------------------------------------
    def _progress(self, p) -> None:
        if self.state not in ("running", "pausing"):
            return
        self._set_bar(p.done_bytes, p.total_bytes)
        if self.state == "running":
            self.status.setText(progress_text(p))
        self.page.download_progress.emit(self.name, p)

    def _ended(self, result) -> None:
        if result.state == "paused":
            self.state = "paused"
            have = result.path.stat().st_size if result.path.exists() else 0
            self.status.setText(f"Paused at {human(have)} of {human(self.file.size)}")
            self._buttons(False, True, True, "Resume")
        elif result.state == "cancelled":
            self.state = "idle"
            self._show_idle()
            self.status.setText("Cancelled")
        else:
            self.state = "done"
            self.bar.hide()
            self.status.setText("Installed")
            self._buttons(False, False, False)
            self.finished.emit(self.name)
        self.page.download_ended.emit(self.name, result.state)

    def _error(self, message: str) -> None:
        part = self._part_path()
        if part is not None and part.exists():  # what arrived is kept: Resume continues it
            self.state = "paused"
            self.status.setText(f"Stopped at {human(part.stat().st_size)} of {human(self.file.size)}")
            self._buttons(False, True, True, "Resume")
        else:
            self.state = "failed"
            self.bar.hide()
            self.status.setText("Failed")
            self._buttons(True, False, False)
            self.start_button.setText("Retry")
        self.failed.emit(message)


# ---- the page ----------------------------------------------------------------------------------
class ModelsPage(MessageBanner, QWidget):
    """The Models tab. `endpoint`, `token`, `download_dir` and `chunk_size` are None in the app
    (huggingface-hub's endpoint and token, the cache's models folder, the engine's 1 MiB reads);
    tests point them elsewhere."""

    models_changed = Signal()  # installed models changed: the window refreshes its model picker
    download_started = Signal(str)  # registry name
    download_progress = Signal(str, object)  # registry name, DownloadProgress
    download_ended = Signal(str, str)  # registry name, "done" | "paused" | "cancelled"
    download_failed = Signal(str, str)  # registry name, message
    message_shown = Signal(str)

    def __init__(self, store, client, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store, self.client = store, client
        self.endpoint: str | None = None
        self.token: str | bool | None = None
        self.download_dir: Path | None = None
        self.chunk_size: int | None = None  # bytes per read (pause/cancel granularity); None: the engine's
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(4)
        self.catalogue: list = []
        self.controls: dict[str, DownloadControls] = {}
        self.installed: list = []
        self.loaded = False
        self.setAccessibleName("Models")

        lay = QVBoxLayout(self)
        self.message = QLabel()
        self.message.setAccessibleName("Models page message")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()
        lay.addWidget(self.message)

        split = QSplitter(Qt.Orientation.Vertical)
        cat_box = QGroupBox("Download")
        cat_lay = QVBoxLayout(cat_box)
        self.context_note = QLabel()
        self.context_note.setAccessibleName("Memory estimate note")
        cat_lay.addWidget(self.context_note)
        self.catalogue_table = QTableWidget(0, 6)
        self.catalogue_table.setAccessibleName("Model catalogue")
        self.catalogue_table.setHorizontalHeaderLabels(["Model", "Quantization", "Size", "Memory", "Fit", ""])
        self._table_style(self.catalogue_table)
        self.catalogue_table.horizontalHeader().setSectionResizeMode(5, QHeaderView.ResizeMode.Stretch)
        self.catalogue_table.itemSelectionChanged.connect(self._catalogue_selected)
        cat_lay.addWidget(self.catalogue_table)
        split.addWidget(cat_box)

        inst_box = QGroupBox("Installed")
        inst_lay = QHBoxLayout(inst_box)
        left = QVBoxLayout()
        self.installed_table = QTableWidget(0, 4)
        self.installed_table.setAccessibleName("Installed models")
        self.installed_table.setHorizontalHeaderLabels(["Name", "Source", "Size", ""])
        self._table_style(self.installed_table)
        self.installed_table.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.installed_table.itemSelectionChanged.connect(self._installed_selected)
        left.addWidget(self.installed_table)
        buttons = QHBoxLayout()
        self.use_button = QPushButton("Use now")
        self.use_button.setAccessibleName("Use the selected model now")
        self.default_button = QPushButton("Set as default")
        self.default_button.setAccessibleName("Set the selected model as default")
        self.delete_button = QPushButton("Delete…")
        self.delete_button.setAccessibleName("Delete the selected model")
        self.add_button = QPushButton("Add GGUF file…")
        self.add_button.setAccessibleName("Add a GGUF model file")
        self.use_button.clicked.connect(self.use_selected)
        self.default_button.clicked.connect(self.set_default_selected)
        self.delete_button.clicked.connect(self.delete_selected)
        self.add_button.clicked.connect(self.ask_add)
        for b in (self.use_button, self.default_button, self.delete_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.add_button)
        left.addLayout(buttons)
        inst_lay.addLayout(left, 3)
        self.details = QLabel("Select a model to see its details.")
        self.details.setAccessibleName("Model details")
        self.details.setWordWrap(True)
        self.details.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setMinimumWidth(240)
        inst_lay.addWidget(self.details, 2)
        split.addWidget(inst_box)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        lay.addWidget(split, 1)
        self._selection_buttons(None)

        client.loaded.connect(self._model_loaded)

    @staticmethod
    def _table_style(t: QTableWidget) -> None:
        t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        t.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        t.verticalHeader().hide()
        t.setAlternatingRowColors(True)

    # ---- settings the page reads ---------------------------------------------------------------
    def dest_dir(self) -> Path:
        if self.download_dir is not None:
            return Path(self.download_dir)
        from engine.models.download import default_dest_dir

        return default_dest_dir()

    def runtime(self) -> dict:
        rt = self.store.get_setting("runtime", {}) or {}
        return rt if isinstance(rt, dict) else {}

    def n_ctx(self) -> int:
        try:
            return int(self.runtime().get("n_ctx") or DEFAULT_N_CTX)
        except (TypeError, ValueError):
            return DEFAULT_N_CTX

    # ---- filling -------------------------------------------------------------------------------
    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refresh()

    def refresh(self) -> None:
        """Read the catalogue (once), the estimates at the current context, and the registry."""
        if not self.loaded:
            self.loaded = True
            from engine.models.catalogue import CatalogueError, load_catalogue

            try:
                self.set_catalogue(load_catalogue())
            except (CatalogueError, OSError) as e:
                self.show_error(f"The model catalogue could not be read: {e}")
        else:
            self.refresh_estimates()
        self.refresh_installed()

    def set_catalogue(self, models: list) -> None:
        """Show `models` (CatalogueModel), one row per file. Not while a download runs (its row
        would go): then the page says so and keeps what it shows. A paused one's .part stays, and
        its new row offers Resume."""
        if any(c.state in ("running", "pausing") for c in self.controls.values()):
            self.show_error("The catalogue cannot be reloaded while a download is running.")
            return
        self.loaded = True
        self.catalogue = list(models)
        t = self.catalogue_table
        t.setRowCount(0)  # deletes the rows' DownloadControls
        self.controls = {}
        for m in self.catalogue:
            for quant in m.files:
                row = t.rowCount()
                t.insertRow(row)
                name_item = QTableWidgetItem(m.name + (" (gated)" if m.gated else ""))
                name_item.setData(Qt.ItemDataRole.UserRole, (m.id, quant))
                name_item.setToolTip(m.description or m.repo)
                t.setItem(row, 0, name_item)
                t.setItem(row, 1, QTableWidgetItem(quant))
                ctl = DownloadControls(self, m, quant)
                ctl.finished.connect(self._downloaded)
                ctl.failed.connect(self._download_failed)
                self.controls[m.registry_name(quant)] = ctl
                t.setCellWidget(row, 5, ctl)
        self.refresh_estimates()
        t.resizeColumnsToContents()
        t.horizontalHeader().setSectionResizeMode(5, QHeaderView.ResizeMode.Stretch)
        t.resizeRowsToContents()

    def refresh_estimates(self) -> None:
        """Size, memory at the current context setting, and the fit badge of every row."""
        from engine.models.memory import available_memory, estimate, fit

        n_ctx, rt = self.n_ctx(), self.runtime()
        avail = available_memory()
        self.context_note.setText(
            f"Memory estimates at a context of {n_ctx} tokens (Settings › Runtime); "
            f"{human(avail) if avail else 'unknown'} available now."
        )
        t = self.catalogue_table
        by_id = {m.id: m for m in self.catalogue}
        for row in range(t.rowCount()):
            mid, quant = t.item(row, 0).data(Qt.ItemDataRole.UserRole)
            m = by_id[mid]
            f = m.file(quant)
            t.setItem(row, 2, QTableWidgetItem(("≈ " if f.size_approx else "") + human(f.size)))
            try:
                est = estimate(m, n_ctx, quant=quant, n_batch=int(rt.get("n_batch") or 256),
                               flash_attn=bool(rt.get("flash_attn", True)))  # fmt: skip
                badge = fit(est, avail)
                mem_text, tip = human(est.total), est.describe()
            except (ValueError, ZeroDivisionError) as e:
                badge, mem_text, tip = "tight", "?", str(e)
            mem = QTableWidgetItem(mem_text)
            mem.setToolTip(tip)
            t.setItem(row, 3, mem)
            b = QTableWidgetItem(badge)
            b.setData(Qt.ItemDataRole.AccessibleTextRole, f"{badge} in memory")
            b.setForeground(QBrush(QColor("white")))
            b.setBackground(QBrush(QColor(BADGE_COLOURS[badge])))
            b.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            b.setToolTip(tip)
            t.setItem(row, 4, b)

    def badges(self) -> dict[str, str]:
        """{registry name: badge} for each catalogue row (tests, and accessibility checks)."""
        t = self.catalogue_table
        out = {}
        for row in range(t.rowCount()):
            mid, quant = t.item(row, 0).data(Qt.ItemDataRole.UserRole)
            m = next(m for m in self.catalogue if m.id == mid)
            out[m.registry_name(quant)] = t.item(row, 4).text()
        return out

    def refresh_installed(self) -> None:
        from engine.models.registry import list_models

        selected = self.selected_name()
        try:
            self.installed = list_models()
        except (OSError, ValueError) as e:
            self.installed = []
            self.show_error(f"The list of installed models could not be read: {e}")
        t = self.installed_table
        t.setRowCount(0)
        default = self.store.get_setting("model")
        loaded = self.client.model_name
        for e in self.installed:
            row = t.rowCount()
            t.insertRow(row)
            item = QTableWidgetItem(e.name)
            item.setData(Qt.ItemDataRole.UserRole, e.name)
            t.setItem(row, 0, item)
            t.setItem(row, 1, QTableWidgetItem(SOURCE_TITLES.get(e.source, e.source)))
            t.setItem(row, 2, QTableWidgetItem(human(e.size) if e.size else ""))
            notes = []
            if not e.available:
                notes.append("file missing")
            if e.name == loaded:
                notes.append("in use")
            if e.name == default or (not default and e.source == "bundled"):
                notes.append("default")
            t.setItem(row, 3, QTableWidgetItem(", ".join(notes)))
        t.resizeColumnsToContents()
        t.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        names = self.installed_names()
        for key, ctl in self.controls.items():
            ctl.set_installed(key in names)
        if selected in names:
            self.select_installed(selected)
        else:
            self._selection_buttons(None)

    def installed_names(self) -> list[str]:
        return [e.name for e in self.installed]

    # ---- selection and details -----------------------------------------------------------------
    def selected_name(self) -> str | None:
        rows = self.installed_table.selectionModel().selectedRows()
        if not rows:
            return None
        return self.installed_table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole)

    def select_installed(self, name: str) -> bool:
        for row in range(self.installed_table.rowCount()):
            if self.installed_table.item(row, 0).data(Qt.ItemDataRole.UserRole) == name:
                self.installed_table.selectRow(row)
                self._installed_selected()
                return True
        return False

    def _entry(self, name: str | None):
        return next((e for e in self.installed if e.name == name), None)

    def _selection_buttons(self, entry) -> None:
        usable = entry is not None and entry.available
        self.use_button.setEnabled(usable)
        self.default_button.setEnabled(usable)
        self.delete_button.setEnabled(entry is not None and entry.source != "bundled")

    def _installed_selected(self) -> None:
        e = self._entry(self.selected_name())
        self._selection_buttons(e)
        if e is None:
            return
        rows = [
            ("Name", e.name), ("Source", SOURCE_TITLES.get(e.source, e.source)),
            ("Architecture", e.architecture or "?"), ("Parameters", _params(e.parameters)),
            ("Quantization", e.quantization or "?"),
            ("Context length", f"{e.context_length} tokens" if e.context_length else "?"),
            ("Chat template", "yes" if e.has_chat_template else "no"),
            ("Size", human(e.size) if e.size else "?"), ("File", e.path if e.available else f"{e.path} (missing)"),
        ]  # fmt: skip
        if e.available:
            try:
                from engine.models.memory import estimate, fit

                est = estimate(e.path, self.n_ctx())
                rows.append(("Memory", f"{est.describe()} ({fit(est)})"))
            except Exception as ex:  # noqa: BLE001 - a header the estimate cannot read: just no estimate
                log.info("no memory estimate for %s: %s", e.name, ex)
        self.details.setText(_table_html(rows))

    def _catalogue_selected(self) -> None:
        rows = self.catalogue_table.selectionModel().selectedRows()
        if not rows:
            return
        mid, quant = self.catalogue_table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole)
        m = next((m for m in self.catalogue if m.id == mid), None)
        if m is None:
            return
        f = m.file(quant)
        self.details.setText(_table_html([
            ("Name", m.name), ("Repository", m.repo), ("Licence", m.license + (" (gated)" if m.gated else "")),
            ("Architecture", m.architecture), ("Parameters", _params(m.parameters)), ("Quantization", quant),
            ("Context length", f"{m.context_length} tokens"),
            ("Chat template", "read from the file once downloaded"),
            ("File", f"{f.filename} ({'≈ ' if f.size_approx else ''}{human(f.size)})"),
            ("About", m.description or ""),
        ]))  # fmt: skip

    # ---- downloads -----------------------------------------------------------------------------
    def start_download(self, model_id: str, quant: str | None = None) -> DownloadControls:
        """Start (or resume) the download of a catalogue file, as its Download button does."""
        m = next(m for m in self.catalogue if m.id == model_id)
        ctl = self.controls[m.registry_name(m.file(quant).quant)]
        self.clear_message()
        ctl.start()
        return ctl

    def _downloaded(self, name: str) -> None:
        self.show_info(f"{name} is downloaded and ready: pick it in the model list above the chat.")
        self.refresh_installed()
        self.models_changed.emit()

    def _download_failed(self, message: str) -> None:
        ctl = self.sender()
        name = ctl.name if isinstance(ctl, DownloadControls) else ""
        self.show_error(f"Download failed: {message}")
        self.download_failed.emit(name, message)

    def shutdown(self, timeout_ms: int = 10_000) -> None:
        """At close: pause running downloads (their .part is kept for next time) and wait for them."""
        for ctl in self.controls.values():
            if ctl.state in ("running", "pausing") and ctl.download is not None:
                ctl.download.pause()
        if not self.pool.waitForDone(timeout_ms):
            log.warning("downloads did not stop in %d ms", timeout_ms)

    # ---- installed models ----------------------------------------------------------------------
    def use_selected(self) -> None:
        name = self.selected_name()
        if name:
            self.use_now(name)

    def use_now(self, name: str) -> None:
        """Load `name` in the chat now (the worker remembers it as the last used model)."""
        self._load_checked(name)

    def _load_checked(self, name: str) -> None:
        """Before loading, compare the memory it needs at the current context with what is free;
        a model that would not fit gets a warning with a smaller context to use, or "load anyway"."""
        from engine.models.memory import available_memory, estimate, fit, suggest_context
        from engine.models.registry import resolve
        from engine.runtime import RuntimeSettings

        runtime = RuntimeSettings.from_dict(self.store.get_setting("runtime", {}))
        try:
            _, path = resolve(name)
            est = estimate(path, runtime.n_ctx)
        except Exception as e:  # noqa: BLE001 - no estimate: let the load itself report the problem
            log.info("no memory estimate for %s: %s", name, e)
            est = None
        if est is not None and fit(est) == "too big":
            free = available_memory() or 0
            smaller = suggest_context(path)
            smaller = smaller if smaller and smaller < runtime.n_ctx else None
            text = (
                f"{name} needs about {est.total / 2**20:,.0f} MiB at a {runtime.n_ctx:,}-token context "
                f"(weights {est.weights / 2**20:,.0f} MiB, KV cache {est.kv_cache / 2**20:,.0f} MiB), and "
                f"{free / 2**20:,.0f} MiB of memory is free."
            )
            choice = dialogs.too_big(self, text, smaller)
            if choice == "cancel":
                self.show_info(f"{name} was not loaded: not enough memory.")
                return
            if choice == "smaller":
                self.store.set_setting("runtime", {**runtime.to_dict(), "n_ctx": smaller})
                self.show_info(f"Loading {name} with a {smaller:,}-token context…")
                self.client.switch_model(name)
                return
            self.show_info(f"Loading {name} anyway…")
            self.client.load_anyway(name)
            return
        self.show_info(f"Loading {name}…")
        self.client.switch_model(name)

    def set_default_selected(self) -> None:
        name = self.selected_name()
        if name:
            self.set_default(name)

    def set_default(self, name: str) -> None:
        """The model new app starts load, and load it now."""
        self.store.set_setting("model", name)
        self.show_info(f"{name} is the default model; loading it…")
        if self.client.model_name != name:
            self._load_checked(name)
        self.refresh_installed()

    def delete_selected(self) -> None:
        name = self.selected_name()
        if name:
            self.delete(name)

    def delete(self, name: str, *, ask: bool = True) -> bool:
        """Remove `name` from the registry (after a confirmation), and its file when it was
        downloaded into the app's models folder (an added file is the user's and is kept)."""
        from engine.models.registry import DEFAULT_MODEL, remove_model

        e = self._entry(name)
        if e is None:
            self.show_error(f"No installed model named {name}.")
            return False
        if e.source == "bundled":
            self.show_error(f"{name} comes with the app and cannot be deleted.")
            return False
        ours = e.source == "downloaded" and _inside(Path(e.path), self.dest_dir())
        what = "and delete its file " if ours else "from the list (the file itself is kept) "
        if ask and not dialogs.confirm(self, "Delete model", f"Remove {name} {what}?\n\n{e.path}"):
            return False
        if self.client.model_name == name:
            self.client.switch_model(None)  # the bundled model takes over the chat
        if self.store.get_setting("model") == name:
            self.store.set_setting("model", DEFAULT_MODEL)
        try:
            remove_model(name)
        except (OSError, ValueError) as ex:
            self.show_error(f"{name} could not be removed: {ex}")
            return False
        note = ""
        if ours:
            try:
                Path(e.path).unlink(missing_ok=True)
            except OSError as ex:
                note = f" The file could not be deleted ({ex.strerror or ex}): {e.path}"
        self.refresh_installed()
        self.models_changed.emit()
        (self.show_error if note else self.show_info)(f"{name} was removed.{note}")
        return True

    def ask_add(self) -> None:
        path = dialogs.open_path(self, "Add a GGUF model", "GGUF models (*.gguf);;All files (*)")
        if path:
            self.add_file(path)

    def add_file(self, path: str | Path) -> str | None:
        """Register a GGUF file; its name is the file name (made unique). Returns the name, or
        None with the reason in the page's message."""
        from engine.models.gguf_info import GGUFError
        from engine.models.registry import add_model

        path = Path(path)
        base = path.name.removesuffix(".gguf")
        taken = {e.name: e for e in self.installed}
        name, n = base, 2
        while name in taken and Path(taken[name].path).resolve() != path.resolve():
            name, n = f"{base}-{n}", n + 1
        try:
            entry = add_model(path, name)
        except (GGUFError, ValueError, OSError) as e:
            self.show_error(f"{path.name} was not added: {e}")
            return None
        self.refresh_installed()
        self.select_installed(entry.name)
        self.models_changed.emit()
        self.show_info(f"Added {entry.name}.")
        return entry.name

    def _model_loaded(self, name: str, _n_ctx: int) -> None:
        if self.loaded:
            self.refresh_installed()
            if self.message.text().startswith(("Loading ", f"{name} is the default")):
                self.show_info(f"{name} is loaded.")


def _params(n: int) -> str:
    if not n:
        return "?"
    if n >= 1e9:
        return f"{n / 1e9:.1f} B"
    return f"{n / 1e6:.0f} M"


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _table_html(rows: list[tuple[str, str]]) -> str:
    from html import escape

    body = "".join(
        f"<tr><td><b>{escape(k)}</b>&nbsp;&nbsp;</td><td>{escape(str(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{body}</table>"
