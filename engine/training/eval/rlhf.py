"""Did RLHF help? The PPO model beside the SFT model on held-out prompts.

For each model: mean reward (the reward model's normalised score), checker accuracy (the task
checkers, where the prompt comes from a built-in task) and, for the PPO model, the KL to the
SFT model. Then win rates of PPO over SFT, answer by answer on the same prompt: by the reward
model (higher score wins) and by the checker (right beats wrong); ties count half.

Answers are greedy by default, so the numbers repeat; the KL is measured on the PPO model's
*sampled* answers at the sampling temperature (mean over answers of the summed
log pi_ppo - log pi_sft), the quantity PPO's penalty holds down.

    chatfactory eval-rlhf --ppo runs/ppo/model --sft runs/sft/model --reward-model runs/rm/model
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from engine.training.model import GPT
from engine.training.sampler import SamplingParams
from engine.training.train.reward_model import RewardModel, pad_right
from engine.training.train.rl_math import token_logprobs
from engine.training.train.sample import Answer, generate_answers


@torch.no_grad()
def score_answers(rm: RewardModel, answers: list[Answer], pad_id: int, batch_size: int = 32) -> list[float]:
    """Normalised reward of each answer (prompt + generated tokens, read at the last token)."""
    out = []
    device = rm.head.weight.device
    for s in range(0, len(answers), batch_size):
        ids, mask = pad_right([a.prompt_ids + a.tokens for a in answers[s : s + batch_size]], pad_id)
        out += rm.score(ids.to(device), mask.to(device)).tolist()
    return out


@torch.no_grad()
def sequence_kl(policy: GPT, reference: GPT, answers: list[Answer], temperature: float, pad_id: int,
                batch_size: int = 32) -> float:
    """Mean over answers of sum_t log pi(a_t) - log pi_ref(a_t), both at `temperature`."""
    total, n = 0.0, 0
    device = next(policy.parameters()).device
    for s in range(0, len(answers), batch_size):
        chunk = answers[s : s + batch_size]
        ids, _ = pad_right([a.prompt_ids + a.tokens for a in chunk], pad_id)
        ids = ids.to(device)
        resp = torch.zeros(ids.shape[0], ids.shape[1] - 1, device=device)
        for i, a in enumerate(chunk):
            resp[i, len(a.prompt_ids) - 1 : len(a.prompt_ids) - 1 + len(a.tokens)] = 1
        lp = token_logprobs(policy(ids)[:, :-1], ids[:, 1:], temperature)
        ref = token_logprobs(reference(ids)[:, :-1], ids[:, 1:], temperature)
        total += float(((lp - ref) * resp).sum())
        n += len(chunk)
    return total / max(n, 1)


def _win_rate(a: list[float], b: list[float]) -> float:
    wins = sum(x > y for x, y in zip(a, b)) + 0.5 * sum(x == y for x, y in zip(a, b))
    return wins / max(len(a), 1)


def compare(
    ppo: GPT,
    sft: GPT,
    rm: RewardModel,
    tokenizer,
    prompts: list,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    kl_temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """The comparison on `prompts` (Comparisons from engine.training.train.sample: task prompts carry
    what their checker needs)."""
    from engine.training.train.ppo import checker_for

    check = checker_for(prompts)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    msgs = [p.prompt for p in prompts]
    result: dict[str, Any] = {"prompts": len(prompts), "decoding": "greedy" if temperature == 0 else f"T={temperature}"}
    per: dict[str, dict[str, list]] = {}
    for name, model in (("sft", sft), ("ppo", ppo)):
        answers = [a[0] for a in generate_answers(model, tokenizer, msgs, params, 1, batch_size)]
        rewards = score_answers(rm, answers, tokenizer.pad_id, batch_size)
        correct = [check(p, a.text) for p, a in zip(prompts, answers)] if check else []
        per[name] = {"rewards": rewards, "correct": [float(bool(c)) for c in correct if c is not None]}
        result[name] = {
            "mean_reward": sum(rewards) / max(len(rewards), 1),
            "ended_cleanly": sum(a.finished for a in answers) / max(len(answers), 1),
            "mean_length": sum(len(a.tokens) for a in answers) / max(len(answers), 1),
            "examples": [{"prompt": p.prompt[-1]["content"], "reply": a.text} for p, a in zip(prompts[:3], answers)],
        }
        if per[name]["correct"]:
            result[name]["checker_accuracy"] = sum(per[name]["correct"]) / len(per[name]["correct"])
            by_task: dict[str, list[bool]] = {}
            for p, c in zip(prompts, correct):
                if c is not None:
                    by_task.setdefault(p.extra["task"], []).append(bool(c))
            result[name]["checker_accuracy_by_task"] = {t: sum(v) / len(v) for t, v in by_task.items()}
    sampled = [a[0] for a in generate_answers(
        ppo, tokenizer, msgs, SamplingParams(max_new_tokens=max_new_tokens, temperature=kl_temperature, seed=seed),
        1, batch_size)]
    result["kl_ppo_to_sft"] = sequence_kl(ppo, sft, sampled, kl_temperature, tokenizer.pad_id, batch_size)
    result["win_rate_by_reward"] = _win_rate(per["ppo"]["rewards"], per["sft"]["rewards"])
    if per["ppo"]["correct"]:
        result["win_rate_by_checker"] = _win_rate(per["ppo"]["correct"], per["sft"]["correct"])
        result["checker_accuracy_gain"] = result["ppo"]["checker_accuracy"] - result["sft"]["checker_accuracy"]
    return result


def format_report(r: dict[str, Any]) -> str:
    rows = [("", "SFT", "PPO")]
    for key in ("mean_reward", "checker_accuracy", "ended_cleanly", "mean_length"):
        if key in r["ppo"]:
            rows.append((key, f"{r['sft'][key]:.3f}", f"{r['ppo'][key]:.3f}"))
    w = [max(len(x[i]) for x in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(row)) for row in rows]
    lines.append(f"KL(PPO || SFT) per answer: {r['kl_ppo_to_sft']:.3f} nats")
    lines.append(f"win rate of PPO over SFT by the reward model: {r['win_rate_by_reward']:.1%}")
    if "win_rate_by_checker" in r:
        lines.append(f"win rate of PPO over SFT by the checker: {r['win_rate_by_checker']:.1%}")
    return "\n".join(lines)


# ---- command line --------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-rlhf", help="PPO model vs SFT model: reward, checker accuracy, KL, win rates")
    p.add_argument("--ppo", required=True, help="the PPO model")
    p.add_argument("--sft", required=True, help="the SFT model it started from")
    p.add_argument("--reward-model", required=True, help="reward model folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tasks", default="builtin", help="held-out prompts of these built-in tasks (test split)")
    src.add_argument("--prompts", help="a prompt file instead")
    p.add_argument("-n", type=int, default=600, help="task prompts (spread over the tasks)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="decoding of the compared answers (0 = greedy)")
    p.add_argument("--kl-temperature", type=float, default=1.0, help="sampling temperature of the KL estimate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from engine.training.loader import load
    from engine.training.train.reward_model import load_reward_model
    from engine.training.train.sample import read_prompts, task_prompts

    ppo, sft = load(args.ppo), load(args.sft)
    rm, rm_tok, _ = load_reward_model(args.reward_model)
    if len({ppo.tokenizer.fingerprint(), sft.tokenizer.fingerprint(), rm_tok.fingerprint()}) != 1:
        raise ValueError("eval-rlhf: the PPO, SFT and reward models must share one tokenizer")
    prompts = read_prompts(args.prompts) if args.prompts else task_prompts(args.tasks, "test", args.n, args.seed)
    r = compare(ppo.model, sft.model, rm, ppo.tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, kl_temperature=args.kl_temperature, seed=args.seed)
    print(format_report(r))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(r, indent=2) + "\n")
    return 0
