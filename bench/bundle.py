"""What a double-clicked chatfactory costs before the user can type: imports, bundle size, cold start.

    .venv/bin/python bench/bundle.py [--repeats 5] [--bundle-repeats 3]

(a) The chat path's imports, from source: the `-X importtime` total of
    `import desktop.main_window, engine.setup` (cumulative µs of the top-level imports), and the
    wall time of a fresh `python -c "import desktop.app, desktop.main_window, engine.setup,
    engine.turn"` (median), with whether torch was pulled in: it must not be, torch alone is
    seconds of start and hundreds of MB the chat never uses.
(b) If `dist/chatfactory/` exists (packaging/), its size on disk (du) and the tarball's.
(c) If it does, the bundle's cold start to a shown window: `chatfactory --self-test` on the
    offscreen platform, parsing its `window shown in X s` line (median). The self-test uses a
    temporary database, so the user's data is never touched; "cold" means a new process, the
    files may be in the page cache after the first run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist" / "chatfactory"
CHAT_IMPORTS = "import desktop.main_window, engine.setup"
WALL_IMPORTS = "import desktop.app, desktop.main_window, engine.setup, engine.turn"
SHOWN = re.compile(r"window shown in ([0-9.]+) s")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", **extra}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def import_time_us() -> tuple[int, list[tuple[int, str]]]:
    """Total cumulative µs of the top-level imports, and the five costliest of them."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", CHAT_IMPORTS],
        cwd=ROOT, env=_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    top: list[tuple[int, str]] = []
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( *)(\S+)", line)
        if m and len(m.group(3)) == 1:  # one space: a top-level import of the -c line
            top.append((int(m.group(2)), m.group(4)))
    return sum(us for us, _ in top), sorted(top, reverse=True)[:5]


def import_wall_s(repeats: int) -> tuple[float, bool]:
    """Median wall time of a fresh interpreter doing the chat path's imports; torch imported?"""
    code = f"{WALL_IMPORTS}; import sys; print('torch' in sys.modules)"
    times, torch = [], False
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True,
                             text=True, check=True)  # fmt: skip
        times.append(time.perf_counter() - t0)
        torch = torch or out.stdout.strip().endswith("True")
    return statistics.median(times), torch


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]) / 1024


def bundle_start_s(repeats: int) -> tuple[float | None, list[str]]:
    """Median `window shown in` of the bundle's self-test; the failures' last lines, if any."""
    exe = DIST / "chatfactory"
    shown, errors = [], []
    for _ in range(repeats):
        p = subprocess.run([str(exe), "--self-test"], env=_env(), capture_output=True, text=True, check=False,
                           timeout=300)  # fmt: skip
        m = SHOWN.search(p.stdout)
        if m:
            shown.append(float(m.group(1)))
        if p.returncode != 0 or not m:
            errors.append(f"rc {p.returncode}: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
    return (statistics.median(shown) if shown else None), errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="fresh interpreters for the import wall time")
    ap.add_argument("--bundle-repeats", type=int, default=3, help="bundle self-tests")
    args = ap.parse_args()

    total, top = import_time_us()
    print(f"(a) -X importtime `{CHAT_IMPORTS}`: {total / 1000:.0f} ms (top-level imports, cumulative)")
    for us, name in top:
        print(f"      {us / 1000:7.1f} ms  {name}")
    wall, torch = import_wall_s(args.repeats)
    print(
        f'    wall `python -c "{WALL_IMPORTS}"`: {wall:.3f} s (median of {args.repeats}, interpreter start included)'
    )
    print(f"    torch imported: {torch}")
    if not DIST.is_dir():
        print("(b) no dist/chatfactory/ (build it with packaging/): size and cold start skipped")
        return
    print(f"(b) dist/chatfactory/: {du_mb(DIST):.0f} MB on disk")
    for tar in sorted(DIST.parent.glob("chatfactory-*.tar.gz")):
        print(f"    {tar.name}: {tar.stat().st_size / 1e6:.0f} MB")
    med, errors = bundle_start_s(args.bundle_repeats)
    if med is None:
        print(f"(c) bundle self-test: no 'window shown' line; {errors}")
    else:
        print(
            f"(c) bundle cold start to window shown: {med:.2f} s (median of {args.bundle_repeats}, offscreen)"
        )
    for e in errors:
        print(f"    self-test failed: {e}")
    if torch:
        sys.exit("torch is imported on the chat path")


if __name__ == "__main__":
    main()
