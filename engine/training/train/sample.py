"""`chatfactory sample`: K answers per prompt from a model, for people or a labeller to rank.

    chatfactory sample --model runs/sft --prompts prompts.jsonl -k 4 --out samples.jsonl
    chatfactory sample --model runs/sft --tasks builtin -n 500 -k 4 --out samples.jsonl

Prompts are JSONL records with "prompt" (a string) or "messages" (ending with a user turn);
any other field (a task name, a reference answer) is copied to the output, where a labeller
can use it. `--tasks` takes the prompts from the built-in tasks instead, with what their
checkers need. The output is the K-wise preference format without a "ranking" (see
engine.training.data.preferences), plus "finish_reasons": "stop" when an answer ended with
<|im_end|>, "length" when it ran out of tokens.

Generation is batched with the KV cache (engine.training.sampler.generate); the same helper
`generate_answers` makes PPO's rollouts and the evaluation's answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.training.data.preferences import Comparison, iter_json_records, write_preferences
from engine.training.model import GPT
from engine.training.sampler import SamplingParams, generate
from engine.training.tokenizer import Tokenizer
from engine.training.tokenizer.bpe import IM_END
from engine.training.tokenizer.chat_template import render_prompt


@dataclass
class Answer:
    prompt_ids: list[int]
    tokens: list[int]  # generated ids, including the closing <|im_end|> when there is one
    logprobs: list[float]  # at the sampling temperature, one per token
    text: str  # the reply without its closing token
    finished: bool  # ended with <|im_end|> (a clean end of turn)


def stop_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """<|im_end|> ends a turn; <|endoftext|> also stops generation, but is not a clean ending."""
    return tuple(sorted({tokenizer.token_id(IM_END), tokenizer.eos_id}))


def generate_answers(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: Sequence[list[dict[str, str]]],
    params: SamplingParams,
    k: int = 1,
    batch_size: int = 32,
    max_prompt_len: int | None = None,
) -> list[list[Answer]]:
    """k answers for each prompt (a message list), generated in batches of `batch_size` rows.

    A prompt longer than `max_prompt_len` (default: the context minus the answer budget) keeps
    its latest tokens. A seeded `params` gives every batch its own derived seed, so the result
    does not depend on how prompts fall into batches only through the seed sequence.
    """
    im_end = tokenizer.token_id(IM_END)
    params = SamplingParams(**{**params.__dict__, "stop_token_ids": stop_ids(tokenizer)})
    limit = max_prompt_len or max(1, model.config.max_seq_len - params.max_new_tokens)
    rows = [render_prompt(p, tokenizer)[-limit:] for p in prompts for _ in range(k)]
    was = model.training
    model.eval()  # dropout off while sampling
    out: list[Answer] = []
    for b, s in enumerate(range(0, len(rows), batch_size)):
        batch = rows[s : s + batch_size]
        seed = None if params.seed is None else params.seed * 1_000_003 + b
        gens = generate(model, batch, SamplingParams(**{**params.__dict__, "seed": seed}), pad_id=tokenizer.pad_id)
        for ids, g in zip(batch, gens):
            finished = g.finish_reason == "stop" and g.tokens[-1] == im_end
            body = g.tokens[:-1] if g.finish_reason == "stop" else g.tokens
            out.append(Answer(ids, g.tokens, g.logprobs, tokenizer.decode(body, skip_special=True), finished))
    model.train(was)
    return [out[i * k : (i + 1) * k] for i in range(len(prompts))]


# ---- prompts -------------------------------------------------------------------------------------
def read_prompts(path: str | Path) -> list[Comparison]:
    """Prompt records -> Comparisons with no responses yet (extra fields kept)."""
    from engine.training.data.preferences import parse_prompt

    out = []
    for rec, where in iter_json_records(path):
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object with 'prompt' or 'messages'")  # noqa: TRY004 (bad input, not a bug)
        if ("prompt" in rec) == ("messages" in rec):
            raise ValueError(f"{where}: a prompt record needs exactly one of 'prompt' or 'messages'")
        key = "prompt" if "prompt" in rec else "messages"
        extra = {k: v for k, v in rec.items() if k not in ("prompt", "messages", "responses", "ranking")}
        out.append(Comparison(parse_prompt(rec[key], where, key), [], None, extra, where))
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def task_prompts(tasks: str, split: str, n: int, seed: int = 0) -> list[Comparison]:
    """Prompts from the built-in tasks, with what the checker needs (see labeller.task_item)."""
    from engine.training.data.tasks import get_tasks
    from engine.training.train.labeller import item_record

    tlist = get_tasks(tasks)
    per = max(1, n // len(tlist))
    out = []
    for t in tlist:
        for item in t.items(split, per, seed):
            out.append(Comparison(item.messages, [], None, item_record(item), f"task {t.name}"))
    return out


def sample_comparisons(
    model: GPT, tokenizer: Tokenizer, prompts: list[Comparison], params: SamplingParams, k: int, batch_size: int = 32
) -> list[Comparison]:
    answers = generate_answers(model, tokenizer, [p.prompt for p in prompts], params, k, batch_size)
    out = []
    for p, ans in zip(prompts, answers):
        extra = {**p.extra, "finish_reasons": ["stop" if a.finished else "length" for a in ans]}
        out.append(Comparison(p.prompt, [a.text for a in ans], None, extra, p.where))
    return out


# ---- the command -----------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="write K answers per prompt, for ranking (RLHF data)")
    p.add_argument("--model", required=True, help="model to sample from (normally the SFT model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="JSONL of {'prompt' or 'messages', ...}")
    src.add_argument("--tasks", help="'builtin' or task names: take prompts from the built-in tasks")
    p.add_argument("--split", default="train", choices=["train", "test"], help="task split (with --tasks)")
    p.add_argument("-n", type=int, default=500, help="number of task prompts (with --tasks)")
    p.add_argument("-k", type=int, default=4, help="answers per prompt")
    p.add_argument("--out", required=True, help="output JSONL (.gz to compress)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from engine.training.loader import load

    if args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    torch.manual_seed(args.seed)
    loaded = load(args.model)
    prompts = read_prompts(args.prompts) if args.prompts else task_prompts(args.tasks, args.split, args.n, args.seed)
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    t0 = time.time()
    out = sample_comparisons(loaded.model, loaded.tokenizer, prompts, params, args.k, args.batch_size)
    n = write_preferences(args.out, out)
    finished = sum(r == "stop" for c in out for r in c.extra["finish_reasons"])
    total = n * args.k
    print(
        json.dumps({"prompts": n, "answers": total, "ended_cleanly": finished / total, "seconds": round(time.time() - t0, 1),
                    "out": str(args.out)}),
        file=sys.stderr,
    )
    return 0
