"""Settings: sampling defaults, runtime (context, threads, GPU layers), theme, the data folder,
an editor for the hidden-instruction templates, and moderation (categories, thresholds,
fail-closed).

Everything is saved in the store (`runtime`, `sampling`, `theme` settings), the same place the
CLI reads. Runtime changes need the model reloaded: the dialog reports them with
`runtime_changed` and the window asks the worker to reload.
"""

from __future__ import annotations

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QDesktopServices, QFontDatabase
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from desktop import theme


def _spin(lo: int, hi: int, value: int, name: str, step: int = 1, special: str | None = None) -> QSpinBox:
    s = QSpinBox()
    s.setRange(lo, hi)
    s.setSingleStep(step)
    s.setValue(value)
    s.setAccessibleName(name)
    if special:
        s.setSpecialValueText(special)
    return s


def _dspin(lo: float, hi: float, value: float, name: str, step: float = 0.05) -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setRange(lo, hi)
    s.setDecimals(2)
    s.setSingleStep(step)
    s.setValue(value)
    s.setAccessibleName(name)
    return s


class SettingsDialog(QDialog):
    runtime_changed = Signal()
    sampling_changed = Signal()
    templates_saved = Signal(str)
    theme_changed = Signal(str)
    moderation_changed = Signal()

    def __init__(self, store, templates, parent: QWidget | None = None) -> None:
        from engine.runtime import RuntimeSettings, Sampling

        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.resize(640, 560)
        self.store, self.templates = store, templates
        self.sampling = Sampling.from_dict(store.get_setting("sampling", {}))
        self.runtime = RuntimeSettings.from_dict(store.get_setting("runtime", {}))
        tabs = QTabWidget()
        tabs.addTab(self._general(), "General")
        tabs.addTab(self._templates_tab(), "Hidden instructions")
        tabs.addTab(self._moderation_tab(), "Moderation")
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(tabs)
        lay.addWidget(buttons)

    # ---- general ---------------------------------------------------------------------------
    def _general(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        s, r = self.sampling, self.runtime
        self.temperature = _dspin(0.0, 2.0, s.temperature, "Temperature")
        self.top_p = _dspin(0.0, 1.0, s.top_p, "Top p")
        self.top_k = _spin(0, 500, s.top_k, "Top k", special="off")
        self.max_tokens = _spin(1, 32768, s.max_tokens, "Max tokens per answer", step=64)
        self.n_ctx = _spin(256, 131072, r.n_ctx, "Context length", step=256)
        self.threads = _spin(0, 256, r.n_threads, "Threads", special="automatic")
        self.gpu_layers = _spin(-1, 999, r.n_gpu_layers, "GPU layers", special="all")
        self.gpu_layers.setToolTip("Layers offloaded to the GPU: 0 = CPU only, all = every layer")
        self.theme = QComboBox()
        self.theme.setAccessibleName("Theme")
        for mode in theme.MODES:
            self.theme.addItem(mode.capitalize(), mode)
        self.theme.setCurrentIndex(max(0, self.theme.findData(self.store.get_setting("theme", "system"))))
        form.addRow("<b>Answers</b>", QLabel(""))
        form.addRow("Temperature:", self.temperature)
        form.addRow("Top p:", self.top_p)
        form.addRow("Top k:", self.top_k)
        form.addRow("Max tokens:", self.max_tokens)
        form.addRow("<b>Model runtime</b> (reloads the model)", QLabel(""))
        form.addRow("Context length:", self.n_ctx)
        form.addRow("Threads:", self.threads)
        form.addRow("GPU layers:", self.gpu_layers)
        form.addRow("<b>Appearance</b>", QLabel(""))
        form.addRow("Theme:", self.theme)
        folder = QHBoxLayout()
        path = self.store.path.parent
        self.data_folder = QLabel(str(path))
        self.data_folder.setAccessibleName("Data folder")
        self.data_folder.setTextInteractionFlags(
            self.data_folder.textInteractionFlags().TextSelectableByMouse
        )
        open_button = QPushButton("Open")
        open_button.setAccessibleName("Open data folder")
        open_button.clicked.connect(lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(path))))
        folder.addWidget(self.data_folder, 1)
        folder.addWidget(open_button)
        form.addRow("Data folder:", folder)
        return page

    def save(self) -> None:
        from engine.runtime import RuntimeSettings, Sampling

        sampling = Sampling.from_dict(
            {**self.sampling.to_dict(), "temperature": self.temperature.value(), "top_p": self.top_p.value(),
             "top_k": self.top_k.value(), "max_tokens": self.max_tokens.value()}
        )  # fmt: skip
        runtime = RuntimeSettings.from_dict(
            {**self.runtime.to_dict(), "n_ctx": self.n_ctx.value(), "n_threads": self.threads.value(),
             "n_gpu_layers": self.gpu_layers.value()}
        )  # fmt: skip
        self.store.set_setting("sampling", sampling.to_dict())
        self.store.set_setting("runtime", runtime.to_dict())
        mode = self.theme.currentData()
        self.store.set_setting("theme", mode)
        moderation = self._moderation_settings()
        if moderation != self._moderation_before:
            self.store.set_setting("moderation", moderation)
            self.moderation_changed.emit()
        if sampling != self.sampling:
            self.sampling_changed.emit()
        if runtime != self.runtime:
            self.runtime_changed.emit()
        if mode != theme.current_mode():
            self.theme_changed.emit(mode)
        self.accept()

    # ---- hidden instructions ---------------------------------------------------------------
    def _templates_tab(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        row = QHBoxLayout()
        self.set_picker = QComboBox()
        self.set_picker.setAccessibleName("Template set")
        for ts in self.templates:
            self.set_picker.addItem(f"{ts.title} ({ts.name} v{ts.version})", ts.name)
        self.set_picker.currentIndexChanged.connect(self._load_set)
        row.addWidget(QLabel("Set:"))
        row.addWidget(self.set_picker, 1)
        lay.addLayout(row)
        self.yaml = QPlainTextEdit()
        self.yaml.setAccessibleName("Template YAML")
        self.yaml.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        lay.addWidget(self.yaml, 1)
        self.template_status = QLabel()
        self.template_status.setWordWrap(True)
        self.template_status.setAccessibleName("Template check result")
        lay.addWidget(self.template_status)
        row = QHBoxLayout()
        self.save_name = QLineEdit()
        self.save_name.setAccessibleName("Save as set name")
        self.save_name.setToolTip("Your sets live in the data folder's templates/ and override shipped ones")
        validate = QPushButton("Validate")
        validate.setAccessibleName("Validate template")
        validate.clicked.connect(self.validate)
        save = QPushButton("Save set")
        save.setAccessibleName("Save template set")
        save.clicked.connect(self.save_set)
        row.addWidget(QLabel("Name:"))
        row.addWidget(self.save_name, 1)
        row.addWidget(validate)
        row.addWidget(save)
        lay.addLayout(row)
        self._load_set()
        return page

    def _load_set(self) -> None:
        name = self.set_picker.currentData()
        if name is None:
            return
        ts = self.templates.get(name)
        self.yaml.setPlainText(ts.text)
        self.save_name.setText(name)
        self.template_status.setText("")

    def validate(self) -> bool:
        from engine.templates import TemplateError, TemplateSet

        try:
            ts = TemplateSet.from_text(self.yaml.toPlainText(), self.save_name.text().strip())
        except TemplateError as e:
            self.template_status.setText(f"❌ {e}")
            return False
        self.template_status.setText(f"✔ valid: {ts.title}, version {ts.version}")
        return True

    def save_set(self) -> bool:
        from engine.templates import TemplateError

        name = self.save_name.text().strip()
        try:
            ts = self.templates.save_user_set(self.yaml.toPlainText(), name)
        except TemplateError as e:
            self.template_status.setText(f"❌ {e}")
            return False
        except OSError as e:
            self.template_status.setText(f"❌ cannot write the set: {e}")
            return False
        self.template_status.setText(f"✔ saved {ts.name} v{ts.version} in {self.templates.user_dir}")
        self.templates_saved.emit(name)
        return True

    def _moderation_tab(self) -> QWidget:
        """Each category on or off with its threshold, and what to do when moderation fails."""
        from engine.moderation import CATEGORIES
        from engine.moderation.moderator import Policy

        saved = self.store.get_setting("moderation") or {}
        policy = Policy.load(None).with_user_settings(saved)
        page = QWidget()
        lay = QVBoxLayout(page)
        note = QLabel(
            "Every prompt and answer is checked by the local moderation filter. A category that is off "
            "never flags; a lower threshold flags more. Changes apply to the next message."
        )
        note.setWordWrap(True)
        lay.addWidget(note)
        form = QFormLayout()
        self.moderation_rows: dict[str, tuple[QCheckBox, QDoubleSpinBox]] = {}
        for cat in CATEGORIES:
            on = QCheckBox("on")
            on.setChecked(cat not in policy.disabled)
            on.setAccessibleName(f"Moderate {cat}")
            threshold = _dspin(0.05, 1.0, policy.threshold(cat), f"Threshold for {cat}")
            row = QHBoxLayout()
            row.addWidget(on)
            row.addWidget(threshold, 1)
            form.addRow(f"{cat}:", row)
            self.moderation_rows[cat] = (on, threshold)
        lay.addLayout(form)
        self.fail_closed = QCheckBox("Fail closed: if moderation itself fails, show the template answer")
        self.fail_closed.setAccessibleName("Fail closed")
        self.fail_closed.setChecked(policy.on_error == "flag")
        lay.addWidget(self.fail_closed)
        lay.addStretch(1)
        self._moderation_before = self._moderation_settings()
        return page

    def _moderation_settings(self) -> dict:
        return {
            "disabled": [c for c, (on, _) in self.moderation_rows.items() if not on.isChecked()],
            "thresholds": {c: round(t.value(), 2) for c, (_, t) in self.moderation_rows.items()},
            "fail_closed": self.fail_closed.isChecked(),
        }
