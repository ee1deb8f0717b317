"""`chatfactory finetune`: the Fine-tuning tab's job from the command line.

    chatfactory finetune --base smollm2-135m-instruct --data chats --method sft
    chatfactory finetune --base model.gguf --data prefs.jsonl --method dpo --out runs/my-dpo --max-steps 20

It validates the data, trains, writes an F16 GGUF, quantizes it with llama.cpp, registers the
result in the model list, and prints the quantized file's path (the only line on stdout).
Running the same --out folder again resumes a job that was stopped.
"""

from __future__ import annotations

import argparse
import sys

from .job import METHODS, PRESETS, QUANTS, JobCancelled, JobSpec, create_job, run_job


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a model on your chats or files; registers a quantized GGUF",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="base model: a registered name, a GGUF file, a Hugging Face folder, "
                   "or scratch:PRESET to pre-train one first (tiny, small, gpt2-124m; SFT only)")
    p.add_argument("--data", nargs="+", required=True, metavar="SOURCE",
                   help="chats[:since=DATE,until=DATE,session=ID+ID,template=NAME], a JSONL file (OpenAI messages, "
                        "TRL prompt/chosen/rejected, HH-RLHF, OASST), builtin, or demo (the preference demo)")
    p.add_argument("--method", choices=METHODS, default="sft")
    p.add_argument("--preset", choices=PRESETS, default="quick")
    p.add_argument("--out", help="job folder (default: a new one in the data folder); an existing one resumes")
    p.add_argument("--max-steps", type=int, help="optimizer steps of each training stage (default: the preset's epochs)")
    p.add_argument("--name", default="", help="the tuned model's name in the model list")
    p.add_argument("--quant", choices=QUANTS, default="Q8_0")
    p.add_argument("--db", help="chat database for the chats source (default: the app's)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                   help="override a preset field, e.g. --set dpo.beta=0.2 (repeatable)")
    p.set_defaults(func=main)


def _overrides(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"--set {item!r}: expected STAGE.FIELD=VALUE, e.g. dpo.beta=0.2")
        out[key] = yaml.safe_load(value)
    return out


def main(args: argparse.Namespace) -> int:
    spec = JobSpec(base=args.base, data=list(args.data), method=args.method, preset=args.preset,
                   max_steps=args.max_steps, name=args.name, quant=args.quant, db=args.db, threads=args.threads,
                   overrides=_overrides(args.overrides))
    folder = create_job(spec, args.out)
    print(f"finetune: job folder {folder}", file=sys.stderr)

    def emit(e: dict) -> None:
        kind = e.get("event")
        if kind == "stage":
            print(f"finetune: [{e['index'] + 1}/{e['of']}] {e['name']} {e['status']}"
                  + (f" {e.get('results')}" if e["status"] == "done" else ""), file=sys.stderr)
        elif kind == "data":
            print(f"finetune: data: {e['conversations']} conversations ({e['heldout_conversations']} held out), "
                  f"{e['comparisons']} rankings ({e['heldout_comparisons']} held out)", file=sys.stderr)
        elif kind == "error":
            print(f"finetune: failed: {e['message']}", file=sys.stderr)

    try:
        result = run_job(folder, emit)
    except JobCancelled:
        print(f"finetune: stopped; run the same command (--out {folder}) to resume", file=sys.stderr)
        return 130
    print(result["gguf"])
    return 0
