"""Held-out pairwise accuracy of a pipeline run's reward model, task by task.

    .venv/bin/python bench/reward_by_task.py RUN_DIR [--held-out 0.1] [--seed 0] [--max-len 256]

RUN_DIR is a `chatfactory pipeline` folder: its rank/rankings.jsonl is split exactly as the
reward stage split it (split_held_out with the same fraction and seed), and each built-in task's
held-out comparisons are scored with reward/model. Shows which checks the reward model learnt.
"""

from __future__ import annotations

import argparse
import collections
import json

import torch

from engine.training.data.preferences import read_preferences, split_held_out
from engine.training.train.reward_model import encode_comparison, load_reward_model, pairwise_accuracy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--held-out", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rm, tok, _ = load_reward_model(f"{args.run}/reward/model")
    _, held = split_held_out(read_preferences(f"{args.run}/rank/rankings.jsonl"), args.held_out, seed=args.seed)
    by_task = collections.defaultdict(list)
    for c in held:
        e = encode_comparison(c, tok, args.max_len)
        if e.pairs:
            by_task[c.extra.get("task", "(no task)")].append(e)
    out = {}
    for task, items in by_task.items():
        r = pairwise_accuracy(rm, items, tok.pad_id)
        out[task] = {"pairs": r["pairs"], "accuracy": round(r["accuracy"], 3)}
        print(f"{task:16} {r['pairs']:5d} pairs  {r['accuracy']:.1%}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
