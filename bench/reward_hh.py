"""Reward model on real human preferences: SmolLM2-135M on Anthropic HH-RLHF (helpful).

    .venv/bin/python bench/reward_hh.py                       # a CPU-sized subset
    .venv/bin/python bench/reward_hh.py --train-pairs 3000 --max-len 512 --freeze-layers 0   # on a GPU

Reads helpful-online-test + helpful-rejection-sampled-test (.jsonl.gz, straight from
../shared/data/hh-rlhf), holds out a fixed share of the prompts, trains the reward stage
(`engine.training.train.reward`) on a subset for one epoch and reports the held-out pairwise
accuracy, the "pick the shorter reply" baseline on the same pairs, and the training time per
1,000 pairs. Published: shorter reply 55.3% (harmless-base), OpenAssistant deberta-v3-large
69.25%, InstructGPT's 6B RM 72.4%. About 60% with a big model usually means a padding or
end-token bug; with a few hundred pairs on a 135M model it is what the data allows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from engine.paths import shared_data_dir
from engine.training.data.preferences import read_preferences, split_held_out, write_preferences

FILES = ("helpful-online-test.jsonl.gz", "helpful-rejection-sampled-test.jsonl.gz")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--train-pairs", type=int, default=400)
    ap.add_argument("--eval-pairs", type=int, default=200)
    ap.add_argument("--held-out", type=float, default=0.15, help="share of prompts held out (before subsetting)")
    ap.add_argument("--max-len", type=int, default=192, help="tokens per prompt+reply (the prompt loses its oldest)")
    ap.add_argument("--freeze-layers", type=int, default=24, help="blocks kept fixed (SmolLM2-135M has 30)")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per optimizer step")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = shared_data_dir()
    if data is None or not all((data / "hh-rlhf" / f).exists() for f in FILES):
        print("HH-RLHF data not found (../shared/data/hh-rlhf); nothing to measure", file=sys.stderr)
        return 0
    comps, skipped = [], 0
    for f in FILES:
        got = read_preferences(data / "hh-rlhf" / f, skip_invalid=True)
        comps += got
        skipped += got.skipped
    train, held = split_held_out(comps, args.held_out, seed=args.seed)
    rng = random.Random(args.seed)
    rng.shuffle(train)
    rng.shuffle(held)
    train, held = train[: args.train_pairs], held[: args.eval_pairs]
    # the "pick the shorter reply" baseline on exactly the held-out pairs
    shorter = sum(len(c.responses[0]) < len(c.responses[1]) + 0.5 * (len(c.responses[0]) == len(c.responses[1]))
                  for c in held) / len(held)

    from engine.training.train.reward import RewardConfig, train_reward_model

    out = Path(args.out or tempfile.mkdtemp(prefix="reward_hh_"))
    write_preferences(out / "train.jsonl", train)
    write_preferences(out / "held.jsonl", held)
    cfg = RewardConfig(model=args.model, data=[str(out / "train.jsonl")], eval_data=[str(out / "held.jsonl")],
                       out_dir=str(out), max_len=args.max_len, freeze_layers=args.freeze_layers, norm_samples=200)
    cfg.train.lr, cfg.train.micro_batch_size, cfg.train.threads = args.lr, args.batch_size, args.threads
    cfg.train.warmup_steps = max(1, len(train) // args.batch_size // 10)  # a tenth of the one epoch
    cfg.train.seed = args.seed
    t0 = time.time()
    stats = train_reward_model(cfg)
    wall = time.time() - t0
    result = {
        "model": args.model, "pairs_read": len(comps), "records_skipped": skipped,
        "train_pairs": len(train), "heldout_pairs": len(held), "max_len": args.max_len,
        "freeze_layers": args.freeze_layers, "heldout_accuracy": stats.get("heldout_accuracy"),
        "shorter_reply_baseline": shorter,
        "train_seconds_per_1000_pairs": round(stats["train_seconds"] / len(train) * 1000, 1),
        "total_seconds": round(wall, 1), "threads": args.threads, "load_avg": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
