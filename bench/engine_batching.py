"""Aggregate decode throughput of the serving engine (continuous batching) at 1, 4, 16 streams.

    .venv/bin/python bench/engine_batching.py [--model smollm2-135m-instruct] [--streams 1 4 16]
        [--new-tokens 96] [--threads N]

N chat requests (different prompts, greedy) are submitted at once to one `Engine`; it prefills
them together and decodes them as one batch. Reported per N: generated tokens / wall time from
submit to the last token (prefill included), the decode-only rate (tokens after each request's
first, over the span from the first first-token to the last token), per-stream rate, mean
time to first token, and tokens per CPU-second of the process (least disturbed by other load). No HTTP, no moderation: bench/serve_load.py measures the whole service.
The target (issue "Chat service"): at 16 streams, aggregate >= llama.cpp's single-stream rate
on the same machine (~111 tok/s measured on the 2-core dev box).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from chatfactory.engine.generate import SamplingParams
from chatfactory.engine.scheduler import Engine
from chatfactory.loader import load
from chatfactory.tokenizer.chat_template import render

TOPICS = [
    "a robot who learns to paint", "the history of bread", "how volcanoes form", "a lighthouse keeper",
    "why the sky is blue", "a trip to Mars", "the life of a honeybee", "learning to play chess",
    "a city under the sea", "the invention of the telephone", "a dragon who is afraid of fire",
    "how a compiler works", "the water cycle", "a detective in Paris", "growing tomatoes", "black holes",
]  # fmt: skip


def run(engine: Engine, n: int, new_tokens: int) -> dict[str, float]:
    tok = engine.tokenizer
    prompts = [
        render(
            [{"role": "user", "content": f"Write a long, detailed text about {TOPICS[i % len(TOPICS)]}."}],
            tok,
            True,
        )[0]
        for i in range(n)
    ]
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0)
    steps0 = engine.decode_steps
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    reqs = [engine.submit(p, params) for p in prompts]
    for r in reqs:
        r.result()
    t1 = max(r.finished_at for r in reqs)
    cpu = time.process_time() - cpu0
    total = sum(r.completion_tokens for r in reqs)
    first = min(r.first_token_at for r in reqs)
    decode_tokens = sum(r.completion_tokens - 1 for r in reqs)
    return {
        "streams": n,
        "tokens": total,
        "wall_s": t1 - t0,
        "aggregate_tok_s": total / (t1 - t0),
        "decode_tok_s": decode_tokens / (t1 - first) if t1 > first else float("nan"),
        "per_stream_tok_s": total / (t1 - t0) / n,
        "mean_ttft_s": sum(r.first_token_at - r.submitted_at for r in reqs) / n,
        "decode_steps": engine.decode_steps - steps0,
        # tokens per CPU-second of this process: what other processes' load disturbs least
        # (with --threads 1 on an idle core, wall-clock tokens/s comes close to it)
        "cpu_tok_s": total / cpu,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float32"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load(args.model, dtype=getattr(torch, args.dtype) if args.dtype else None)
    engine = Engine(loaded, max_batch=max(args.streams))
    engine.start()
    try:
        run(engine, 1, 8)  # warm-up: first calls allocate and pick kernels
        print(f"# {args.model} on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, dtype {next(loaded.model.parameters()).dtype}, "
              f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        print(
            "streams  tokens  wall_s  aggregate_tok/s  decode_tok/s  per_stream_tok/s  mean_ttft_s  steps  tok/cpu_s"
        )
        for n in args.streams:
            r = run(engine, n, args.new_tokens)
            print(
                f"{n:7d}  {r['tokens']:6d}  {r['wall_s']:6.2f}  {r['aggregate_tok_s']:15.1f}  {r['decode_tok_s']:12.1f}"
                f"  {r['per_stream_tok_s']:16.1f}  {r['mean_ttft_s']:11.2f}  {r['decode_steps']:5d}"
                f"  {r['cpu_tok_s']:9.1f}"
            )
    finally:
        engine.shutdown()


if __name__ == "__main__":
    main()
