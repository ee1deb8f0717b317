"""Task evaluation: sample answers to held-out prompts, check them, report per task.

Per task:
- format: the fraction of replies that end with <|im_end|> within the token limit, hold no
  other special token (no "<|im_start|>user" role switch, no <|endoftext|>) and are not empty;
- accuracy: the fraction the task's checker accepts (text before <|im_end|>);
- evasive: the fraction of replies that are one of the evasive replies ("I'm not sure.") some
  built-in demonstrations hold (engine.training.data.tasks.EVASIVE_REPLIES); they count as wrong;
- heldout_loss: mean cross-entropy per trained token of the reference answers (the SFT loss on
  prompts never trained on), independent of sampling.

`evaluate_tasks` is what the pipeline and PPO call; `chatfactory eval` prints a table and
writes the same dict as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from engine.training.data.conversations import Conversation, collate, fit_all, pad_rows
from engine.training.data.tasks import Task, TaskItem, get_tasks, is_evasive
from engine.training.model import GPT
from engine.training.sampler.generate import SamplingParams, generate
from engine.training.tokenizer import IM_END, Tokenizer
from engine.training.tokenizer.chat_template import render_prompt


def reply_of(tokens: list[int], tokenizer: Tokenizer) -> tuple[str, bool]:
    """(reply text, format ok): ok when a non-empty reply ends at <|im_end|> with no other
    special token (an immediate <|im_end|> is a non-answer, not adherence)."""
    end = tokenizer.token_id(IM_END)
    specials = {tokenizer.token_id(t) for t in tokenizer.special_tokens}
    body = tokens[:-1] if tokens and tokens[-1] == end else tokens
    text = tokenizer.decode(body, skip_special=True)
    ok = bool(tokens) and tokens[-1] == end and not any(t in specials for t in body) and bool(text.strip())
    return text, ok


@torch.no_grad()
def heldout_loss(model: GPT, tokenizer: Tokenizer, items: list[TaskItem], batch_size: int = 32) -> float:
    """Mean loss per trained (assistant) token of the reference conversations."""
    convs = [Conversation(it.conversation()["messages"]) for it in items]
    examples, _ = fit_all(convs, tokenizer, model.config.max_seq_len + 1, overflow="drop")
    if not examples:
        return float("nan")
    total, count = 0.0, 0
    rows = pad_rows(examples, model.config.max_seq_len, tokenizer.pad_id)
    device = next(model.parameters()).device
    for s in range(0, len(rows), batch_size):
        b = {k: v.to(device) for k, v in collate(rows[s : s + batch_size], tokenizer.pad_id).items()}
        loss = model(b["input_ids"], b["targets"], reduction="sum", doc_ids=b["doc_ids"])
        total += float(loss)
        count += int((b["targets"] != -100).sum())
    return total / max(count, 1)


@torch.no_grad()
def evaluate_tasks(
    model: GPT,
    tokenizer: Tokenizer,
    tasks: list[Task] | str = "builtin",
    *,
    n: int | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
    with_loss: bool = True,
    n_examples: int = 3,
) -> dict[str, Any]:
    """{"tasks": {name: {n, format, accuracy, heldout_loss, examples}}, "mean_accuracy", "mean_format"}.

    n: held-out prompts per task (default: the task's whole test set). Greedy by default, so
    the numbers are reproducible; PPO may pass temperature > 0 to look at its sampling policy.
    """
    if isinstance(tasks, str):
        tasks = get_tasks(tasks)
    was_training = model.training
    model.eval()
    end = tokenizer.token_id(IM_END)
    stops = tuple({end, tokenizer.eos_id})
    out: dict[str, Any] = {"tasks": {}}
    t0 = time.time()
    for task in tasks:
        items = task.items("test", n, seed)
        prompts = [render_prompt(it.messages, tokenizer) for it in items]
        order = sorted(range(len(items)), key=lambda i: len(prompts[i]))  # similar lengths batch together
        replies: list[tuple[str, bool]] = [("", False)] * len(items)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + s, stop_token_ids=stops)
            for i, g in zip(idx, generate(model, [prompts[i] for i in idx], params, pad_id=tokenizer.pad_id)):
                replies[i] = reply_of(g.tokens, tokenizer)
        correct = [task.check(it, text) for it, (text, _) in zip(items, replies)]
        res = {
            "n": len(items),
            "format": sum(ok for _, ok in replies) / max(len(items), 1),
            "accuracy": sum(correct) / max(len(items), 1),
            "evasive": sum(is_evasive(text) for text, _ in replies) / max(len(items), 1),
            "examples": [
                {"prompt": it.prompt, "answer": it.answer, "reply": text, "format": ok, "correct": c}
                for it, (text, ok), c in list(zip(items, replies, correct))[:n_examples]
            ],
        }
        if with_loss:
            res["heldout_loss"] = heldout_loss(model, tokenizer, items, batch_size)
        out["tasks"][task.name] = res
    results = out["tasks"].values()
    out["mean_accuracy"] = sum(r["accuracy"] for r in results) / max(len(results), 1)
    out["mean_format"] = sum(r["format"] for r in results) / max(len(results), 1)
    out["mean_evasive"] = sum(r["evasive"] for r in results) / max(len(results), 1)
    out["seconds"] = round(time.time() - t0, 2)
    model.train(was_training)
    return out


def format_table(results: dict[str, Any]) -> str:
    rows = [("task", "n", "format", "accuracy", "evasive", "heldout_loss")]
    for name, r in results["tasks"].items():
        loss = r.get("heldout_loss")
        loss_s = "-" if loss is None or (isinstance(loss, float) and math.isnan(loss)) else f"{loss:.3f}"
        rows.append((name, str(r["n"]), f"{r['format']:.1%}", f"{r['accuracy']:.1%}", f"{r['evasive']:.1%}", loss_s))
    rows.append(("mean", "", f"{results['mean_format']:.1%}", f"{results['mean_accuracy']:.1%}",
                 f"{results['mean_evasive']:.1%}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


# ---- command line ----------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="task accuracy and format adherence on held-out prompts")
    p.add_argument("--model", required=True, help="checkpoint folder, HF folder, GGUF file or registry name")
    p.add_argument("--tasks", default="builtin", help="'builtin' or comma-separated task names")
    p.add_argument("--n", type=int, default=None, help="held-out prompts per task (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from engine.training.loader import load

    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = get_tasks(args.tasks)  # validate names before loading a model
    loaded = load(args.model)
    results = evaluate_tasks(
        loaded.model, loaded.tokenizer, tasks, n=args.n, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
    )
    results["model"] = loaded.name
    print(format_table(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0
