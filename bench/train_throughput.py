"""Training throughput of a preset: tokens/s and MFU against this machine's measured matmul peak.

    python bench/train_throughput.py                      # tiny preset, 2 threads, 40 timed steps
    python bench/train_throughput.py --preset small --steps 10
    python bench/train_throughput.py --preset small --device cuda --set train.compile=true   # a GPU: bf16 autocast

The peak is measured here with large square matmuls in fp32 and bf16 (the same kind of numbers
as a vendor's peak, but for this CPU and thread count). MFU = model FLOPs per token (6N plus
attention, GPT.flops_per_token) x tokens/s / the peak of the precision training ran in.
Random token ids stand in for data: throughput does not depend on what the tokens say.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from engine.training.model import GPT
from engine.training.train.config import load_config
from engine.training.train.flops import measure_matmul_peak, peak_flops
from engine.training.train.pretrain import PretrainConfig
from engine.training.train.trainer import Trainer


class RandomTokens:
    def __init__(self, vocab: int, seq_len: int, micro_batch: int):
        self.rng, self.vocab, self.T, self.B = np.random.default_rng(0), vocab, seq_len, micro_batch

    def next_step(self, n_micro, rank=0, world_size=1):
        out = []
        for _ in range(n_micro):
            w = torch.from_numpy(self.rng.integers(0, self.vocab, size=(self.B, self.T + 1)))
            out.append({"x": w[:, :-1], "y": w[:, 1:]})
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40, help="timed steps (after 5 warm-up steps)")
    ap.add_argument("--peak-size", type=int, default=None, help="matmul size for the peak (2048 CPU, 8192 GPU)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (precision auto: bf16 autocast on a GPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    size = args.peak_size or (8192 if gpu else 2048)

    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peaks[name] = measure_matmul_peak(args.device, dtype, n=size, seconds=2.0)
        where = torch.cuda.get_device_name() if gpu else f"{args.threads} threads"
        print(f"matmul peak {name}: {peaks[name] / 1e9:.0f} GFLOP/s ({size}^3, {where})")

    warmup = 5
    cfg = load_config(PretrainConfig, args.preset, [
        f"train.max_steps={warmup + args.steps}", "train.time_budget=null", "train.log_every=1",
        "train.progress=false", "train.eval_every=0", f"train.threads={args.threads}", f"train.device={args.device}",
        *args.overrides])
    tc = cfg.train
    cfg.model.vocab_size = 64 * -(-cfg.tokenizer.vocab_size // 64)  # what pretrain gives the model
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, tc.seq_len)
    model = GPT(cfg.model)
    precision = "bf16" if tc.precision == "bf16" or (gpu and tc.precision == "auto") else "fp32"
    tc.peak_flops = peaks[precision]
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, tc, out, batches=RandomTokens(cfg.model.vocab_size, tc.seq_len, tc.micro_batch_size))
        cpu0 = time.process_time()
        trainer.fit()
        cpu = time.process_time() - cpu0
        with open(os.path.join(out, "metrics.jsonl")) as f:
            recs = [json.loads(ln) for ln in f if '"loss"' in ln]
    timed = [r for r in recs if r["step"] > warmup]
    tok_s = statistics.median(r["tok_per_s"] for r in timed)
    fpt = model.flops_per_token(tc.seq_len)
    mfu = fpt * tok_s / peaks[precision]
    load = os.getloadavg()
    print(f"preset {args.preset}: {cfg.model.family} L{cfg.model.n_layer} d{cfg.model.d_model} "
          f"V{cfg.model.vocab_size} T{tc.seq_len}, {model.num_params() / 1e6:.2f}M params, "
          f"{fpt / 1e6:.1f} MFLOP/token, {trainer.tokens_per_step} tokens/step, {precision}")
    print(f"median over {len(timed)} steps: {tok_s:,.0f} tokens/s, {fpt * tok_s / 1e9:.1f} GFLOP/s, "
          f"MFU {100 * mfu:.1f}% of the {precision} matmul peak")
    if gpu and precision == "bf16":
        vendor = peak_flops(torch.device(args.device), torch.bfloat16)
        print(f"MFU {100 * fpt * tok_s / vendor:.1f}% of the vendor's dense bf16 peak ({vendor / 1e12:.0f} TFLOP/s)")
    print(f"process CPU time over the run: {cpu:.1f}s; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"tok_per_s={tok_s:.0f} mfu={mfu:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
