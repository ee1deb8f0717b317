"""Decode speed of a streamed chat turn through the engine, against raw llama.cpp.

    python bench/chat_decode.py [--tokens 256] [--rounds 3] [--threads N]

Both sides run the same GGUF, threads, prompt tokens and sampling seed, alternating in one
process, so the machine's state is shared. The engine side is the whole turn: prompt stored,
moderation of the prompt and of the answer as it streams (sentence by sentence), the answer
saved to SQLite as it streams and at the end. Raw llama.cpp is `llama_cpp.Llama.generate` on the
prompt tokens, detokenizing each token. Tokens/s is measured from the first token to the last
(decode only; prefill is the followup benchmark's subject). Goal: engine / raw >= 0.97.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from engine.models.registry import resolve
from engine.moderation import Moderator
from engine.runtime import LlamaRuntime, RuntimeSettings, Sampling
from engine.store import Store
from engine.templates import TemplateLibrary
from engine.turn import Chat

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."


def raw_decode(llm, tokens: list[int], n: int, seed: int) -> tuple[int, float]:
    """Tokens decoded and tokens/s (first to last token) with llama-cpp-python alone."""
    llm.set_seed(seed)
    llm.reset()  # the same prefill work as the engine's fresh session
    count, t_first = 0, None
    for tok in llm.generate(tokens, top_k=40, top_p=0.9, min_p=0.05, temp=0.7, repeat_penalty=1.1):
        if t_first is None:
            t_first = time.perf_counter()
        llm.detokenize([tok])
        count += 1
        if count >= n:
            break
    return count, (count - 1) / (time.perf_counter() - t_first)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="0 = the app's default")
    args = ap.parse_args()

    import llama_cpp

    name, path = resolve(None)
    settings = RuntimeSettings(n_threads=args.threads, n_ctx=2048)
    runtime = LlamaRuntime(path, settings, name=name)
    threads = settings.threads()
    raw = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_threads=threads[0], n_threads_batch=threads[1],
                          n_batch=settings.n_batch, flash_attn=settings.flash_attn, verbose=False)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "bench.db")
        chat = Chat(store, runtime, Moderator.from_config(None), TemplateLibrary.load())
        engine_tps, raw_tps, counts = [], [], []
        for r in range(args.rounds):
            seed = 100 + r
            sampling = Sampling(temperature=0.7, max_tokens=args.tokens, seed=seed)
            sid = chat.new_session()
            for _ in chat.send(sid, PROMPT, sampling=sampling):
                pass
            msg = store.branch(sid)[-1]
            engine_tps.append(msg["timings"]["tokens_per_s"])
            counts.append(msg["completion_tokens"])
            # the same prompt tokens the engine sent, through raw llama.cpp
            tokens = runtime.build_prompt(chat.history(sid, store.branch(sid)[-2]["id"]), args.tokens).tokens
            n, tps = raw_decode(raw, tokens, msg["completion_tokens"], seed)
            raw_tps.append(tps)
            print(f"round {r + 1}: engine {engine_tps[-1]:.1f} tok/s ({counts[-1]} tokens, "
                  f"finish {msg['finish_reason']}), raw llama.cpp {tps:.1f} tok/s ({n} tokens)")  # fmt: skip
        store.close()
    e, w = statistics.median(engine_tps), statistics.median(raw_tps)
    print(f"model {name}, threads {threads}, {args.rounds} rounds of up to {args.tokens} tokens")
    print(f"engine turn (moderation + store): {e:.1f} tok/s median")
    print(f"raw llama_cpp.Llama.generate:     {w:.1f} tok/s median")
    print(f"ratio engine / raw: {e / w:.3f} (goal >= 0.97)")


if __name__ == "__main__":
    main()
