"""llama.cpp's speed by thread count, on an idle machine and with one core busy elsewhere.

    python bench/threads.py [--decode 128] [--prefill 512]

For each thread count (1 .. cores) it measures decode tokens/s (greedy, from the first token
to the last) and prefill tokens/s (a fresh context processing `--prefill` prompt tokens), first
with the machine idle, then while a background process spins on one core (what a desktop app
meets when the user's browser or compiler is busy). The app's default thread count
(`engine.runtime.default_threads`) is chosen from these figures.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

from engine.models.registry import resolve
from engine.runtime import default_batch_threads, default_threads


def spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def measure(path: str, threads: int, n_decode: int, n_prefill: int, flash: bool) -> tuple[float, float]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=256,
                          flash_attn=flash, verbose=False)  # fmt: skip
    words = " ".join(f"word{i}" for i in range(n_prefill))
    prompt = llm.tokenize(words.encode(), add_bos=False)[:n_prefill]
    t0 = time.perf_counter()
    llm.eval(prompt)
    prefill = len(prompt) / (time.perf_counter() - t0)
    llm.reset()
    start = llm.tokenize(b"Once upon a time", add_bos=False)
    count, t_first = 0, None
    for _tok in llm.generate(start, temp=0.0):
        if t_first is None:
            t_first = time.perf_counter()
        count += 1
        if count >= n_decode:
            break
    decode = (count - 1) / (time.perf_counter() - t_first)
    llm.close()
    return decode, prefill


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--flash-attn", action="store_true", help="also measure with flash attention on")
    args = ap.parse_args()
    _, path = resolve(None)
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; app defaults: {default_threads()} decode thread(s), {default_batch_threads()} for prompts")
    print(f"{'load':<10}{'threads':>8}{'flash':>7}{'decode tok/s':>14}{'prefill tok/s':>15}")
    for load in ("idle", "1 core busy"):
        stop = mp.Event()
        bg = mp.Process(target=spin, args=(stop,), daemon=True) if load != "idle" else None
        if bg:
            bg.start()
            time.sleep(0.5)
        try:
            for threads in range(1, cores + 1):
                for flash in (False, True) if args.flash_attn else (False,):
                    d, p = measure(str(path), threads, args.decode, args.prefill, flash)
                    print(f"{load:<10}{threads:>8}{'on' if flash else 'off':>7}{d:>14.1f}{p:>15.1f}", flush=True)
        finally:
            if bg:
                stop.set()
                bg.join()


if __name__ == "__main__":
    main()
