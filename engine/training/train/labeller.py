"""`chatfactory rank --labeller builtin IN OUT`: a scripted labeller for the built-in tasks.

It stands in for people when the prompts come from the built-in tasks, whose answers a
checker can verify (engine.training.data.tasks). Answers are ordered by, in turn:

1. correctness: the task's checker says right before wrong;
2. a clean ending: the answer closed its turn with <|im_end|> ("finish_reasons" == "stop",
   written by `chatfactory sample`) before one that ran out of tokens.

Answers equal on both form a tie group (skipped by the loss; see engine.training.data.preferences
for the ranking format). No brevity key, measured on the tiny preset: ordering wrong answers
by length taught the reward model "shorter is better" (PPO then cut every answer: reward up,
checker accuracy 17% -> 0.3%), and ordering right answers by length taught it to prefer a
clipped "I am Quill, a small assory." to the right identity answer (identity 93% -> 0%).
The checkers are exact, so among right answers length carries no information to learn.
The rank is a pure function of the record, so labelling twice gives the same file.

`--labeller brief` ranks the preference demo's prompts (task "brief": everyday questions) by
brevity instead; see rank_brief.
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import groupby
from typing import Any

from engine.training.data.preferences import Comparison, read_preferences, write_preferences
from engine.training.data.tasks import BRIEF_MAX_WORDS, TASKS, TaskItem, count_words, is_dodge


def item_record(item: TaskItem) -> dict[str, Any]:
    """What a prompt record carries for the checker: {"task", "answer", "task_meta"}."""
    return {"task": item.task, "answer": item.answer, "task_meta": {k: v for k, v in item.meta}}


def task_item(c: Comparison) -> TaskItem:
    """Rebuild the TaskItem a record was made from (ValueError naming the record if it can't)."""
    name, answer = c.extra.get("task"), c.extra.get("answer")
    if name not in TASKS or not isinstance(answer, str):
        raise ValueError(
            f"{c.where}: the builtin labeller needs a built-in task prompt with 'task' (one of {', '.join(TASKS)}) "
            f"and 'answer' fields; got task={name!r} (sample with `chatfactory sample --tasks builtin`)"
        )
    meta = c.extra.get("task_meta") or {}
    # JSON turned tuples into lists; TaskItem is frozen (hashable), so back to tuples
    frozen = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in meta.items())
    return TaskItem(name, c.prompt[-1]["content"], answer, frozen)


def check(c: Comparison, reply: str) -> bool:
    """The task's own checker on one reply."""
    item = task_item(c)
    return bool(TASKS[item.task].check(item, reply))


def sort_key(correct: bool, finished: bool) -> tuple[int, int]:
    return (0 if correct else 1, 0 if finished else 1)


def rank_builtin(c: Comparison) -> Comparison:
    """The same comparison with its ranking set by the builtin preference order."""
    item = task_item(c)
    checker = TASKS[item.task].check
    finish = c.extra.get("finish_reasons") or ["stop"] * len(c.responses)
    if len(finish) != len(c.responses):
        raise ValueError(f"{c.where}: 'finish_reasons' has {len(finish)} entries for {len(c.responses)} responses")
    keys = [sort_key(bool(checker(item, r)), f == "stop") for r, f in zip(c.responses, finish)]
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    ranking = [list(g) for _, g in groupby(order, key=lambda i: keys[i])]
    correct = [bool(k[0] == 0) for k in keys]
    return Comparison(c.prompt, c.responses, ranking, {**c.extra, "correct": correct}, c.where)


def brief_key(item: TaskItem, reply: str, finished: bool) -> tuple[int, int]:
    """The brief labeller's order, best first: (0) a real answer of at most BRIEF_MAX_WORDS words
    that ended by itself; (1) one that ended but is longer, fewer words first; (2) one cut off at
    the token limit, all tied (how many words fit into the limit measures the tokenizer, not
    brevity); (3) no answer: empty, evasive or off topic (tasks.is_dodge), even a short one."""
    if is_dodge(item, reply):
        return (3, 0)
    if not finished:
        return (2, 0)
    words = count_words(reply)
    return (0, 0) if words <= BRIEF_MAX_WORDS else (1, words)


def rank_brief(c: Comparison) -> Comparison:
    """Rank a "brief" task prompt's answers by `brief_key`: the preference demo's labeller.

    Unlike rank_builtin's exact checkers, brevity has degrees, so answers that ended but ran long
    are ordered by length: the reward model then learns "shorter" even from prompts where no
    answer is short enough. Among passing answers there is no length order (a one-word reply
    is no better than a twelve-word one; ordering them would teach clipping). "correct" marks
    the passing answers that also ended by themselves.
    """
    item = task_item(c)
    if item.task != "brief":
        raise ValueError(f"{c.where}: the brief labeller ranks 'brief' task prompts, got task {item.task!r}")
    finish = c.extra.get("finish_reasons") or ["stop"] * len(c.responses)
    if len(finish) != len(c.responses):
        raise ValueError(f"{c.where}: 'finish_reasons' has {len(finish)} entries for {len(c.responses)} responses")
    keys = [brief_key(item, r, f == "stop") for r, f in zip(c.responses, finish)]
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    ranking = [list(g) for _, g in groupby(order, key=lambda i: keys[i])]
    correct = [k[0] == 0 for k in keys]
    return Comparison(c.prompt, c.responses, ranking, {**c.extra, "correct": correct}, c.where)


LABELLERS = {"builtin": rank_builtin, "brief": rank_brief}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rank", help="rank sampled answers with a scripted labeller (RLHF data)")
    p.add_argument("input", help="K-wise JSONL from `chatfactory sample` (.gz read directly)")
    p.add_argument("output", help="the same records with a 'ranking' (JSONL, .gz to compress)")
    p.add_argument("--labeller", default="builtin", choices=sorted(LABELLERS),
                   help="builtin: task checker, then a clean <|im_end|> ending; brief (the preference demo, "
                        "'--tasks brief' prompts): a real answer in few words that ended by itself, then fewer words")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    labeller = LABELLERS[args.labeller]
    ranked = [labeller(c) for c in read_preferences(args.input, require_ranking=False)]
    write_preferences(args.output, ranked)
    answers = sum(len(c.responses) for c in ranked)
    right = sum(sum(c.extra["correct"]) for c in ranked)
    pairs = sum(len(c.pairs()) for c in ranked)
    print(json.dumps({"prompts": len(ranked), "answers": answers, "checker_accuracy": right / max(answers, 1),
                      "pairs": pairs, "out": str(args.output)}), file=sys.stderr)
    return 0
