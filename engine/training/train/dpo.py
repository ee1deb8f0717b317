"""Direct Preference Optimization (Rafailov et al. 2023): learn from preferences without a reward model.

    chatfactory dpo --model runs/sft/model --data prefs.jsonl --out runs/dpo

The policy starts from cfg.model (anything `engine.training.loader.load` takes) and a frozen copy
of it is the reference. Every preference file format `read_preferences` accepts works (TRL
prompt/chosen/rejected, K-wise rankings, HH-RLHF); a K-wise comparison gives all of its
(better, worse) pairs. A tenth of the prompts is held out (by prompt, so no prompt is on both sides).

A sequence's log-probability is the sum over its *response* tokens only (the prompt rendered with
the chat template, exactly as the reward model sees it). The reference's log-probabilities of
every pair are computed once, up front, and travel with the batch items, so training runs one
model. With the implicit reward r = beta * (log pi - log ref), the loss is

    -(1 - eps) log sigmoid(r_chosen - r_rejected) - eps log sigmoid(r_rejected - r_chosen)

(eps = label_smoothing; 0 is the paper's DPO, > 0 the conservative cDPO). At step 0 the policy is
the reference, every margin is 0 and the loss is log 2. Logged each step: loss, reward_margin,
reward_accuracy, chosen_reward, rejected_reward; each evaluation: heldout_loss, heldout_accuracy
(the implicit reward's pairwise accuracy on the held-out pairs, ties counting half),
heldout_reward_margin.

Output: out/metrics.jsonl, out/checkpoints/ (exact resume), out/model (the final policy, a native
folder) and out/dpo.json (the summary `train_dpo` returns).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.training.data.preferences import Comparison, read_preferences, split_held_out
from engine.training.tokenizer import Tokenizer
from engine.training.tokenizer.chat_template import render_prompt

from .config import Flags, TrainConfig, add_config_arguments, config_from_args, save_config
from .reward_model import encode_answer, pad_right, response_ids
from .rl_math import token_logprobs

MODEL_DIR = "model"  # the final policy inside out_dir
SUMMARY_FILE = "dpo.json"


@dataclass
class DPOConfig:
    """Everything a DPO run needs; `train` holds the optimisation (shared TrainConfig)."""

    model: str = ""  # the starting policy and the reference: checkpoint folder, HF folder, GGUF or registry name
    data: list[str] = field(default_factory=list)  # preference files (TRL pairs, K-wise, HH-RLHF; .gz read directly)
    out_dir: str = "runs/dpo"
    beta: float = 0.1  # strength of the pull toward the reference (the implicit reward's scale)
    label_smoothing: float = 0.0  # cDPO: the assumed chance that a label is flipped, in [0, 0.5)
    freeze_layers: int = 0  # keep the embeddings and the first N blocks fixed (cheaper backward on a CPU)
    val_fraction: float = 0.1  # fraction of prompts held out (by prompt), when there is no eval_data
    eval_data: list[str] = field(default_factory=list)  # held-out preference files (then nothing is carved out)
    max_len: int = 256  # tokens per prompt + answer (capped by the model's context)
    limit: int | None = None  # use only the first N comparisons of each file
    skip_invalid: bool = False  # drop malformed records (counted) instead of stopping at the first
    # a pretrained 135M model wants ~5e-7..1e-6; a micro-batch is that many *pairs* (2x sequences)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            lr=1e-6, weight_decay=0.0, schedule="cosine", min_lr_ratio=0.1, warmup_steps=10, micro_batch_size=4,
            max_steps=100, log_every=1, eval_every=0,
        )
    )

    def __post_init__(self) -> None:
        check_config(self)


def check_config(cfg: DPOConfig) -> None:
    if not cfg.beta > 0:
        raise ValueError(f"dpo.beta must be positive, got {cfg.beta}")
    if not 0 <= cfg.label_smoothing < 0.5:
        raise ValueError(f"dpo.label_smoothing must be in [0, 0.5), got {cfg.label_smoothing}")
    if not 0 <= cfg.val_fraction < 1:
        raise ValueError(f"dpo.val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.max_len < 2:
        raise ValueError(f"dpo.max_len must be at least 2 (a prompt token and an answer token), got {cfg.max_len}")


# ---- data --------------------------------------------------------------------------------------------
@dataclass
class PairItem:
    """One (chosen, rejected) pair, encoded: each sequence is prompt + answer (encode_answer's cut),
    its last n_* tokens the answer; ref_* are the reference's summed answer log-probs."""

    chosen: list[int]
    rejected: list[int]
    n_chosen: int
    n_rejected: int
    ref_chosen: float = math.nan
    ref_rejected: float = math.nan


def encode_sequence(prompt: list[int], answer: list[int], max_len: int) -> tuple[list[int], int]:
    """(prompt + answer cut to max_len the way the reward model cuts it, answer tokens kept).
    encode_answer runs on positions, so whatever it keeps of each part is counted, not re-derived."""
    full = prompt + answer
    kept = encode_answer(list(range(len(prompt))), list(range(len(prompt), len(full))), max_len)
    return [full[i] for i in kept], sum(i >= len(prompt) for i in kept)


def encode_pairs(c: Comparison, tokenizer: Tokenizer, max_len: int) -> list[PairItem]:
    """Every (better, worse) pair of a comparison (Comparison.pairs(): ties skipped)."""
    pairs = c.pairs()
    if not pairs:
        return []
    prompt = render_prompt(c.prompt, tokenizer)
    seqs = [encode_sequence(prompt, response_ids(r, tokenizer), max_len) for r in c.responses]
    return [PairItem(seqs[a][0], seqs[b][0], seqs[a][1], seqs[b][1]) for a, b in pairs]


def collate_pairs(items: Sequence[PairItem], pad_id: int) -> dict[str, torch.Tensor]:
    """One right-padded batch: rows 0..B-1 the chosen answers, B..2B-1 the rejected ones.
    answer_mask marks the answer tokens (the ones whose log-probs are summed)."""
    seqs = [it.chosen for it in items] + [it.rejected for it in items]
    counts = [it.n_chosen for it in items] + [it.n_rejected for it in items]
    ids, mask = pad_right(seqs, pad_id)
    answer = torch.zeros_like(mask)
    for i, (s, n) in enumerate(zip(seqs, counts)):
        answer[i, max(1, len(s) - n) : len(s)] = 1  # token 0 has no prediction (never an answer token anyway)
    return {
        "input_ids": ids,
        "answer_mask": answer,
        "ref_chosen": torch.tensor([it.ref_chosen for it in items], dtype=torch.float32),
        "ref_rejected": torch.tensor([it.ref_rejected for it in items], dtype=torch.float32),
    }


class PairBatches:
    """Micro-batches of pairs, shuffled per epoch from a seed; the position is saved in checkpoints,
    so resume continues exactly. Under torchrun each rank takes its own slice of the same order."""

    def __init__(self, items: list[PairItem], micro_batch_size: int, pad_id: int, seed: int = 0):
        if not items:
            raise ValueError("dpo: no training pairs")
        self.items, self.mbs, self.pad_id, self.seed = items, micro_batch_size, pad_id, seed
        self.epoch, self.pos = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(self.seed * 1000 + self.epoch).shuffle(order)
        return order

    def pairs_per_step(self, n_micro: int, world_size: int = 1) -> int:
        return self.mbs * n_micro * world_size

    def next_step(self, n_micro: int, rank: int = 0, world_size: int = 1) -> list[dict[str, torch.Tensor]]:
        need = self.pairs_per_step(n_micro, world_size)
        if need > len(self.items):
            raise ValueError(f"dpo: one optimizer step needs {need} pairs but there are only {len(self.items)} "
                             "training pairs; lower train.micro_batch_size (or train.batch_tokens)")
        if self.pos + need > len(self._order):  # the ragged tail waits for the next epoch
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._shuffle()
        take = self._order[self.pos : self.pos + need]
        self.pos += need
        mine = take[rank * self.mbs * n_micro : (rank + 1) * self.mbs * n_micro]
        return [collate_pairs([self.items[i] for i in mine[m * self.mbs : (m + 1) * self.mbs]], self.pad_id)
                for m in range(n_micro)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle()


# ---- log-probs and the loss ---------------------------------------------------------------------------
def sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over each row's answer tokens (B,), fp32. Rows are right-padded, so
    plain causal attention keeps the padding unseen."""
    logits = model(input_ids)
    lp = token_logprobs(logits[:, :-1], input_ids[:, 1:])  # position t predicts token t+1
    return (lp * answer_mask[:, 1:].to(lp.dtype)).sum(1)


def dpo_terms(
    logp: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair loss, margin, chosen reward, rejected reward) from the policy's log-probs of
    [chosen..., rejected...] and the reference's."""
    n = ref_chosen.shape[0]
    chosen_r = beta * (logp[:n] - ref_chosen.to(logp.dtype))
    rejected_r = beta * (logp[n:] - ref_rejected.to(logp.dtype))
    margin = chosen_r - rejected_r
    loss = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    return loss, margin, chosen_r, rejected_r


def dpo_loss(beta: float, label_smoothing: float = 0.0) -> Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]:
    """The trainer's loss_fn: mean DPO loss over the micro-batch's pairs, plus the reward metrics."""

    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        logp = sequence_logprobs(model, batch["input_ids"], batch["answer_mask"])
        loss, margin, chosen_r, rejected_r = dpo_terms(logp, batch["ref_chosen"], batch["ref_rejected"], beta,
                                                       label_smoothing)
        margin, chosen_r, rejected_r = margin.detach(), chosen_r.detach(), rejected_r.detach()
        return loss.mean(), {
            "reward_margin": float(margin.mean()),
            "reward_accuracy": float((margin > 0).float().mean()),
            "chosen_reward": float(chosen_r.mean()),
            "rejected_reward": float(rejected_r.mean()),
        }

    return loss_fn


@torch.no_grad()
def fill_reference_logprobs(ref: nn.Module, items: list[PairItem], pad_id: int, batch_size: int,
                            autocast: Callable[[], Any] | None = None) -> None:
    """Score every distinct answer once with the frozen reference; the sums are stored on the
    items. K ranked answers to a prompt make up to K(K-1)/2 pairs of only K sequences."""
    ref.eval()
    dev = next(ref.parameters()).device
    index: dict[tuple, int] = {}
    for it in items:
        for key in ((tuple(it.chosen), it.n_chosen), (tuple(it.rejected), it.n_rejected)):
            index.setdefault(key, len(index))
    seqs = list(index)
    scores: list[float] = []
    for s in range(0, len(seqs), 2 * batch_size):
        chunk = seqs[s : s + 2 * batch_size]
        ids, mask = pad_right([list(q) for q, _ in chunk], pad_id)
        answer = torch.zeros_like(mask)
        for i, (q, n) in enumerate(chunk):
            answer[i, max(1, len(q) - n) : len(q)] = 1
        with autocast() if autocast else contextlib.nullcontext():
            scores += sequence_logprobs(ref, ids.to(dev), answer.to(dev)).float().cpu().tolist()
    for it in items:
        it.ref_chosen = scores[index[(tuple(it.chosen), it.n_chosen)]]
        it.ref_rejected = scores[index[(tuple(it.rejected), it.n_rejected)]]


@torch.no_grad()
def pairwise_metrics(model: nn.Module, items: list[PairItem], pad_id: int, beta: float, label_smoothing: float = 0.0,
                     batch_size: int = 8) -> dict[str, float]:
    """Held-out numbers: mean DPO loss, the implicit reward's pairwise accuracy (an exact tie counts
    half) and mean margin. NaN without pairs."""
    if not items:
        return {"loss": math.nan, "accuracy": math.nan, "margin": math.nan, "pairs": 0}
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    loss_sum = correct = margin_sum = 0.0
    for s in range(0, len(items), batch_size):
        b = collate_pairs(items[s : s + batch_size], pad_id)
        logp = sequence_logprobs(model, b["input_ids"].to(dev), b["answer_mask"].to(dev))
        loss, margin, _, _ = dpo_terms(logp, b["ref_chosen"].to(dev), b["ref_rejected"].to(dev), beta, label_smoothing)
        loss_sum += float(loss.sum())
        correct += float((margin > 0).sum() + 0.5 * (margin == 0).sum())
        margin_sum += float(margin.sum())
    model.train(was)
    n = len(items)
    return {"loss": loss_sum / n, "accuracy": correct / n, "margin": margin_sum / n, "pairs": n}


# ---- the stage ------------------------------------------------------------------------------------------
def load_comparisons(cfg: DPOConfig) -> tuple[list[Comparison], dict[str, Any]]:
    """The comparisons of cfg.data, with per-file counts (records kept and skipped)."""
    comps: list[Comparison] = []
    sources: dict[str, Any] = {}
    for f in cfg.data:
        got = read_preferences(f, skip_invalid=cfg.skip_invalid, limit=cfg.limit)
        sources[f] = {"comparisons": len(got), "skipped": getattr(got, "skipped", 0),
                      "pairs": sum(len(c.pairs()) for c in got)}
        if not sources[f]["pairs"]:
            skipped = f" ({got.skipped} malformed records skipped)" if getattr(got, "skipped", 0) else ""
            raise ValueError(f"{f}: no (better, worse) pairs: every record is a tie or has a single response{skipped}")
        comps += got
    return comps, sources


def train_dpo(cfg: DPOConfig, resume: bool | str = False, comparisons: Sequence[Comparison] | None = None) -> dict[str, Any]:
    """Train the policy on the preference pairs; returns the summary also written to out/dpo.json.

    comparisons: already-loaded Comparison objects, used in addition to cfg.data's files.
    resume: continue from the newest checkpoint in cfg.out_dir (or the given checkpoint folder);
    the reference is always cfg.model."""
    from engine.training.loader import load
    from engine.training.model.checkpoint import save_model

    from .ppo import disable_dropout
    from .pretrain import model_for_saving
    from .sft import check_chat_tokens
    from .trainer import Trainer

    check_config(cfg)
    tcfg = cfg.train
    if not cfg.model:
        raise ValueError("dpo: set model (--model), the policy to start from (normally the SFT model)")
    if not cfg.data and comparisons is None:
        raise ValueError("dpo: set data (--data), one or more preference files")
    t_start = time.time()
    out = Path(cfg.out_dir)
    comps, sources = load_comparisons(cfg)
    if comparisons is not None:
        given = list(comparisons)
        sources["<given>"] = {"comparisons": len(given), "pairs": sum(len(c.pairs()) for c in given)}
        comps += given
    where = ", ".join(cfg.data + (["the given comparisons"] if comparisons is not None else []))
    if not any(c.pairs() for c in comps):
        raise ValueError(f"dpo: {where}: no (better, worse) pairs: every comparison is unranked, a tie, "
                         "or has a single response")
    torch.manual_seed(tcfg.seed)
    loaded = load(cfg.model)
    model, tok = loaded.model, loaded.tokenizer
    check_chat_tokens(tok, model, cfg.model)
    if cfg.freeze_layers:
        from .reward import freeze_bottom

        freeze_bottom(model, cfg.freeze_layers)
    max_len = min(cfg.max_len, model.config.max_seq_len)
    if cfg.eval_data:
        train_c, held_c = comps, [c for f in cfg.eval_data for c in read_preferences(f, skip_invalid=cfg.skip_invalid)]
    else:
        train_c, held_c = split_held_out(comps, cfg.val_fraction, seed=tcfg.seed)
    train_items = [p for c in train_c for p in encode_pairs(c, tok, max_len)]
    held_items = [p for c in held_c for p in encode_pairs(c, tok, max_len)]
    if not train_items:
        raise ValueError(f"dpo: {where}: no training pairs left after holding out val_fraction={cfg.val_fraction} "
                         f"of the {len(train_c) + len(held_c)} comparisons' prompts; lower val_fraction or add data")
    disable_dropout(model)  # the policy must equal the reference at step 0 (and score deterministically)
    ref = copy.deepcopy(model).eval().requires_grad_(False)  # before a resume loads trained weights
    tcfg.seq_len = 2 * max_len  # a pair is two sequences: the trainer counts their padded tokens
    batches = PairBatches(train_items, tcfg.micro_batch_size, tok.pad_id, tcfg.seed)
    data_stats = {"sources": sources, "train_comparisons": len(train_c), "heldout_comparisons": len(held_c),
                  "train_pairs": len(train_items), "heldout_pairs": len(held_items), "max_len": max_len}
    meta = {"stage": "dpo", "base_model": cfg.model, "beta": cfg.beta, "label_smoothing": cfg.label_smoothing}
    score_batch = 2 * tcfg.micro_batch_size  # pairs per no-grad forward (reference scoring, evaluation)

    def evaluate(m: nn.Module) -> dict[str, float]:
        if not held_items:
            return {}
        r = pairwise_metrics(m, held_items, tok.pad_id, cfg.beta, cfg.label_smoothing, batch_size=score_batch)
        return {"heldout_loss": r["loss"], "heldout_accuracy": r["accuracy"], "heldout_reward_margin": r["margin"]}

    trainer = Trainer(model, tcfg, out, batches=batches, loss_fn=dpo_loss(cfg.beta, cfg.label_smoothing),
                      eval_fn=evaluate, tokenizer=tok, meta=meta, resume=resume)
    need = batches.pairs_per_step(trainer.grad_accum, trainer.dist.world_size)
    if need > len(train_items):
        raise ValueError(f"dpo: one optimizer step needs {need} pairs but there are only {len(train_items)} training "
                         "pairs; lower train.micro_batch_size (or train.batch_tokens)")
    if trainer.dist.is_main:
        print(f"dpo: {len(train_items)} train / {len(held_items)} held-out pairs "
              f"({len(train_c)} / {len(held_c)} comparisons); scoring them with the reference")
    ref.to(trainer.device)
    for items in (train_items, held_items):
        fill_reference_logprobs(ref, items, tok.pad_id, score_batch, trainer.autocast)
    # the starting policy is the reference: every margin is 0, so the loss is log 2 and the accuracy
    # (a tie counts half) 0.5, whatever the smoothing; no pass over the held-out pairs is needed
    before = {"heldout_loss": math.log(2), "heldout_accuracy": 0.5, "heldout_reward_margin": 0.0} if held_items else {}
    del ref
    if trainer.device.type == "cuda":
        torch.cuda.empty_cache()
    if trainer.dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "dpo_config.yaml")
    result = trainer.fit()
    summary: dict[str, Any] = {
        "base_model": cfg.model,
        "model": str(out / MODEL_DIR),
        "checkpoint": result["checkpoint"],
        "beta": cfg.beta,
        "label_smoothing": cfg.label_smoothing,
        "heldout_accuracy_before": before.get("heldout_accuracy", math.nan),
        "heldout_accuracy_after": result.get("heldout_accuracy", math.nan),
        "heldout_loss_before": before.get("heldout_loss", math.nan),
        "heldout_loss_after": result.get("heldout_loss", math.nan),
        "heldout_reward_margin_after": result.get("heldout_reward_margin", math.nan),
        "steps": result["step"],
        "train_time_s": round(result["train_time"], 1),
        "stop_reason": result["stop_reason"],
        "train_pairs": len(train_items),
        "heldout_pairs": len(held_items),
        "data": data_stats,
    }
    summary["wall_time_s"] = round(time.time() - t_start, 1)
    if trainer.dist.is_main:
        print(f"dpo: held-out accuracy {summary['heldout_accuracy_before']:.3f} -> "
              f"{summary['heldout_accuracy_after']:.3f} after {result['step']} steps")
        save_model(out / MODEL_DIR, model_for_saving(trainer), tok,
                   meta={**meta, "config": asdict(cfg), **{k: v for k, v in summary.items() if k != "data"}})
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
        print(f"dpo: model saved to {out / MODEL_DIR}")
    return summary


# ---- command line ------------------------------------------------------------------------------------
FLAGS: Flags = {
    "--model": ("model", "the policy to start from (and the reference): checkpoint, HF folder, GGUF or registry name"),
    "--data": ("data", "preference files (TRL pairs, K-wise rankings, HH-RLHF)", {"nargs": "+"}),
    "--out": ("out_dir", "output folder (the policy goes to OUT/model)"),
    "--beta": ("beta", "strength of the pull toward the reference"),
    "--label-smoothing": ("label_smoothing", "cDPO: assumed fraction of flipped labels, in [0, 0.5)"),
    "--val-fraction": ("val_fraction", "fraction of prompts held out"),
    "--max-len": ("max_len", "tokens per prompt+answer"),
    "--limit": ("limit", "use only the first N comparisons of each file"),
    "--skip-invalid": ("skip_invalid", "skip malformed records", {"action": "store_true"}),
    "--lr": ("train.lr", "peak learning rate"),
    "--batch-size": ("train.micro_batch_size", "pairs per micro-batch"),
    "--max-steps": ("train.max_steps", "optimizer steps"),
    "--time-budget": ("train.time_budget", "stop after this much training time (e.g. 5m)"),
    "--threads": ("train.threads", "torch CPU threads"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dpo", help="direct preference optimization on chosen/rejected answers (no reward model)")
    add_config_arguments(p, FLAGS, default_preset="dpo")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(DPOConfig, args, FLAGS)
    summary = train_dpo(cfg, resume=args.resume)
    print(json.dumps({k: v for k, v in summary.items() if k != "data"}, indent=2, default=str))
    return 130 if summary["stop_reason"] == "signal" else 0
