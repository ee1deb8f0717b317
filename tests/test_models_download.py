"""Downloads through huggingface-hub against a local imitation of the Hub (tests/hub_server.py).

Nothing here may reach huggingface.co: every Download gets the local server's URL, the library's
default endpoint is pointed at a closed local port, and the server fails any request whose Host
is not 127.0.0.1.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_server import HubServer, make_tiny_gguf
from huggingface_hub import constants

from engine.models import download as dl_mod
from engine.models import registry
from engine.models.download import Download, DownloadError

REPO, FILE = "test/tiny-GGUF", "tiny.gguf"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> bytes:
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / FILE)


@pytest.fixture(autouse=True)
def no_real_hub(tmp_path, monkeypatch):
    """The real Hub is unreachable by construction; no user token or offline setting leaks in."""
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "stored_tokens"))
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CHATFACTORY_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def hub(tiny):
    server = HubServer()
    server.add(REPO, FILE, tiny)
    server.start()
    yield server
    server.stop()
    assert not server.host_errors, f"requests for hosts other than 127.0.0.1: {server.host_errors}"


def make(hub: HubServer, dest: Path, **kw) -> Download:
    kw.setdefault("chunk_size", 16 * 1024)
    kw.setdefault("retries", 0)
    kw.setdefault("progress_every_s", 0)  # every chunk: a local transfer is over in milliseconds
    return Download(REPO, FILE, dest, endpoint=hub.url, **kw)


def ranges(hub: HubServer) -> list[str | None]:
    return [r.headers.get("range") for r in hub.gets(FILE)]


def test_download_reports_progress_verifies_and_registers(hub, tiny, tmp_path):
    seen = []
    result = make(hub, tmp_path / "models", progress=seen.append).run()

    assert result.state == "done"
    assert result.path == tmp_path / "models" / FILE
    assert result.path.read_bytes() == tiny
    assert result.sha256 == hashlib.sha256(tiny).hexdigest()
    assert not (tmp_path / "models" / (FILE + ".part")).exists()
    assert len(seen) >= 2
    assert all(p.total_bytes == len(tiny) for p in seen)
    done = [p.done_bytes for p in seen]
    assert done == sorted(done) and done[-1] == len(tiny)
    assert seen[-1].eta_s == 0
    entry = {m.name: m for m in registry.list_models()}["tiny"]
    assert entry.source == "downloaded" and Path(entry.path) == result.path
    assert registry.resolve("tiny") == ("tiny", result.path)
    assert all(r.headers.get("range") is None for r in hub.requests)  # a fresh download asks for no range


def test_cut_connection_then_resume_sends_range(hub, tiny, tmp_path):
    hub.cut_after = [300_000]
    with pytest.raises(DownloadError, match="connection .* broke after .* run the download again to resume"):
        make(hub, tmp_path).run()
    part = tmp_path / (FILE + ".part")
    have = part.stat().st_size
    assert 0 < have <= 300_000

    result = make(hub, tmp_path).run()
    assert result.state == "done"
    assert ranges(hub) == [None, f"bytes={have}-"]
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == hashlib.sha256(tiny).hexdigest()


def test_broken_connection_is_retried_within_one_run(hub, tiny, tmp_path):
    hub.cut_after = [200_000]
    result = make(hub, tmp_path, retries=2).run()
    assert result.path.read_bytes() == tiny
    assert ranges(hub)[0] is None and ranges(hub)[1].startswith("bytes=")


def test_server_ignoring_range_restarts_from_zero(hub, tiny, tmp_path):
    hub.cut_after = [300_000]
    with pytest.raises(DownloadError):
        make(hub, tmp_path).run()
    hub.ignore_range = True  # answers 200 with the whole file: appending would corrupt it
    result = make(hub, tmp_path).run()
    assert result.path.read_bytes() == tiny


def test_pause_keeps_the_part_and_cancel_deletes_it(hub, tiny, tmp_path):
    d = make(hub, tmp_path)
    d.progress = lambda p: d.pause() if p.done_bytes > 200_000 else None
    first = d.run()
    assert first.state == "paused" and first.path.exists()
    have = first.path.stat().st_size
    d.progress = None
    assert d.run().state == "done"  # the same object runs again: pause was cleared
    assert ranges(hub)[-1] == f"bytes={have}-"
    assert (tmp_path / FILE).read_bytes() == tiny

    other = tmp_path / "other"
    c = make(hub, other)
    c.progress = lambda p: c.cancel() if p.done_bytes > 100_000 else None
    result = c.run()
    assert result.state == "cancelled"
    assert not (other / (FILE + ".part")).exists() and not (other / FILE).exists()


CHILD = """
import sys
sys.path[:0] = [{root!r}]
from engine.models.download import Download
d = Download({repo!r}, {file!r}, {dest!r}, endpoint={url!r}, chunk_size=16384, retries=0, register=False)
d.run()
"""


def test_killed_process_resumes_in_another(hub, tiny, tmp_path):
    """A real crash: kill -9 the downloading process, then resume here to the same sha256."""
    hub.delay_s = 0.1  # 64 KiB every 100 ms: over a second for the whole file
    code = CHILD.format(root=str(ROOT), repo=REPO, file=FILE, dest=str(tmp_path), url=hub.url)
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1"}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    part = tmp_path / (FILE + ".part")
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size >= 200_000):
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the child never got 200 KB"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    child.stderr.close()
    have = part.stat().st_size
    assert 200_000 <= have < len(tiny)

    hub.delay_s = 0
    result = make(hub, tmp_path).run()
    assert ranges(hub)[-1] == f"bytes={have}-"
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == hashlib.sha256(tiny).hexdigest()


def test_corrupt_content_is_refused_and_deleted(hub, tmp_path):
    hub.corrupt = {FILE}
    with pytest.raises(DownloadError, match=r"corrupt: its sha256 is .* expected .* file was deleted"):
        make(hub, tmp_path).run()
    assert list(tmp_path.iterdir()) == []
    assert [m.name for m in registry.list_models()] == [registry.DEFAULT_MODEL]


def test_pinned_sha256_that_differs_from_the_hub_downloads_nothing(hub, tmp_path):
    with pytest.raises(DownloadError, match="changed upstream"):
        make(hub, tmp_path, expected_sha256="0" * 64).run()
    assert hub.gets() == []


def test_gated_repo_needs_a_token(hub, tiny, tmp_path):
    hub.add("meta/gated-GGUF", FILE, tiny)
    hub.gated = {"meta/gated-GGUF"}
    for token in (None, "hf_wrong"):
        d = Download("meta/gated-GGUF", FILE, tmp_path, endpoint=hub.url, token=token)
        with pytest.raises(DownloadError) as e:
            d.run()
        msg = str(e.value)
        assert msg.startswith("meta/gated-GGUF is gated")
        assert (
            "accept its licence on huggingface.co" in msg
            and "HF_TOKEN" in msg
            and "huggingface-cli login" in msg
        )
    assert hub.gets() == []
    ok = Download(
        "meta/gated-GGUF", FILE, tmp_path, endpoint=hub.url, token=hub.good_token, name="gated"
    ).run()
    assert ok.path.read_bytes() == tiny
    assert hub.requests[-1].headers["authorization"] == f"Bearer {hub.good_token}"


def test_token_comes_from_hf_token(hub, tiny, tmp_path, monkeypatch):
    hub.add("meta/gated-GGUF", FILE, tiny)
    hub.gated = {"meta/gated-GGUF"}
    monkeypatch.setenv("HF_TOKEN", hub.good_token)
    assert Download("meta/gated-GGUF", FILE, tmp_path, endpoint=hub.url).run().state == "done"


def test_missing_file_and_missing_repo(hub, tmp_path):
    with pytest.raises(DownloadError, match=f"no file nope.gguf in repo {REPO}"):
        Download(REPO, "nope.gguf", tmp_path, endpoint=hub.url).run()
    with pytest.raises(DownloadError, match="no repo someone/missing-GGUF"):
        Download("someone/missing-GGUF", FILE, tmp_path, endpoint=hub.url).run()


def test_offline_mode_says_so(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DownloadError, match=r"offline mode is on \(HF_HUB_OFFLINE=1\)"):
        make(hub, tmp_path).run()
    assert hub.requests == []


def test_unreachable_endpoint_says_so(tmp_path):
    with pytest.raises(DownloadError, match="cannot reach http://127.0.0.1:9"):
        Download(REPO, FILE, tmp_path).run()  # the default endpoint, pointed at a closed port above


def test_not_enough_disk_space_before_starting(hub, tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(
        dl_mod.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000)
    )
    with pytest.raises(
        DownloadError, match=rf"not enough disk space: need 1\.1 MB, 1\.0 KB free in {tmp_path}"
    ):
        make(hub, tmp_path).run()
    assert hub.gets() == []


def test_disk_full_during_the_transfer(hub, tiny, tmp_path, monkeypatch):
    """ENOSPC from a write: the same clear message, and the part keeps only whole chunks."""
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, b):
            if self.written + len(b) > 250_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(b)
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        return FullDisk(f) if str(path).endswith(".part") and "b" in mode and "r" not in mode else f

    monkeypatch.setattr(dl_mod, "open", fake_open, raising=False)
    with pytest.raises(DownloadError, match=f"not enough disk space: need .* free in {tmp_path}"):
        make(hub, tmp_path).run()
    part = tmp_path / (FILE + ".part")
    assert part.stat().st_size % (16 * 1024) == 0  # whole chunks only: resumable once space is freed
    monkeypatch.delattr(dl_mod, "open")  # space freed
    assert make(hub, tmp_path).run().path.read_bytes() == tiny


def test_a_file_that_is_not_gguf_is_not_registered(hub, tmp_path):
    hub.add(REPO, "fake.gguf", b"not a gguf at all" * 100)
    with pytest.raises(DownloadError, match="not a usable GGUF file"):
        Download(REPO, "fake.gguf", tmp_path, endpoint=hub.url).run()
    assert not (tmp_path / "fake.gguf").exists()


def test_cli_download_of_a_catalogue_model(hub, tiny, tmp_path, monkeypatch, capsys):
    """`chatfactory models download smollm2-135m-instruct --quant Q8_0` against the local hub
    (the library's default endpoint is the local server here, as HF_ENDPOINT would make it)."""
    from engine.cli import main
    from engine.models.catalogue import get

    m = get("smollm2-135m-instruct")
    hub.add(m.repo, m.file("Q8_0").filename, tiny)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    assert main(["models", "download", "smollm2-135m-instruct", "--quant", "q8_0"]) == 0
    out, err = capsys.readouterr()
    path = tmp_path / "cache" / "models" / m.file("Q8_0").filename
    assert out.strip() == f"registered smollm2-135m-instruct-q8_0: {path}"
    assert "100 %" in err
    assert path.read_bytes() == tiny

    assert main(["models", "download", "smollm2-135m-instruct", "--quant", "Q4_K_M"]) == 1  # not served here
    assert f"error: no file {m.file('Q4_K_M').filename} in repo {m.repo}" in capsys.readouterr().err


@pytest.mark.slow
def test_downloaded_real_model_chats(smollm2_path, tmp_path):
    """The bundled 98 MB SmolLM2 served by the local hub, downloaded with a cut on the way, then
    loaded by llama.cpp from the registry and asked one question."""
    from engine.runtime import LlamaRuntime, RuntimeSettings, Sampling

    server = HubServer(cut_after=[40_000_000])
    sha = server.add("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "smollm2.gguf", smollm2_path.read_bytes())
    server.start()
    try:
        d = Download("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "smollm2.gguf", tmp_path, endpoint=server.url,
                     name="smol-downloaded", retries=1)  # fmt: skip
        result = d.run()
    finally:
        server.stop()
    assert result.sha256 == sha
    name, path = registry.resolve("smol-downloaded")
    rt = LlamaRuntime(path, RuntimeSettings(n_ctx=512, n_batch=64), name=name)
    try:
        prompt = rt.build_prompt(
            [{"role": "user", "content": "What is the capital of France?"}], max_tokens=16
        )
        answer = "".join(rt.generate(prompt.tokens, Sampling(max_tokens=16, seed=1, temperature=0)))
    finally:
        rt.close()
    assert answer.strip()
