"""kill -9 during streaming, many cycles: every sent message kept, cut answers marked interrupted.

    python bench/faults.py [--cycles 50] [--seed 0]

Runs tests/fault_drill.py's drill on a fresh data folder and prints the counts for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fault_drill import kill_drill


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = kill_drill(Path(tmp), args.cycles, seed=args.seed)
    print(f"kill -9 cycles: {report.cycles}, killed while the answer streamed: {report.killed_while_streaming}")
    print(f"messages sent and checked after every restart: {report.sent}")
    print(f"failures: {len(report.failures)}")
    for f in report.failures:
        print("  " + f)
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
