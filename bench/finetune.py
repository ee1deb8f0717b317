"""Fine-tuning on this machine: SFT throughput, "teach from my chats", and the preference demo.

    python bench/finetune.py sft-speed [--steps 6]       # SmolLM2-135M SFT tokens/s and MFU
    python bench/finetune.py sample-speed [--batch 64]   # PyTorch generation for sampling and PPO rollouts
    python bench/finetune.py teach [--conversations 300] # 300 thumbed-up chats → GGUF in the model list
    python bench/finetune.py demo [--method both]        # preference demo: RM + PPO, then DPO

Every run uses a fresh data folder (CHATFACTORY_HOME in a temp dir) and the real job code
(engine.finetune.job), the bundled SmolLM2-135M-Instruct, and OpenAssistant conversations from
../shared/data/oasst (never committed). It prints the figures BENCHMARKS.md records.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "oasst"
BASE = "smollm2-135m-instruct"


def oasst_conversations(n: int) -> list[dict]:
    """Real conversations: every path of the OASST trees (validation set, then the 100 trees)."""
    from engine.training.data.converters import oasst_conversations as convert

    out: list[dict] = []
    for name in ("oasst1-en-validation.jsonl", "en_100_tree.jsonl"):
        path = DATA / name
        if not path.exists():
            sys.exit(f"{path} is missing: this benchmark reads ../shared/data")
        convs, _ = convert(path, all_paths=True)
        out += [c for c in convs if sum(len(m["content"]) for m in c["messages"]) < 2400]
    if len(out) < n:
        sys.exit(f"only {len(out)} OASST conversations under 2,400 characters; asked for {n}")
    return out[:n]


def fresh_home(tmp: Path) -> None:
    os.environ["CHATFACTORY_HOME"] = str(tmp / "home")
    # the bundled model's file is looked up in assets/models (not in the data folder): nothing to copy


def sft_speed(args) -> None:
    """Steady-state SFT of SmolLM2-135M on OASST conversations: the trainer's own tokens/s and
    MFU against the measured fp32 matmul peak (the same measurement as bench/train_throughput)."""
    import torch

    from engine.training.data.conversations import write_conversations
    from engine.training.train.config import from_dict
    from engine.training.train.sft import SFTConfig, run_sft

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fresh_home(tmp)
        data = tmp / "oasst.jsonl"
        write_conversations(data, oasst_conversations(200))
        cfg = from_dict(SFTConfig, {
            "model": BASE, "data": [str(data)], "out_dir": str(tmp / "sft"), "val_fraction": 0.0,
            "train": {"lr": 5e-5, "seq_len": args.seq_len, "micro_batch_size": args.batch, "max_steps": args.steps,
                      "log_every": 1, "progress": False, "threads": args.threads},
        })
        t0 = time.time()
        summary = run_sft(cfg)
        recs = [json.loads(x) for x in (tmp / "sft" / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in recs if "tok_per_s" in r][1:]  # the first step warms up
    tok_s = statistics.median(r["tok_per_s"] for r in steps)
    mfu = statistics.median(r["mfu"] for r in steps if "mfu" in r)
    print(f"SFT SmolLM2-135M, seq_len {args.seq_len} x micro-batch {args.batch}, {args.threads} threads, "
          f"{len(steps)} timed steps (median):")
    print(f"  tokens/s {tok_s:,.1f}   MFU vs measured fp32 matmul peak {mfu * 100:.1f} %")
    print(f"  held-out n/a; wall {time.time() - t0:.0f} s for {summary['steps']} steps")


def sample_speed(args) -> None:
    """Training-side generation (the demo's sampling, PPO rollouts, the checker): answers of up to
    48 tokens at temperature 0.7 from the bundled model, PyTorch, in batches of --batch rows."""
    import torch

    from engine.training.loader import load
    from engine.training.sampler import SamplingParams
    from engine.training.train.sample import generate_answers, task_prompts

    torch.set_num_threads(args.threads)
    m = load(BASE)
    prompts = [p.prompt for p in task_prompts("brief", "train", args.rows, 0)]
    params = SamplingParams(max_new_tokens=48, temperature=0.7, seed=1)
    generate_answers(m.model, m.tokenizer, prompts[:4], params, 1, 4)  # warm-up
    t0 = time.time()
    answers = [a[0] for a in generate_answers(m.model, m.tokenizer, prompts, params, 1, args.batch)]
    dt = time.time() - t0
    tokens = sum(len(a.tokens) for a in answers)
    print(f"{len(answers)} answers in batches of {args.batch}: {dt:.1f} s, {tokens} tokens, {tokens / dt:.1f} tokens/s, "
          f"{dt / len(answers):.3f} s per answer")


def teach(args) -> None:
    """The tab's "teach from my chats": N real conversations in the app's store, the answers
    thumbed up, then Start → a quantized GGUF registered in the model list."""
    from engine.finetune.job import JobSpec, create_job, run_job
    from engine.models import registry
    from engine.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fresh_home(tmp)
        convs = oasst_conversations(args.conversations)
        with Store.open() as store:
            for c in convs:
                sid = store.create_session(title=c["messages"][0]["content"][:40])
                for m in c["messages"]:
                    mid = store.add_message(sid, m["role"], m["content"],
                                            **({"finish_reason": "stop"} if m["role"] == "assistant" else {}))
                if c["messages"][-1]["role"] == "assistant":
                    store.set_feedback(mid, 1)
        spec = JobSpec(base=BASE, data=["chats"], method="sft", preset=args.preset, name="teach-bench")
        events: list[dict] = []
        t0 = time.time()
        result = run_job(create_job(spec), events.append)
        seconds = time.time() - t0
        entry = next(m for m in registry.list_models() if m.name == "teach-bench")
        data = result["stages"]["data"]
        sft = result["stages"]["sft"]
        print(f"teach from my chats: {args.conversations} conversations, preset {args.preset}")
        print(f"  data: {data['conversations']} train / {data['heldout_conversations']} held out")
        print("  stage seconds: " + ", ".join(f"{k} {v['seconds']:.0f}" for k, v in result["stages"].items()))
        print(f"  SFT {sft['steps']} steps; held-out loss {sft['heldout_loss_before']:.4f} -> {sft['heldout_loss']:.4f}")
        print(f"  Start -> registered {entry.quantization} GGUF ({entry.size / 1e6:.0f} MB): {seconds:.0f} s")


def demo(args) -> None:
    """The preference demo: sample K answers per train prompt, rank them by script, reward model,
    PPO; then DPO on the same rankings. Checker pass rate on held-out prompts, base vs tuned;
    KL to the base; the general-quality guard (held-out loss on OASST conversations)."""
    import yaml

    from engine.finetune.job import JobSpec, create_job, run_job

    methods = ["rlhf", "dpo"] if args.method == "both" else [args.method]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(args.out) if args.out else Path(tmp)  # --out keeps the jobs (metrics, answers) for a look after
        tmp.mkdir(parents=True, exist_ok=True)
        fresh_home(tmp)
        guard = oasst_guard_data(tmp)
        rows = []
        first: Path | None = None
        jobs_seconds = 0.0  # both jobs, the sampling once (the guard's losses below are not part of the demo)
        for method in methods:
            spec = JobSpec(base=BASE, data=["demo"], method=method, preset=args.preset, name=f"demo-{method}",
                           overrides={k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.set)})
            folder = create_job(spec, tmp / f"job-{method}")
            shared = 0.0
            if first is not None:  # the same sampled rankings: the data and sample stages are reused
                for stage in ("data", "sample"):
                    shutil.copytree(first / stage, folder / stage)
                shared = sum(json.loads((first / s / "DONE.json").read_text())["results"]["seconds"]
                             for s in ("data", "sample"))
            t0 = time.time()
            result = run_job(folder, lambda e: print(json.dumps(e)) if e["event"] == "stage" else None)
            seconds = time.time() - t0 + shared
            jobs_seconds += time.time() - t0
            first = first or folder
            ev = result["stages"]["eval"]
            loss_base, loss_tuned = oasst_loss(BASE, guard), oasst_loss(folder / {"rlhf": "ppo", "dpo": "dpo"}[method] / "model", guard)
            rows.append({
                "method": method, "seconds": round(seconds), "checker_base": ev.get("checker_base"),
                "checker_tuned": ev.get("checker_tuned"), "kl_to_base": ev.get("kl_to_base"),
                "reward_heldout_accuracy": ev.get("reward_heldout_accuracy"),
                "dpo_heldout_accuracy": ev.get("dpo_heldout_accuracy_after"),
                "oasst_loss_base": loss_base, "oasst_loss_tuned": loss_tuned,
                "stage_seconds": {k: v.get("seconds") for k, v in result["stages"].items()},
                "sample": result["stages"].get("sample"),
                "reward": result["stages"].get("reward"), "dpo": result["stages"].get("dpo"),
                "ppo": {k: v for k, v in result["stages"].get("ppo", {}).items() if k != "heldout_accuracy"},
            })
        print(json.dumps(rows, indent=2))
        print(f"whole demo ({' + '.join(methods)}, sampling once): {jobs_seconds:.0f} s")
        for r in rows:
            print(f"{r['method']}: checker {r['checker_base'] * 100:.1f} % -> {r['checker_tuned'] * 100:.1f} % "
                  f"({(r['checker_tuned'] - r['checker_base']) * 100:+.1f} pts), KL {r['kl_to_base']:.3f}, "
                  f"RM acc {r['reward_heldout_accuracy']}, DPO acc {r['dpo_heldout_accuracy']}, "
                  f"OASST loss {r['oasst_loss_base']:.4f} -> {r['oasst_loss_tuned']:.4f} "
                  f"({(r['oasst_loss_tuned'] / r['oasst_loss_base'] - 1) * 100:+.1f} %), {r['seconds']} s")


def oasst_guard_data(tmp: Path):
    """Held-out OASST conversations (the last 40 of the set, not used by anything here)."""
    from engine.training.data.conversations import parse_conversation

    convs = oasst_conversations(340)[300:]
    return [parse_conversation(c, f"oasst:{i}") for i, c in enumerate(convs)]


def oasst_loss(model_spec, convs) -> float:
    from engine.training.data.conversations import fit_all, pack
    from engine.training.loader import load
    from engine.training.train.sft import rows_loss

    m = load(model_spec)
    examples, _ = fit_all(convs, m.tokenizer, 257, "truncate")
    rows = pack(examples, 256, m.tokenizer.pad_id)
    return rows_loss(m.model, rows, m.tokenizer.pad_id)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sft-speed")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.set_defaults(func=sft_speed)
    p = sub.add_parser("sample-speed")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.set_defaults(func=sample_speed)
    p = sub.add_parser("teach")
    p.add_argument("--conversations", type=int, default=300)
    p.add_argument("--preset", default="quick")
    p.set_defaults(func=teach)
    p = sub.add_parser("demo")
    p.add_argument("--method", choices=["rlhf", "dpo", "both"], default="both")
    p.add_argument("--preset", default="quick")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE")
    p.add_argument("--out", help="an empty folder to keep the jobs in (default: a temporary one)")
    p.set_defaults(func=demo)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
