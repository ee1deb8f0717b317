"""Pre-training: text -> tokenizer -> token shards -> a GPT that continues text.

    chatfactory pretrain --preset tiny --out runs/tiny                  # built-in Shakespeare corpus
    chatfactory pretrain --preset tiny --data my_texts/ --max-steps 500 --set model.n_layer=6
    torchrun --nproc_per_node 8 -m engine.cli pretrain --preset gpt2-124m --data corpus/

Run folder (out_dir): tokenizer/ (trained on the train split only, unless tokenizer.path is
given), shards/ (manifest.json + token files), checkpoints/step_N/ (resumable), metrics.jsonl,
config.yaml, and model/ (the final native model folder, loadable by engine.training.loader.load).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from engine.training.data.corpus import SHAKESPEARE, load_documents, split_documents
from engine.training.data.shards import (
    RandomWindows,
    ShardSet,
    TokenSplit,
    check_tokenizer,
    token_byte_lengths,
    write_shards,
)
from engine.training.model import GPT, ModelConfig
from engine.training.model.checkpoint import load_model_folder, save_model
from engine.training.tokenizer import Tokenizer

from .config import TrainConfig, add_config_arguments, config_from_args, save_config
from .trainer import Trainer, setup_distributed


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=lambda: [SHAKESPEARE])  # files/folders, or "shakespeare"
    val_fraction: float = 0.1  # by document (seeded), or the text's tail when there are too few documents
    split_seed: int = 0
    shards: str | None = None  # an existing shard folder: skip tokenizing (its tokenizer must be given)


@dataclass
class TokenizerConfig:
    path: str | None = None  # an existing tokenizer.json or folder; None: train one on the train split
    vocab_size: int = 2048


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    out_dir: str = "runs/pretrain"
    init_from: str | None = None  # continue pre-training from a native model folder
    samples: int = 2  # texts sampled from the final model and printed
    sample_tokens: int = 120
    sample_temperature: float = 0.8


# ---- data preparation ------------------------------------------------------------------------------------
def prepare_data(cfg: PretrainConfig, out_dir: Path, log=print) -> tuple[Tokenizer, ShardSet]:
    """The tokenizer and the shard folder for this run; reuses both when already present."""
    tok_dir, shard_dir = out_dir / "tokenizer", Path(cfg.data.shards) if cfg.data.shards else out_dir / "shards"
    if cfg.tokenizer.path:
        tokenizer = Tokenizer.load(cfg.tokenizer.path)
    elif (tok_dir / "tokenizer.json").exists():
        tokenizer = Tokenizer.load(tok_dir)
    elif cfg.data.shards:
        raise ValueError("data.shards is set: give the tokenizer that made them with tokenizer.path")
    else:
        tokenizer = None
    if (shard_dir / "manifest.json").exists():
        if tokenizer is None:
            raise ValueError(f"{shard_dir}: shards exist but no tokenizer (set tokenizer.path)")
        shards = ShardSet(shard_dir)
        check_tokenizer(shards.manifest, tokenizer, str(shard_dir))
        sources = shards.manifest.get("extra", {}).get("sources")
        if not cfg.data.shards and sources is not None and sources != cfg.data.paths:
            raise ValueError(f"{shard_dir}: these shards were made from {sources}, not {cfg.data.paths}; "
                             "use another --out for other data")
        log(f"data: reusing {shard_dir} ({shards.manifest['splits']['train']['tokens']:,} train tokens)")
        return tokenizer, shards
    t0 = time.perf_counter()
    docs = load_documents(cfg.data.paths)
    train_docs, val_docs = split_documents(docs, cfg.data.val_fraction, cfg.data.split_seed)
    log(f"data: {len(docs)} documents -> {len(train_docs)} train / {len(val_docs)} val")
    if tokenizer is None:
        tokenizer = Tokenizer.train((d.text for d in train_docs), vocab_size=cfg.tokenizer.vocab_size)
        tokenizer.save(tok_dir)
        log(f"tokenizer: trained {tokenizer.vocab_size} tokens on the train split in {time.perf_counter() - t0:.1f}s")
    splits = {"train": train_docs, "val": val_docs}
    manifest = write_shards(splits, tokenizer, shard_dir, extra={"sources": cfg.data.paths})
    counts = ", ".join(f"{k} {v['tokens']:,} tokens / {v['documents']} docs" for k, v in manifest["splits"].items())
    log(f"shards: {shard_dir} ({counts}) in {time.perf_counter() - t0:.1f}s total")
    return tokenizer, ShardSet(shard_dir)


# ---- evaluation: exact bits per byte on the val split -------------------------------------------------------
@torch.no_grad()
def evaluate_bpb(
    model: GPT,
    split: TokenSplit,
    token_bytes: torch.Tensor,
    block_size: int,
    batch_size: int,
    max_tokens: int | None = None,
) -> dict[str, float]:
    """Walk the split in order (every token scored once, in windows of block_size) and return
    val_loss (nats per token, all tokens) and val_bpb (bits per UTF-8 byte: the summed NLL of
    text tokens in bits over their bytes; end-of-text tokens stand for no bytes and are left
    out of both). Under torchrun each rank scores every world_size-th batch; sums are reduced."""
    device = next(model.parameters()).device
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    token_bytes = token_bytes.to(device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # nll_all, n_all, nll_text, bytes
    for i, batch in enumerate(split.iter_windows(block_size, batch_size, max_tokens)):
        if i % world != rank:
            continue
        x, y = batch["x"].to(device), batch["y"].to(device)
        nll = model(x, targets=y, reduction="none").double()
        valid = y != -100
        nbytes = torch.where(valid, token_bytes[y.clamp(min=0)], 0)
        text = nbytes > 0
        sums += torch.stack([nll[valid].sum(), valid.sum(), nll[text].sum(), nbytes.sum()]).double()
    if world > 1:
        dist.all_reduce(sums)
    nll_all, n_all, nll_text, n_bytes = sums.tolist()
    return {"val_loss": nll_all / max(n_all, 1), "val_bpb": nll_text / math.log(2) / max(n_bytes, 1)}


# ---- the stage ------------------------------------------------------------------------------------------------
def build_model(cfg: PretrainConfig, tokenizer: Tokenizer) -> GPT:
    if cfg.init_from:
        model = load_model_folder(cfg.init_from)
        if model.config.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"{cfg.init_from}: vocab_size {model.config.vocab_size} < tokenizer's {tokenizer.vocab_size}")
        return model
    mc = cfg.model
    # the embedding gets the tokenizer's size, rounded up to 64 (tensor-core friendly on GPUs)
    mc.vocab_size = 64 * math.ceil(tokenizer.vocab_size / 64)
    mc.max_seq_len = max(mc.max_seq_len, cfg.train.seq_len)
    torch.manual_seed(cfg.train.seed)
    return GPT(mc)


def run(cfg: PretrainConfig, resume: bool = False) -> dict:
    """The whole stage; returns the trainer's summary plus the final model folder."""
    out_dir = Path(cfg.out_dir)
    info = setup_distributed(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    log = print if info.is_main else (lambda *a, **k: None)
    if info.is_main:  # rank 0 writes tokenizer and shards; the others then read them
        out_dir.mkdir(parents=True, exist_ok=True)
        tokenizer, shards = prepare_data(cfg, out_dir, log)
        save_config(cfg, out_dir / "config.yaml")
    if info.world_size > 1:
        dist.barrier()
        if not info.is_main:
            tokenizer, shards = prepare_data(cfg, out_dir, log)
    check_tokenizer(shards.manifest, tokenizer, str(shards.folder))
    model = build_model(cfg, tokenizer)
    tc = cfg.train
    train_split, val_split = shards.split("train"), shards.split("val")
    if val_split.tokens == 0:
        log("data: no val split (val_fraction=0); validation skipped")
    token_bytes = token_byte_lengths(tokenizer)

    def eval_fn(m: GPT) -> dict[str, float]:
        return evaluate_bpb(m, val_split, token_bytes, tc.seq_len, tc.micro_batch_size, tc.eval_tokens)

    log(f"model: {model.config.family}, {model.num_params() / 1e6:.2f}M parameters "
        f"({model.num_params(non_embedding=True) / 1e6:.2f}M non-embedding)")
    trainer = Trainer(
        model, tc, out_dir,
        batches=RandomWindows(train_split, tc.seq_len, tc.micro_batch_size, seed=tc.seed),
        eval_fn=eval_fn if val_split.tokens else None,
        tokenizer=tokenizer,
        meta={"stage": "pretrain", "data": cfg.data.paths},
        resume=resume,
    )
    log(f"train: {trainer.tokens_per_step:,} tokens a step = {tc.micro_batch_size} x {tc.seq_len} x "
        f"{info.world_size} processes x {trainer.grad_accum} accumulation steps")
    result = trainer.fit()
    final_model = model_for_saving(trainer)  # every rank: under FSDP this gathers the shards
    if info.is_main:
        final = save_model(out_dir / "model", final_model, tokenizer,
                           meta={"stage": "pretrain", **{k: v for k, v in result.items() if k != "checkpoint"}})
        result["model"] = str(final)
        log(f"model: saved {final} ({result['stop_reason']} after {result['step']} steps, "
            f"{result['train_time']:.0f}s)")
        if cfg.samples and result["stop_reason"] != "signal":
            for text in sample_texts(final_model, tokenizer, cfg.samples, cfg.sample_tokens, cfg.sample_temperature):
                log("-" * 60 + "\n" + text)
    return result


def model_for_saving(trainer: Trainer) -> GPT:
    """The plain model with full weights (FSDP shards gathered into a fresh copy)."""
    if not trainer._fsdp:
        return trainer.raw_model
    model_sd, _ = trainer._full_state_dicts()
    copy = GPT(trainer.raw_model.config)
    copy.load_state_dict(model_sd, strict=False)
    return copy


@torch.no_grad()
def sample_texts(model: GPT, tokenizer: Tokenizer, n: int, max_tokens: int, temperature: float) -> list[str]:
    """n continuations of an empty document (the end-of-text token), decoded."""
    from engine.training.sampler.generate import SamplingParams, generate

    model.eval()
    params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_k=50, seed=0)
    gens = generate(model, [[tokenizer.eos_id]] * n, params, pad_id=tokenizer.pad_id)
    model.train()
    return [tokenizer.decode(g.tokens, skip_special=True).strip() for g in gens]


# ---- command line ---------------------------------------------------------------------------------------------
FLAGS = {
    "--out": ("out_dir", "run folder"),
    "--data": ("data.paths", "text files/folders (.txt, .jsonl, .parquet) or 'shakespeare'", {"nargs": "+"}),
    "--tokenizer": ("tokenizer.path", "use this tokenizer instead of training one"),
    "--init-from": ("init_from", "continue pre-training this model folder"),
    "--max-steps": ("train.max_steps", "optimizer steps"),
    "--time-budget": ("train.time_budget", "wall-clock budget: 110s, 5m, 1h"),
    "--lr": ("train.lr", "peak learning rate"),
    "--device": ("train.device", "auto, cpu, cuda"),
    "--fsdp": ("train.fsdp", "shard the model across processes", {"action": "store_const", "const": True}),
    "--compile": ("train.compile", "torch.compile the model", {"action": "store_const", "const": True}),
}


def register(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="pre-train a GPT on text (tokenizer, shards, training, samples)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, FLAGS, default_preset="tiny")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(PretrainConfig, args, FLAGS)
    result = run(cfg, resume=args.resume)
    return 130 if result["stop_reason"] == "signal" else 0
