"""A local stand-in for the Hugging Face Hub's file endpoint, for download tests.

Serves `/{repo}/resolve/{revision}/{filename}` on 127.0.0.1 (port 0: the OS picks one) with HEAD
and GET, byte ranges (206), and the headers huggingface-hub reads for a file's metadata
(X-Repo-Commit, ETag and X-Linked-Etag = the quoted sha256, X-Linked-Size, Content-Length).
Like the real Hub, a large file's resolve URL redirects (302) to a content URL (`/cdn/...`)
unless `redirect=False`. Failure modes are switches on the server:

- `gated`: repos that answer 401 (no token) or 403 (wrong token) with X-Error-Code: GatedRepo,
  unless the request carries `Authorization: Bearer <good_token>`;
- `corrupt`: file names whose content is served with some bytes flipped (metadata unchanged);
- `cut_after`: bytes after which a GET's connection is dropped (once per entry in the list);
- `ignore_range`: answer 200 with the whole file even when a Range is asked for;
- `delay_s`: a pause per 64 KiB sent, so that a test can kill a client mid-transfer.

Every request is recorded (`requests`: method, path, headers); a request whose Host is not
127.0.0.1 fails the test, so nothing here can be mistaken for the real Hub.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_CDN = re.compile(r"^/cdn/(?P<repo>[^/]+/[^/]+)/(?P<file>.+)$")
SEND = 64 * 1024


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class HubServer:
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)
    good_token: str = "hf_good_token"
    corrupt: set[str] = field(default_factory=set)
    cut_after: list[int] = field(default_factory=list)
    ignore_range: bool = False
    redirect: bool = True
    delay_s: float = 0.0
    requests: list[Recorded] = field(default_factory=list)
    host_errors: list[str] = field(default_factory=list)

    def add(self, repo: str, filename: str, data: bytes) -> str:
        """Serve `data` as `repo/filename`; returns its sha256."""
        self.files[(repo, filename)] = data
        return hashlib.sha256(data).hexdigest()

    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def gets(self, filename: str | None = None) -> list[Recorded]:
        """The GET requests that fetched bytes (the content URL after a redirect, or resolve)."""
        out = [
            r for r in self.requests if r.method == "GET" and (self.redirect == r.path.startswith("/cdn/"))
        ]
        return [r for r in out if filename is None or r.path.endswith("/" + filename)]


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        hub = self.hub
        headers = {k.lower(): v for k, v in self.headers.items()}
        hub.requests.append(Recorded(self.command, self.path, headers))
        if not headers.get("host", "").startswith("127.0.0.1:"):
            hub.host_errors.append(headers.get("host", ""))
            return self._error(400, "BadHost", "only 127.0.0.1 is served")
        m = _RESOLVE.match(self.path) or _CDN.match(self.path)
        if not m:
            return self._error(404, "RepoNotFound", "Repository not found")
        repo, filename = m["repo"], m["file"]
        if repo in hub.gated:
            auth = headers.get("authorization", "")
            if not auth:
                return self._error(401, "GatedRepo", f"Access to model {repo} is restricted. Please log in.")
            if auth != f"Bearer {hub.good_token}":
                return self._error(403, "GatedRepo", f"Access to model {repo} is restricted.")
        if not any(r == repo for r, _ in hub.files):
            return self._error(401, "RepoNotFound", "Repository not found")
        data = hub.files.get((repo, filename))
        if data is None:
            return self._error(404, "EntryNotFound", f"{filename} does not exist on main")
        sha = hashlib.sha256(data).hexdigest()
        if self.path.startswith("/") and _RESOLVE.match(self.path) and hub.redirect:
            self.send_response(302)
            self.send_header("Location", f"/cdn/{repo}/{filename}")
            self._meta(sha, len(data))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        start = 0
        rng = re.match(r"bytes=(\d+)-$", headers.get("range", ""))
        if rng and not hub.ignore_range:
            start = int(rng[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self._meta(sha, len(data))
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if not body:
            return None
        payload = data[start:]
        if filename in hub.corrupt:
            payload = bytes(b ^ 0xFF if i % 4099 == 7 else b for i, b in enumerate(payload))
        cut = hub.cut_after.pop(0) if hub.cut_after else None
        sent = 0
        while sent < len(payload):
            piece = payload[sent : sent + SEND]
            if cut is not None and sent + len(piece) > cut:
                self.wfile.write(piece[: max(0, cut - sent)])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # drop the connection mid-body
                return None
            try:
                self.wfile.write(piece)
            except (BrokenPipeError, ConnectionResetError):
                return None
            sent += len(piece)
            if hub.delay_s:
                time.sleep(hub.delay_s)
        return None

    def _meta(self, sha: str, size: int) -> None:
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{sha}"')
        self.send_header("X-Linked-Etag", f'"{sha}"')
        self.send_header("X-Linked-Size", str(size))

    def _error(self, status: int, code: str, message: str) -> None:
        body = f'{{"error": "{message}"}}'.encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def make_tiny_gguf(path: Path, tensor_bytes: int = 1 << 20, seed: int = 0) -> bytes:
    """A small but valid GGUF (llama architecture keys, a few f32 tensors, ~`tensor_bytes` of
    random weights so that a flipped byte changes the hash); returns its bytes."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test")
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)  # ALL_F32
    w.add_tensor("token_embd.weight", rng.standard_normal((32, 64), dtype=np.float32))
    rows = max(1, tensor_bytes // (64 * 4))
    w.add_tensor("blk.0.ffn_up.weight", rng.standard_normal((rows, 64), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path).read_bytes()
