"""The Models page in the real window: catalogue with memory badges, downloads from a local
imitation of the Hugging Face Hub (tests/hub_server.py) with progress, pause / resume and
errors shown in the page, adding GGUF files, deleting, and chatting with a downloaded model.

Nothing here may reach huggingface.co: the page's endpoint is the local server, huggingface-hub's
default endpoint is a closed local port, and no user token or offline setting leaks in.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from hub_server import HubServer, make_tiny_gguf  # tests/, on the path via tests/conftest.py

from engine.models import registry
from engine.models.catalogue import CatalogueFile, load_catalogue

TINY_REPO, TINY_FILE = "test/tiny-GGUF", "tiny.gguf"
GATED_REPO = "meta/gated-GGUF"
SMOL_REPO, SMOL_FILE = "test/smol-copy-GGUF", "smol-copy.gguf"
DOWNLOAD_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module", autouse=True)
def no_real_hub(tmp_path_factory):
    from huggingface_hub import constants

    hf = tmp_path_factory.mktemp("hf")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
        mp.setattr(
            constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}",
        )
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        mp.setattr(constants, "HF_TOKEN_PATH", str(hf / "token"))
        mp.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf / "stored_tokens"))
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
            mp.delenv(var, raising=False)
        mp.setenv("CHATFACTORY_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> bytes:
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / TINY_FILE, tensor_bytes=2 << 20)


@pytest.fixture(scope="module")
def hub(tiny, smollm2_path):
    server = HubServer()
    server.add(TINY_REPO, TINY_FILE, tiny)
    server.add(GATED_REPO, TINY_FILE, tiny)
    server.gated = {GATED_REPO}
    server.add(SMOL_REPO, SMOL_FILE, smollm2_path.read_bytes())
    server.start()
    yield server
    server.stop()
    assert not server.host_errors, f"requests for hosts other than 127.0.0.1: {server.host_errors}"


def entry(base, model_id: str, repo: str, filename: str, size: int, gated: bool = False):
    """A catalogue entry shaped like `base` but served by the local hub."""
    return dataclasses.replace(
        base, id=model_id, name=model_id.title(), repo=repo, gated=gated,
        files={"Q8_0": CatalogueFile("Q8_0", filename, size)}, default_quant="Q8_0",
    )  # fmt: skip


@pytest.fixture(scope="module")
def page(window, hub, tiny, smollm2_path):
    """The window's Models page, shown, with the local hub's models added to the real catalogue."""
    p = window.models_page
    window.pages.setCurrentWidget(p)  # the page fills itself when first shown
    assert p.loaded
    base = p.catalogue[0]
    p.set_catalogue([
        *p.catalogue,
        entry(base, "tiny-test", TINY_REPO, TINY_FILE, len(tiny)),
        entry(base, "gated-test", GATED_REPO, TINY_FILE, len(tiny), gated=True),
        entry(base, "smol-copy", SMOL_REPO, SMOL_FILE, smollm2_path.stat().st_size),
    ])  # fmt: skip
    p.endpoint = hub.url
    p.chunk_size = 64 * 1024  # pause and cancel act within one 64 KiB read
    yield p
    window.pages.setCurrentIndex(0)


def picker(window) -> list[str]:
    box = window.top_bar.model
    return [box.itemData(i) for i in range(box.count())]


def download(qtbot, page, model_id: str) -> list:
    """Start a download and wait for it to end; returns the progress reports seen."""
    seen = []

    def report(_name, p):  # runs on the GUI thread: the page emits there
        seen.append(p)

    page.download_progress.connect(report)
    try:
        with qtbot.waitSignal(page.download_ended, timeout=DOWNLOAD_TIMEOUT_MS) as blocker:
            page.start_download(model_id)
    finally:
        page.download_progress.disconnect(report)
    assert blocker.args[1] == "done", page.message.text()
    return seen


def test_catalogue_rows_have_size_memory_and_a_badge(page):
    n_ctx = page.n_ctx()
    assert n_ctx == (page.store.get_setting("runtime", {}) or {}).get("n_ctx", 4096)
    real = load_catalogue()
    badges = page.badges()
    for m in real:
        for quant in m.files:
            assert badges[m.registry_name(quant)] in ("fits", "tight", "too big")
    t = page.catalogue_table
    assert t.rowCount() == sum(len(m.files) for m in real) + 3
    assert t.item(0, 2).text().endswith("MB")
    assert t.item(0, 3).text().endswith(("MB", "GB"))
    assert str(n_ctx) in t.item(0, 3).toolTip()
    assert f"{n_ctx} tokens" in page.context_note.text()
    t.selectRow(0)
    assert real[0].repo in page.details.text()


def test_estimates_follow_the_context_setting(page):
    rt = page.store.get_setting("runtime", {}) or {}
    before = page.catalogue_table.item(0, 3).toolTip()
    page.store.set_setting("runtime", {**rt, "n_ctx": 512})
    try:
        page.refresh()
        assert "at 512 tokens" in page.catalogue_table.item(0, 3).toolTip()
        assert page.catalogue_table.item(0, 3).toolTip() != before
    finally:
        page.store.set_setting("runtime", rt)
        page.refresh()


def test_installed_lists_the_bundled_model_which_cannot_be_deleted(page):
    assert page.installed_names()[0] == registry.DEFAULT_MODEL
    assert page.select_installed(registry.DEFAULT_MODEL)
    assert not page.delete_button.isEnabled()
    assert page.use_button.isEnabled() and page.default_button.isEnabled()
    details = page.details.text()
    for word in ("llama", "Q4_1", "8192 tokens", "Chat template", "yes"):
        assert word in details
    assert not page.delete(registry.DEFAULT_MODEL, ask=False)
    assert "cannot be deleted" in page.message.text()


def test_download_with_progress_then_installed_and_in_the_picker_then_delete(qtbot, page, window, tiny):
    seen = download(qtbot, page, "tiny-test")
    assert seen and seen[-1].done_bytes == len(tiny) and seen[-1].total_bytes == len(tiny)
    name = "tiny-test-q8_0"
    path = page.dest_dir() / TINY_FILE
    assert path.read_bytes() == tiny
    assert name in page.installed_names()
    assert name in picker(window)
    assert page.controls[name].status.text() == "Installed"
    assert not page.controls[name].start_button.isVisible()
    assert page.select_installed(name) and page.delete_button.isEnabled()
    assert "downloaded" in page.details.text()

    assert page.delete(name)  # dialogs.confirm answers yes in the window fixture
    assert name not in page.installed_names()
    assert name not in picker(window)
    assert not path.exists()  # downloaded into our folder: the file goes too
    assert page.controls[name].start_button.isVisible()


def test_pause_keeps_the_part_and_resume_continues_it(qtbot, page, hub, tiny):
    hub.delay_s = 0.02  # 64 KiB per 20 ms: the 2 MB file takes about 0.7 s
    ctl = page.controls["tiny-test-q8_0"]
    try:
        with qtbot.waitSignal(page.download_progress, timeout=DOWNLOAD_TIMEOUT_MS,
                              check_params_cb=lambda _n, p: p.done_bytes > 0):  # fmt: skip
            page.start_download("tiny-test")
        with qtbot.waitSignal(page.download_ended, timeout=DOWNLOAD_TIMEOUT_MS) as paused:
            ctl.pause_button.click()
        assert paused.args[1] == "paused"
        part = page.dest_dir() / (TINY_FILE + ".part")
        have = part.stat().st_size
        assert 0 < have < len(tiny)
        assert ctl.pause_button.text() == "Resume" and ctl.status.text().startswith("Paused at")
        assert ctl.bar.value() > 0

        hub.delay_s = 0
        with qtbot.waitSignal(page.download_ended, timeout=DOWNLOAD_TIMEOUT_MS) as resumed:
            ctl.pause_button.click()
        assert resumed.args[1] == "done"
        assert hub.gets(TINY_FILE)[-1].headers.get("range") == f"bytes={have}-"
        assert (page.dest_dir() / TINY_FILE).read_bytes() == tiny
    finally:
        hub.delay_s = 0
        page.delete("tiny-test-q8_0", ask=False)


def test_cancel_deletes_the_part(qtbot, page, hub):
    hub.delay_s = 0.02
    ctl = page.controls["tiny-test-q8_0"]
    try:
        with qtbot.waitSignal(page.download_progress, timeout=DOWNLOAD_TIMEOUT_MS,
                              check_params_cb=lambda _n, p: p.done_bytes > 0):  # fmt: skip
            page.start_download("tiny-test")
        with qtbot.waitSignal(page.download_ended, timeout=DOWNLOAD_TIMEOUT_MS) as ended:
            ctl.cancel_button.click()
        assert ended.args[1] == "cancelled"
    finally:
        hub.delay_s = 0
    assert not (page.dest_dir() / (TINY_FILE + ".part")).exists()
    assert "tiny-test-q8_0" not in page.installed_names()
    assert ctl.start_button.isVisible() and ctl.status.text() == "Cancelled"


def test_gated_download_says_so_in_the_page(qtbot, page):
    with qtbot.waitSignal(page.download_failed, timeout=DOWNLOAD_TIMEOUT_MS) as failed:
        page.start_download("gated-test")
    assert failed.args[0] == "gated-test-q8_0"
    text = page.message.text()
    assert page.message.isVisible()
    assert f"{GATED_REPO} is gated" in text and "token" in text
    assert page.controls["gated-test-q8_0"].start_button.text() == "Retry"
    assert "gated-test-q8_0" not in page.installed_names()


def test_adding_a_file_that_is_not_gguf_shows_why(page, tmp_path, window):
    bad = tmp_path / "notes.gguf"
    bad.write_text("not a model at all\n" * 10)
    before = picker(window)
    assert page.add_file(bad) is None
    assert page.message.isVisible() and "notes.gguf was not added" in page.message.text()
    assert "notes" not in page.installed_names() and picker(window) == before


def test_adding_a_real_gguf_copy_then_deleting_keeps_the_file(page, window, smollm2_path, tmp_path):
    copy = tmp_path / "my-smol.gguf"
    shutil.copyfile(smollm2_path, copy)
    name = page.add_file(copy)
    assert name == "my-smol"
    assert "my-smol" in page.installed_names() and "my-smol" in picker(window)
    assert page.selected_name() == "my-smol"
    assert "added" in page.details.text() and "Chat template" in page.details.text()

    assert page.delete("my-smol")
    assert "my-smol" not in page.installed_names() and "my-smol" not in picker(window)
    assert copy.exists()  # the user's own file is not ours to delete


def test_downloaded_model_chats_after_use_now(qtbot, page, window, turns):
    """The bundled GGUF served under another name: downloaded, used from the page, chatting."""
    download(qtbot, page, "smol-copy")
    name = "smol-copy-q8_0"
    assert page.select_installed(name) and name in picker(window)
    try:
        with qtbot.waitSignal(window.client.signals.loaded, timeout=60_000) as loaded:
            page.use_button.click()
        assert loaded.args[0] == name
        assert window.top_bar.model.currentData() == name
        answer = turns.send("Say hello.")
        assert answer["content"].strip()
        assert window.store.get_session(window.session_id)["model"] == name

        assert page.select_installed(registry.DEFAULT_MODEL)
        with qtbot.waitSignal(window.client.signals.loaded, timeout=60_000) as loaded:
            page.default_button.click()  # Set as default: remembered, and loaded now
        assert loaded.args[0] == registry.DEFAULT_MODEL
        assert window.store.get_setting("model") == registry.DEFAULT_MODEL
    finally:
        if window.client.model_name != registry.DEFAULT_MODEL:
            with qtbot.waitSignal(window.client.signals.loaded, timeout=60_000):
                window.client.switch_model(None)
        page.delete(name, ask=False)
    assert not (page.dest_dir() / SMOL_FILE).exists()
    assert name not in picker(window)


def test_a_model_that_would_not_fit_warns_with_a_smaller_context_or_load_anyway(qtbot, page, window, monkeypatch):
    """The estimate says too big: the user is offered a smaller context, or loads anyway (the
    runtime's own check is then skipped)."""
    from desktop import dialogs
    from engine.models import memory
    from engine.runtime import llama_runtime

    mib = 2**20
    monkeypatch.setattr(memory, "available_memory", lambda: 200 * mib)  # bundled at 4096: ~212 MiB
    asked = []
    monkeypatch.setattr(dialogs, "too_big", lambda parent, text, smaller: asked.append((text, smaller)) or "smaller")
    before = window.store.get_setting("runtime", {})
    try:
        with qtbot.waitSignal(window.client.signals.loaded, timeout=60_000) as loaded:
            page.use_now("smollm2-135m-instruct")
        (text, smaller), = asked
        assert "smollm2-135m-instruct needs about" in text and "200 MiB of memory is free" in text
        assert smaller and smaller < 4096 and loaded.args[1] == smaller
        # load anyway: even the runtime's KV check (pretending 1 MiB free) is skipped
        monkeypatch.setattr(dialogs, "too_big", lambda parent, text, smaller: "anyway")
        monkeypatch.setattr(llama_runtime, "available_memory", lambda: 1 * mib)
        window.store.set_setting("runtime", {**before, "n_ctx": 4096})
        with qtbot.waitSignal(window.client.signals.loaded, timeout=60_000) as loaded:
            page.use_now("smollm2-135m-instruct")
        assert loaded.args[1] == 4096
    finally:
        window.store.set_setting("runtime", before)
