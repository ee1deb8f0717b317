"""The PPO stage (RLHF): optimise the SFT model against the reward model, close to the SFT model.

    chatfactory ppo --model runs/sft/model --reward-model runs/rm/model --tasks builtin --out runs/ppo

Four models (InstructGPT, Ziegler et al. 2019):
- the actor (policy), initialised from the SFT model, trained;
- the critic, initialised from the reward model (backbone + head, rescaled to normalised
  reward units) and read at every token, trained;
- the reference (the SFT model) and the reward model, frozen.
With `baseline: group` there is no critic: each prompt is answered group_size times and an
answer's advantage is its KL-penalised reward minus the mean of the group's other answers' (RLOO).

Each step: sample answers to a batch of prompts with the engine's batched generation; score
them (the reward model at the end-of-turn token, minus a penalty when an answer never closed
its turn); add a per-token KL penalty to the reference (fixed beta, or adaptive toward a target
KL); GAE advantages, whitened; then several epochs of minibatch updates with the clipped
policy and value losses (+ optional PPO-ptx language-model loss), dropout off, log-probs at the
sampling temperature. Optional EMA of the policy. The trainer core provides the optimizer,
DDP under torchrun, metrics.jsonl and checkpoints with exact resume.

Output: out/metrics.jsonl (one line per step), out/checkpoints/, out/model (the policy, or its
EMA), out/results.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from engine.training.model import GPT
from engine.training.sampler import SamplingParams

from .config import TrainConfig, add_config_arguments, config_from_args
from .reward_model import RewardModel, pad_right
from .rl_math import (
    KLController,
    entropy,
    explained_variance,
    gae,
    kl_shaped_rewards,
    masked_mean,
    policy_loss,
    token_logprobs,
    value_loss,
    whiten,
)

MODEL_DIR = "model"


@dataclass
class PPOConfig:
    """Everything a PPO run needs; `train` holds the optimisation (shared TrainConfig)."""

    model: str = ""  # the policy's starting point and the frozen reference (normally the SFT model)
    reward_model: str = ""  # a folder written by `chatfactory reward`
    critic: str = ""  # the value model's starting point (default: the reward model)
    # "critic": GAE on a learned value model (InstructGPT). "group": no value model; each prompt is
    # answered group_size times and an answer's advantage is its reward minus the mean of the
    # others' (RLOO, Ahmadian et al. 2024), the KL penalty included: cheaper (no critic to run or
    # train) and, with few samples and a noisy critic, a steadier signal.
    baseline: str = "critic"
    group_size: int = 4  # answers per prompt with baseline "group" (rollout_batch counts answers)
    tasks: str = "builtin"  # prompts from these built-in tasks (their checkers are logged) ...
    prompts: list[str] = field(default_factory=list)  # ... or from prompt files ({"prompt"|"messages"})
    n_prompts: int = 2000  # task prompts drawn (train split)
    rollout_batch: int = 32  # answers per PPO step (per process): prompts, or prompts x group_size
    minibatch_size: int = 8  # rollouts per optimizer step
    ppo_epochs: int = 4  # passes over each step's rollouts
    # Early stop inside a step (as Stable-Baselines3's target_kl): once a minibatch's approx-KL to
    # the rollout policy (k3, mean over processes) exceeds this, the step's remaining minibatch
    # updates are skipped. None = off (the tiny preset's per-step approx-KL stays below ~0.03).
    max_update_kl: float | None = None
    max_new_tokens: int = 32
    temperature: float = 1.0  # sampling temperature; log-probs use it too
    clip: float = 0.2  # policy ratio clip
    vf_clip: float = 0.2  # value clip, around the rollout's values
    vf_coef: float = 0.5  # value loss weight (one optimizer for actor and critic)
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.1  # beta; the initial one with kl_target set (presets/ppo.yaml: measured)
    kl_target: float | None = None  # adaptive controller's target KL (nats per answer); None = fixed beta
    kl_horizon: int = 10000  # adaptive controller's horizon (answers)
    missing_eos_penalty: float = 1.0  # subtracted from the score of an answer without <|im_end|>
    whiten_advantages: bool = True
    ptx_coef: float = 0.0  # PPO-ptx: weight of a language-model loss on ptx_data (0 = off)
    ptx_data: str = "builtin"  # "builtin" (the task conversations) or a conversations JSONL
    ema: float | None = None  # EMA decay of the policy (e.g. 0.99); the saved model is then the EMA
    freeze_layers: int = 0  # actor and critic keep the embeddings and first N blocks fixed (cheaper backward on a CPU)
    eval_every: int = 0  # steps between held-out evaluations (0: only at the end)
    eval_n: int = 50  # held-out prompts per task for those evaluations
    out_dir: str = "runs/ppo"
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            lr=1e-5, weight_decay=0.0, schedule="constant", grad_clip=1.0, micro_batch_size=8, max_steps=100,
            log_every=1, beta2=0.999,
        )
    )


class ActorCritic(nn.Module):
    """The two trained models behind one forward, so DDP syncs both (and the EMA rides along
    in the state dict, so checkpoints carry it)."""

    def __init__(self, actor: GPT, critic: RewardModel | None, ema_decay: float | None = None):
        super().__init__()
        self.actor, self.critic = actor, critic
        self.ema = copy.deepcopy(actor).requires_grad_(False) if ema_decay else None
        self.ema_decay = ema_decay

    def forward(self, input_ids: torch.Tensor, ptx: dict | None = None, trunk: tuple[int, torch.Tensor] | None = None):
        """Right-padded rows (real tokens first): causal attention alone keeps padding unseen.
        trunk: the shared frozen blocks' output for these ids (see shared_trunk)."""
        logits = self.actor(input_ids, trunk=trunk)
        values = self.critic.values(input_ids, trunk=trunk) if self.critic is not None else None
        ptx_loss = self.actor(ptx["input_ids"], ptx["targets"], doc_ids=ptx["doc_ids"]) if ptx else None
        return logits, values, ptx_loss

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema is not None:
            for e, p in zip(self.ema.parameters(), self.actor.parameters()):
                e.lerp_(p, 1 - self.ema_decay)


def disable_dropout(model: nn.Module) -> None:
    """PPO's ratios assume the same network produced and re-scores an answer: no dropout."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, GPT):
            m.config.dropout = 0.0  # attention reads its dropout from the config


class PromptSampler:
    """Shuffled prompts, an epoch at a time; its position and the KL controller are saved in
    checkpoints (the trainer stores this object's state_dict), for exact resume."""

    def __init__(self, n: int, seed: int, kl: KLController):
        self.n, self.seed, self.kl = n, seed, kl
        self.epoch, self.pos = 0, 0

    def take(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
            order = list(range(self.n))
            random.Random(self.seed * 7919 + self.epoch).shuffle(order)
            step = min(count - len(out), self.n - self.pos)
            out += order[self.pos : self.pos + step]
            self.pos += step
        return out

    def next_step(self, n_micro: int, rank: int, world_size: int) -> list:
        return []  # PPO runs its own loop; the trainer only saves and restores this state

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "kl": self.kl.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self.kl.load_state_dict(state["kl"])


# ---- rollouts ----------------------------------------------------------------------------------------
def shared_trunk(n: int, actor: GPT, ref: GPT, rm: RewardModel, critic: RewardModel | None) -> int:
    """n when the four models' embeddings and first n blocks are equal and frozen in the trained
    two, else 0. Then those blocks run once per rollout batch, and their output (the trunk) is
    kept for the updates: the common set-up where the reward model and PPO freeze the same lower
    blocks of one base model saves about a third of a PPO step's forward passes."""
    if n <= 0:
        return 0
    models = [actor, ref, rm.backbone, *([critic.backbone] if critic is not None else [])]

    def lower(m: GPT) -> list[torch.Tensor]:
        mods = [m.embed, *([m.pos_embed] if hasattr(m, "pos_embed") else []), *m.layers[:n]]
        return [p for mod in mods for p in mod.parameters()]

    first = lower(actor)
    if any(p.requires_grad for m in (actor, *models[3:]) for p in lower(m)):
        return 0
    if any(m.config.n_layer < n for m in models):
        return 0

    def same(m: GPT) -> bool:
        other = lower(m)
        return len(other) == len(first) and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other))

    return n if all(same(m) for m in models[1:]) else 0


@torch.no_grad()
def make_rollouts(
    ac: ActorCritic, ref: GPT, rm: RewardModel, tok, prompts, cfg: PPOConfig, beta: float, seed: int, check=None,
    shared: int = 0,
):
    """Sample, score and prepare one batch: everything PPO needs, in (B, T-1) "predicts token
    t+1" coordinates, plus the numbers to log. shared: see shared_trunk."""
    from .sample import generate_answers

    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed)
    group = cfg.group_size if cfg.baseline == "group" else 1  # prompts come once per group; answers group by group
    answers = [a for g in generate_answers(ac.actor, tok, [p.prompt for p in prompts], params, group,
                                           len(prompts) * group) for a in g]
    prompts = [p for p in prompts for _ in range(group)]
    seqs = [a.prompt_ids + a.tokens for a in answers]
    ids, mask = pad_right(seqs, tok.pad_id)
    device = next(ac.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    resp = torch.zeros_like(mask)
    for i, a in enumerate(answers):  # token t+1 is an answer token: its log-prob sits at t
        resp[i, len(a.prompt_ids) - 1 : len(a.prompt_ids) - 1 + len(a.tokens)] = 1
    resp = resp[:, :-1]
    targets = ids[:, 1:]
    ac.eval()
    trunk = (shared, ac.actor.hidden_states(ids, stop_after=shared)) if shared else None
    logits, values, _ = ac(ids, trunk=trunk)
    logprobs = token_logprobs(logits[:, :-1], targets, cfg.temperature)
    ent = entropy(logits[:, :-1], cfg.temperature)
    ref_logprobs = token_logprobs(ref(ids, trunk=trunk)[:, :-1], targets, cfg.temperature)
    scores = rm.score(ids, mask, trunk)  # at the last real token: the <|im_end|> of a finished answer
    finished = torch.tensor([a.finished for a in answers], device=device)
    scores_used = scores - cfg.missing_eos_penalty * (~finished).float()
    rewards, kl = kl_shaped_rewards(scores_used, logprobs, ref_logprobs, resp, beta)
    if values is None:  # the group baseline: every token of an answer gets its reward minus the others' mean
        total = rewards.sum(1).view(-1, group)
        others = (total.sum(1, keepdim=True) - total) / max(group - 1, 1)
        adv = (total - others).view(-1, 1) * resp
        values = returns = torch.zeros_like(adv)
    else:
        values = values[:, :-1] * resp
        adv, returns = gae(rewards, values, resp, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        adv = whiten(adv, resp)
    batch = {"input_ids": ids, "resp": resp, "old_logprobs": logprobs, "old_values": values, "advantages": adv,
             "returns": returns}
    if trunk is not None:
        batch["trunk"] = trunk[1]
    stats = {
        "reward": float(scores.mean()), "reward_with_penalty": float(scores_used.mean()),
        "kl": float(kl.sum(1).mean()), "entropy": float(masked_mean(ent, resp)),
        "response_length": float(resp.sum(1).float().mean()), "ended_cleanly": float(finished.float().mean()),
    }
    if ac.critic is not None:
        stats["explained_variance"] = explained_variance(values, returns, resp)
    if check is not None:  # always logged when there is a checker: every DDP rank reduces the same keys
        judged = [c for c in (check(p, a.text) for p, a in zip(prompts, answers)) if c is not None]
        stats["checker"] = sum(map(bool, judged)) / len(judged) if judged else float("nan")
    return batch, stats, answers


def ppo_loss(cfg: PPOConfig, shared: int = 0):
    def loss_fn(model: nn.Module, mb: dict) -> tuple[torch.Tensor, dict[str, float]]:
        trunk = (shared, mb["trunk"]) if "trunk" in mb else None
        logits, values, ptx_loss = model(mb["input_ids"], mb.get("ptx"), trunk=trunk)
        targets, m = mb["input_ids"][:, 1:], mb["resp"]
        logprobs = token_logprobs(logits[:, :-1], targets, cfg.temperature)
        pg = policy_loss(logprobs, mb["old_logprobs"], mb["advantages"], m, cfg.clip)
        loss = pg.loss
        stats = {"policy_loss": float(pg.loss.detach()), "clip_frac": float(pg.clip_frac), "approx_kl": float(pg.approx_kl)}
        if values is not None:
            vf, vf_frac = value_loss(values[:, :-1], mb["old_values"], mb["returns"], m, cfg.vf_clip)
            loss = loss + cfg.vf_coef * vf
            stats.update(value_loss=float(vf.detach()), value_clip_frac=float(vf_frac))
        if ptx_loss is not None:
            loss = loss + cfg.ptx_coef * ptx_loss
            stats["ptx_loss"] = float(ptx_loss.detach())
        return loss, stats

    return loss_fn


def _slice(batch: dict, idx: list[int]) -> dict:
    out = {k: v[idx] for k, v in batch.items()}
    # trim the columns past every selected row's end: less work for short answers
    last = int(out["resp"].nonzero()[:, 1].max()) + 2 if out["resp"].any() else out["input_ids"].shape[1]
    out["input_ids"] = out["input_ids"][:, :last]
    if "trunk" in out:
        out["trunk"] = out["trunk"][:, :last]
    for k in ("resp", "old_logprobs", "old_values", "advantages", "returns"):
        out[k] = out[k][:, : last - 1]
    return out


# ---- building the models ----------------------------------------------------------------------------
def build_models(cfg: PPOConfig, device: str | torch.device = "cpu"):
    from engine.training.loader import load

    from .reward_model import load_reward_model

    if not cfg.model or not cfg.reward_model:
        raise ValueError("ppo: set model (--model, the SFT model) and reward_model (--reward-model)")
    policy = load(cfg.model, device=device)
    ref = load(cfg.model, device=device).model.eval().requires_grad_(False)
    rm, rm_tok, _ = load_reward_model(cfg.reward_model, device=device)
    rm.requires_grad_(False)
    if rm_tok.fingerprint() != policy.tokenizer.fingerprint():
        raise ValueError(f"ppo: the reward model {cfg.reward_model} uses a different tokenizer from {cfg.model}")
    critic = None
    if cfg.baseline == "critic":
        critic, _, _ = load_reward_model(cfg.critic or cfg.reward_model, device=device)
        with torch.no_grad():  # the critic starts out predicting the *normalised* reward
            critic.head.weight.div_(critic.std)
            critic.head.bias.sub_(critic.mean).div_(critic.std)
            critic.set_normalisation(0.0, 1.0)
    for m in (policy.model, ref, critic):
        if m is not None:
            disable_dropout(m)
    return policy.model, policy.tokenizer, ref, rm, critic


def load_prompts(cfg: PPOConfig, seed: int):
    from .sample import read_prompts, task_prompts

    if cfg.prompts:
        return [p for f in cfg.prompts for p in read_prompts(f)]
    return task_prompts(cfg.tasks, "train", cfg.n_prompts, seed)


def checker_for(prompts):
    """A function (prompt, reply) -> bool | None: the task checker where the prompt has a task."""
    from engine.training.data.tasks import TASKS

    from .labeller import check

    if not any(p.extra.get("task") in TASKS for p in prompts):
        return None
    return lambda p, text: check(p, text) if p.extra.get("task") in TASKS else None


def ptx_rows(cfg: PPOConfig, tok, seq_len: int, seed: int):
    from engine.training.data.conversations import fit_all, pack, parse_conversation, read_conversations

    if cfg.ptx_data == "builtin":
        from engine.training.data.tasks import training_conversations

        convs = [parse_conversation(c, "builtin") for c in training_conversations(seed=seed)]
    else:
        convs, _ = read_conversations(cfg.ptx_data)
    examples, _ = fit_all(convs, tok, seq_len + 1, overflow="drop")
    return pack(examples, seq_len, tok.pad_id, seed)


# ---- the stage ---------------------------------------------------------------------------------------
def train_ppo(cfg: PPOConfig, resume: bool = False) -> dict[str, Any]:
    from engine.training.data.conversations import collate

    from .trainer import Trainer, lr_multiplier, setup_distributed

    tcfg = cfg.train
    out_dir = Path(cfg.out_dir)
    if cfg.baseline not in ("critic", "group"):
        raise ValueError(f"ppo: baseline must be 'critic' or 'group', got {cfg.baseline!r}")
    group = cfg.group_size if cfg.baseline == "group" else 1
    if cfg.baseline == "group" and (group < 2 or cfg.rollout_batch % group):
        raise ValueError(f"ppo: the group baseline needs group_size >= 2 dividing rollout_batch "
                         f"(got group_size={group}, rollout_batch={cfg.rollout_batch})")
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    dinfo = setup_distributed(tcfg.device)
    torch.manual_seed(tcfg.seed)
    actor, tok, ref, rm, critic = build_models(cfg, dinfo.device)
    if cfg.freeze_layers:
        from .reward import freeze_bottom

        freeze_bottom(actor, cfg.freeze_layers)
        if critic is not None:
            freeze_bottom(critic.backbone, cfg.freeze_layers)
    shared = shared_trunk(cfg.freeze_layers, actor, ref, rm, critic)
    prompts = load_prompts(cfg, tcfg.seed)
    check = checker_for(prompts)
    kl = KLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    sampler = PromptSampler(len(prompts), tcfg.seed, kl)
    ac = ActorCritic(actor, critic, cfg.ema)
    tcfg.seq_len = actor.config.max_seq_len
    ptx = ptx_rows(cfg, tok, actor.config.max_seq_len, tcfg.seed) if cfg.ptx_coef > 0 else None
    meta = {"stage": "ppo", "base_model": cfg.model, "reward_model": cfg.reward_model, "config": asdict(cfg),
            "shared_trunk_layers": shared}
    from .reward import save_checkpoint_weights

    def evaluate(model: ActorCritic) -> dict[str, float]:
        if check is None or not cfg.eval_n:  # eval_n 0: the caller evaluates (a fine-tuning job's eval stage)
            return {}
        from engine.training.eval.tasks import evaluate_tasks

        res = evaluate_tasks(model.actor, tok, cfg.tasks, n=cfg.eval_n, max_new_tokens=cfg.max_new_tokens,
                             with_loss=False)
        return {"heldout_accuracy": res["mean_accuracy"], "heldout_format": res["mean_format"]}

    trainer = Trainer(
        ac, tcfg, out_dir, batches=sampler, loss_fn=ppo_loss(cfg, shared), eval_fn=evaluate, tokenizer=tok, meta=meta,
        resume=resume, save_model_fn=lambda folder, m, sd: save_checkpoint_weights(folder, m, sd, meta),
    )
    rank, world = trainer.dist.rank, trainer.dist.world_size
    n_micro = max(1, cfg.minibatch_size // tcfg.micro_batch_size)
    micro = min(tcfg.micro_batch_size, cfg.minibatch_size)
    trainer._open_logs()
    restore = trainer._install_signal_handlers()
    stop, step_time, t_start = None, 0.0, time.time()
    last_ckpt = time.perf_counter()
    try:
        while not (stop := trainer._agree_stop(step_time)):
            t0 = time.perf_counter()
            step = trainer.step
            per = cfg.rollout_batch // group  # prompts per process; each answered `group` times
            idx = sampler.take(per * world)[rank * per : (rank + 1) * per]
            batch, stats, _ = make_rollouts(
                ac, ref, rm, tok, [prompts[i] for i in idx], cfg, kl.beta,
                seed=tcfg.seed * 1_000_003 + step * 101 + rank, check=check, shared=shared,
            )
            lr = tcfg.lr * lr_multiplier(tcfg, step, trainer.progress())
            stats = {k: _global_mean(v, world, trainer.device) for k, v in stats.items()}
            agg: dict[str, float] = {}
            n_updates, too_far = 0, False
            rng = random.Random(f"{tcfg.seed}:{step}:{rank}")
            for _epoch in range(cfg.ppo_epochs):
                if too_far:
                    break
                order = list(range(cfg.rollout_batch))
                rng.shuffle(order)
                for s in range(0, len(order) - cfg.minibatch_size + 1, cfg.minibatch_size):
                    mb_idx = order[s : s + cfg.minibatch_size]
                    mbs = [_slice(batch, mb_idx[j * micro : (j + 1) * micro]) for j in range(n_micro)]
                    if ptx is not None:
                        for mb in mbs:
                            rows = [ptx[rng.randrange(len(ptx))] for _ in range(micro)]
                            mb["ptx"] = collate(rows, tok.pad_id)
                    res = trainer.train_step(mbs, lr)
                    ac.update_ema()
                    n_updates += 1
                    for k, v in res.items():
                        if k != "grad_norm" and v is not None:
                            agg[k] = agg.get(k, 0.0) + float(v)
                    # every process evaluates this (a collective under DDP), so all stop together
                    if cfg.max_update_kl is not None and (
                        _global_mean(float(res["approx_kl"]), world, trainer.device) > cfg.max_update_kl
                    ):
                        too_far = True
                        break
            kl.update(stats["kl"], cfg.rollout_batch * world)
            trainer.step += 1
            trainer.tokens += int(stats["response_length"] * cfg.rollout_batch * world)  # generated tokens
            step_time = time.perf_counter() - t0
            trainer.train_time += step_time
            rec = {"step": trainer.step, **stats, **{k: v / max(n_updates, 1) for k, v in agg.items()},
                   "updates": n_updates, "kl_coef": kl.beta, "lr": lr, "step_seconds": round(step_time, 2)}
            trainer._log(rec)
            if tcfg.progress and trainer.dist.is_main:
                print(_line(rec), flush=True)
            if cfg.eval_every and trainer.step % cfg.eval_every == 0:
                trainer.evaluate()
            due = tcfg.ckpt_every and trainer.step % tcfg.ckpt_every == 0
            if due or (tcfg.ckpt_every_s and time.perf_counter() - last_ckpt >= tcfg.ckpt_every_s):
                trainer.save_checkpoint()
                last_ckpt = time.perf_counter()
    finally:
        restore()
    if stop != "signal" and trainer.last_eval.get("step") != trainer.step:
        trainer.evaluate()
    ckpt = trainer.save_checkpoint()
    trainer._close_logs()
    result = {"steps": trainer.step, "stop_reason": stop, "train_seconds": round(time.time() - t_start, 1),
              "checkpoint": str(ckpt), "final_kl_coef": kl.beta, **trainer.last_eval}
    if trainer.dist.is_main:
        from engine.training.model.checkpoint import save_model

        policy = ac.ema if ac.ema is not None else ac.actor
        save_model(out_dir / MODEL_DIR, policy, tok, {**meta, "metrics": result, "ema": ac.ema is not None})
        (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _global_mean(v: float, world: int, device) -> float:
    if world == 1:
        return v
    t = torch.tensor(float(v), device=device)
    dist.all_reduce(t)
    return float(t) / world


def _line(rec: dict) -> str:
    keys = ("step", "reward", "checker", "kl", "kl_coef", "entropy", "clip_frac", "approx_kl", "updates", "value_loss",
            "explained_variance", "response_length", "step_seconds")
    return "  ".join(f"{k}={rec[k]:.4g}" if isinstance(rec[k], float) else f"{k}={rec[k]}" for k in keys if k in rec)


# ---- command line ----------------------------------------------------------------------------------------
FLAGS = {
    "--model": ("model", "the SFT model: the policy's start and the frozen reference"),
    "--out": ("out_dir", "output folder (the policy goes to OUT/model)"),
    "--reward-model": ("reward_model", "reward model folder (from `chatfactory reward`)"),
    "--tasks": ("tasks", "prompts from these built-in tasks ('builtin' or names)"),
    "--prompts": ("prompts", "prompt files instead of tasks", {"nargs": "+"}),
    "--kl-coef": ("kl_coef", "KL penalty coefficient beta"),
    "--kl-target": ("kl_target", "adaptive KL: target nats per answer"),
    "--rollout-batch": ("rollout_batch", "answers per PPO step"),
    "--baseline": ("baseline", "'critic' (GAE on a value model) or 'group' (each prompt answered --group-size times)"),
    "--group-size": ("group_size", "answers per prompt with --baseline group"),
    "--ppo-epochs": ("ppo_epochs", "passes over each step's rollouts"),
    "--max-update-kl": ("max_update_kl", "skip a step's remaining updates once approx-KL exceeds this"),
    "--max-new-tokens": ("max_new_tokens", "answer length limit"),
    "--ptx-coef": ("ptx_coef", "PPO-ptx language-model loss weight"),
    "--ema": ("ema", "EMA decay of the policy"),
    "--lr": ("train.lr", "learning rate (actor and critic)"),
    "--max-steps": ("train.max_steps", "PPO steps"),
    "--time-budget": ("train.time_budget", "stop after this long (e.g. 8m)"),
    "--threads": ("train.threads", "torch CPU threads"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ppo", help="RLHF: optimise a model against a reward model with PPO")
    add_config_arguments(p, FLAGS, default_preset="ppo")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(PPOConfig, args, FLAGS)
    result = train_ppo(cfg, resume=args.resume)
    print(json.dumps(result, indent=2))
    return 0
