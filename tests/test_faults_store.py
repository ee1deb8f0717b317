"""kill -9 during an export, an import and a schema migration: nothing corrupt, nothing partial
presented as complete."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.store import Store
from engine.store.transfer import export_to_file

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "store" / "schema_v1.db"
CYCLES = 3


def big_store(path: Path, sessions: int = 400, turns: int = 10) -> None:
    """Enough history that an export or import takes a while to kill in the middle of."""
    with Store.open(path) as store, store.transaction():
        for s in range(sessions):
            sid = store.create_session(title=f"chat {s}")
            for t in range(turns):
                store.add_message(sid, "user", f"question {s}.{t} " + "words " * 40)
                store.add_message(sid, "assistant", f"answer {s}.{t} " + "more words " * 60, finish_reason="stop")


def cli(*args: str, home: Path) -> subprocess.Popen:
    env = {**os.environ, "CHATFACTORY_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "engine.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def full_run(*args: str, home: Path) -> float:
    """How long the command takes when nothing kills it: the kills aim inside that window."""
    t0 = time.perf_counter()
    assert cli(*args, home=home).wait() == 0
    return time.perf_counter() - t0


def kill_after(proc: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL after `seconds`; True if the process was still running then."""
    time.sleep(seconds)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return running


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.db"
    big_store(path)
    return path


def test_kill_9_during_export_never_leaves_a_file_that_looks_complete(source, tmp_path):
    rng = random.Random(3)
    killed = 0
    args = ("sessions", "export", "--db", str(source), "--format", "json", "--out")
    whole = full_run(*args, str(tmp_path / "whole.json"), home=tmp_path)
    for cycle in range(CYCLES):
        out = tmp_path / f"export-{cycle}.json"
        proc = cli(*args, str(out), home=tmp_path)
        killed += kill_after(proc, rng.uniform(0.6, 0.95) * whole)
        if out.exists():  # the rename happened: the whole export is there
            assert len(json.loads(out.read_text())["sessions"]) == 400
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".export-{cycle}.json.")]
        assert all(name.endswith(".tmp") for name in leftovers)  # a hidden temp file at most
    assert killed >= 1


def test_kill_9_during_import_imports_all_or_nothing(source, tmp_path):
    exported = tmp_path / "all.json"
    with Store.open(source, mark_interrupted=False) as store:
        export_to_file(store, exported)
    rng = random.Random(4)
    killed = 0
    scratch = tmp_path / "scratch.db"
    whole = full_run("sessions", "import", "--db", str(scratch), str(exported), home=tmp_path)
    for cycle in range(CYCLES):
        db = tmp_path / f"target-{cycle}.db"
        with Store.open(db) as store:
            store.create_session(title="already here")
        proc = cli("sessions", "import", "--db", str(db), str(exported), home=tmp_path)
        killed += kill_after(proc, rng.uniform(0.6, 0.95) * whole)
        with Store.open(db) as store:
            assert store.check_integrity() == []
            n = store.count_sessions()
            assert n in (1, 401), f"cycle {cycle}: {n} sessions: a half-done import"
            if n == 401:
                assert sum(len(store.messages(s["id"])) for s in store.list_sessions(limit=1000)) == 8000
    assert killed >= 1


def counts(db: Path) -> tuple[int, int]:
    with Store.open(db) as store:  # finishes the migration if a kill came first
        assert store.check_integrity() == []
        sessions = store.list_sessions(limit=1000, archived=None)
        for s in sessions:
            assert "archived" in s and "template_version" in s  # the v2 columns
        return len(sessions), sum(len(store.messages(s["id"])) for s in sessions)


def test_kill_9_during_migration_loses_nothing(tmp_path):
    clean = tmp_path / "clean.db"
    shutil.copy(FIXTURE_V1, clean)
    expected = counts(clean)
    assert expected[0] > 0 and expected[1] > 0
    rng = random.Random(5)
    for cycle in range(CYCLES * 2):
        db = tmp_path / f"v1-{cycle}.db"
        shutil.copy(FIXTURE_V1, db)
        code = f"from engine.store import Store; Store.open({str(db)!r}).close()"
        proc = subprocess.Popen([sys.executable, "-c", code])
        kill_after(proc, rng.uniform(0.2, 1.2))  # python start + imports take about this long
        assert counts(db) == expected, f"cycle {cycle}"
