"""The reward-model stage: learn to score answers from ranked comparisons.

    chatfactory reward --model runs/sft/model --data ranked.jsonl --out runs/rm

A backbone from any checkpoint (normally the SFT model) gets a scalar head (see
reward_model.py); every prompt's K answers go through one forward pass and the loss covers
all of their K-choose-2 ordered pairs (InstructGPT). One epoch by default: reward models
overfit quickly (InstructGPT, Stiennon et al.). The held-out pairwise accuracy is the
evaluation; afterwards the raw rewards are normalised to mean 0, std 1 on a reference set
(the training answers) and the constants stored with the model, so PPO's KL coefficient
means the same thing whatever the model.

Output: out/metrics.jsonl, out/checkpoints/ (exact resume), and out/model: the reward model
folder (`load_reward_model`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from engine.training.data.preferences import read_preferences, split_held_out
from engine.training.model.checkpoint import META_FILE, WEIGHTS_FILE

from .config import TrainConfig, add_config_arguments, config_from_args
from .reward_model import (
    EncodedComparison,
    RewardModel,
    collate_comparisons,
    encode_comparison,
    pairwise_accuracy,
    ranking_loss,
    raw_rewards,
    save_reward_model,
)

MODEL_DIR = "model"


@dataclass
class RewardConfig:
    """Everything a reward-model run needs; `train` holds the optimisation (shared TrainConfig)."""

    model: str = ""  # backbone: checkpoint folder, HF folder, GGUF or registry name (normally the SFT model)
    data: list[str] = field(default_factory=list)  # preference files (K-wise, pairs, HH-RLHF; .gz read directly)
    eval_data: list[str] = field(default_factory=list)  # held-out files; empty = hold out `held_out` of the prompts
    out_dir: str = "runs/reward"
    held_out: float = 0.1  # fraction of prompts held out when there is no eval_data
    epochs: float = 1.0  # passes over the comparisons (max_steps, if set, wins)
    max_len: int | None = None  # tokens per prompt+answer (default: the model's context)
    limit: int | None = None  # use only the first N comparisons of each file
    skip_invalid: bool = False  # drop malformed records (counted) instead of stopping at the first
    norm_samples: int = 2000  # answers scored to set the normalisation constants
    freeze_layers: int = 0  # keep the embeddings and the first N blocks fixed (cheaper backward on a CPU)
    # a reward model fine-tunes a trained backbone: small steps, no weight decay, cosine to 10%
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            lr=3e-5, weight_decay=0.0, schedule="cosine", min_lr_ratio=0.1, warmup_steps=10, micro_batch_size=8,
            log_every=10, eval_every=0,
        )
    )


class ComparisonBatches:
    """Micro-batches of whole comparisons (a prompt's K answers always share one), shuffled per
    epoch from a seed; the position is saved in checkpoints, so resume continues exactly."""

    def __init__(self, items: list[EncodedComparison], micro_batch_size: int, pad_id: int, seed: int = 0):
        self.items, self.mbs, self.pad_id, self.seed = items, micro_batch_size, pad_id, seed
        self.epoch, self.pos = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(self.seed * 1000 + self.epoch).shuffle(order)
        return order

    def next_step(self, n_micro: int, rank: int = 0, world_size: int = 1) -> list[dict[str, Any]]:
        need = self.mbs * n_micro * world_size
        if self.pos + need > len(self._order):  # the ragged tail waits for the next epoch
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._shuffle()
        take = self._order[self.pos : self.pos + need]
        self.pos += need
        mine = take[rank * self.mbs * n_micro : (rank + 1) * self.mbs * n_micro]
        return [
            collate_comparisons([self.items[i] for i in mine[m * self.mbs : (m + 1) * self.mbs]], self.pad_id)
            for m in range(n_micro)
        ]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle()


def freeze_bottom(backbone, n_layers: int) -> None:
    """No gradient for the embeddings and the first n blocks: backward stops above them."""
    if n_layers > backbone.config.n_layer:
        raise ValueError(f"freeze_layers={n_layers} but the model has {backbone.config.n_layer} blocks")
    backbone.embed.requires_grad_(False)
    if hasattr(backbone, "pos_embed"):
        backbone.pos_embed.requires_grad_(False)
    for block in backbone.layers[:n_layers]:
        block.requires_grad_(False)


def reward_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    r = model(batch["input_ids"], batch["attention_mask"])
    loss = ranking_loss(r, batch["pairs"], batch["group"], batch["n_groups"])
    d = r[batch["pairs"][:, 0]] - r[batch["pairs"][:, 1]]
    d = d.detach()
    return loss, {"train_accuracy": float((d > 0).float().mean()), "reward_margin": float(d.mean())}


def save_checkpoint_weights(folder: Path, model: torch.nn.Module, sd: dict[str, torch.Tensor], meta: dict) -> None:
    """A training checkpoint: the whole wrapper's weights (backbone + head) in one file, tied
    tensors cloned (safetensors refuses shared storage), so the trainer's resume loads it back."""
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in sd.items()}, str(folder / WEIGHTS_FILE))
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")


def load_comparisons(files: list[str], cfg: RewardConfig) -> list:
    out = []
    for f in files:
        out += read_preferences(f, skip_invalid=cfg.skip_invalid, limit=cfg.limit)
    return out


def train_reward_model(cfg: RewardConfig, resume: bool = False) -> dict[str, Any]:
    """Train, evaluate, normalise and save. Returns the headline numbers."""
    from engine.training.loader import load

    from .trainer import Trainer

    tcfg = cfg.train
    if not cfg.model:
        raise ValueError("reward: set model (--model), the backbone checkpoint (normally the SFT model)")
    if not cfg.data:
        raise ValueError("reward: set data (--data), one or more preference files")
    out_dir = Path(cfg.out_dir)
    torch.manual_seed(tcfg.seed)
    loaded = load(cfg.model)
    tok = loaded.tokenizer
    max_len = min(cfg.max_len or loaded.model.config.max_seq_len, loaded.model.config.max_seq_len)
    comps = load_comparisons(cfg.data, cfg)
    if cfg.eval_data:
        train_c, held_c = comps, load_comparisons(cfg.eval_data, cfg)
    else:
        train_c, held_c = split_held_out(comps, cfg.held_out, seed=tcfg.seed)
    train_items = [e for e in (encode_comparison(c, tok, max_len) for c in train_c) if e.pairs]
    held_items = [encode_comparison(c, tok, max_len) for c in held_c]
    if not train_items:
        raise ValueError("reward: no comparison with at least one ordered (untied) pair to train on")
    model = RewardModel(loaded.model)
    if cfg.freeze_layers:
        freeze_bottom(model.backbone, cfg.freeze_layers)
    tcfg.seq_len = max_len
    batches = ComparisonBatches(train_items, tcfg.micro_batch_size, tok.pad_id, tcfg.seed)
    if tcfg.max_steps is None:  # a time budget only caps the epochs, it does not replace them
        world = int(os.environ.get("WORLD_SIZE", "1"))  # the trainer's processes (torchrun)
        accum = (tcfg.batch_tokens or 0) // (tcfg.micro_batch_size * max_len * world) or 1
        per_step = tcfg.micro_batch_size * world * accum  # comparisons per optimizer step
        tcfg.max_steps = max(1, math.floor(len(train_items) * cfg.epochs / per_step))
    meta = {"stage": "reward", "base_model": cfg.model, "config": asdict(cfg)}

    def evaluate(m) -> dict[str, float]:
        if not held_items:
            return {}
        r = pairwise_accuracy(m, held_items, tok.pad_id, batch_size=tcfg.micro_batch_size)
        return {"heldout_accuracy": r["accuracy"], "heldout_loss": r["loss"], "heldout_pairs": r["pairs"]}

    trainer = Trainer(
        model, tcfg, out_dir, batches=batches, loss_fn=reward_loss, eval_fn=evaluate, tokenizer=tok, meta=meta,
        resume=resume, save_model_fn=lambda folder, m, sd: save_checkpoint_weights(folder, m, sd, meta),
    )
    t0 = time.time()
    result = trainer.fit()
    train_s = time.time() - t0
    model = trainer.raw_model.eval()
    stats: dict[str, Any] = {"train_comparisons": len(train_items), "heldout_comparisons": len(held_items),
                             "train_pairs": sum(len(e.pairs) for e in train_items), "train_seconds": round(train_s, 1),
                             "steps": result["step"], "stop_reason": result["stop_reason"]}
    stats.update({k: v for k, v in result.items() if k.startswith("heldout")})
    # normalise on a reference set: the training answers (a seeded sample of them)
    ref = [s for e in train_items for s in e.sequences]
    random.Random(tcfg.seed).shuffle(ref)
    raw = raw_rewards(model, ref[: cfg.norm_samples], tok.pad_id, batch_size=tcfg.micro_batch_size * 2)
    mean, std = float(raw.mean()), float(raw.std()) if len(raw) > 1 else 1.0
    model.set_normalisation(mean, std)
    stats.update({"reward_mean_raw": mean, "reward_std_raw": std})
    if trainer.dist.is_main:
        save_reward_model(out_dir / MODEL_DIR, model, tok, {**meta, "metrics": stats})
        (out_dir / "results.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


# ---- command line ------------------------------------------------------------------------------------
FLAGS = {
    "--model": ("model", "backbone checkpoint (normally the SFT model)"),
    "--out": ("out_dir", "output folder (the reward model goes to OUT/model)"),
    "--data": ("data", "preference files (K-wise, TRL pairs, HH-RLHF)", {"nargs": "+"}),
    "--eval-data": ("eval_data", "held-out preference files", {"nargs": "+"}),
    "--held-out": ("held_out", "fraction of prompts held out when there is no --eval-data"),
    "--epochs": ("epochs", "passes over the comparisons"),
    "--max-len": ("max_len", "tokens per prompt+answer"),
    "--limit": ("limit", "use only the first N comparisons of each file"),
    "--freeze-layers": ("freeze_layers", "keep the embeddings and the first N blocks fixed"),
    "--skip-invalid": ("skip_invalid", "skip malformed records", {"action": "store_true"}),
    "--lr": ("train.lr", "peak learning rate"),
    "--batch-size": ("train.micro_batch_size", "prompts (comparisons) per micro-batch"),
    "--max-steps": ("train.max_steps", "optimizer steps (default: one pass of --epochs)"),
    "--threads": ("train.threads", "torch CPU threads"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reward", help="train a reward model on ranked answers")
    add_config_arguments(p, FLAGS, default_preset="reward")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(RewardConfig, args, FLAGS)
    stats = train_reward_model(cfg, resume=args.resume)
    print(json.dumps(stats, indent=2))
    return 0
