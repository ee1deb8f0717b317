"""The Fine-tuning tab: set up a job (base model, data, method), watch it train, and see what it
learned; then chat with the tuned model.

    ┌ Jobs ─────────┐┌ Set up | Running | Results ─────────────────────────────────────────┐
    │ New job       ││ base model · data (my chats, files, built-in, demo) · method ·      │
    │ earlier jobs  ││ preset · quantization · name · estimate · Start                     │
    └───────────────┘└──────────────────────────────────────────────────────────────────────┘

A job is a folder made by `engine.finetune.job.create_job`; training runs in its own process
(`python -m engine.finetune run DIR`, a QProcess: the window never waits for it, and a crash in
training cannot take the window down). The process reports one JSON object per stdout line
(job, stage, data, metrics, progress, done, error, cancelled); its stderr is the log. Cancel
sends SIGTERM (the trainer checkpoints and exits 130) and kills after KILL_AFTER_MS. Running the
same folder again resumes it: that is the Resume button, also after an app restart.

The data sources are counted off the GUI thread (`tasks.run_in_background`): reading the chats
or validating a big file imports the training code (torch) and reads every line. The estimate
(`engine.finetune.estimate`, numpy only) is recomputed on the GUI thread when the choice changes.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QDate, QElapsedTimer, QEvent, QProcess, QProcessEnvironment, Qt, QTimer, Signal
from PySide6.QtGui import QFontDatabase, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDateEdit,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop import dialogs, tasks
from desktop.banner import MessageBanner
from desktop.charts import LineChart

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent  # holds the `engine` package: the job process's working folder
KILL_AFTER_MS = 20_000  # Cancel: SIGTERM, then SIGKILL if the checkpoint takes longer than this
SHUTDOWN_WAIT_MS = 20_000  # window closing: how long a running job may take to checkpoint
LOG_LINES = 500
ESTIMATE_DELAY_MS = 150
CHATS_DELAY_MS = 300
KEY_ROLE = Qt.ItemDataRole.UserRole
CHOOSE_FILE, CHOOSE_FOLDER = "\0file", "\0folder"
SCRATCH = "scratch:"  # engine.finetune.job.SCRATCH (read here without importing the job module)


def scratch_choices() -> list[tuple[str, str]]:
    """(preset, what it trains) for each pre-training preset a job can start from nothing."""
    from engine.finetune.job import scratch_presets
    from engine.training import pipeline

    import yaml

    out = []
    for name in scratch_presets():
        raw = yaml.safe_load((pipeline.PRESET_DIR / f"{name}.yaml").read_text(encoding="utf-8")) or {}
        about = " ".join(str(raw.get("description", "")).split())
        out.append((name, f"Train a new model from nothing, then SFT on your data. {about}".strip()))
    return out
BAD_NAME_CHARS = '/\\:*?"<>|'  # the name is part of the GGUF file's name
MUTED, WARNING = "color: palette(placeholder-text);", "color: #b05a00;"

METHODS = (
    ("sft", "SFT: learn from example answers",
     "Imitates demonstrations: answers you thumbed up or corrected, or a conversations file."),
    ("rlhf", "RLHF: reward model + PPO",
     "Trains a judge on your rankings, then the model practises against it. The slowest."),
    ("dpo", "DPO: learn from rankings directly",
     "Makes the better of two answers more likely, with no separate judge. Simpler than RLHF."),
)  # fmt: skip
PRESETS = (("quick", "Quick: minutes on a laptop"), ("thorough", "Thorough: more steps, more data, longer"))
QUANTS = (("Q8_0", "Q8_0: closest to the trained weights"), ("Q4_K_M", "Q4_K_M: about half the size"))
STATE_TITLES = {
    "new": "Not started", "running": "Running", "stopping": "Stopping…", "done": "Done", "stopped": "Stopped",
    "failed": "Failed", "elsewhere": "Running elsewhere",
}  # fmt: skip
STATE_COLOURS = {"running": "#1e6bd6", "stopping": "#b26a00", "done": "#2e7d32", "stopped": "#b26a00",
                 "failed": "#c62828", "elsewhere": "#1e6bd6", "new": "#707070"}  # fmt: skip
STAGE_TITLES = {"data": "Read and check the data", "sample": "Sample answers to rank", "sft": "SFT training",
                "reward": "Reward model", "ppo": "PPO", "dpo": "DPO training", "eval": "Evaluate",
                "export": "Export GGUF and register"}  # fmt: skip
NOTE_METRICS = (("loss", "loss"), ("heldout_loss", "held-out loss"), ("reward", "reward"), ("kl", "KL"))
CHARTS = (("loss", "Loss"), ("reward", "Reward"), ("kl", "KL to the base"))
CHARTS_FOR = {"sft": ("loss",), "dpo": ("loss", "reward"), "rlhf": ("loss", "reward", "kl")}


# ---- words ---------------------------------------------------------------------------------------
def about(seconds: float) -> str:
    """'under a minute', 'about 6 min', 'about 1 h 05 min'."""
    s = round(seconds)
    if s < 60:
        return "under a minute"
    m = round(s / 60)
    return f"about {m} min" if m < 90 else f"about {m // 60} h {m % 60:02d} min"


def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _number(v, fmt: str = "{:.3f}") -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return fmt.format(v)
    return "n/a"


def chart_points(event: dict) -> list[tuple[str, str, float, float]]:
    """(chart, series, x, y) for one metrics event (a trainer's metrics.jsonl record)."""
    stage, step = event.get("stage", ""), event.get("step")
    if not isinstance(step, (int, float)):
        return []
    title = {"sft": "SFT", "dpo": "DPO", "ppo": "PPO", "reward": "reward model"}.get(stage, stage)
    keys = (
        ("loss", "loss", f"{title} loss"), ("heldout_loss", "loss", f"{title} held-out loss"),
        ("value_loss", "loss", f"{title} value loss"), ("reward", "reward", "PPO reward"),
        ("reward_margin", "reward", f"{title} margin"), ("reward_accuracy", "reward", f"{title} accuracy"),
        ("train_accuracy", "reward", f"{title} accuracy"), ("heldout_accuracy", "reward", f"{title} held-out accuracy"),
        ("kl", "kl", f"{title} KL"),
    )  # fmt: skip
    return [(chart, series, step, event[k]) for k, chart, series in keys
            if isinstance(event.get(k), (int, float)) and not isinstance(event.get(k), bool)]  # fmt: skip


def choose_folder(parent: QWidget | None, title: str) -> str | None:
    """A folder dialog (beside `dialogs.open_path`; tests replace it like the dialogs)."""
    path = QFileDialog.getExistingDirectory(parent, title)
    return path or None


# ---- what the page knows about one job -----------------------------------------------------------
@dataclass
class JobView:
    """One job as the Running and Results views show it: read from its folder, then updated by
    the events of the process running it."""

    dir: Path
    spec: object  # engine.finetune.job.JobSpec
    state: str = "new"
    stages: list[str] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)  # stage -> waiting | running | done
    fraction: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    note: str = ""
    error: str = ""
    data: dict = field(default_factory=dict)  # the data stage's counts
    result: dict | None = None
    charts: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: str | Path, state: str | None = None) -> JobView:
        """A job from its folder: stages done, the metrics so far, result or error."""
        from engine.finetune.job import ERROR_FILE, RESULT_FILE, JobSpec, job_state, stage_names
        from engine.training.runner import read_done

        folder = Path(folder)
        spec = JobSpec.load(folder)
        v = cls(folder, spec, state or job_state(folder), stage_names(spec))
        for name in v.stages:
            done = read_done(folder / name) is not None
            v.status[name] = "done" if done else "waiting"
            v.fraction[name] = 1.0 if done else 0.0
            v._read_metrics(folder / name / "metrics.jsonl", name)
        v.data = read_done(folder / "data") or {}
        v.result = read_done(folder, RESULT_FILE)
        err = read_done(folder, ERROR_FILE)
        v.error = (err or {}).get("error", "")
        v.weights = stage_weights(spec, v.stages, v.data)
        return v

    def _read_metrics(self, path: Path, stage: str) -> None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                self.add_metrics({"event": "metrics", "stage": stage, **rec})

    def add_metrics(self, event: dict) -> list[tuple[str, str, float, float]]:
        pts = chart_points(event)
        for chart, series, x, y in pts:
            if math.isfinite(float(x)) and math.isfinite(float(y)):
                self.charts.setdefault(chart, {}).setdefault(series, []).append((float(x), float(y)))
        return pts

    def overall(self) -> float:
        """The fraction of the whole job done: stages weighted by their estimated time."""
        total = sum(self.weights.get(s, 1.0) for s in self.stages) or 1.0
        return sum(self.weights.get(s, 1.0) * self.fraction.get(s, 0.0) for s in self.stages) / total

    def name(self) -> str:
        return getattr(self.spec, "name", "") or self.dir.name


def stage_weights(spec, stages: list[str], data: dict) -> dict[str, float]:
    """Each stage's share of the job, from the estimate (equal shares if it cannot be made);
    every stage gets at least 3 % so a quick one still moves the bar."""
    try:
        from engine.finetune.estimate import estimate

        n_conv = int(data.get("conversations", 0) + data.get("heldout_conversations", 0)) if data else 100
        n_comp = int(data.get("comparisons", 0) + data.get("heldout_comparisons", 0)) if data else 100
        est = estimate(spec, n_conv, n_comp)["stages"]
    except Exception as e:  # noqa: BLE001 - no estimate (missing base file, ...): equal shares
        log.info("no stage estimate: %s", e)
        return {s: 1.0 for s in stages}
    total = sum(est.get(s, 0.0) for s in stages) or 1.0
    return {s: max(est.get(s, 0.0), 0.03 * total) for s in stages}


@dataclass
class Source:
    """One entry of the data list."""

    key: str  # "chats", "builtin", "demo" or a file path
    title: str
    conversations: int = 0
    comparisons: int = 0
    problems: list[str] = field(default_factory=list)
    skipped: int = 0
    error: str = ""
    counting: bool = False
    generation: int = 0  # stale counts (the filters changed meanwhile) are dropped


def count_source(spec: str, db: str | None) -> dict:
    """Read one data source the way the job will (off the GUI thread; never raises)."""
    store = None
    try:
        from engine.finetune.sources import DataError, read_source

        try:
            if spec.split(":", 1)[0] == "chats":
                from engine.store import Store

                store = Store.open(db, mark_interrupted=False)
            ds = read_source(spec, store=store)
        except DataError as e:
            return {"error": e.summary or (e.problems[0] if e.problems else str(e)), "problems": e.problems}
        return {"conversations": len(ds.conversations), "comparisons": len(ds.comparisons),
                "problems": ds.problems, "skipped": ds.skipped}  # fmt: skip
    except Exception as e:  # noqa: BLE001 - shown beside the source, never raised in a pool thread
        log.warning("reading %s failed: %s", spec, e)
        return {"error": str(e) or type(e).__name__, "problems": []}
    finally:
        if store is not None:
            store.close()


# ---- the page ------------------------------------------------------------------------------------
def training_available() -> bool:
    """PyTorch and the training package are installed (the bundle leaves both out)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "engine.training"))


class FinetunePage(MessageBanner, QWidget):
    """The Fine-tuning tab. `store` is the window's Store (its file is the chats source), and
    `templates` the template library (the chats filter's template sets)."""

    models_changed = Signal()  # a job registered a model: the window refreshes its model picker
    chat_with = Signal(str)  # the tuned model's registry name: the window switches the chat to it
    job_event = Signal(dict)  # every event of the running job's process (tests, status displays)
    job_ended = Signal(str)  # "done" | "stopped" | "failed"
    source_checked = Signal(str)  # a data source's counts arrived (its key)
    message_shown = Signal(str)

    def __init__(self, store, templates=None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store, self.templates = store, templates
        self.threads: int | None = None  # torch threads for new jobs (None: all cores)
        self.overrides: dict = {}  # "stage.field" -> value over the preset, for new jobs
        self.sources: dict[str, Source] = {}
        self.process: QProcess | None = None
        self.running: JobView | None = None  # the job this page's process runs
        self.shown: JobView | None = None  # the job the Running / Results views show
        self.cancelling = False
        self.closing = False
        self._stdout = b""
        self._errors: list[str] = []  # error events of the running process
        self._elapsed = QElapsedTimer()
        self._start_fraction = 0.0
        self._estimate_s: float | None = None
        self._base_index = 0
        self.setAccessibleName("Fine-tuning")

        lay = QVBoxLayout(self)
        self.message = QLabel()
        self.message.setAccessibleName("Fine-tuning message")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()
        lay.addWidget(self.message)
        split = QSplitter()
        split.addWidget(self._jobs_panel())
        self.views = QStackedWidget()
        self.setup_view, self.run_view, self.results_view = self._setup(), self._run(), self._results()
        for v in (self.setup_view, self.run_view, self.results_view):
            self.views.addWidget(v)
        split.addWidget(self.views)
        split.setStretchFactor(1, 1)
        split.setSizes([240, 860])
        lay.addWidget(split, 1)

        self._estimate_timer = QTimer(self, singleShot=True, interval=ESTIMATE_DELAY_MS)
        self._estimate_timer.timeout.connect(self.update_estimate)
        self._chats_timer = QTimer(self, singleShot=True, interval=CHATS_DELAY_MS)
        self._chats_timer.timeout.connect(lambda: self.count("chats"))
        self._ticker = QTimer(self, interval=1000)
        self._ticker.timeout.connect(self._tick)
        self._kill_timer = QTimer(self, singleShot=True, interval=KILL_AFTER_MS)
        self._kill_timer.timeout.connect(self._kill)
        self._add_source("chats", "My chats", checked=True)
        self._add_source("builtin", "Built-in tasks")
        self._add_source("demo", "Preference demo")
        self.loaded = False
        if not training_available():  # the double-click bundle ships the chat app without PyTorch
            self.setup_view.setEnabled(False)
            self.show_error(
                "Fine-tuning needs the training stack (PyTorch), which this installation does not include. "
                "Run chatfactory from source (make run), or install it with: pip install 'chatfactory[train]'."
            )

    # ---- construction: the jobs list ------------------------------------------------------------
    def _jobs_panel(self) -> QWidget:
        box = QGroupBox("Jobs")
        lay = QVBoxLayout(box)
        self.new_button = QPushButton("New fine-tuning job")
        self.new_button.setAccessibleName("New fine-tuning job")
        self.new_button.clicked.connect(self.show_setup)
        lay.addWidget(self.new_button)
        self.jobs_list = QListWidget()
        self.jobs_list.setAccessibleName("Fine-tuning jobs")
        self.jobs_list.setAlternatingRowColors(True)
        self.jobs_list.setWordWrap(True)
        self.jobs_list.itemSelectionChanged.connect(self._job_selected)
        lay.addWidget(self.jobs_list, 1)
        self.no_jobs = QLabel("No jobs yet. Set one up on the right, then Start.")
        self.no_jobs.setAccessibleName("No jobs yet")
        self.no_jobs.setWordWrap(True)
        self.no_jobs.setStyleSheet(MUTED)
        lay.insertWidget(1, self.no_jobs)
        box.setMinimumWidth(200)
        return box

    # ---- construction: Set up -------------------------------------------------------------------
    def _setup(self) -> QWidget:
        body = QWidget()
        cols = QHBoxLayout(body)
        cols.setSpacing(16)
        left, right = QVBoxLayout(), QVBoxLayout()
        cols.addLayout(left, 5)
        cols.addLayout(right, 4)

        base_box = QGroupBox("Base model")
        bl = QVBoxLayout(base_box)
        self.base_combo = QComboBox()
        self.base_combo.setAccessibleName("Base model")
        self.base_combo.setToolTip("The model to start from: one of your models, a GGUF file or a model folder")
        self.base_combo.activated.connect(self._base_activated)
        bl.addWidget(self.base_combo)
        left.addWidget(base_box)

        data_box = QGroupBox("Data")
        dl = QVBoxLayout(data_box)
        hint = QLabel("What the model learns from. Tick one or more sources.")
        hint.setStyleSheet(MUTED)
        dl.addWidget(hint)
        self.data_list = QListWidget()
        self.data_list.setAccessibleName("Data sources")
        self.data_list.setWordWrap(True)
        self.data_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.data_list.setMinimumHeight(90)
        self.data_list.setMaximumHeight(150)
        self.data_list.itemChanged.connect(self._source_toggled)
        self.data_list.currentItemChanged.connect(lambda *_: self._show_problems())
        dl.addWidget(self.data_list)
        filt = QGridLayout()
        filt.setHorizontalSpacing(8)
        self.since_check = QCheckBox("Chats from")
        self.since_check.setAccessibleName("Only chats from a date")
        self.since_date = QDateEdit(QDate.currentDate().addMonths(-1))
        self.since_date.setAccessibleName("First day of chats")
        self.until_check = QCheckBox("to")
        self.until_check.setAccessibleName("Only chats up to a date")
        self.until_date = QDateEdit(QDate.currentDate())
        self.until_date.setAccessibleName("Last day of chats")
        for d in (self.since_date, self.until_date):
            d.setCalendarPopup(True)
            d.setDisplayFormat("yyyy-MM-dd")
        self.template_filter = QComboBox()
        self.template_filter.setAccessibleName("Only chats with hidden instructions set")
        self.template_filter.addItem("Any hidden instructions", None)
        for t in self.templates or []:
            self.template_filter.addItem(getattr(t, "title", "") or t.name, t.name)
        filt.addWidget(self.since_check, 0, 0)
        filt.addWidget(self.since_date, 0, 1)
        filt.addWidget(self.until_check, 0, 2)
        filt.addWidget(self.until_date, 0, 3)
        filt.addWidget(QLabel("Instructions:"), 1, 0)
        filt.addWidget(self.template_filter, 1, 1, 1, 3)
        filt.setColumnStretch(4, 1)
        dl.addLayout(filt)
        for w in (self.since_check, self.until_check):
            w.toggled.connect(self._filters_changed)
        for d in (self.since_date, self.until_date):
            d.dateChanged.connect(self._filters_changed)
        self.template_filter.currentIndexChanged.connect(self._filters_changed)
        row = QHBoxLayout()
        self.add_file_button = QPushButton("Add file…")
        self.add_file_button.setAccessibleName("Add a training data file")
        self.add_file_button.setToolTip("A JSONL file: OpenAI messages, TRL preferences, HH-RLHF or OpenAssistant")
        self.add_file_button.clicked.connect(self.ask_add_file)
        self.remove_file_button = QPushButton("Remove file")
        self.remove_file_button.setAccessibleName("Remove the selected data file")
        self.remove_file_button.clicked.connect(self.remove_selected_file)
        self.remove_file_button.setEnabled(False)
        self.data_list.currentItemChanged.connect(
            lambda cur, _prev: self.remove_file_button.setEnabled(cur is not None and self._is_file(cur.data(KEY_ROLE)))
        )
        row.addWidget(self.add_file_button)
        row.addWidget(self.remove_file_button)
        row.addStretch(1)
        dl.addLayout(row)
        self.problems_title = QLabel()
        self.problems_title.setAccessibleName("Data problems title")
        self.problems = QPlainTextEdit()
        self.problems.setAccessibleName("Data problems")
        self.problems.setReadOnly(True)
        self.problems.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.problems.setMaximumHeight(160)
        self.problems_title.hide()
        self.problems.hide()
        dl.addWidget(self.problems_title)
        dl.addWidget(self.problems)
        left.addWidget(data_box)
        left.addStretch(1)

        method_box = QGroupBox("Method")
        ml = QVBoxLayout(method_box)
        self.method_group = QButtonGroup(self)
        self.method_buttons: dict[str, QRadioButton] = {}
        self.method_notes: dict[str, QLabel] = {}
        for i, (key, title, text) in enumerate(METHODS):
            b = QRadioButton(title)
            b.setAccessibleName(f"Method {key.upper()}")
            note = QLabel(text)
            note.setWordWrap(True)
            note.setAccessibleName(f"About {key.upper()}")
            note.setContentsMargins(22, 0, 0, 4)
            note.setStyleSheet(MUTED)
            self.method_group.addButton(b, i)
            self.method_buttons[key], self.method_notes[key] = b, note
            ml.addWidget(b)
            ml.addWidget(note)
        self.method_buttons["sft"].setChecked(True)
        self.method_group.buttonToggled.connect(lambda *_: self._choice_changed())
        right.addWidget(method_box)

        opt_box = QGroupBox("Options")
        form = QFormLayout(opt_box)
        self.preset_combo = QComboBox()
        self.preset_combo.setAccessibleName("Preset")
        for key, title in PRESETS:
            self.preset_combo.addItem(title, key)
        self.quant_combo = QComboBox()
        self.quant_combo.setAccessibleName("Quantization")
        for key, title in QUANTS:
            self.quant_combo.addItem(title, key)
        self.name_edit = QLineEdit()
        self.name_edit.setAccessibleName("Tuned model name")
        self.name_edit.setToolTip("The name the tuned model gets in the model list")
        self.max_steps = QSpinBox()
        self.max_steps.setAccessibleName("Maximum training steps")
        self.max_steps.setRange(0, 1_000_000)
        self.max_steps.setSpecialValueText("as the preset says")
        self.max_steps.setToolTip("Cap each training stage at this many optimizer steps (a quick trial run)")
        form.addRow("Preset:", self.preset_combo)
        form.addRow("Quantization:", self.quant_combo)
        form.addRow("Model name:", self.name_edit)
        form.addRow("Max steps:", self.max_steps)
        for w in (self.preset_combo, self.quant_combo):
            w.currentIndexChanged.connect(self._choice_changed)
        self.max_steps.valueChanged.connect(self._choice_changed)
        self.name_edit.textChanged.connect(self._update_start)
        right.addWidget(opt_box)

        go = QVBoxLayout()
        self.estimate_label = QLabel()
        self.estimate_label.setAccessibleName("Time estimate")
        self.estimate_label.setWordWrap(True)
        f = self.estimate_label.font()
        f.setPointSizeF(f.pointSizeF() * 1.15)
        self.estimate_label.setFont(f)
        self.start_note = QLabel()
        self.start_note.setAccessibleName("Why Start is not available")
        self.start_note.setWordWrap(True)
        self.start_note.setStyleSheet(WARNING)
        self.start_button = QPushButton("Start fine-tuning")
        self.start_button.setAccessibleName("Start fine-tuning")
        self.start_button.setDefault(True)
        self.start_button.setMinimumHeight(32)
        self.start_button.clicked.connect(self.start)
        go.addWidget(self.estimate_label)
        go.addWidget(self.start_note)
        go.addWidget(self.start_button)
        right.addLayout(go)
        right.addStretch(1)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(body)
        return scroll

    # ---- construction: Running ------------------------------------------------------------------
    def _run(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        head = QHBoxLayout()
        self.run_title = QLabel()
        self.run_title.setAccessibleName("Job name")
        self.run_title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.run_state = QLabel()
        self.run_state.setAccessibleName("Job state")
        head.addWidget(self.run_title)
        head.addWidget(self.run_state)
        head.addStretch(1)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setAccessibleName("Cancel the job")
        self.cancel_button.setToolTip("Stop after saving a checkpoint; Resume continues from it")
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setAccessibleName("Resume the job")
        self.resume_button.clicked.connect(self.resume_shown)
        self.results_button = QPushButton("Results")
        self.results_button.setAccessibleName("Show the results")
        self.results_button.clicked.connect(lambda: self.show_job(self.shown.dir) if self.shown else None)
        for b in (self.cancel_button, self.resume_button, self.results_button):
            head.addWidget(b)
        lay.addLayout(head)
        self.run_detail = QLabel()
        self.run_detail.setAccessibleName("Job details")
        self.run_detail.setWordWrap(True)
        self.run_detail.setStyleSheet(MUTED)
        lay.addWidget(self.run_detail)

        prog = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setAccessibleName("Job progress")
        self.progress.setRange(0, 1000)
        self.progress.setFormat("%p%")
        self.time_label = QLabel()
        self.time_label.setAccessibleName("Elapsed and time left")
        prog.addWidget(self.progress, 1)
        prog.addWidget(self.time_label)
        lay.addLayout(prog)
        self.note_label = QLabel()
        self.note_label.setAccessibleName("Current step")
        self.note_label.setWordWrap(True)
        lay.addWidget(self.note_label)

        body = QHBoxLayout()
        self.stage_list = QListWidget()
        self.stage_list.setAccessibleName("Stages")
        self.stage_list.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.stage_list.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.stage_list.setMaximumWidth(260)
        self.stage_list.setMinimumWidth(200)
        body.addWidget(self.stage_list)
        self.chart_grid = QGridLayout()
        self.charts: dict[str, LineChart] = {key: LineChart(title, "step") for key, title in CHARTS}
        body.addLayout(self.chart_grid, 1)
        lay.addLayout(body, 1)
        self.data_label = QLabel()
        self.data_label.setAccessibleName("Data used")
        self.data_label.setWordWrap(True)
        lay.addWidget(self.data_label)

        self.log_toggle = QToolButton()
        self.log_toggle.setText("Log")
        self.log_toggle.setAccessibleName("Show or hide the log")
        self.log_toggle.setCheckable(True)
        self.log_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.log_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.log_toggle.setAutoRaise(True)
        self.log_toggle.toggled.connect(self._toggle_log)
        lay.addWidget(self.log_toggle)
        self.log_view = QPlainTextEdit()
        self.log_view.setAccessibleName("Job log")
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(LOG_LINES)
        self.log_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.log_view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.log_view.setMaximumHeight(160)
        self.log_view.hide()
        lay.addWidget(self.log_view)
        return w

    # ---- construction: Results ------------------------------------------------------------------
    def _results(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        head = QHBoxLayout()
        self.result_title = QLabel()
        self.result_title.setAccessibleName("Tuned model")
        self.result_title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        head.addWidget(self.result_title)
        head.addStretch(1)
        self.training_button = QPushButton("Training details")
        self.training_button.setAccessibleName("Show the training details")
        self.training_button.clicked.connect(lambda: self._show_run(self.shown) if self.shown else None)
        self.chat_button = QPushButton("Chat with it")
        self.chat_button.setAccessibleName("Chat with the tuned model")
        self.chat_button.setDefault(True)
        self.chat_button.clicked.connect(self._chat_clicked)
        head.addWidget(self.training_button)
        head.addWidget(self.chat_button)
        lay.addLayout(head)
        nums = QGroupBox("How it did")
        nl = QVBoxLayout(nums)
        self.result_numbers = QLabel()
        self.result_numbers.setAccessibleName("Result numbers")
        self.result_numbers.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.result_numbers.setWordWrap(True)
        nl.addWidget(self.result_numbers)
        lay.addWidget(nums)
        sbs = QGroupBox("Answers to prompts it did not train on")
        sl = QVBoxLayout(sbs)
        self.side_by_side = QTableWidget(0, 3)
        self.side_by_side.setAccessibleName("Base and tuned answers side by side")
        self.side_by_side.setHorizontalHeaderLabels(["Prompt", "Base model", "Tuned model"])
        self.side_by_side.setWordWrap(True)
        self.side_by_side.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.side_by_side.verticalHeader().hide()
        self.side_by_side.setAlternatingRowColors(True)
        hh = self.side_by_side.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        hh.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        hh.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        sl.addWidget(self.side_by_side)
        lay.addWidget(sbs, 1)
        return w

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            # a style sheet resolves palette(...) when set: set the muted ones again in the new theme
            for label in self.findChildren(QLabel):
                sheet = label.styleSheet()
                if "palette(" in sheet:
                    label.setStyleSheet("")
                    label.setStyleSheet(sheet)

    # ---- filling --------------------------------------------------------------------------------
    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refresh()

    def refresh(self) -> None:
        """The base models, the jobs, and the chats' counts (read again: new rankings may exist)."""
        self.loaded = True
        self.refresh_bases()
        self.refresh_jobs()
        self.count("chats")
        self._choice_changed()

    def refresh_bases(self) -> None:
        from engine.models.registry import DEFAULT_MODEL, list_models

        current = self.base()
        try:
            names = [m.name for m in list_models() if m.available]
        except (OSError, ValueError) as e:
            names = [DEFAULT_MODEL]
            self.show_error(f"The list of models could not be read: {e}")
        extra = [self.base_combo.itemData(i) for i in range(self.base_combo.count())]
        paths = [p for p in extra if p and p not in (CHOOSE_FILE, CHOOSE_FOLDER) and p not in names
                 and ("/" in p or "\\" in p)]  # fmt: skip
        self.base_combo.blockSignals(True)
        self.base_combo.clear()
        for n in names:
            self.base_combo.addItem(n, n)
        for p in paths:
            self.base_combo.addItem(Path(p).name, p)
            self.base_combo.setItemData(self.base_combo.count() - 1, p, Qt.ItemDataRole.ToolTipRole)
        self.base_combo.insertSeparator(self.base_combo.count())
        self.base_combo.addItem("Choose a GGUF file…", CHOOSE_FILE)
        self.base_combo.addItem("Choose a model folder…", CHOOSE_FOLDER)
        self.base_combo.insertSeparator(self.base_combo.count())
        for preset, about in scratch_choices():
            self.base_combo.addItem(f"From scratch (advanced): {preset}", SCRATCH + preset)
            self.base_combo.setItemData(self.base_combo.count() - 1, about, Qt.ItemDataRole.ToolTipRole)
        want = current or self.store.get_setting("model") or DEFAULT_MODEL
        i = self.base_combo.findData(want)
        self.base_combo.setCurrentIndex(max(i, 0))
        self._base_index = self.base_combo.currentIndex()
        self.base_combo.blockSignals(False)

    def base(self) -> str | None:
        data = self.base_combo.currentData()
        return None if data in (None, CHOOSE_FILE, CHOOSE_FOLDER) else data

    def set_base(self, base: str | Path) -> None:
        """Start from `base`: a registry name, or a GGUF file or model folder (added to the list)."""
        base = str(base)
        i = self.base_combo.findData(base)
        if i < 0:
            choose = self.base_combo.findData(CHOOSE_FILE)
            at = choose - 1 if choose > 0 else self.base_combo.count()  # before the separator
            self.base_combo.insertItem(at, Path(base).name, base)
            self.base_combo.setItemData(at, base, Qt.ItemDataRole.ToolTipRole)
            i = at
        self.base_combo.setCurrentIndex(i)
        self._base_index = i
        self._choice_changed()

    def _base_activated(self, index: int) -> None:
        data = self.base_combo.itemData(index)
        if data not in (CHOOSE_FILE, CHOOSE_FOLDER):
            self._base_index = index
            self._choice_changed()
            return
        self.base_combo.setCurrentIndex(self._base_index)
        if data == CHOOSE_FILE:
            path = dialogs.open_path(self, "Base model", "GGUF models (*.gguf);;All files (*)")
        else:
            path = choose_folder(self, "Base model folder (Hugging Face or chatfactory)")
        if path:
            self.set_base(path)

    # ---- data sources ---------------------------------------------------------------------------
    @staticmethod
    def _is_file(key: str | None) -> bool:
        return bool(key) and key not in ("chats", "builtin", "demo")

    def _add_source(self, key: str, title: str, checked: bool = False) -> Source:
        src = self.sources.get(key) or Source(key, title)
        self.sources[key] = src
        item = self._item(key)
        if item is None:
            item = QListWidgetItem()
            item.setData(KEY_ROLE, key)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            self.data_list.blockSignals(True)
            self.data_list.addItem(item)
            item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
            self.data_list.blockSignals(False)
        self._show_source(key)
        return src

    def _item(self, key: str) -> QListWidgetItem | None:
        for i in range(self.data_list.count()):
            if self.data_list.item(i).data(KEY_ROLE) == key:
                return self.data_list.item(i)
        return None

    def _checked(self, key: str) -> bool:
        item = self._item(key)
        return item is not None and item.checkState() == Qt.CheckState.Checked

    def checked_sources(self) -> list[Source]:
        return [self.sources[k] for k in self.sources if self._checked(k)]

    def check_source(self, key: str, checked: bool = True) -> None:
        item = self._item(key)
        if item is not None:
            item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)

    def _show_source(self, key: str) -> None:
        src, item = self.sources[key], self._item(key)
        if item is None:
            return
        if key == "demo":
            text = f"{src.title}: rankings made during the job by a script (DPO and RLHF)"
        elif src.counting:
            text = f"{src.title}: reading…"
        elif src.error:
            text = f"{src.title}: not usable ({src.error.splitlines()[0]})"
        elif src.generation == 0:
            text = src.title
        else:
            what = "conversations" if self._is_file(key) else "demonstrations"
            text = f"{src.title}: {src.conversations} {what}, {src.comparisons} rankings"
            if src.skipped:
                text += f"; {src.skipped} skipped"
        tips = {"chats": "Answers you thumbed up or corrected are demonstrations; answers you compared, "
                         "or thumbed up and down for one question, are rankings.",
                "builtin": "Conversations of the built-in tasks: Shakespeare quizzes, arithmetic, who the assistant is",
                "demo": "The base model answers built-in prompts several times; a script ranks the answers"}
        self.data_list.blockSignals(True)
        item.setText(text)
        item.setToolTip(key if self._is_file(key) else tips.get(key, ""))
        self.data_list.blockSignals(False)

    def chats_spec(self) -> str:
        """`chats` with the filters shown: since, until (the day after the last day: exclusive), template."""
        opts = []
        if self.since_check.isChecked():
            opts.append("since=" + self.since_date.date().toString("yyyy-MM-dd"))
        if self.until_check.isChecked():
            opts.append("until=" + self.until_date.date().addDays(1).toString("yyyy-MM-dd"))
        template = self.template_filter.currentData()
        if template:
            opts.append(f"template={template}")
        return "chats:" + ",".join(opts) if opts else "chats"

    def _spec_of(self, key: str) -> str:
        return self.chats_spec() if key == "chats" else key

    def _filters_changed(self, *_: object) -> None:
        self.since_date.setEnabled(self.since_check.isChecked())
        self.until_date.setEnabled(self.until_check.isChecked())
        if self.since_check.isChecked() and self.until_check.isChecked() \
                and self.since_date.date() > self.until_date.date():  # fmt: skip
            src = self.sources["chats"]
            src.error, src.generation = "the first day is after the last day", src.generation + 1
            self._show_source("chats")
            self._choice_changed()
            return
        self._chats_timer.start()

    def count(self, key: str) -> None:
        """Read a source again in the background; its line shows the counts when they arrive."""
        src = self.sources.get(key)
        if src is None or key == "demo" or not training_available():
            return
        src.generation += 1
        src.counting, src.error = True, ""
        gen, spec, db = src.generation, self._spec_of(key), str(self.store.path)
        self._show_source(key)
        self._update_start()
        tasks.run_in_background(lambda: (key, gen, count_source(spec, db)), self._counted)

    def _counted(self, result: tuple) -> None:
        key, gen, got = result
        src = self.sources.get(key)
        if src is None or gen != src.generation or self.closing:
            return  # removed, or counted again since
        src.counting = False
        src.error = got.get("error", "")
        src.conversations, src.comparisons = got.get("conversations", 0), got.get("comparisons", 0)
        src.problems, src.skipped = list(got.get("problems", [])), got.get("skipped", 0)
        self._show_source(key)
        if src.error and self._checked(key):
            self.check_source(key, False)
        cur = self.data_list.currentItem()
        if (cur is not None and cur.data(KEY_ROLE) == key) or (src.problems and self._is_file(key)):
            self.data_list.setCurrentItem(self._item(key))
            self._show_problems()
        self._choice_changed()
        self.source_checked.emit(key)

    def _source_toggled(self, item: QListWidgetItem) -> None:
        key = item.data(KEY_ROLE)
        src = self.sources.get(key)
        if src is not None and item.checkState() == Qt.CheckState.Checked and src.generation == 0:
            self.count(key)
        self._choice_changed()

    def _show_problems(self) -> None:
        item = self.data_list.currentItem()
        src = self.sources.get(item.data(KEY_ROLE)) if item is not None else None
        lines = (src.problems or ([src.error] if src.error else [])) if src is not None else []
        if not lines:
            self.problems_title.hide()
            self.problems.hide()
            return
        n = max(src.skipped, len(src.problems))
        self.problems_title.setText(
            f"{src.title}: {n} line{'s' if n != 1 else ''} skipped" if src.problems else f"{src.title}: not usable"
        )
        self.problems.setPlainText("\n".join(lines))
        self.problems_title.show()
        self.problems.show()

    def ask_add_file(self) -> None:
        path = dialogs.open_path(
            self, "Add training data",
            "Training data (*.jsonl *.jsonl.gz *.json *.json.gz);;All files (*)",
        )  # fmt: skip
        if path:
            self.add_file(path)

    def add_file(self, path: str | Path) -> Source:
        """Add a data file (checked) and validate it in the background (`source_checked` follows)."""
        key = str(Path(path).expanduser().resolve())
        src = self._add_source(key, Path(key).name, checked=True)
        self.data_list.setCurrentItem(self._item(key))
        self.count(key)
        return src

    def remove_selected_file(self) -> None:
        item = self.data_list.currentItem()
        if item is not None and self._is_file(item.data(KEY_ROLE)):
            self.sources.pop(item.data(KEY_ROLE), None)
            self.data_list.takeItem(self.data_list.row(item))
            self._show_problems()
            self._choice_changed()

    # ---- method, estimate, start ----------------------------------------------------------------
    def method(self) -> str:
        return next((k for k, b in self.method_buttons.items() if b.isChecked()), "sft")

    def set_method(self, method: str) -> None:
        self.method_buttons[method].setChecked(True)

    def _counts(self) -> tuple[int, int, bool, bool]:
        """(conversations, rankings, demo checked, still reading) of the checked sources."""
        conv = comp = 0
        demo = pending = False
        for src in self.checked_sources():
            if src.key == "demo":
                demo = True
                continue
            pending = pending or src.counting
            conv, comp = conv + src.conversations, comp + src.comparisons
        return conv, comp, demo, pending

    def method_problems(self) -> dict[str, str]:
        """Why each method cannot run on the data chosen ('' when it can)."""
        conv, comp, demo, pending = self._counts()
        out = {"sft": "", "dpo": "", "rlhf": ""}
        if pending:
            return out
        if demo:
            out["sft"] = "SFT learns from example answers; the preference demo only makes rankings. Untick it."
        elif not conv and not comp:
            out["sft"] = ("SFT needs demonstrations: thumb up or correct answers in a chat, or add a "
                          "conversations file.")  # fmt: skip
        if not comp and not demo:
            for m in ("dpo", "rlhf"):
                out[m] = (f"{m.upper()} needs rankings: compare two answers in a chat, add a preference file, "
                          "or tick the preference demo.")  # fmt: skip
        if (self.base() or "").startswith(SCRATCH):
            for m in ("dpo", "rlhf"):
                out[m] = ("A model from scratch learns to chat by SFT first; `chatfactory pipeline` runs the whole "
                          "RLHF recipe from scratch.")  # fmt: skip
        return out

    def _choice_changed(self, *_: object) -> None:
        problems = self.method_problems()
        for key, title, text in METHODS:
            why = problems[key]
            b, note = self.method_buttons[key], self.method_notes[key]
            b.setEnabled(not why)
            note.setText(why or text)
            note.setStyleSheet(WARNING if why else MUTED)
            b.setToolTip(why)
        if problems[self.method()]:
            usable = next((k for k in ("sft", "dpo", "rlhf") if not problems[k]), None)
            if usable:
                self.method_group.blockSignals(True)
                self.method_buttons[usable].setChecked(True)
                self.method_group.blockSignals(False)
        self._estimate_timer.start()
        self._update_start()

    def spec(self):
        """The JobSpec of what the Set up view shows."""
        from engine.finetune.job import JobSpec

        data = [self._spec_of(s.key) for s in self.checked_sources()]
        return JobSpec(
            base=self.base() or "", data=data, method=self.method(), preset=self.preset_combo.currentData(),
            max_steps=self.max_steps.value() or None, name=self.name_edit.text().strip(),
            quant=self.quant_combo.currentData(), db=str(self.store.path), threads=self.threads,
            overrides=dict(self.overrides),
        )  # fmt: skip

    def start_problem(self) -> str:
        """Why Start cannot run now ('' when it can)."""
        if self.process is not None:
            return f"{self.running.name()} is running: one job at a time (cancel it, or wait)."
        if not self.base():
            return "Choose a base model."
        checked = self.checked_sources()
        if not checked:
            return "Tick at least one data source."
        if any(s.counting for s in checked):
            return "Reading the data…"
        why = self.method_problems()[self.method()]
        if why:
            return why
        name = self.name_edit.text().strip()
        if any(c in name for c in BAD_NAME_CHARS):
            return "A model name cannot hold any of " + " ".join(BAD_NAME_CHARS)
        if name:
            from engine.models.registry import DEFAULT_MODEL, list_models

            try:
                taken = {m.name for m in list_models()} | {DEFAULT_MODEL}
            except (OSError, ValueError):
                taken = {DEFAULT_MODEL}
            if name in taken:
                return f"A model named {name} exists: choose another name."
        return ""

    def _update_start(self, *_: object) -> None:
        why = self.start_problem()
        self.start_button.setEnabled(not why)
        self.start_note.setText(why)
        self.start_note.setVisible(bool(why))
        try:
            from engine.finetune.job import default_name

            self.name_edit.setPlaceholderText(default_name(self.spec()) if self.base() else "")
        except (ValueError, KeyError):
            pass

    def update_estimate(self) -> None:
        """'About 6 min on this machine', with each stage's share in the tooltip."""
        from engine.finetune.estimate import estimate
        from engine.finetune.job import stage_names

        conv, comp, _demo, _pending = self._counts()
        spec = self.spec()
        if not spec.base or not spec.data or self.method_problems()[spec.method]:
            self._estimate_s = None
            self.estimate_label.setText("")
            self.estimate_label.setToolTip("")
            return
        try:
            est = estimate(spec, conv, comp)
        except Exception as e:  # noqa: BLE001 - an estimate that cannot be made is not a reason to stop
            log.info("no estimate: %s", e)
            self._estimate_s = None
            self.estimate_label.setText("Time: no estimate for this base model")
            self.estimate_label.setToolTip(str(e))
            return
        self._estimate_s = est["seconds"]
        self.estimate_label.setText(f"{about(est['seconds']).capitalize()} on this machine")
        self.estimate_label.setToolTip("\n".join(
            f"{STAGE_TITLES.get(s, s)}: {about(est['stages'].get(s, 0))}" for s in stage_names(spec)
        ))  # fmt: skip

    def start(self) -> Path | None:
        """Make the job's folder and run it; returns the folder (None, with the reason shown)."""
        from engine.finetune.job import create_job

        why = self.start_problem()
        if why:
            self.show_error(why)
            return None
        try:
            folder = create_job(self.spec())
        except (ValueError, OSError) as e:
            self.show_error(f"The job could not be made: {e}")
            return None
        self.clear_message()
        self.run_folder(folder)
        return folder

    # ---- the process ----------------------------------------------------------------------------
    def job_command(self, folder: Path) -> tuple[str, list[str]]:
        return sys.executable, ["-m", "engine.finetune", "run", str(folder)]

    def run_folder(self, folder: str | Path) -> bool:
        """Run (or resume) the job in `folder` in its own process."""
        if self.process is not None:
            self.show_error(f"{self.running.name()} is running: one job at a time.")
            return False
        try:
            view = JobView.read(folder, state="running")
        except (ValueError, OSError) as e:
            self.show_error(f"{folder} cannot be run: {e}")
            return False
        view.error = ""
        self.running, self.cancelling = view, False
        self._stdout, self._errors = b"", []
        self._start_fraction = view.overall()
        self.log_view.clear()
        env = QProcessEnvironment()
        for k, v in os.environ.items():  # CHATFACTORY_HOME and the rest, as this process has them now
            env.insert(k, v)
        env.insert("PYTHONUNBUFFERED", "1")
        env.insert("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
        p = QProcess(self)
        program, args = self.job_command(view.dir)
        p.setProgram(program)
        p.setArguments(args)
        p.setWorkingDirectory(str(ROOT))
        p.setProcessEnvironment(env)
        p.readyReadStandardOutput.connect(self._read_stdout)
        p.readyReadStandardError.connect(self._read_stderr)
        p.finished.connect(self._finished)
        p.errorOccurred.connect(self._process_error)
        self.process = p
        view.note = "Starting (loading the training code)…"
        self._elapsed.start()
        p.start()
        self._ticker.start()
        self.refresh_jobs()
        self._show_run(view)
        self._update_start()
        return True

    def _read_stdout(self) -> None:
        if self.process is None:
            return
        self._stdout += bytes(self.process.readAllStandardOutput().data())
        *lines, self._stdout = self._stdout.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                log.info("finetune: not an event: %r", line[:200])
                continue
            if isinstance(event, dict) and isinstance(event.get("event"), str):
                self.handle_event(event)

    def _read_stderr(self) -> None:
        if self.process is None:
            return
        text = bytes(self.process.readAllStandardError().data()).decode("utf-8", "replace")
        for line in text.replace("\r", "\n").splitlines():
            if line.strip():
                self.log_view.appendPlainText(line)

    def handle_event(self, event: dict) -> None:
        """One event of the running job: update its JobView, and the views if it is shown."""
        v = self.running
        if v is None:
            return
        kind = event["event"]
        shown = self.shown is v
        if kind == "job" and isinstance(event.get("stages"), list):
            v.stages = [str(s) for s in event["stages"]]
            for s in v.stages:
                v.status.setdefault(s, "waiting")
                v.fraction.setdefault(s, 0.0)
        elif kind == "stage" and event.get("name") in v.status:
            name = event["name"]
            if event.get("status") == "started":
                v.status[name], v.fraction[name] = "running", 0.0
                v.note = STAGE_TITLES.get(name, name) + "…"
            elif event.get("status") == "done":
                v.status[name], v.fraction[name] = "done", 1.0
        elif kind == "data":
            v.data = {k: event.get(k, 0) for k in ("conversations", "heldout_conversations", "comparisons",
                                                   "heldout_comparisons")}  # fmt: skip
        elif kind == "metrics":
            stage = event.get("stage")
            if isinstance(event.get("fraction"), (int, float)) and stage in v.fraction:
                v.fraction[stage] = max(v.fraction[stage], min(float(event["fraction"]), 1.0))
            for chart, series, x, y in v.add_metrics(event):
                if shown:
                    self.charts[chart].add_point(series, x, y)
            if isinstance(event.get("step"), int):
                values = [f"{word} {_number(event[k])}" for k, word in NOTE_METRICS if k in event]
                v.note = ", ".join([f"{STAGE_TITLES.get(stage, stage)}: step {event['step']}", *values])
        elif kind == "progress":
            stage = event.get("stage")
            if isinstance(event.get("fraction"), (int, float)) and stage in v.fraction:
                v.fraction[stage] = max(v.fraction[stage], min(float(event["fraction"]), 1.0))
            if event.get("note"):
                v.note = f"{STAGE_TITLES.get(stage, stage)}: {event['note']}"
        elif kind == "done":
            v.result = {k: event.get(k) for k in ("model", "gguf", "stages", "seconds")}
            v.note = f"Done: {event.get('model')} is in your models."
            self.models_changed.emit()
        elif kind == "error":
            v.error = str(event.get("message") or "the job failed")
            self._errors.append(v.error)
        elif kind == "cancelled":
            v.note = "Stopped; Resume continues from the last checkpoint."
        if shown:
            self._show_progress(v)
        self.job_event.emit(event)

    def cancel(self) -> None:
        """Stop the running job: SIGTERM (it saves a checkpoint), SIGKILL if it takes too long."""
        if self.process is None or self.cancelling:
            return
        self.cancelling = True
        self.running.state = "stopping"
        self.running.note = "Stopping: saving a checkpoint…"
        self.process.terminate()
        self._kill_timer.start()
        if self.shown is self.running:
            self._show_run(self.running)

    def _kill(self) -> None:
        if self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning:
            log.warning("the fine-tuning job did not stop in %d ms; killing it", KILL_AFTER_MS)
            self.process.kill()

    def _process_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and self.process is not None:
            self._errors.append(f"the training process could not start: {self.process.errorString()}")
            self._finished(-1, QProcess.ExitStatus.CrashExit)

    def _finished(self, code: int, _status: QProcess.ExitStatus) -> None:
        from engine.finetune.job import RESULT_FILE
        from engine.training.runner import read_done

        p, v = self.process, self.running
        if p is None or v is None:
            return
        self._read_stdout()
        self._read_stderr()
        self.process = None
        self._kill_timer.stop()
        self._ticker.stop()
        p.deleteLater()
        v.result = read_done(v.dir, RESULT_FILE) or v.result
        if code == 0 and v.result:
            v.state, v.note = "done", f"Done in {clock(v.result.get('seconds') or 0)}."
        elif self.cancelling or code == 130:
            v.state, v.note = "stopped", "Stopped. Resume continues from the last checkpoint."
        else:
            v.state = "failed"
            tail = [ln for ln in self.log_view.toPlainText().splitlines() if ln.strip()][-1:]
            v.error = (self._errors[-1] if self._errors else "") or (tail[0] if tail else f"exit code {code}")
            v.note = ""
        self.cancelling = False
        if not self.closing:
            self.refresh_jobs()
            if v.state == "failed":
                self.show_error(f"Fine-tuning {v.name()} failed: {v.error}")
                self.log_toggle.setChecked(True)
            elif v.state == "done":
                self.show_info(f"{v.result.get('model')} is ready: it is in the model list above the chat.")
            if self.shown is v and v.state == "done":
                self.show_job(v.dir)
            elif self.shown is v:
                self._show_run(v)
            self._update_start()
        self.job_ended.emit(v.state)

    def _tick(self) -> None:
        if self.running is not None and self.shown is self.running:
            self._show_times(self.running)

    def resume_shown(self) -> None:
        if self.shown is not None:
            self.run_folder(self.shown.dir)

    def shutdown(self, timeout_ms: int = SHUTDOWN_WAIT_MS) -> None:
        """At close: stop a running job (it checkpoints; the next start offers Resume) and wait
        for it, at most `timeout_ms`, then kill it."""
        self.closing = True
        p = self.process
        if p is None:
            return
        self.cancelling = True
        p.terminate()
        if not p.waitForFinished(timeout_ms):
            log.warning("the fine-tuning job did not stop in %d ms; killing it", timeout_ms)
            p.kill()
            p.waitForFinished(3000)
        if self.process is not None:  # finished was not delivered: let go of it here
            self._finished(p.exitCode(), p.exitStatus())

    # ---- jobs list ------------------------------------------------------------------------------
    def refresh_jobs(self) -> list[dict]:
        from engine.finetune.job import list_jobs

        try:
            jobs = list_jobs()
        except OSError as e:
            self.show_error(f"The fine-tuning jobs could not be read: {e}")
            jobs = []
        selected = self.shown.dir if self.shown is not None else None
        self.jobs_list.blockSignals(True)
        self.jobs_list.clear()
        for j in jobs:
            state = self._state_of(j)
            spec = j["spec"]
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(spec.created)) if spec.created else ""
            item = QListWidgetItem(f"{spec.name or Path(j['dir']).name}\n"
                                   f"{spec.method.upper()} · {STATE_TITLES.get(state, state)} · {when}")  # fmt: skip
            item.setData(KEY_ROLE, j["dir"])
            item.setData(Qt.ItemDataRole.AccessibleTextRole,
                         f"{spec.name}, {spec.method}, {STATE_TITLES.get(state, state)}")  # fmt: skip
            item.setToolTip(j["dir"])
            self.jobs_list.addItem(item)
            if selected is not None and Path(j["dir"]) == Path(selected):
                item.setSelected(True)
        self.jobs_list.blockSignals(False)
        self.no_jobs.setVisible(not jobs)
        return jobs

    def _state_of(self, job: dict) -> str:
        if self.running is not None and Path(job["dir"]) == self.running.dir and self.process is not None:
            return self.running.state
        return "elsewhere" if job["state"] == "running" else job["state"]

    def job_states(self) -> dict[str, str]:
        """{job folder: state shown} for the jobs list (tests, accessibility checks)."""
        from engine.finetune.job import list_jobs

        return {j["dir"]: self._state_of(j) for j in list_jobs()}

    def _job_selected(self) -> None:
        items = self.jobs_list.selectedItems()
        if items:
            self.show_job(items[0].data(KEY_ROLE))

    def show_job(self, folder: str | Path) -> None:
        """Show a job: its results when done, else its stages and charts (Resume if stopped)."""
        folder = Path(folder)
        if self.running is not None and folder == self.running.dir and self.process is not None:
            self._show_run(self.running)
            return
        try:
            view = self.running if self.running is not None and folder == self.running.dir else None
            fresh = JobView.read(folder)
            if view is not None:  # keep what the events taught (the error message) beside the disk's state
                fresh.error = fresh.error or view.error
            view = fresh
        except (ValueError, OSError) as e:
            self.show_error(f"{folder} cannot be read: {e}")
            return
        if view.state == "running":
            view.state = "elsewhere"
            view.note = ("This job is running in another process (another window, or the command line); "
                         "its progress is not followed here.")  # fmt: skip
        elif view.state == "stopped":
            view.note = "Stopped. Resume continues from the last checkpoint."
        if view.state == "done" and view.result:
            self._show_results(view)
        else:
            self._show_run(view)

    def show_setup(self) -> None:
        self.shown = None
        self.jobs_list.clearSelection()
        self.views.setCurrentWidget(self.setup_view)
        self._update_start()

    # ---- the Running view -----------------------------------------------------------------------
    def _show_run(self, v: JobView) -> None:
        self.shown = v
        spec = v.spec
        self.run_title.setText(f"<h3 style='margin:0'>{html.escape(v.name())}</h3>")
        base = Path(spec.base).name if ("/" in spec.base or "\\" in spec.base) else spec.base
        data = ", ".join(self._source_title(d) for d in spec.data)
        self.run_detail.setText(f"{spec.method.upper()} of {base} on {data} · {spec.preset} preset · {spec.quant}"
                                + (f" · at most {spec.max_steps} steps a stage" if spec.max_steps else ""))  # fmt: skip
        self.stage_list.clear()
        for s in v.stages:
            self.stage_list.addItem(QListWidgetItem())
        shown = CHARTS_FOR.get(spec.method, ("loss",))
        for key, chart in self.charts.items():
            chart.clear()
            for series, pts in v.charts.get(key, {}).items():
                for x, y in pts:
                    chart.add_point(series, x, y)
            self.chart_grid.removeWidget(chart)
            chart.setVisible(key in shown)
        # one chart fills the space; two side by side; three: the loss across the top, two below
        cells = {1: [(0, 0, 1, 2)], 2: [(0, 0, 1, 1), (0, 1, 1, 1)], 3: [(0, 0, 1, 2), (1, 0, 1, 1), (1, 1, 1, 1)]}
        for key, cell in zip(shown, cells[len(shown)]):
            self.chart_grid.addWidget(self.charts[key], *cell)
        self._show_progress(v)
        self.views.setCurrentWidget(self.run_view)

    @staticmethod
    def _source_title(spec: str) -> str:
        if spec.startswith("chats"):
            return "my chats" + (f" ({spec[6:]})" if ":" in spec else "")
        return {"builtin": "built-in tasks", "demo": "the preference demo"}.get(spec, Path(spec).name)

    def _show_progress(self, v: JobView) -> None:
        colour = STATE_COLOURS.get(v.state, "#707070")
        self.run_state.setText(f"<span style='color:{colour}; font-weight:bold'>"
                               f"{html.escape(STATE_TITLES.get(v.state, v.state))}</span>")  # fmt: skip
        running = v is self.running and self.process is not None
        self.cancel_button.setVisible(running)
        self.cancel_button.setEnabled(running and not self.cancelling)
        can_resume = v.state in ("stopped", "failed", "new") and self.process is None
        self.resume_button.setVisible(v.state in ("stopped", "failed", "new"))
        self.resume_button.setEnabled(can_resume)
        self.resume_button.setText("Start" if v.state == "new" else "Try again" if v.state == "failed" else "Resume")
        self.resume_button.setToolTip("" if can_resume else "Another job is running: one at a time")
        self.results_button.setVisible(v.state == "done" and bool(v.result))
        for i, s in enumerate(v.stages):
            item = self.stage_list.item(i)
            if item is None:
                continue
            st = v.status.get(s, "waiting")
            mark = {"done": "✓", "running": "▶"}.get(st, "○")
            if st == "running" and v.state in ("stopped", "failed"):
                mark = "■"
            pct = f"  {v.fraction.get(s, 0) * 100:.0f}%" if st == "running" else ""
            item.setText(f"{mark}  {STAGE_TITLES.get(s, s)}{pct}")
            f = item.font()
            f.setBold(st == "running")
            item.setFont(f)
            item.setData(Qt.ItemDataRole.AccessibleTextRole, f"{STAGE_TITLES.get(s, s)}: {st}")
        self.progress.setValue(round(v.overall() * 1000))
        note = v.note
        if v.state == "failed" and v.error:
            note = f"Failed: {v.error}"
        self.note_label.setText(note)
        self.data_label.setText(f"Data: {data_text(v.data)}" if v.data else "")
        self._show_times(v)

    def _show_times(self, v: JobView) -> None:
        if v is not self.running or self.process is None:
            took = (v.result or {}).get("seconds")
            self.time_label.setText(f"Took {clock(took)}" if took is not None else "")
            return
        elapsed = self._elapsed.elapsed() / 1000
        f = v.overall()
        gained = f - self._start_fraction
        if gained > 0.02 and elapsed > 3:
            left = elapsed / gained * (1 - f)
        elif self._estimate_s:
            left = max(self._estimate_s * (1 - f) - elapsed, 0)
        else:
            left = None
        text = f"Elapsed {clock(elapsed)}"
        if left is not None and v.state == "running":
            text += f" · {about(left)} left"
        self.time_label.setText(text)

    def _toggle_log(self, on: bool) -> None:
        self.log_view.setVisible(on)
        self.log_toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    # ---- the Results view -----------------------------------------------------------------------
    def _show_results(self, v: JobView) -> None:
        from engine.models.registry import list_models

        self.shown = v
        r = v.result or {}
        name = r.get("model") or v.name()
        self.result_title.setText(f"<h3 style='margin:0'>{html.escape(name)}</h3>")
        self.result_numbers.setText(result_table(v))
        try:
            registered = any(m.name == name and m.available for m in list_models())
        except (OSError, ValueError):
            registered = False
        self.chat_button.setEnabled(registered)
        self.chat_button.setToolTip("" if registered else f"{name} is no longer in the model list")
        self.side_by_side.setRowCount(0)
        try:
            rows = json.loads((v.dir / "export" / "side_by_side.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            rows = []
        for row in rows if isinstance(rows, list) else []:
            answers = row.get("answers") or {}
            i = self.side_by_side.rowCount()
            self.side_by_side.insertRow(i)
            for col, text in enumerate((row.get("prompt", ""), answers.get("base"), answers.get("tuned"))):
                item = QTableWidgetItem("—" if text is None else str(text))
                item.setToolTip("" if text is None else str(text))
                if col == 1 and text is None:
                    item.setToolTip("The base model is not a GGUF file, so it was not asked")
                self.side_by_side.setItem(i, col, item)
        self.side_by_side.resizeRowsToContents()
        self.views.setCurrentWidget(self.results_view)

    def _chat_clicked(self) -> None:
        if self.shown is not None and self.shown.result:
            self.chat_with.emit(self.shown.result.get("model") or self.shown.name())


def data_text(d: dict) -> str:
    return (f"{d.get('conversations', 0)} conversations ({d.get('heldout_conversations', 0)} held out), "
            f"{d.get('comparisons', 0)} rankings ({d.get('heldout_comparisons', 0)} held out)")  # fmt: skip


def result_table(v: JobView) -> str:
    """The Results numbers as an HTML table: what moved, from → to."""
    r = v.result or {}
    stages = r.get("stages") or {}
    ev = stages.get("eval") or {}
    rows: list[tuple[str, str]] = []

    def pair(label: str, before, after, fmt: str = "{:.3f}") -> None:
        if before is None and after is None:
            return
        rows.append((label, f"{_number(before, fmt)} → {_number(after, fmt)}" if before is not None
                     else _number(after, fmt)))  # fmt: skip

    pct = "{:.0%}"
    pair("Held-out loss (SFT)", ev.get("sft_heldout_loss_before"), ev.get("sft_heldout_loss"))
    pair("Held-out ranking accuracy (DPO)", ev.get("dpo_heldout_accuracy_before"), ev.get("dpo_heldout_accuracy"), pct)
    pair("Reward model accuracy (held out)", None, ev.get("reward_heldout_accuracy"), pct)
    pair("Task checker score (base → tuned)", ev.get("checker_base"), ev.get("checker_tuned"), pct)
    pair("PPO reward", None, ev.get("ppo_reward"))
    pair("KL to the base model", None, ev.get("kl_to_base", ev.get("ppo_kl")))
    d = stages.get("data") or v.data
    if d:
        rows.append(("Data", data_text(d)))
    if r.get("seconds") is not None:
        rows.append(("Time", clock(r["seconds"])))
    spec = v.spec
    rows.append(("Method", f"{spec.method.upper()}, {spec.preset} preset, {spec.quant}"))
    if r.get("gguf"):
        rows.append(("File", str(r["gguf"])))
    body = "".join(f"<tr><td><b>{html.escape(k)}</b>&nbsp;&nbsp;</td><td>{html.escape(val)}</td></tr>"
                   for k, val in rows)  # fmt: skip
    return f"<table cellspacing='2'>{body}</table>"
