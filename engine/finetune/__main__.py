"""`python -m engine.finetune run JOB_DIR`: the process the Fine-tuning tab starts.

stdout carries only the job's events, one JSON object a line (engine.finetune.job); everything
else the training code prints goes to stderr. Exit status: 0 done, 130 cancelled (resumable),
1 failed (the `error` event says why).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.finetune")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run or resume a job folder, events as JSON lines on stdout")
    r.add_argument("job_dir")
    args = p.parse_args(argv)

    # the events get their own copy of stdout; file descriptor 1 (print, C libraries) goes to stderr
    events = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def emit(event: dict) -> None:
        events.write(json.dumps(event, default=str) + "\n")
        events.flush()

    from .job import JobCancelled, run_job

    try:
        run_job(args.job_dir, emit)
    except JobCancelled:
        return 130
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"finetune: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
