"""`chatfactory generate`: stream a model's continuation of one prompt to stdout.

The raw engine (KV cache, sampling, stops), with no moderation and no hidden instructions:
for trying a checkpoint. `--chat` wraps the prompt in the chat template (one user turn, an
optional --system turn) and stops at <|im_end|>; the moderated chat is `chatfactory serve`.
Statistics (tokens, tokens/s, finish reason) go to stderr, so stdout holds only the text.
"""

from __future__ import annotations

import sys
import time

DTYPES = ["bfloat16", "float16", "float32"]


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="stream a model's answer to one prompt (no moderation)")
    p.add_argument(
        "--model", required=True, help="registry name, chatfactory folder, HF folder or .gguf file"
    )
    p.add_argument("--prompt", required=True, help="the prompt text, or - to read it from stdin")
    p.add_argument(
        "--chat", action="store_true", help="render the prompt as a user turn of the chat template"
    )
    p.add_argument("--system", default=None, help="with --chat: a system message before the prompt")
    p.add_argument("--max-tokens", type=int, default=256, help="most new tokens (default: 256)")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: 0.7)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens; 0 = off (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1 = off (default)")
    p.add_argument("--seed", type=int, default=None, help="same seed + same prompt = same output")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable); not printed")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="weights dtype (default: as stored)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from chatfactory.engine.generate import SamplingParams
    from chatfactory.engine.scheduler import Engine
    from chatfactory.loader import load
    from chatfactory.tokenizer import IM_END
    from chatfactory.tokenizer.chat_template import render

    text = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.system is not None and not args.chat:
        raise ValueError("--system needs --chat")
    loaded = load(args.model, device=args.device, dtype=getattr(torch, args.dtype) if args.dtype else None)
    tok = loaded.tokenizer
    stop_ids: tuple[int, ...] = ()
    if args.chat:
        try:
            stop_ids = (tok.token_id(IM_END),)
        except KeyError:
            raise ValueError(
                f"{args.model}: the tokenizer has no {IM_END} token, so --chat cannot be used"
            ) from None
        turns = ([{"role": "system", "content": args.system}] if args.system is not None else []) + [
            {"role": "user", "content": text}
        ]
        ids = render(turns, tok, add_generation_prompt=True)[0]
    else:
        ids = tok.encode(text)  # as the model's own tokenizer would (no BOS: SmolLM2 adds none)
    params = SamplingParams(
        max_new_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_token_ids=stop_ids,
    )
    engine = Engine(loaded, max_batch=1)
    req = engine.submit(ids, params, args.stop)  # raises a clear error if it cannot fit
    t0 = time.perf_counter()
    try:
        for delta in req:  # no engine thread: iterating runs the decode steps right here
            sys.stdout.write(delta.text)
            sys.stdout.flush()
    finally:
        req.cancel()
    sys.stdout.write("\n")
    dt = time.perf_counter() - t0
    decode = (req.finished_at or t0) - (req.first_token_at or t0)
    rate = (req.completion_tokens - 1) / decode if decode > 0 and req.completion_tokens > 1 else 0.0
    print(
        f"[{req.prompt_tokens} prompt + {req.completion_tokens} new tokens in {dt:.2f}s, "
        f"decode {rate:.1f} tok/s, finish_reason={req.finish_reason}]",
        file=sys.stderr,
    )
    return 0
