"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest

from engine.models import bundled
from engine.models.registry import DEFAULT_MODEL


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a busy shared machine torch's threads
    wait for each other (a step can take 100x longer). Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """No test touches the real user's data folder: CHATFACTORY_HOME is a fresh folder."""
    home = tmp_path / "chatfactory-home"
    monkeypatch.setenv("CHATFACTORY_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def smollm2_path():
    """The bundled SmolLM2 GGUF; the set-up (`make test`) puts it in place."""
    if not bundled.is_verified(DEFAULT_MODEL):
        pytest.fail(f"{bundled.model_path(DEFAULT_MODEL)} is missing: run `python -m engine.models.bundled`")
    return bundled.model_path(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def runtime(smollm2_path):
    """One loaded model for the whole run (a 2048-token context keeps it light)."""
    from engine.runtime import LlamaRuntime, RuntimeSettings

    rt = LlamaRuntime(smollm2_path, RuntimeSettings(n_ctx=2048, n_batch=64), name=DEFAULT_MODEL)
    yield rt
    rt.close()
