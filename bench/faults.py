"""kill -9 at random moments, many cycles, and the counts for BENCHMARKS.md.

    python bench/faults.py [--cycles 50] [--seed 0]       # while an answer streams (the default drill)
    python bench/faults.py --store-cycles 20             # during export, import and schema migration
    python bench/faults.py --finetune-cycles 20          # during a fine-tuning job (training, export...)

Streaming: tests/fault_drill.py's drill on a fresh data folder: every sent message kept, cut
answers marked interrupted. Store: tests/test_faults_store.py's checks with more cycles. Fine-tune:
a tiny-model SFT job killed once at a random moment, then resumed to the end: no half-made model
is ever registered, every GGUF with a final name is whole, and the end result is one model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fault_drill import kill_drill


def store_drill(cycles: int) -> None:
    import test_faults_store as tfs

    tfs.CYCLES = cycles
    failures = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "big.db"
        tfs.big_store(source)
        for name, run in (("export", lambda d: tfs.test_kill_9_during_export_never_leaves_a_file_that_looks_complete(source, d)),
                          ("import", lambda d: tfs.test_kill_9_during_import_imports_all_or_nothing(source, d)),
                          ("migration", tfs.test_kill_9_during_migration_loses_nothing)):
            d = tmp / name
            d.mkdir()
            try:
                run(d)
            except AssertionError as e:
                failures.append(f"{name}: {e}")
    print(f"kill -9 during export: {cycles} cycles, import: {cycles} cycles, migration: {2 * cycles} cycles")
    print(f"failures: {len(failures)}")
    for f in failures:
        print("  " + f)
    print(f"{time.perf_counter() - t0:.0f} s")


def finetune_drill(cycles: int, seed: int) -> None:
    import json
    import os
    import random
    import subprocess

    from tiny_chat_model import tiny_model_folder

    from engine.finetune.job import JobSpec, create_job, job_state
    from engine.models import registry
    from engine.models.gguf_info import read_gguf_info

    rng = random.Random(seed)
    root = Path(__file__).resolve().parent.parent
    failures, moments = [], {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["CHATFACTORY_HOME"] = str(tmp / "home")
        base = tiny_model_folder(tmp / "tiny", max_seq_len=128)
        data = tmp / "convs.jsonl"
        data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                                         {"role": "assistant", "content": "I am fine, thank you."}]}) + "\n"
                                for i in range(24)))

        def run(folder: Path) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-m", "engine.finetune", "run", str(folder)], cwd=root,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        # how long a whole job takes here: the kills aim inside that window
        t_whole = time.perf_counter()
        whole_job = create_job(JobSpec(base=str(base), data=[str(data)], method="sft", max_steps=30, name="whole",
                                       threads=1), tmp / "whole")
        assert run(whole_job).wait(300) == 0
        whole = time.perf_counter() - t_whole
        for cycle in range(cycles):
            name = f"drill-{cycle}"
            folder = create_job(JobSpec(base=str(base), data=[str(data)], method="sft", max_steps=30, name=name,
                                        threads=1), tmp / name)
            proc = run(folder)
            time.sleep(rng.uniform(0.1, 0.99) * whole)  # start-up, data, training, evaluation, export
            running = proc.poll() is None
            stage = next((s for s in ("data", "sft", "eval", "export") if not (folder / s / "DONE.json").exists()), "finished")
            proc.kill()
            proc.wait()
            moments[stage if running else "after the end"] = moments.get(stage if running else "after the end", 0) + 1
            try:
                for m in registry.list_models():
                    if m.name == name:  # registered (the export's last step): the file must be whole
                        read_gguf_info(m.path)
                        assert (folder / "export" / "side_by_side.json").exists()
                for f in (folder / "export").glob("*.gguf") if (folder / "export").exists() else []:
                    read_gguf_info(f)
                if job_state(folder) != "done":
                    assert run(folder).wait(300) == 0, "the resumed job failed"
                assert [m.name for m in registry.list_models()].count(name) == 1
            except Exception as e:  # noqa: BLE001 (counted and printed)
                failures.append(f"cycle {cycle} ({stage}): {type(e).__name__}: {e}")
    print(f"kill -9 during a fine-tuning job: {cycles} cycles; killed in: "
          + ", ".join(f"{k} {v}" for k, v in sorted(moments.items())))
    print(f"failures: {len(failures)}")
    for f in failures:
        print("  " + f)
    print(f"{time.perf_counter() - t0:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store-cycles", type=int, help="run the export/import/migration drill instead")
    ap.add_argument("--finetune-cycles", type=int, help="run the fine-tuning job drill instead")
    args = ap.parse_args()
    if args.store_cycles:
        return store_drill(args.store_cycles)
    if args.finetune_cycles:
        return finetune_drill(args.finetune_cycles, args.seed)
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
