"""Tiny Shakespeare from scratch on a wall-clock budget: the tiny preset against nanoGPT's CPU recipe.

    python bench/pretrain_shakespeare.py --text ../shared/data/shakespeare/tinyshakespeare.txt --budget-s 110

Split as nanoGPT does: the first 90% of the characters train (the tokenizer too, on that 90%
only), the last 10% is held out. Tokenizer training and sharding run BEFORE the budget starts
(both are timed and printed); the budget bounds the training loop. The held-out text is then
scored whole, in order, in windows of the preset's seq_len (its first token is predicted from
<|endoftext|>). The last line is val_bpb=<total held-out NLL in bits / held-out UTF-8 bytes>.
Peer: nanoGPT's CPU recipe reaches 2.72 bpb in 109 s on this machine kind; its A100 recipe 2.12.

--clock cpu counts the process's CPU time / threads instead of wall time: a fairer budget when
other work shares the cores (the reported numbers in BENCHMARKS.md say which clock they used).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.training.data.corpus import Document
from engine.training.data.shards import RandomWindows, ShardSet, TokenSplit, token_byte_lengths, write_shards
from engine.training.tokenizer import Tokenizer
from engine.training.train.config import load_config
from engine.training.train.pretrain import PretrainConfig, build_model, evaluate_bpb
from engine.training.train.trainer import Trainer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", required=True, help="tinyshakespeare.txt")
    ap.add_argument("--budget-s", type=float, default=110.0, help="training-loop budget in seconds")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    text = Path(args.text).read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train_text, val_text = text[:cut], text[cut:]
    overrides = [f"train.time_budget={args.budget_s}", "train.max_steps=null", f"train.threads={args.threads}",
                 *args.overrides]
    cfg = load_config(PretrainConfig, args.preset, overrides)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-pretrain-"))

    t0 = time.perf_counter()
    tokenizer = Tokenizer.train([train_text], vocab_size=cfg.tokenizer.vocab_size)
    t_tok = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_shards({"train": [Document(train_text, args.text)]}, tokenizer, out / "shards")
    shards = ShardSet(out / "shards")
    t_shard = time.perf_counter() - t0
    train = shards.split("train")
    print(f"tokenizer: {tokenizer.vocab_size} tokens, trained in {t_tok:.1f}s; "
          f"shards: {train.tokens:,} train tokens ({len(train_text.encode()) / train.tokens:.2f} bytes/token) "
          f"in {t_shard:.1f}s (both outside the budget)")

    model = build_model(cfg, tokenizer)
    tc = cfg.train
    clock = time.perf_counter
    if args.clock == "cpu":
        clock = lambda: time.process_time() / args.threads
    trainer = Trainer(model, tc, out, batches=RandomWindows(train, tc.seq_len, tc.micro_batch_size, seed=tc.seed),
                      tokenizer=tokenizer, clock=clock)
    print(f"model: {cfg.model.family} L{cfg.model.n_layer} d{cfg.model.d_model} h{cfg.model.n_head} "
          f"ctx{tc.seq_len}, {model.num_params() / 1e6:.2f}M params; batch {trainer.tokens_per_step} tokens; "
          f"lr {tc.lr} {tc.schedule}; budget {args.budget_s:.0f}s ({args.clock} clock)")
    wall0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - wall0

    # the held-out text, whole: <|endoftext|> then its tokens, every text token scored once
    ids = np.asarray([tokenizer.eos_id] + tokenizer.encode(val_text), dtype=np.int64)
    val = TokenSplit("val", [ids], 1, len(val_text.encode("utf-8")))
    t0 = time.perf_counter()
    metrics = evaluate_bpb(model, val, token_byte_lengths(tokenizer), tc.seq_len, 32)
    scored_bytes = int(token_byte_lengths(tokenizer)[torch.from_numpy(ids[1:])].sum())
    assert scored_bytes == val.bytes, f"scored {scored_bytes} bytes of {val.bytes}"
    load = os.getloadavg()
    print(f"trained {result['step']} steps, {result['tokens']:,} tokens in {result['train_time']:.1f}s "
          f"({args.clock} clock; {wall:.1f}s wall incl. checkpoint) = {result['tokens'] / result['train_time']:,.0f} tok/s")
    print(f"val: {len(ids) - 1:,} tokens, {val.bytes:,} bytes, loss {metrics['val_loss']:.4f} nats/token, "
          f"{metrics['val_bpb'] * math.log(2):.4f} nats/byte (eval {time.perf_counter() - t0:.1f}s)")
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"val_bpb={metrics['val_bpb']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
