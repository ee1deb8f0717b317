"""Supervised fine-tuning: teach a pre-trained model to answer as an assistant.

    chatfactory sft --model runs/pretrain/checkpoints/step_0001000 --data builtin --out runs/sft
    chatfactory sft --model smollm2-135m-instruct --data oasst.jsonl --max-steps 30 --out runs/sft-smol

The model (anything `engine.training.loader.load` takes: our folders, Hugging Face folders, GGUF,
registry names) is trained on conversations (engine.training.data.conversations) with the loss on
assistant tokens only (engine.training.tokenizer.chat_template), through the one trainer core
(engine.training.train.trainer). Before and after, the held-out loss (mean per assistant token on
the held-out conversations) is measured; with `eval_tasks`, the built-in task checkers run on
the final model too. Checkpoints are native folders (`out/checkpoints/step_N`) that
`engine.training.loader.load` and the next stages load directly; `out/sft.json` records the result.

With `lora` set (`--lora-rank 16`, or `lora: {rank: 16, alpha: 32}` in a config file) only
low-rank adapters on the chosen projections train (engine.training.model.lora); the checkpoints
hold the frozen base and the adapters (extra `*.lora_A`/`*.lora_B` tensors: `--resume` reads them,
`loader.load` does not), and `out/model` is the merged, ordinary model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from engine.training.data.conversations import (
    Conversation,
    Row,
    collate,
    fit_all,
    pack,
    pad_rows,
    parse_conversation,
    read_conversations,
    split,
    trained_tokens,
)
from engine.training.model import GPT
from engine.training.model.lora import LoRAConfig
from engine.training.tokenizer import IM_END, IM_START, Tokenizer

from .config import Flags, TrainConfig, add_config_arguments, config_from_args, save_config

BUILTIN = "builtin"  # as a data source: the built-in tasks' training conversations
MODEL_DIR = "model"  # the final native model folder inside out_dir


@dataclasses.dataclass
class SFTConfig:
    """Everything an SFT run needs; `train` holds the optimisation (shared TrainConfig)."""

    model: str = ""  # checkpoint folder, HF folder, GGUF file or registry name
    data: list[str] = dataclasses.field(default_factory=lambda: [BUILTIN])  # JSONL files, or "builtin"
    out_dir: str = "runs/sft"
    val_fraction: float = 0.05  # held-out conversations (chosen by content hash)
    strict: bool = False  # stop at the first bad line instead of skipping it (with a warning)
    overflow: str = "truncate"  # conversations longer than seq_len+1: "truncate" oldest turns, or "drop"
    pack: bool = True  # several conversations per row (doc_ids keep them apart) vs one per row, padded
    builtin_scale: float = 1.0  # multiplies each built-in task's training-set size
    builtin_evasive: float = 0.0  # fraction of built-in demonstrations that evade ("I'm not sure.")
    eval_tasks: str | None = None  # "builtin" or task names: run the checkers on the final model
    eval_n: int | None = None  # held-out prompts per task (None: all)
    max_eval_conversations: int = 512  # cap on held-out conversations scored per validation
    # LoRA adapters instead of full fine-tuning (YAML `lora: {rank: 8, alpha: 16}`): the base is
    # frozen, checkpoints hold base + adapters, and the adapters are merged into the saved model
    lora: LoRAConfig | None = None
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(lr=3e-4, max_steps=200, micro_batch_size=16, seq_len=256, decay_frac=0.5)
    )


# ---- data --------------------------------------------------------------------------------------------
def load_sft_conversations(cfg: SFTConfig) -> tuple[list[Conversation], dict[str, Any]]:
    """Every conversation from cfg.data, validated, with per-source counts."""
    convs: list[Conversation] = []
    stats: dict[str, Any] = {}
    for source in cfg.data:
        if source == BUILTIN and not Path(source).exists():
            from engine.training.data.tasks import training_conversations

            got = [parse_conversation(c, f"builtin:{i}") for i, c in enumerate(training_conversations(scale=cfg.builtin_scale, evasive=cfg.builtin_evasive))]
            stats[source] = {"conversations": len(got)}
        else:
            got, report = read_conversations(source, strict=cfg.strict)
            stats[source] = {"conversations": report.kept, "lines": report.lines, "skipped": dict(report.skipped)}
        convs += got
    if not convs:
        raise ValueError(f"{', '.join(cfg.data)}: no valid conversations")
    return convs, stats


class SFTBatches:
    """Shuffled micro-batches of rows, epoch after epoch, with a saved position (exact resume).
    Under torchrun each rank takes every world_size-th micro-batch of the same global order."""

    def __init__(self, rows: list[Row], micro_batch_size: int, pad_id: int, packed: bool, seed: int = 0):
        if not rows:
            raise ValueError("SFT: no training rows")
        self.rows, self.bs, self.pad_id, self.packed, self.seed = rows, micro_batch_size, pad_id, packed, seed
        self.epoch, self.pos = 0, 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def _micro(self) -> dict[str, torch.Tensor]:
        if self.pos + self.bs > len(self._order):  # the ragged tail waits: next epoch
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._shuffled(self.epoch)
        idx = self._order[self.pos : self.pos + self.bs]
        self.pos += self.bs
        return collate([self.rows[i] for i in idx], self.pad_id, doc_ids=self.packed)

    def next_step(self, n_micro: int, rank: int = 0, world_size: int = 1) -> list[dict[str, torch.Tensor]]:
        batches = [self._micro() for _ in range(n_micro * world_size)]
        return batches[rank::world_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffled(self.epoch)


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean cross-entropy over the assistant tokens of the micro-batch (targets -100 elsewhere)."""
    kwargs = {"doc_ids": batch["doc_ids"]} if "doc_ids" in batch else {}
    loss = model(batch["input_ids"], batch["targets"], **kwargs)
    return loss, {"trained_tokens": float((batch["targets"] != -100).sum())}


@torch.no_grad()
def rows_loss(model: GPT, rows: list[Row], pad_id: int, batch_size: int = 16) -> float:
    """Mean loss per trained token over rows (the held-out loss)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for s in range(0, len(rows), batch_size):
        b = {k: v.to(device) for k, v in collate(rows[s : s + batch_size], pad_id).items()}
        total += float(model(b["input_ids"], b["targets"], reduction="sum", doc_ids=b["doc_ids"]))
        count += int((b["targets"] != -100).sum())
    return total / count if count else float("nan")


def check_chat_tokens(tokenizer: Tokenizer, model: GPT, where: str) -> None:
    for t in (IM_START, IM_END):
        try:
            i = tokenizer.token_id(t)
        except KeyError:
            raise ValueError(f"{where}: the tokenizer has no {t} token, so it cannot use the chat format") from None
        if i >= model.config.vocab_size:
            raise ValueError(f"{where}: {t} has id {i}, beyond the model's vocab_size {model.config.vocab_size}")


# ---- the stage ---------------------------------------------------------------------------------------------
def run_sft(cfg: SFTConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune cfg.model on cfg.data; returns the summary also written to out_dir/sft.json.
    The final model is the native folder out_dir/model."""
    from engine.training.loader import load
    from engine.training.model.checkpoint import save_model

    from .pretrain import model_for_saving
    from .trainer import Trainer

    if not cfg.model:
        raise ValueError("sft: no model given (--model CHECKPOINT)")
    if cfg.overflow not in ("truncate", "drop"):
        raise ValueError(f"sft.overflow must be 'truncate' or 'drop', got {cfg.overflow!r}")
    out = Path(cfg.out_dir)
    t_start = time.time()
    convs, sources = load_sft_conversations(cfg)
    loaded = load(cfg.model)
    model, tok = loaded.model, loaded.tokenizer
    check_chat_tokens(tok, model, cfg.model)
    lora_info = None
    if cfg.lora is not None:
        from engine.training.model.lora import apply_lora

        total = model.num_params()
        trainable = apply_lora(model, cfg.lora, seed=cfg.train.seed)
        lora_info = {**cfg.lora.to_dict(), "trainable_params": trainable, "base_params": total}
        print(f"sft: LoRA rank {cfg.lora.rank} on {', '.join(cfg.lora.targets)}: "
              f"{trainable:,} trainable parameters ({100 * trainable / total:.2f}% of {total:,})")
    seq_len = min(cfg.train.seq_len, model.config.max_seq_len)
    cfg.train.seq_len = seq_len
    train_convs, val_convs = split(convs, cfg.val_fraction)
    train_ex, fit_train = fit_all(train_convs, tok, seq_len + 1, cfg.overflow)
    val_ex, fit_val = fit_all(val_convs[: cfg.max_eval_conversations], tok, seq_len + 1, cfg.overflow)
    if not train_ex:
        raise ValueError(f"sft: every conversation is longer than seq_len={seq_len} ({fit_train.summary()})")
    rows = (pack if cfg.pack else pad_rows)(train_ex, seq_len, tok.pad_id, seed=cfg.train.seed)
    val_rows = pack(val_ex, seq_len, tok.pad_id) if val_ex else []
    data_stats = {
        "sources": sources,
        "train_conversations": len(train_convs),
        "heldout_conversations": len(val_convs),
        "fit": fit_train.summary(),
        "heldout_fit": fit_val.summary(),
        "rows": len(rows),
        "packed": cfg.pack,
        "trained_tokens_per_epoch": trained_tokens(rows),
        "fill": sum(len(e) for e in train_ex) / max(1, sum(len(r.ids) for r in rows)),
    }
    print(f"sft: {len(train_convs)} train / {len(val_convs)} held-out conversations; {fit_train.summary()}")
    print(f"sft: {len(rows)} rows of {seq_len} tokens, {data_stats['trained_tokens_per_epoch']:,} trained tokens an epoch")

    def eval_fn(m: GPT) -> dict[str, float]:
        return {"heldout_loss": rows_loss(m, val_rows, tok.pad_id)} if val_rows else {}

    before = eval_fn(model.eval()).get("heldout_loss", math.nan)
    print(f"sft: held-out loss before: {before:.4f}")
    trainer = Trainer(
        model,
        cfg.train,
        out,
        batches=SFTBatches(rows, cfg.train.micro_batch_size, tok.pad_id, cfg.pack, cfg.train.seed),
        loss_fn=sft_loss,
        eval_fn=eval_fn,
        tokenizer=tok,
        meta={"stage": "sft", "base_model": cfg.model, "heldout_loss_before": before,
              **({"lora": {**lora_info, "merged": False}} if lora_info else {})},
        resume=resume,
    )
    if trainer.dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "sft_config.yaml")
    result = trainer.fit()
    summary: dict[str, Any] = {
        "base_model": cfg.model,
        "model": str(out / MODEL_DIR),
        "checkpoint": result["checkpoint"],
        "heldout_loss_before": before,
        "heldout_loss_after": result.get("heldout_loss", math.nan),
        "steps": result["step"],
        "train_time_s": round(result["train_time"], 1),
        "stop_reason": result["stop_reason"],
        "data": data_stats,
    }
    if lora_info:
        summary["lora"] = lora_info
    print(f"sft: held-out loss {before:.4f} -> {summary['heldout_loss_after']:.4f} after {result['step']} steps")
    if cfg.eval_tasks and trainer.dist.is_main:
        from engine.training.eval.tasks import evaluate_tasks, format_table

        res = evaluate_tasks(trainer.raw_model, tok, cfg.eval_tasks, n=cfg.eval_n)
        print(format_table(res))
        summary["tasks"] = res
    summary["wall_time_s"] = round(time.time() - t_start, 1)
    if trainer.dist.is_main:
        meta = {"stage": "sft", **{k: v for k, v in summary.items() if k not in ("data", "tasks")}}
        if lora_info:
            meta["lora"] = {**lora_info, "merged": True}
        final = model_for_saving(trainer) if cfg.lora is None else _merged_model(trainer, cfg.lora)
        save_model(out / MODEL_DIR, final, tok, meta=meta)
        (out / "sft.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        print(f"sft: model saved to {out / MODEL_DIR}")
    return summary


def _merged_model(trainer, lora: LoRAConfig) -> GPT:
    """The trained LoRA model with its adapters folded in: a plain GPT (the base's state-dict
    keys) for the model folder and the exporters. The checkpoints keep the adapters."""
    from engine.training.model.lora import apply_lora, merge_lora

    if not trainer._fsdp:
        return merge_lora(trainer.raw_model)  # in place: training is over
    model_sd, _ = trainer._full_state_dicts()
    copy = GPT(trainer.raw_model.config)
    apply_lora(copy, lora)
    copy.load_state_dict(model_sd)
    return merge_lora(copy)


# ---- command line ------------------------------------------------------------------------------------------
FLAGS: Flags = {
    "--model": ("model", "model to fine-tune: checkpoint folder, HF folder, GGUF file or registry name"),
    "--data": ("data", "conversation JSONL files, or 'builtin' (the built-in tasks)", {"nargs": "+"}),
    "--out": ("out_dir", "output folder (checkpoints, metrics.jsonl, sft.json)"),
    "--val-fraction": ("val_fraction", "held-out fraction of the conversations"),
    "--overflow": ("overflow", "conversations longer than the context: truncate (oldest turns) or drop"),
    "--eval-tasks": ("eval_tasks", "run the task checkers on the final model: 'builtin' or task names"),
    "--max-steps": ("train.max_steps", "optimizer steps"),
    "--time-budget": ("train.time_budget", "stop after this much training time (e.g. 5m)"),
    "--lr": ("train.lr", "peak learning rate"),
    "--seq-len": ("train.seq_len", "tokens per row (capped by the model's context)"),
    "--micro-batch-size": ("train.micro_batch_size", "rows per forward pass"),
    "--threads": ("train.threads", "torch CPU threads"),
    "--lora-rank": ("lora.rank", "train LoRA adapters of this rank (merged into the saved model) instead of every weight"),
    "--lora-alpha": ("lora.alpha", "LoRA scale numerator: the update is multiplied by alpha/rank (default 32)"),
    "--strict": ("strict", "stop at the first bad data line (default: skip it with a warning)",
                 {"action": "store_const", "const": True}),
    "--no-pack": ("pack", "one conversation per row, padded (default: several packed per row)",
                  {"action": "store_const", "const": False}),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sft", help="supervised fine-tuning on conversations (loss on assistant turns only)")
    add_config_arguments(p, FLAGS, default_preset="sft")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    cfg = config_from_args(SFTConfig, args, FLAGS)
    summary = run_sft(cfg, resume=args.resume)
    return 130 if summary["stop_reason"] == "signal" else 0
