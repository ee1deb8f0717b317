"""Browser-test fixtures: Debian's Chromium driven by Playwright against one real server on
loopback (tiny random-init models, the real engine, chat flow, moderator and SQLite store).

One server and one browser per test session; each test gets a fresh page (its own local
storage). Chromium is never downloaded by Playwright (`playwright install` cannot work here):
the system package is used, and installed with apt-get when missing and we are root (CI runs
`bash .ci/run` as root on a fresh machine); otherwise the tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from server_fixtures import MODEL, ServerHandle, _settings, start_server
from tiny_chat_model import tiny_loaded

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
__all__ = ["browser", "chromium_path", "page", "web_server"]

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "web"
SECOND_MODEL = "tiny-b"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _install_chromium() -> str:
    """apt-get install chromium (root only); returns why it failed, or ''."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root, so it cannot be installed here"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        r = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {r.stderr.strip()[-300:]}"
    return ""


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        why = _install_chromium()
        if not CHROMIUM.exists():
            pytest.skip(
                f"browser tests need Debian's Chromium at {CHROMIUM} (`apt-get install chromium`): {why}"
            )
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
    pw = sync_api.sync_playwright().start()
    b = pw.chromium.launch(executable_path=str(chromium_path), headless=True, args=CHROMIUM_ARGS)
    yield b
    b.close()
    pw.stop()


def _paced_engine_class():
    from chatfactory.engine.scheduler import Engine

    class PacedEngine(Engine):
        """The real engine, optionally slowed to `pace` seconds per decode step, so a test can
        watch an answer arrive over several frames (a tiny model writes it in milliseconds)."""

        pace = 0.0

        def _step(self) -> None:
            if self.pace:
                time.sleep(self.pace)
            super()._step()

    return PacedEngine


@pytest.fixture(scope="session")
def web_server(tmp_path_factory) -> ServerHandle:
    """Two tiny models (for the picker), answers up to 120 tokens (long enough to press Stop)."""
    import chatfactory.chat
    import chatfactory.moderation

    if not hasattr(chatfactory.chat, "ChatFlow") or not hasattr(chatfactory.moderation, "Moderator"):
        pytest.skip("the chat flow / moderator are not in this checkout yet")
    PacedEngine = _paced_engine_class()
    engines, folders = {}, {}
    for seed, name in enumerate((MODEL, SECOND_MODEL)):
        folders[name] = tmp_path_factory.mktemp(name) / "model"
        loaded = tiny_loaded(folders[name], max_seq_len=1024, seed=seed)  # hidden instructions: ~300 tokens
        loaded.name = name
        engines[name] = PacedEngine(loaded, max_batch=8)
        engines[name].start()
    settings = _settings(tmp_path_factory.mktemp("web"))
    settings.models, settings.default_max_tokens = [MODEL, SECOND_MODEL], 120
    settings.moderation_config = str(Path(__file__).with_name("web_moderation.yaml"))
    handle = start_server(settings, engines)
    handle.model_folder = folders[MODEL]  # the reward stage's backbone in the feedback-loop test
    yield handle
    handle.stop()
    for e in engines.values():
        e.shutdown()


@pytest.fixture()
def page(browser, web_server):
    """A fresh browser context (empty local storage) on the chat page, failing on page errors."""
    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.root = web_server.base_url.removesuffix("/v1") + "/"
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
