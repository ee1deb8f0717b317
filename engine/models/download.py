"""Downloading a GGUF file from the Hugging Face Hub: resumable, verified, then registered.

huggingface-hub does what it knows best: the file's URL (`hf_hub_url`), the endpoint
(`HF_ENDPOINT`, or `endpoint=`), the user's token (`get_token()`: HF_TOKEN or `hf auth login`),
offline mode (`HF_HUB_OFFLINE`), the metadata request that gives the file's size and sha256
(`get_hf_file_metadata`: the LFS object's ETag / X-Linked-Etag), the HTTP client (`get_session()`,
which honours the user's proxy and certificate settings and refuses to connect in offline mode)
and its error types (gated repo, missing file). The byte transfer is done here, because the app
needs what `hf_hub_download` does not expose: a progress callback with rate and ETA, pause and
cancel from another thread, and a partial file at a known place that survives a crash or a
restart of the app:

- bytes go to `<dest>/<file>.part`; a later run sends `Range: bytes=N-` and appends (a server
  answering 200 instead of 206 ignores ranges: the part is discarded and the transfer restarts);
- the sha256 is computed while writing (after re-hashing the existing part when resuming) and
  compared before the file is renamed, atomically, to its final name; a mismatch deletes it;
- the free disk space is checked against the bytes still to come before starting, and a full
  disk during the transfer gives the same message;
- the finished file is checked as GGUF (`read_gguf_info`) and added to the registry
  (`source="downloaded"`).

`Download.run()` blocks (call it from a worker thread); `pause()` and `cancel()` set flags it
checks between chunks. A paused download keeps its `.part` for the next `run()`; a cancelled one
deletes it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import registry
from .gguf_info import GGUFError, read_gguf_info

CHUNK = 1 << 20  # bytes per read; also how often pause/cancel are noticed
PROGRESS_EVERY_S = 0.1  # at most ten progress callbacks a second (plus the first and the last)
_SHA256_HEX = frozenset("0123456789abcdef")


class DownloadError(RuntimeError):
    """A download that cannot go on; the message says why and what the user can do."""


@dataclass(frozen=True)
class DownloadProgress:
    done_bytes: int  # of the whole file, including a resumed part
    total_bytes: int | None
    rate_bytes_per_s: float  # over the last few seconds
    eta_s: float | None  # None while the rate is unknown


@dataclass(frozen=True)
class DownloadResult:
    state: Literal["done", "paused", "cancelled"]
    path: Path  # the final file when done, else the .part
    sha256: str | None = None
    entry: registry.ModelEntry | None = None  # the registry entry when done


def default_dest_dir() -> Path:
    """Where downloaded models go: `<cache>/models` (`engine.paths.cache_dir`)."""
    from engine.paths import cache_dir

    return cache_dir() / "models"


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Download:
    """One file from one repo. `model_id_or_repo` is a catalogue id (then `filename` may be a
    quantization such as "Q4_K_M", or None for the entry's default, and the catalogue's sha256, if
    any, is pinned) or a Hugging Face repo id (then `filename` is the file's path in the repo)."""

    def __init__(
        self,
        model_id_or_repo: str,
        filename: str | None = None,
        dest_dir: str | Path | None = None,
        *,
        endpoint: str | None = None,
        token: str | bool | None = None,
        expected_sha256: str | None = None,
        progress: Callable[[DownloadProgress], None] | None = None,
        revision: str = "main",
        name: str | None = None,
        register: bool = True,
        retries: int = 3,
        chunk_size: int = CHUNK,
        timeout_s: float = 30.0,
        progress_every_s: float = PROGRESS_EVERY_S,
    ):
        self.catalogue_entry = None
        self.gated = False
        if "/" in model_id_or_repo:
            if not filename:
                raise ValueError(f"which file of {model_id_or_repo}? pass its file name")
            self.repo, self.filename = model_id_or_repo, filename
        else:
            from .catalogue import get

            m = get(model_id_or_repo)
            looks_like_file = filename is not None and filename.endswith(".gguf")
            f = (
                next((f for f in m.files.values() if f.filename == filename), None)
                if looks_like_file
                else None
            )
            f = f or m.file(None if looks_like_file else filename)
            self.repo, self.filename, self.catalogue_entry, self.gated = m.repo, f.filename, m, m.gated
            expected_sha256 = expected_sha256 or f.sha256
            name = name or m.registry_name(f.quant)
        self.dest_dir = Path(dest_dir) if dest_dir else default_dest_dir()
        self.endpoint, self.token, self.revision = endpoint, token, revision
        self.expected_sha256 = expected_sha256.lower() if expected_sha256 else None
        self.progress, self.name, self.register = progress, name, register
        self.retries, self.chunk_size, self.timeout_s = retries, chunk_size, timeout_s
        self.progress_every_s = progress_every_s
        self._pause, self._cancel = threading.Event(), threading.Event()

    # ---- control, from any thread ---------------------------------------------------------------
    def pause(self) -> None:
        """Stop after the current chunk and keep the .part; the next run() resumes it."""
        self._pause.set()

    def cancel(self) -> None:
        """Stop after the current chunk and delete the .part."""
        self._cancel.set()

    @property
    def dest(self) -> Path:
        return self.dest_dir / Path(self.filename).name

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part")

    # ---- the work ---------------------------------------------------------------------------------
    def run(self) -> DownloadResult:
        """Download (or resume), verify, rename, register. Blocks; raises DownloadError."""
        from huggingface_hub import constants

        if _offline(constants):
            raise DownloadError(
                f"cannot download {self.filename} from {self.repo}: Hugging Face offline mode is on "
                "(HF_HUB_OFFLINE=1); unset it to download, or add a GGUF file you already have"
            )
        endpoint = (self.endpoint or constants.ENDPOINT).rstrip("/")
        token = self._token()
        url, size, sha256 = self._metadata(endpoint, token)
        self.dest_dir.mkdir(parents=True, exist_ok=True)
        if self.dest.exists() and self.dest.stat().st_size == size and _sha256_file(self.dest) == sha256:
            self.part.unlink(missing_ok=True)  # already here (a previous run finished): just register it
            return self._finish(sha256)
        for attempt in range(self.retries + 1):
            try:
                state = self._transfer(url, token, size, sha256)
                break
            except _Interrupted as e:
                if attempt == self.retries:
                    raise DownloadError(
                        f"the connection to {endpoint} broke after {human(e.done)} of {human(size)} of "
                        f"{self.filename} ({e.cause}); run the download again to resume from there"
                    ) from None
                time.sleep(min(2**attempt, 8) * 0.25)
        if state != "done":
            if state == "cancelled":
                self.part.unlink(missing_ok=True)
            (self._pause if state == "paused" else self._cancel).clear()
            return DownloadResult(state, self.part)
        return self._finish(sha256)

    def _token(self) -> str | bool | None:
        if self.token is not None:
            return self.token
        from huggingface_hub import get_token

        return get_token()  # HF_TOKEN, or the token file written by `hf auth login`

    def _metadata(self, endpoint: str, token: str | bool | None) -> tuple[str, int, str]:
        """(url, size, sha256) from the hub's metadata; the hub's error types become clear messages."""
        from huggingface_hub import get_hf_file_metadata

        url = file_url(self.repo, self.filename, self.revision, endpoint)
        try:
            meta = get_hf_file_metadata(url, token=token, endpoint=endpoint, timeout=self.timeout_s)
        except Exception as e:  # noqa: BLE001 (every failure becomes one clear message)
            raise self._explain(e, endpoint, token) from None
        if meta.size is None:
            raise DownloadError(
                f"{endpoint} did not say how large {self.filename} is; cannot download it safely"
            )
        etag = (meta.etag or "").strip('"').lower()
        hub_sha = etag if len(etag) == 64 and set(etag) <= _SHA256_HEX else None
        if self.expected_sha256 and hub_sha and hub_sha != self.expected_sha256:
            raise DownloadError(
                f"{self.repo}/{self.filename} on {endpoint} has sha256 {hub_sha}, but the catalogue expects "
                f"{self.expected_sha256}: the file changed upstream; not downloading it"
            )
        sha = self.expected_sha256 or hub_sha
        if sha is None:
            raise DownloadError(
                f"{endpoint} publishes no sha256 for {self.repo}/{self.filename} (not an LFS file?) and none "
                "was given; refusing to download a file that cannot be verified"
            )
        return url, meta.size, sha

    def _explain(self, e: Exception, endpoint: str, token: str | bool | None) -> DownloadError:
        from huggingface_hub import errors

        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(e, errors.OfflineModeIsEnabled):
            return DownloadError(
                f"cannot download {self.filename}: Hugging Face offline mode is on (HF_HUB_OFFLINE=1)"
            )
        if isinstance(e, errors.GatedRepoError) or (status in (401, 403) and (self.gated or token)):
            why = "your token has no access yet" if token else "no token is set"
            return DownloadError(
                f"{self.repo} is gated ({why}): accept its licence on huggingface.co and set a token "
                "(HF_TOKEN or `huggingface-cli login`)"
            )
        if isinstance(e, errors.RevisionNotFoundError):
            return DownloadError(f"{self.repo} has no revision {self.revision!r}")
        if isinstance(e, errors.EntryNotFoundError) or status == 404:
            return DownloadError(f"no file {self.filename} in repo {self.repo} (at {self.revision})")
        if isinstance(e, errors.RepositoryNotFoundError) or status in (401, 403):
            return DownloadError(
                f"no repo {self.repo} on {endpoint}, or it is private or gated: if it exists, accept its "
                "licence on huggingface.co and set a token (HF_TOKEN or `huggingface-cli login`)"
            )
        if isinstance(e, errors.HfHubHTTPError):
            return DownloadError(f"{endpoint} refused {self.repo}/{self.filename}: {str(e).splitlines()[0]}")
        return DownloadError(
            f"cannot reach {endpoint} to download {self.filename}: {e.__class__.__name__}: {e}"
        )

    def _transfer(self, url: str, token: str | bool | None, size: int, sha256: str) -> str:
        """Bytes into the .part until it has `size` bytes. Returns "done", "paused" or "cancelled";
        raises _Interrupted on a broken connection (the part keeps what arrived)."""
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        session = get_session()
        http = _http_module(session)

        part = self.part
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        self._check_space(size - have)
        hasher = hashlib.sha256()
        if have:
            _hash_into(hasher, part)  # resuming: the sha256 covers the whole file, old bytes included
        meter = _Meter(size, have, self.progress, self.progress_every_s)
        if have < size:
            headers = build_hf_headers(token=token)
            headers["Accept-Encoding"] = "identity"  # byte ranges of the file itself, not of a gzip stream
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                with session.stream("GET", url, headers=headers, follow_redirects=True,
                                          timeout=http.Timeout(self.timeout_s)) as r:  # fmt: skip
                    if r.status_code == 416:  # the range is past the end: the part is wrong, start over
                        part.unlink(missing_ok=True)
                        raise _Interrupted(0, "the server refused the resume range")
                    if r.status_code >= 400:
                        r.read()
                        try:
                            hf_raise_for_status(r)
                        except Exception as e:  # noqa: BLE001
                            raise self._explain(e, url.split("/", 3)[2], token) from None
                    if have and r.status_code != 206:  # the server ignored Range: restart from byte 0
                        have, hasher = 0, hashlib.sha256()
                        meter = _Meter(size, 0, self.progress, self.progress_every_s)
                    with open(part, "ab" if have else "wb") as f:
                        state = self._copy(r.iter_bytes(self.chunk_size), f, hasher, meter, have, size)
            except (http.TransportError, http.StreamError) as e:
                raise _Interrupted(
                    part.stat().st_size if part.exists() else 0, str(e) or type(e).__name__
                ) from None
            if state != "done":
                return state
        meter.report(force=True)
        done = part.stat().st_size
        if done != size:
            raise _Interrupted(done, f"the server ended the file at {done} bytes")
        got = hasher.hexdigest()
        if got != sha256:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{self.filename} from {self.repo} is corrupt: its sha256 is {got}, expected {sha256}; "
                "the downloaded file was deleted, run the download again"
            )
        os.replace(part, self.dest)  # atomic: the final name only ever holds a verified file
        return "done"

    def _copy(self, chunks, f, hasher, meter: _Meter, have: int, size: int) -> str:
        done = have
        for chunk in chunks:
            if self._cancel.is_set():
                return "cancelled"
            if self._pause.is_set():
                return "paused"
            if done + len(chunk) > size:
                raise _Interrupted(done, f"the server sent more than the {size} bytes announced")
            try:
                f.write(chunk)
                f.flush()
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                with contextlib.suppress(OSError):
                    f.truncate(done)  # keep only whole chunks: the part stays resumable once space is freed
                free = shutil.disk_usage(self.dest_dir).free
                raise DownloadError(
                    f"not enough disk space: need {human(size - done)}, {human(free)} free in {self.dest_dir}"
                ) from None
            hasher.update(chunk)
            done += len(chunk)
            meter.update(done)
        if self._cancel.is_set():
            return "cancelled"
        return "paused" if self._pause.is_set() and done < size else "done"

    def _check_space(self, remaining: int) -> None:
        free = shutil.disk_usage(self.dest_dir).free
        if remaining > free:
            raise DownloadError(
                f"not enough disk space: need {human(remaining)}, {human(free)} free in {self.dest_dir}"
            )

    def _finish(self, sha256: str) -> DownloadResult:
        try:
            read_gguf_info(self.dest)
        except GGUFError as e:
            self.dest.unlink(missing_ok=True)
            raise DownloadError(
                f"{self.repo}/{self.filename} is not a usable GGUF file ({e}); deleted it"
            ) from None
        entry = registry.add_model(self.dest, self.name, source="downloaded") if self.register else None
        return DownloadResult("done", self.dest, sha256, entry)


class _Interrupted(Exception):
    def __init__(self, done: int, cause: str):
        super().__init__(cause)
        self.done, self.cause = done, cause


class _Meter:
    """Progress with a rate over the last ~3 seconds, throttled to PROGRESS_EVERY_S."""

    def __init__(self, total: int | None, done: int, callback: Callable[[DownloadProgress], None] | None,
                 every_s: float = PROGRESS_EVERY_S):  # fmt: skip
        self.total, self.done, self.callback, self.every_s = total, done, callback, every_s
        now = time.monotonic()
        self.samples: list[tuple[float, int]] = [(now, done)]
        self.last_report = 0.0
        self.report(force=True)

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > 3.0:
            self.samples.pop(0)
        self.report()

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.callback is None or (not force and now - self.last_report < self.every_s):
            return
        self.last_report = now
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        rate = (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 and self.total is not None else None
        self.callback(DownloadProgress(self.done, self.total, rate, eta))


def _offline(constants) -> bool:
    is_offline = getattr(constants, "is_offline_mode", None)  # a function since huggingface-hub 1.x
    return bool(is_offline()) if callable(is_offline) else bool(constants.HF_HUB_OFFLINE)


def _http_module(session):
    """The HTTP library behind huggingface-hub's client: httpx (hub 1.x) or httpx2 (hub 2.x), which
    share an API. Its exception and timeout types are taken from it rather than imported by name,
    so that this module follows the hub's choice. (huggingface-hub 0.x used requests, whose session
    has no `stream()`: the app needs 1.0 or later.)"""
    module = sys.modules.get(type(session).__module__.split(".")[0])
    if module is None or not hasattr(session, "stream") or not hasattr(module, "TransportError"):
        raise DownloadError(
            f"huggingface-hub's HTTP client ({type(session).__module__}) is not httpx-like; "
            "chatfactory needs huggingface-hub 1.0 or later"
        )
    return module


def file_url(repo: str, filename: str, revision: str, endpoint: str) -> str:
    """`hf_hub_url` on `endpoint`. hf_hub_url swaps in `endpoint` only where its URL template starts
    with `constants.ENDPOINT`, which is no longer true once ENDPOINT was changed after import (a
    settings page, a test): then the template's own base is replaced here, so the request never
    silently goes to the default host."""
    from huggingface_hub import constants, hf_hub_url

    url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint)
    if not url.startswith(endpoint + "/"):
        base = constants.HUGGINGFACE_CO_URL_TEMPLATE.split("/{repo_id}", 1)[0]
        if not url.startswith(base + "/"):
            raise DownloadError(f"cannot build the URL of {repo}/{filename} on {endpoint} (got {url})")
        url = endpoint + url[len(base) :]
    return url


def _hash_into(hasher, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            hasher.update(block)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    _hash_into(h, path)
    return h.hexdigest()


def download(model_id: str, quant: str | None = None, **kwargs) -> DownloadResult:
    """`Download(model_id, quant, **kwargs).run()`: a catalogue model, blocking."""
    return Download(model_id, quant, **kwargs).run()
