"""How well `engine.models.memory.estimate` predicts what loading a model really costs.

    python bench/memory_fit.py [--ctx 2048 8192] [--model NAME_OR_GGUF] [--batch 256]

For each context size, a fresh subprocess imports llama.cpp, reads its resident memory (VmRSS in
/proc/self/status: the baseline, with the library already loaded, since that cost is paid once
per process whatever the model), loads the model with the app's own `LlamaRuntime`, processes a
prompt longer than one batch (so the whole compute graph of a batch is used) and generates a
short answer, then reads VmRSS again. The increase is what the model costs; the estimate is
printed beside it with the error in %. Linux only (it reads /proc).

Resident memory counts the model file's pages once they are read (llama.cpp maps the file), the
KV cache (llama.cpp clears it at creation, so every page is touched) and the compute buffers as
far as they are written. That is the memory the user's other programs lose, which is what the
fits / tight / too big badge is about.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def vm_rss() -> int:
    """Resident memory of this process in bytes (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (not Linux?)")


def child(path: str, n_ctx: int, n_batch: int) -> None:
    """Runs in the subprocess: load, prompt, generate; prints the measurement as one JSON line."""
    import llama_cpp  # noqa: F401  (the library's own memory belongs to the baseline)

    from engine.runtime import LlamaRuntime, RuntimeSettings, Sampling

    before = vm_rss()
    rt = LlamaRuntime(path, RuntimeSettings(n_ctx=n_ctx, n_batch=n_batch, n_threads=1))
    loaded = vm_rss()
    text = " ".join(f"The item number {i} is on the shelf." for i in range(60))  # > n_batch tokens
    messages = [{"role": "user", "content": text + " Which item is first?"}]
    prompt = rt.build_prompt(messages, max_tokens=32)
    answer = "".join(rt.generate(prompt.tokens, Sampling(max_tokens=32, seed=1)))
    after = vm_rss()
    print(json.dumps({"n_ctx": n_ctx, "before": before, "loaded": loaded, "after": after,
                      "prompt_tokens": len(prompt.tokens), "answer_chars": len(answer)}))  # fmt: skip


def measure(path: str, n_ctx: int, n_batch: int) -> dict:
    run = subprocess.run(
        [sys.executable, __file__, "--child", path, str(n_ctx), str(n_batch)],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"measurement at n_ctx={n_ctx} failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ctx", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--model", default=None, help="registry name or .gguf file (default: the bundled model)")
    ap.add_argument("--batch", type=int, default=256, help="n_batch (= n_ubatch), the app's default is 256")
    ap.add_argument("--limit", type=float, default=15.0, help="largest acceptable error in %% (exit 1 above)")
    args = ap.parse_args()

    from engine.models.gguf_info import read_gguf_info
    from engine.models.memory import estimate
    from engine.models.registry import resolve

    name, path = resolve(args.model)
    info = read_gguf_info(path)
    print(f"{name}: {path} ({info.size / 2**20:.1f} MiB, {info.architecture}, {info.quantization})")
    print(f"{'n_ctx':>6} {'weights':>8} {'kv':>8} {'compute':>8} {'estimate':>9} {'measured':>9} {'error':>7}"
          "   (MiB; measured = VmRSS after a prompt + 32 tokens minus VmRSS before loading)")  # fmt: skip
    worst = 0.0
    for n_ctx in args.ctx:
        m = measure(str(path), n_ctx, args.batch)
        est = estimate(info, n_ctx, n_batch=args.batch)
        measured = m["after"] - m["before"]
        err = 100.0 * (est.total - measured) / measured
        worst = max(worst, abs(err))
        mib = 2**20
        print(f"{n_ctx:>6} {est.weights / mib:>8.1f} {est.kv_cache / mib:>8.1f} {est.compute / mib:>8.1f} "
              f"{est.total / mib:>9.1f} {measured / mib:>9.1f} {err:>+6.1f}%"
              f"   (after load only: {(m['loaded'] - m['before']) / mib:.1f}; prompt {m['prompt_tokens']} tokens)")  # fmt: skip
    print(f"worst error {worst:.1f}% (goal: within {args.limit:.0f}%)")
    return 0 if worst <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
