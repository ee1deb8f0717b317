"""The Fine-tuning tab in the real window, running the real job process (`python -m
engine.finetune run DIR`) on a tiny model (tests/tiny_chat_model.py: two layers, a 320-token
vocabulary; a training step takes milliseconds, the process's start a few seconds for torch).

Everything goes through the page's own controls and signals: the set-up, the events the process
prints, Cancel (SIGTERM: the trainer checkpoints) and Resume from the jobs list, the results, and
"Chat with it", which loads the tuned GGUF in the window's llama.cpp worker.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from tiny_chat_model import tiny_model_folder  # tests/, on the path via tests/conftest.py

from engine.finetune.job import JobSpec, create_job
from engine.models import registry

JOB_TIMEOUT_MS = 120_000
QUESTIONS = [
    "Hello there", "How are you?", "What is two plus two?", "Name a colour.", "Say hi.", "Tell me a joke.",
    "What day is it?", "Count to three.", "Who are you?", "Where is Paris?", "Is water wet?", "Spell cat.",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "chats.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for q in QUESTIONS:
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": "I am fine, thank you."}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


@pytest.fixture
def page(window, qtbot):
    """The window's Fine-tuning page, shown, on Set up, with one torch thread for its jobs."""
    p = window.finetune_page
    window.pages.setCurrentWidget(p)
    qtbot.waitUntil(lambda: not p.sources["chats"].counting, timeout=30_000)
    p.threads = 1
    p.overrides = {}
    p.show_setup()
    yield p
    if p.process is not None:
        with qtbot.waitSignal(p.job_ended, timeout=JOB_TIMEOUT_MS):
            p.cancel()
    window.pages.setCurrentIndex(0)


def set_up(qtbot, page, base: Path, data: Path, max_steps: int, name: str) -> None:
    """Base = the tiny folder, data = one conversations file (nothing else ticked), SFT."""
    page.set_base(base)
    for key in ("chats", "builtin", "demo"):
        page.check_source(key, False)
    with qtbot.waitSignal(page.source_checked, timeout=30_000, check_params_cb=lambda k: k == str(data)):
        page.add_file(data)
    page.set_method("sft")
    page.max_steps.setValue(max_steps)
    page.name_edit.setText(name)
    assert page.start_button.isEnabled(), page.start_note.text()


def run_to_end(qtbot, page, start) -> tuple[str, list[dict]]:
    """Call `start()` and collect the job's events until its process ends; (state, events)."""
    events: list[dict] = []
    page.job_event.connect(events.append)
    try:
        with qtbot.waitSignal(page.job_ended, timeout=JOB_TIMEOUT_MS) as ended:
            start()
    finally:
        page.job_event.disconnect(events.append)
    return ended.args[0], events


def test_a_bad_data_file_shows_its_line_numbers(qtbot, page, tmp_path):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    bad = tmp_path / "mixed.jsonl"
    bad.write_text("\n".join([
        json.dumps(good),
        '{"messages": [not json',
        json.dumps(good),
        json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
    ]) + "\n", encoding="utf-8")  # fmt: skip
    try:
        with qtbot.waitSignal(page.source_checked, timeout=30_000):
            page.add_file(bad)
        src = page.sources[str(bad)]
        assert (src.conversations, src.skipped) == (2, 3)
        assert page.problems.isVisible() and "3 lines skipped" in page.problems_title.text()
        text = page.problems.toPlainText()
        for line in (2, 4, 5):
            assert f"{bad}:{line}:" in text
        assert "wizard" in text and "not valid JSON" in text
        assert "2 conversations, 0 rankings; 3 skipped" in page.data_list.currentItem().text()
        # rankings are needed for DPO and RLHF: they are off, and say why
        assert not page.method_buttons["dpo"].isEnabled()
        assert "DPO needs rankings" in page.method_notes["dpo"].text()
        assert page.method_buttons["sft"].isEnabled()
        assert page.estimate_label.text() == "" or "on this machine" in page.estimate_label.text()
    finally:
        page.data_list.setCurrentItem(page._item(str(bad)))
        page.remove_selected_file()
    assert str(bad) not in page.sources and not page.problems.isVisible()


def test_from_scratch_is_offered_as_a_base_and_teaches_by_sft_only(qtbot, page, sft_file):
    """The base list ends with the pre-training presets ("From scratch (advanced)"); picking one
    leaves SFT as the method, with the reason on DPO and RLHF, and the spec the job will run."""
    i = page.base_combo.findData("scratch:tiny")
    assert i >= 0 and "From scratch" in page.base_combo.itemText(i)
    assert "Shakespeare" in page.base_combo.itemData(i, Qt.ItemDataRole.ToolTipRole)
    for key in ("chats", "builtin", "demo"):
        page.check_source(key, False)
    with qtbot.waitSignal(page.source_checked, timeout=30_000):
        page.add_file(sft_file)
    try:
        page.base_combo.setCurrentIndex(i)
        page._base_activated(i)
        assert page.method() == "sft" and page.method_buttons["sft"].isEnabled()
        assert not page.method_buttons["rlhf"].isEnabled() and "SFT first" in page.method_notes["rlhf"].text()
        assert page.start_button.isEnabled(), page.start_note.text()
        spec = page.spec().check()
        assert spec.base == "scratch:tiny" and spec.method == "sft"
    finally:
        page.data_list.setCurrentItem(page._item(str(sft_file)))
        page.remove_selected_file()
        page.refresh_bases()
        page.base_combo.setCurrentIndex(0)
        page._base_activated(0)


def test_a_job_reports_stages_progress_and_metrics(qtbot, page, tiny_base, sft_file):
    set_up(qtbot, page, tiny_base, sft_file, max_steps=8, name="tiny-progress")
    qtbot.waitUntil(lambda: "on this machine" in page.estimate_label.text(), timeout=5_000)
    bar_values: list[int] = []
    page.job_event.connect(lambda _e: bar_values.append(page.progress.value()))
    t0 = time.perf_counter()
    state, events = run_to_end(qtbot, page, page.start)
    print(f"job of 8 steps: {time.perf_counter() - t0:.1f} s")
    assert state == "done", page.note_label.text() + "\n" + page.log_view.toPlainText()[-2000:]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "job" and kinds[-1] == "done"
    assert events[0]["stages"] == ["data", "sft", "eval", "export"]
    started = [e["name"] for e in events if e["event"] == "stage" and e["status"] == "started"]
    assert started == ["data", "sft", "eval", "export"]
    metrics = [e for e in events if e["event"] == "metrics"]
    train = [m["step"] for m in metrics if "loss" in m]
    assert train == list(range(1, 9))  # every step's record, tailed from the trainer's metrics.jsonl
    assert any("heldout_loss" in m for m in metrics)
    data = next(e for e in events if e["event"] == "data")
    assert data["conversations"] + data["heldout_conversations"] == len(QUESTIONS)
    # the bar moved forward to the end, the chart has the loss curve, the stages are ticked
    assert bar_values == sorted(bar_values) and 0 < bar_values[len(bar_values) // 2] < 1000
    assert page.progress.value() == 1000
    loss = page.charts["loss"]
    assert len(loss.series["SFT loss"]) == 8 and "SFT held-out loss" in loss.series
    assert "SFT loss" in loss.accessibleDescription()
    assert not page.charts["kl"].isVisibleTo(page)  # SFT: no KL to show
    assert all(page.stage_list.item(i).text().startswith("✓") for i in range(4))
    # done: the page shows the results
    assert page.views.currentWidget() is page.results_view
    assert "Held-out loss (SFT)" in page.result_numbers.text() and "→" in page.result_numbers.text()
    assert page.side_by_side.rowCount() >= 1 and page.side_by_side.item(0, 2).text()


def test_cancel_checkpoints_then_resume_from_the_jobs_list_finishes(qtbot, page, tiny_base, sft_file):
    set_up(qtbot, page, tiny_base, sft_file, max_steps=200, name="tiny-resume")
    page.overrides = {"sft.epochs": 10_000}  # the 12 conversations, many times over: 200 steps

    def cancel_at_first_metrics(event: dict) -> None:
        if event["event"] == "metrics" and not page.cancelling:
            page.cancel_button.click()

    page.job_event.connect(cancel_at_first_metrics)
    try:
        state, events = run_to_end(qtbot, page, page.start)
    finally:
        page.job_event.disconnect(cancel_at_first_metrics)
    job = page.running.dir
    assert state == "stopped", page.log_view.toPlainText()[-2000:]
    assert events[-1]["event"] == "cancelled"
    ckpts = sorted((job / "sft" / "checkpoints").iterdir())
    assert ckpts, "SIGTERM should leave a checkpoint"
    assert "Stopped" in page.run_state.text()
    assert page.resume_button.isVisible() and page.resume_button.isEnabled()
    assert page.job_states()[str(job)] == "stopped"

    # as after an app restart: the job is found in the list, stopped, and resumed from there
    page.show_setup()
    page.refresh_jobs()
    row = next(i for i in range(page.jobs_list.count()) if page.jobs_list.item(i).data(Qt.ItemDataRole.UserRole) == str(job))
    assert "Stopped" in page.jobs_list.item(row).text()
    page.jobs_list.setCurrentRow(row)
    assert page.views.currentWidget() is page.run_view and page.resume_button.text() == "Resume"
    assert page.charts["loss"].point_count() > 0  # the curve so far, read from the job's folder
    state, events = run_to_end(qtbot, page, page.resume_button.click)
    assert state == "done", page.log_view.toPlainText()[-2000:]
    steps = [e["step"] for e in events if e["event"] == "metrics" and "loss" in e]
    assert steps and steps[0] > 1 and steps[-1] == 200  # continued from the checkpoint, not from step 1
    assert page.job_states()[str(job)] == "done"


def test_done_registers_the_model_and_chat_with_it_answers(qtbot, page, window, tiny_base, sft_file):
    set_up(qtbot, page, tiny_base, sft_file, max_steps=4, name="tiny-chat")
    with qtbot.waitSignal(page.models_changed, timeout=JOB_TIMEOUT_MS):
        state, _ = run_to_end(qtbot, page, page.start)
    assert state == "done"
    entry = next(m for m in registry.list_models() if m.name == "tiny-chat")
    assert entry.source == "finetuned" and entry.lineage["method"] == "sft"
    assert entry.lineage["base"] == str(tiny_base)
    picker = [window.top_bar.model.itemData(i) for i in range(window.top_bar.model.count())]
    assert "tiny-chat" in picker  # models_changed refreshed the window's model list
    assert page.chat_button.isEnabled()
    try:
        with qtbot.waitSignal(page.chat_with) as chosen, \
                qtbot.waitSignal(window.client.signals.loaded, timeout=60_000) as loaded:  # fmt: skip
            page.chat_button.click()
        assert chosen.args == ["tiny-chat"] and loaded.args[0] == "tiny-chat"
        assert window.pages.currentIndex() == 0 and window.session_id is None  # a new chat
        assert window.top_bar.model.currentData() == "tiny-chat"
        window.sampling.max_tokens = 8
        with qtbot.waitSignal(window.client.signals.finished, timeout=60_000) as finished:
            window.send("Hello there")
        answer = finished.args[1]["message"]
        assert answer["role"] == "assistant" and answer["model"] == "tiny-chat"
        assert window.store.get_message(answer["id"])["model"] == "tiny-chat"
    finally:
        if window.client.model_name != registry.DEFAULT_MODEL:
            with qtbot.waitSignal(window.client.signals.loaded, timeout=60_000):
                window.client.switch_model(None)


def test_closing_the_window_stops_a_running_job_which_is_then_offered_for_resume(qtbot, window, tiny_base,
                                                                                 sft_file):
    """What MainWindow.closeEvent does (page.shutdown()), on a page of its own; then a fresh page,
    as at the next start, finds the job stopped with Resume."""
    from desktop.finetune_page import FinetunePage

    page = FinetunePage(window.store, window.templates)
    qtbot.addWidget(page)
    page.refresh()
    page.threads = 1
    page.overrides = {"sft.epochs": 10_000}
    set_up(qtbot, page, tiny_base, sft_file, max_steps=300, name="tiny-closed")
    with qtbot.waitSignal(page.job_event, timeout=JOB_TIMEOUT_MS, check_params_cb=lambda e: e["event"] == "metrics"):
        folder = page.start()
    with qtbot.waitSignal(page.job_ended, timeout=1000) as ended:
        page.shutdown()  # returns once the process is gone (it checkpoints on SIGTERM)
    assert ended.args == ["stopped"] and page.process is None
    assert any((folder / "sft" / "checkpoints").iterdir())

    later = FinetunePage(window.store, window.templates)
    qtbot.addWidget(later)
    later.refresh_jobs()
    assert later.job_states()[str(folder)] == "stopped"
    later.show_job(folder)
    assert "Stopped" in later.run_state.text()
    assert later.resume_button.text() == "Resume" and later.resume_button.isEnabled()


def test_a_job_running_in_another_process_is_shown_as_such(qtbot, page, tiny_base, sft_file):
    spec = JobSpec(base=str(tiny_base), data=[str(sft_file)], method="sft", name="elsewhere", max_steps=2)
    folder = create_job(spec)
    (folder / "data").mkdir()
    (folder / "pid").write_text(str(os.getpid()))  # a live process holds it
    page.refresh_jobs()
    assert page.job_states()[str(folder)] == "elsewhere"
    page.show_job(folder)
    assert "Running elsewhere" in page.run_state.text() and "another process" in page.note_label.text()
    assert not page.cancel_button.isVisible() and not page.resume_button.isVisible()
    (folder / "pid").unlink()
    page.show_job(folder)
    assert "Stopped" in page.run_state.text() and page.resume_button.isEnabled()


def test_line_chart_draws_ticks_and_skips_bad_points(qtbot):
    from desktop.charts import LineChart, nice_ticks

    ticks = nice_ticks(0.13, 0.92)
    assert ticks[0] <= 0.13 and ticks[-1] >= 0.92 and 3 <= len(ticks) <= 7
    assert nice_ticks(3.2, 3.2)  # a flat series still gets an axis
    chart = LineChart("Loss")
    qtbot.addWidget(chart)
    chart.resize(320, 200)
    chart.grab()  # "No data yet"
    for step, y in [(1, 2.0), (2, float("nan")), (3, 1.5), (4, "x")]:
        chart.add_point("train", step, y)
    chart.add_point("held-out", 3, 1.7)
    assert chart.point_count() == 3
    assert chart.grab().width() == 320
    assert "train 1.5 at step 3" in chart.accessibleDescription()
