"""A real, throwaway PostgreSQL server for tests: found (or apt-installed) on this machine,
initdb'd into a temporary folder, started on a free loopback port, removed afterwards.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` system user.
Returns None (with the reason) when no server can be had, so tests skip with that reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _install() -> str | None:
    """apt-get install postgresql; returns why not, or None on success."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "PostgreSQL is not installed and cannot be apt-installed (not root or no apt-get)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        if r.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {r.stderr.strip()[-300:]}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="cf-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in args]
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        if self.as_user:
            shutil.chown(self.root, self.as_user, self.as_user)
        self._run(self.bindir / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-o", opts, "-l", self.root / "log", "-w", "start")

    def create_database(self, name: str) -> str:
        self._run(self.bindir / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> tuple[PostgresServer | None, str]:
    bindir = _bindir()
    if bindir is None:
        why = _install()
        if why:
            return None, why
        bindir = _bindir()
        if bindir is None:
            return None, "postgresql installed but initdb not found"
    server = PostgresServer(bindir)
    try:
        server.start()
    except subprocess.CalledProcessError as e:
        server.stop()
        return None, f"could not start PostgreSQL: {e.stderr.strip()[-300:]}"
    for _ in range(50):  # pg_ctl -w waits, but be sure the TCP port answers
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    return server, ""
