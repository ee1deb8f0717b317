"""How fast the desktop app starts, answers and stays responsive, each measured in a fresh process.

    .venv/bin/python bench/app_start.py [--repeats 3] [--sessions 10000] [--stream-tokens 500]

Figures (offscreen Qt platform, the bundled SmolLM2-135M Q4_1, a private data folder per run):
- start → window shown: from just before the process is spawned to the moment the main window
  has been shown and its first paint processed (interpreter start and imports included);
- start → first answer text of a new chat: the same, up to the first text of the answer that
  reaches the window (moderation releases answers a sentence at a time, so this is the first
  sentence), plus the engine's own time to the first token of that turn;
- start → window shown with a 10,000-session database (built here with executemany);
- resident memory (VmRSS) of the app once the model is loaded, and after one answer;
- the GUI event loop's longest and 99th-percentile stall while an answer of up to
  --stream-tokens tokens streams, from a 5 ms PreciseTimer probe on the GUI thread.

Each child prints one `RESULT {json}` line; the parent spawns them, takes medians and prints.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ---- children (run in their own process) -------------------------------------------------------
def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, db: str, max_tokens: int) -> None:
    sys.path.insert(0, str(ROOT))
    from PySide6.QtCore import QEventLoop, QObject, Qt, QTimer

    from desktop.app import create_window, make_app

    app = make_app()
    window = create_window(db, load_model=mode != "shown")
    app.processEvents()  # the show's expose and first paint
    shown = time.time()
    if mode == "shown":
        print("RESULT " + json.dumps({"shown": shown}), flush=True)
        os._exit(0)

    loop = QEventLoop()
    out: dict = {"shown": shown}

    class Probe(QObject):
        def __init__(self) -> None:
            super().__init__()
            self.gaps: list[float] = []
            self.last = 0.0
            self.timer = QTimer(self)
            self.timer.setTimerType(Qt.TimerType.PreciseTimer)
            self.timer.setInterval(5)
            self.timer.timeout.connect(self.tick)

        def tick(self) -> None:
            now = time.perf_counter()
            self.gaps.append(now - self.last)
            self.last = now

        def loaded(self, name: str, _n_ctx: int) -> None:
            out["loaded"] = time.time()
            out["model"] = name
            out["rss_loaded_mb"] = rss_mb()
            window.sampling.max_tokens = max_tokens
            prompt = (
                "Hello! Tell me about yourself."
                if mode == "first-token"
                else "Write a long story about a dragon."
            )
            if mode == "stream":
                self.last = time.perf_counter()
                self.timer.start()
            window.send(prompt)

        def delta(self, _sid: int, _text: str) -> None:
            out.setdefault("first_text", time.time())

        def finished(self, _sid: int, data: dict) -> None:
            self.timer.stop()
            msg = data["message"]
            out["ttft_engine_s"] = (msg.get("timings") or {}).get("ttft_s")
            out["completion_tokens"] = msg.get("completion_tokens")
            out["tokens_per_s"] = (msg.get("timings") or {}).get("tokens_per_s")
            out["rss_answered_mb"] = rss_mb()
            if self.gaps:
                gaps = sorted(self.gaps)
                out["stall_max_ms"] = gaps[-1] * 1000
                out["stall_p99_ms"] = gaps[int(0.99 * (len(gaps) - 1))] * 1000
                out["probe_ticks"] = len(gaps)
            loop.quit()

        def failed(self, *args) -> None:
            out["error"] = str(args[-1])
            loop.quit()

    probe = Probe()
    c = window.client
    c.loaded.connect(probe.loaded)
    c.delta.connect(probe.delta)
    c.finished.connect(probe.finished)
    c.failed.connect(probe.failed)
    c.load_failed.connect(probe.failed)
    QTimer.singleShot(300_000, loop.quit)
    loop.exec()
    print("RESULT " + json.dumps(out), flush=True)
    window.close()
    os._exit(0)


# ---- parent ------------------------------------------------------------------------------------
def spawn(mode: str, db: Path, home: Path, max_tokens: int = 48) -> tuple[float, dict]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "CHATFACTORY_HOME": str(home)}
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--db", str(db), "--max-tokens", str(max_tokens)],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"child {mode} failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return t0, json.loads(lines[-1][len("RESULT ") :])


def build_sessions(db: Path, n: int) -> None:
    sys.path.insert(0, str(ROOT))
    from engine.store import Store

    now = time.time()
    with Store.open(db) as store, store.transaction() as conn:
        conn.executemany(
            "INSERT INTO sessions (title, model, template_set, template_version, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (f"Chat number {i}", "smollm2-135m-instruct", "default", 1, now - n + i, now - n + i)
                for i in range(n)
            ],
        )
        sid = conn.execute("SELECT max(id) FROM sessions").fetchone()[0]
    with Store.open(db) as store:
        for i in range(20):  # the newest chat has a conversation to show
            store.add_message(sid, "user", f"Question {i}?")
            store.add_message(
                sid, "assistant", f"Answer {i}, with **markdown** and `code`.", finish_reason="stop"
            )


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sessions", type=int, default=10_000)
    p.add_argument("--stream-tokens", type=int, default=500)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--max-tokens", type=int, default=48, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.db, args.max_tokens)
        return

    print(f"# bench/app_start.py  {time.strftime('%Y-%m-%d %H:%M')}  {platform.platform()}  "
          f"python {platform.python_version()}  cpus {os.cpu_count()}  load {os.getloadavg()[0]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="chatfactory-bench-") as tmp:
        tmp = Path(tmp)
        shown, first, ttft, loaded_s, rss_l, rss_a = [], [], [], [], [], []
        for i in range(args.repeats):
            home = tmp / f"empty{i}"
            home.mkdir()
            t0, r = spawn("shown", home / "chatfactory.db", home)
            shown.append(r["shown"] - t0)
            home = tmp / f"first{i}"
            home.mkdir()
            t0, r = spawn("first-token", home / "chatfactory.db", home)
            if "error" in r:
                raise SystemExit(f"first-token run failed: {r['error']}")
            first.append(r["first_text"] - t0)
            loaded_s.append(r["loaded"] - t0)
            ttft.append(r["ttft_engine_s"] or float("nan"))
            rss_l.append(r["rss_loaded_mb"])
            rss_a.append(r["rss_answered_mb"])
        big_home = tmp / "big"
        big_home.mkdir()
        t_build = time.perf_counter()
        build_sessions(big_home / "chatfactory.db", args.sessions)
        t_build = time.perf_counter() - t_build
        big = []
        for _ in range(args.repeats):
            t0, r = spawn("shown", big_home / "chatfactory.db", big_home)
            big.append(r["shown"] - t0)
        home = tmp / "stream"
        home.mkdir()
        _, s = spawn("stream", home / "chatfactory.db", home, max_tokens=args.stream_tokens)

    n = args.repeats
    print(f"process start -> window shown (empty database)       median {median(shown):.2f} s  "
          f"runs {', '.join(f'{x:.2f}' for x in shown)}")  # fmt: skip
    print(f"process start -> model loaded                         median {median(loaded_s):.2f} s")
    print(f"process start -> first answer text in a new chat      median {median(first):.2f} s  "
          f"runs {', '.join(f'{x:.2f}' for x in first)}")  # fmt: skip
    print(f"  engine time to first token of that turn             median {median(ttft):.3f} s")
    print(f"process start -> window shown ({args.sessions:,} sessions)      median {median(big):.2f} s  "
          f"runs {', '.join(f'{x:.2f}' for x in big)}  (database built in {t_build:.1f} s)")  # fmt: skip
    print(f"RSS with the model loaded                             median {median(rss_l):.0f} MiB "
          f"(after one answer {median(rss_a):.0f} MiB)")  # fmt: skip
    if "error" in s:
        print(f"streaming run failed: {s['error']}")
    else:
        print(f"event loop while streaming {s['completion_tokens']} tokens ({s['tokens_per_s'] or 0:.0f} tokens/s): "
              f"longest stall {s['stall_max_ms']:.1f} ms, p99 {s['stall_p99_ms']:.1f} ms "
              f"({s['probe_ticks']} ticks of a 5 ms timer)")  # fmt: skip
    print(f"({n} runs each for start-up figures; one streaming run)")


if __name__ == "__main__":
    main()
