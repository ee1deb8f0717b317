"""Decode speed at batch 1: SmolLM2-135M-Instruct with our KV cache vs transformers' generate.

    .venv/bin/python bench/decode_smollm2.py [--new-tokens 64] [--repeats 3] [--threads 2]

Both run greedy decoding of the same weights (the bundled GGUF, dequantized) from the same
chat prompt, in this one process. Decode tokens/s is timed between the first and the last
generated token, so the prompt's prefill is excluded. Decode at batch 1 reads every weight once
per token, so memory bandwidth bounds it: tokens/s <= bandwidth / bytes of weights.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time

import torch

from engine.training.loader import load
from engine.training.model.hf import export_hf_folder
from engine.training.sampler.generate import SamplingParams, generate

PROMPT = "<|im_start|>user\nWrite a short story about a robot who learns to paint.<|im_end|>\n<|im_start|>assistant\n"


def time_ours(model, ids: list[int], n: int) -> tuple[float, list[int]]:
    stamps: list[float] = []
    params = SamplingParams(max_new_tokens=n, temperature=0.0)  # no stop token: always n tokens
    out = generate(
        model, [ids], params, pad_id=0, on_token=lambda row, tok: stamps.append(time.perf_counter())
    )
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), out[0].tokens


def time_transformers(model, ids: list[int], n: int) -> tuple[float, list[int]]:
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []

        def put(self, value):  # first call: the prompt; then one call per new token
            self.times.append(time.perf_counter())

        def end(self):
            pass

    s = Stamps()
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            streamer=s, pad_token_id=0,
        )  # fmt: skip
    t = s.times[1:]
    return (len(t) - 1) / (t[-1] - t[0]), out[0, len(ids) :].tolist()


def step_cpu_ms(model, context: int, steps: int = 20) -> float:
    """Process CPU time (ms) of one decode step after `context` cached tokens. CPU time, unlike
    wall time, barely moves when other processes share the cores (use --threads 1: with more,
    OpenMP threads spinning at barriers add CPU time)."""
    with torch.no_grad():
        cache = model.new_kv_cache(1, context + steps + 1)
        model(torch.randint(0, 1000, (1, context)), kv_cache=cache)
        tok = torch.tensor([[5]])
        model(tok, kv_cache=cache)  # warm-up
        t0 = time.process_time()
        for _ in range(steps):
            model(tok, kv_cache=cache)
        return (time.process_time() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bandwidth-gbs", type=float, default=20.0, help="memory bandwidth for the bound")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument(
        "--step-cpu", action="store_true", help="only: CPU ms per decode step at contexts 32 and 1024"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")  # fmt: skip

    loaded = load(args.model)
    model, tok = loaded.model.eval(), loaded.tokenizer
    ids = tok.encode(PROMPT, allow_special=True)
    n_params = model.num_params()
    print(
        f"# {args.model}: {n_params / 1e6:.1f}M parameters, prompt {len(ids)} tokens, {args.new_tokens} new tokens"
    )
    results: dict[str, list[float]] = {}
    texts: dict[str, list[int]] = {}
    if args.step_cpu:
        for dtype in (torch.float32, torch.bfloat16):
            m = copy.deepcopy(model).to(dtype)
            for ctx in (32, 1024):
                ms = step_cpu_ms(m, ctx)
                print(
                    f"ours {str(dtype)[6:]:8s} context {ctx:5d}: {ms:6.1f} CPU ms/token ({1e3 / ms:5.1f} tok/s per busy core)"
                )
        return
    models = {"ours fp32": model, "ours bf16": copy.deepcopy(model).to(torch.bfloat16)}
    if not args.skip_transformers:
        from transformers import AutoModelForCausalLM

        with tempfile.TemporaryDirectory() as tmp:  # the same weights, through our HF export
            export_hf_folder(model, tok, tmp)
            ref = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        models["transformers fp32"] = ref
        models["transformers bf16"] = copy.deepcopy(ref).to(torch.bfloat16)
    for name, m in models.items():
        timer = time_transformers if name.startswith("transformers") else time_ours
        timer(m, ids, 4)  # warm-up
        runs = []
        for _ in range(args.repeats):
            tps, toks = timer(m, ids, args.new_tokens)
            runs.append(tps)
        results[name], texts[name] = runs, toks
        bytes_per_token = sum(p.numel() * p.element_size() for p in m.parameters())
        bound = args.bandwidth_gbs * 1e9 / bytes_per_token
        print(f"{name:18s} decode {max(runs):7.1f} tok/s (best of {args.repeats}; all {', '.join(f'{r:.1f}' for r in runs)})"
              f"  weights {bytes_per_token / 1e6:.0f} MB/token -> bound {bound:.0f} tok/s at {args.bandwidth_gbs:g} GB/s")  # fmt: skip
    if "transformers fp32" in texts:
        same = texts["ours fp32"] == texts["transformers fp32"]
        print(f"# greedy tokens identical to transformers (fp32): {same}")
    print(f"# sample (ours fp32): {tok.decode(texts['ours fp32'])[:120]!r}")
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
