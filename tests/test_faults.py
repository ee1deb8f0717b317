"""Nothing lost: kill -9 while an answer streams (bench/faults.py runs the larger counts)."""

from __future__ import annotations

from fault_drill import kill_drill


def test_kill_9_while_streaming_loses_nothing(isolated_home):
    report = kill_drill(isolated_home, cycles=3, seed=1, check_every=3, p_streaming=1.0)
    assert report.failures == []
    assert report.cycles == 3 and report.sent == 4  # 3 killed turns + the turn after them
    assert report.killed_while_streaming >= 1
