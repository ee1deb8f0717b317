"""The CPU decode fast path of engine.training.model.gpt.Linear: W @ x^T against nn.Linear's x @ W^T.

Part 1 times each matrix shape of SmolLM2-135M at 1, 4, 16 and 64 rows (the rows a decode step
feeds each layer: one per sequence in the batch). Part 2 times whole engine decode steps with
16 sequences that joined at different times (so the cache has a padding mask, as in serving),
once with each path, alternating.

    .venv/bin/python bench/skinny_linear.py [--model smollm2-135m-instruct] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def per_call_us(fn, n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def shapes(d: int, kv: int, ff: int, vocab: int) -> None:
    print(f"{'out x in':>14} {'rows':>4} {'x @ W^T us':>11} {'W @ x^T us':>11} {'speed-up':>8}")
    for n, k in ((d, d), (kv, d), (ff, d), (d, ff), (vocab, d)):
        w = torch.randn(n, k)
        reps = 20 if n > 10_000 else 200
        for m in (1, 4, 16, 64):
            x = torch.randn(m, k)
            a = per_call_us(lambda x=x, w=w: F.linear(x, w), reps)
            b = per_call_us(lambda x=x, w=w: torch.mm(w, x.t()).t().contiguous(), reps)
            print(f"{n:>6} x {k:<6} {m:>4} {a:>11.0f} {b:>11.0f} {a / b:>7.2f}x")


def decode_steps(model: str, rounds: int) -> None:
    from engine.training.sampler.scheduler import Engine

    from engine.training.loader import load
    from engine.training.model import gpt
    from engine.training.sampler import SamplingParams

    loaded = load(model)
    fast = gpt.Linear.forward
    results: dict[str, list[float]] = {"nn.Linear": [], "W @ x^T": []}
    for _ in range(rounds):
        for name, forward in (("nn.Linear", torch.nn.Linear.forward), ("W @ x^T", fast)):
            gpt.Linear.forward = forward
            engine = Engine(loaded, max_batch=16)
            engine.default_stop_ids = set()  # keep all 16 rows for the whole measurement
            tok = loaded.tokenizer
            system = tok.encode("You are a helpful assistant. " * 20)[:80]
            for i in range(16):  # staggered joins: a padding mask, as in a serving batch
                engine.submit(system + tok.encode(f"Question {i}: tell me about the sea."),
                              SamplingParams(max_new_tokens=400, temperature=0.7, seed=i))
                for _ in range(4):
                    engine.step()
            t0 = time.perf_counter()
            for _ in range(20):
                engine.step()
            results[name].append((time.perf_counter() - t0) / 20 * 1000)
            engine.shutdown()
    gpt.Linear.forward = fast
    for name, ms in results.items():
        best = min(ms)
        print(f"decode step, 16 sequences, {name:>9}: best {best:.1f} ms ({16 / best * 1000:.1f} tokens/s), "
              f"all {', '.join(f'{x:.1f}' for x in ms)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    shapes(576, 192, 1536, 49152)  # SmolLM2-135M: d_model, kv width, d_ff, vocabulary
    decode_steps(args.model, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
