"""A resumable run directory: stages in order, each skipped when its config and inputs are unchanged.

Each stage writes into `run_dir/<stage>/` and, when it finishes, a `DONE.json` holding a
fingerprint of (its own config, the fingerprints of the stages it reads) and its headline
numbers. Re-running skips a stage whose DONE.json fingerprint matches; a stage killed midway
has no DONE.json and runs again: stages that train resume from their own checkpoints when its
STARTED.json fingerprint still matches; otherwise the stage folder is cleared first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DONE_FILE = "DONE.json"
STARTED_FILE = "STARTED.json"


@dataclass
class Stage:
    name: str
    run: Callable[[StageContext], dict]  # returns the stage's headline numbers (JSON-able)
    inputs: tuple[str, ...] = ()
    expected_s: float = 60.0  # rough duration, for the progress display's time-left estimate


@dataclass
class StageContext:
    run_dir: Path
    stage_dir: Path
    config: dict  # this stage's section of the run config
    full_config: dict
    results: dict[str, dict] = field(default_factory=dict)  # headline numbers of earlier stages
    progress: Callable[[float, str], None] = lambda fraction, note="": None

    def input_dir(self, stage: str) -> Path:
        return self.run_dir / stage


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_done(stage_dir: Path, name: str = DONE_FILE) -> dict | None:
    path = stage_dir / name
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # unreadable marker: treat the stage as not done


class Progress:
    """One status line: stage i/n, its progress bar, elapsed and estimated time left."""

    def __init__(self, stages: list[Stage], stream=sys.stderr):
        self.stages = stages
        self.stream = stream
        self.start = time.time()
        self.current = 0
        self.stage_start = time.time()
        self.last = 0.0
        self.tty = stream.isatty()

    def begin(self, index: int) -> None:
        self.current = index
        self.stage_start = time.time()
        self.update(0.0, "starting")

    def update(self, fraction: float, note: str = "") -> None:
        now = time.time()
        if now - self.last < 0.5 and 0 < fraction < 1:
            return
        self.last = now
        stage = self.stages[self.current]
        fraction = min(max(fraction, 0.0), 1.0)
        spent = now - self.stage_start
        stage_left = spent / fraction * (1 - fraction) if fraction > 0.02 else stage.expected_s - spent
        later = sum(s.expected_s for s in self.stages[self.current + 1 :])
        left = max(stage_left, 0) + later
        bar = "#" * int(fraction * 20) + "-" * (20 - int(fraction * 20))
        line = (
            f"[{self.current + 1}/{len(self.stages)}] {stage.name:<10} [{bar}] {fraction * 100:5.1f}%  "
            f"elapsed {_mmss(now - self.start)}  left ~{_mmss(left)}  {note}"
        )
        if self.tty:
            self.stream.write("\r\033[K" + line[:200])
        else:
            # in logs: one line per 10% step to keep them readable
            bucket = int(fraction * 10)
            if getattr(self, "_bucket", None) == (self.current, bucket):
                return
            self._bucket = (self.current, bucket)
            self.stream.write(line + "\n")
        self.stream.flush()

    def end(self, note: str) -> None:
        self.update(1.0, note)
        if self.tty:
            self.stream.write("\n")


def _mmss(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 60:d}:{s % 60:02d}"


def run_stages(
    stages: list[Stage],
    run_dir: Path,
    config: dict,
    from_stage: str | None = None,
    until_stage: str | None = None,
    log=print,
) -> dict[str, dict]:
    """Run the stages in order; returns every stage's headline numbers (run or skipped).

    from_stage: re-run from this stage on (earlier ones must be done); until_stage: stop after it.
    """
    names = [s.name for s in stages]
    for opt, value in (("--from", from_stage), ("--until", until_stage)):
        if value is not None and value not in names:
            raise ValueError(f"{opt}: unknown stage {value!r} (stages: {', '.join(names)})")
    lo = names.index(from_stage) if from_stage else 0
    hi = names.index(until_stage) if until_stage else len(stages) - 1
    run_dir.mkdir(parents=True, exist_ok=True)
    prints: dict[str, str] = {}
    results: dict[str, dict] = {}
    progress = Progress(stages)
    for i, stage in enumerate(stages):
        stage_dir = run_dir / stage.name
        section = config.get(stage.name, {})
        missing = [d for d in stage.inputs if d not in prints]
        if missing:
            raise RuntimeError(f"stage {stage.name}: inputs {missing} were not produced")
        fp = fingerprint({"config": section, "inputs": {d: prints[d] for d in stage.inputs}})
        done = read_done(stage_dir)
        if i < lo or i > hi:
            if done is None:
                if i < lo:
                    raise RuntimeError(f"--from {from_stage}: earlier stage {stage.name} has not been run in {run_dir}")
                break
            prints[stage.name], results[stage.name] = done["fingerprint"], done.get("results", {})
            continue
        forced = from_stage is not None  # --from STAGE re-runs that stage and the ones after it
        if done is not None and done.get("fingerprint") == fp and not forced:
            log(f"[{i + 1}/{len(stages)}] {stage.name}: unchanged, skipped")
            prints[stage.name], results[stage.name] = fp, done.get("results", {})
            continue
        started = read_done(stage_dir, STARTED_FILE)
        if done is not None or (started is not None and started.get("fingerprint") != fp):
            # a finished stage run again, or a killed one whose config or inputs changed since: its
            # files (checkpoints included) belong to another config, so they go; only a killed
            # stage with the same fingerprint keeps its checkpoints to resume from
            shutil.rmtree(stage_dir)
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(stage_dir / STARTED_FILE, {"fingerprint": fp, "started": time.time()})
        ctx = StageContext(run_dir, stage_dir, section, config, results, progress.update)
        progress.begin(i)
        t0 = time.time()
        out = stage.run(ctx) or {}
        out.setdefault("seconds", round(time.time() - t0, 1))
        progress.end(f"done in {out['seconds']:.0f}s")
        write_json_atomic(stage_dir / DONE_FILE, {"fingerprint": fp, "results": out, "finished": time.time()})
        prints[stage.name], results[stage.name] = fp, out
    return results
