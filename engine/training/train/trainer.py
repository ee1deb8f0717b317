"""The one training loop every stage reuses (pre-training, SFT, reward model, PPO).

    trainer = Trainer(model, cfg.train, out_dir, batches=source, loss_fn=..., eval_fn=..., tokenizer=tok)
    result = trainer.fit()

- `batches` hands out this process's micro-batches for one optimizer step (`next_step(n_micro,
  rank, world_size)`) and saves/restores its position (`state_dict`/`load_state_dict`), so
  resume is exact; any plain iterator of micro-batches also works (resume then restarts it).
- `loss_fn(model, batch) -> loss` (a mean over the micro-batch) or `(loss, {name: float})`;
  the default is next-token cross-entropy on batch["x"], batch["y"].
- `eval_fn(model) -> {name: float}` runs every `eval_every` steps and at the end.
- Stages with their own loop (PPO) call `train_step(micro_batches)` and `save_checkpoint()`.

What it does for them: AdamW (no decay on norms, biases, embeddings), warmup + WSD/cosine
schedule (following the clock under a time budget), gradient accumulation from a global batch
in tokens, clipping, bf16 autocast, torch.compile, DDP/FSDP2 under torchrun, metrics.jsonl +
tqdm (+ TensorBoard), atomic checkpoints with exact resume, checkpoint-then-exit on SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from engine.training.model.checkpoint import CONFIG_FILE, META_FILE, WEIGHTS_FILE, atomic_folder

from .config import TrainConfig
from .flops import peak_flops

STATE_FILE = "trainer_state.pt"
CKPT_DIR = "checkpoints"
_CKPT_NAME = re.compile(r"^step_(\d+)$")


class BatchSource(Protocol):
    def next_step(self, n_micro: int, rank: int, world_size: int) -> list[Any]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


# ---- the learning-rate schedule ------------------------------------------------------------------------
def lr_multiplier(cfg: TrainConfig, step: int, progress: float) -> float:
    """Factor on cfg.lr for the step with 0-based index `step`, at `progress` in [0, 1] of the
    run (steps done / max_steps, or time spent / time budget, whichever is further)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    p, floor = min(max(progress, 0.0), 1.0), cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
    # warmup-stable-decay: full rate until the last decay_frac, then linear to the floor. Under
    # a time budget the decay starts at a fraction of the clock, so it always gets its share.
    start = 1 - cfg.decay_frac
    if p <= start or cfg.decay_frac == 0:
        return 1.0
    return floor + (1 - floor) * max(0.0, 1 - (p - start) / cfg.decay_frac)


# ---- processes and devices ------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistInfo:
    """One process, or one of WORLD_SIZE started by torchrun (RANK/LOCAL_RANK/WORLD_SIZE and the
    rendezvous address come from the environment). NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    if device not in ("auto", "cpu") and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={device!r} but CUDA is not available")
    if use_cuda:
        if world > 1 and local >= torch.cuda.device_count():
            raise ValueError(
                f"torchrun started process {local} on this node but it has {torch.cuda.device_count()} GPU(s): "
                "use --nproc_per_node <= the GPU count (NCCL needs one GPU per process), or train.device=cpu"
            )
        dev = torch.device("cuda", local) if world > 1 or device in ("auto", "cuda") else torch.device(device)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, dev)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def default_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy, mean over the micro-batch's target tokens."""
    return model(batch["x"], targets=batch["y"])


# ---- the optimizer ------------------------------------------------------------------------------------
def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay only on matrices that are not embeddings (decaying norm gains, biases
    or embedding rows only pulls them toward zero without regularising anything useful)."""
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))  # tied weights (lm_head = embed) appear once
        (decay if p.dim() >= 2 and id(p) not in embedding_params else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    try:  # fused kernels where this build has them (CUDA, recent CPU builds), else foreach
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, foreach=device.type == "cuda", **kwargs)


# ---- checkpoints on disk ------------------------------------------------------------------------------
def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. Writes are atomic (a hidden temporary folder renamed
    into place), so a folder with the step name is whole; leftovers of a killed write are hidden."""
    root = Path(out_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CKPT_NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / STATE_FILE).exists()]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def write_model_weights(folder: Path, model: nn.Module, state_dict: dict[str, torch.Tensor],
                        tokenizer=None, meta: dict | None = None) -> None:
    """The native model folder's files from a full state dict (works for any wrapping: plain,
    DDP, FSDP-gathered). A model without a ModelConfig gets just model.safetensors (+ meta)."""
    config = getattr(model, "config", None)
    sd = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if config is not None and hasattr(config, "save"):
        config.save(folder / CONFIG_FILE)
        if getattr(config, "tie_embeddings", False):
            sd.pop("lm_head.weight", None)  # safetensors refuses shared storage; restored on load
    save_file(sd, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    if tokenizer is not None:
        from engine.training.tokenizer.files import save_tokenizer_files

        save_tokenizer_files(tokenizer, folder)
    if meta is not None:
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")


# ---- the trainer ---------------------------------------------------------------------------------------
class Trainer:
    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        batches: BatchSource | Iterable[Any],
        loss_fn: Callable[[nn.Module, Any], Any] | None = None,
        eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        tokenizer=None,
        meta: dict | None = None,
        resume: bool | str | Path = False,
        save_model_fn: Callable[[Path, nn.Module, dict[str, torch.Tensor]], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        """resume: False, True/"latest" (the newest checkpoint in out_dir, if any), or a checkpoint folder.
        save_model_fn(folder, model, full_state_dict) writes the model files of a checkpoint
        (default: the native folder format, loadable by engine.training.loader.load).
        clock: what the time budget counts (wall-clock seconds; a benchmark on a shared machine
        may pass process CPU time instead)."""
        self.cfg = cfg = config
        if cfg.max_steps is None and cfg.time_budget is None and not hasattr(batches, "__iter__"):
            raise ValueError("train: set train.max_steps or train.time_budget (or both), else training never ends")
        self.out_dir = Path(out_dir)
        self.dist = setup_distributed(cfg.device)
        self.device = self.dist.device
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.loss_fn = loss_fn or default_loss
        self.eval_fn = eval_fn
        self.tokenizer, self.meta = tokenizer, meta or {}
        self.save_model_fn = save_model_fn
        self.clock = clock
        self.batches = batches if hasattr(batches, "next_step") else _IterableSource(batches)
        self.amp_dtype = self._amp_dtype()
        world = self.dist.world_size
        if cfg.fsdp and world == 1:
            print("train: --fsdp with one process shards nothing; training unsharded")
        micro_tokens = cfg.micro_batch_size * cfg.seq_len
        batch_tokens = cfg.batch_tokens or micro_tokens * world
        if batch_tokens % (micro_tokens * world):
            raise ValueError(
                f"train.batch_tokens={batch_tokens} is not a multiple of micro_batch_size*seq_len*processes "
                f"= {cfg.micro_batch_size}*{cfg.seq_len}*{world} = {micro_tokens * world}"
            )
        self.grad_accum = batch_tokens // (micro_tokens * world)
        self.tokens_per_step = batch_tokens
        # counters (restored by resume)
        self.step, self.tokens, self.train_time = 0, 0, 0.0
        self.last_eval: dict[str, float] = {}
        self.raw_model = model.to(self.device)
        torch.manual_seed(cfg.seed + self.dist.rank)  # dropout streams differ per rank
        resume_from = self._resume_path(resume)
        if resume_from is not None:
            self._load_weights(resume_from)  # before wrapping: DDP broadcasts, FSDP shards what's loaded
        self.model = self._wrap(self.raw_model)
        self.optimizer = build_optimizer(self.raw_model, cfg, self.device)
        if resume_from is not None:
            self._load_state(resume_from)
        self.flops_per_token = (
            self.raw_model.flops_per_token(cfg.seq_len) if hasattr(self.raw_model, "flops_per_token") else None
        )
        self.peak = cfg.peak_flops
        if self.peak is None and self.flops_per_token and self.dist.is_main:
            self.peak = peak_flops(self.device, self.amp_dtype or torch.float32)
        self._stop_signal: int | None = None
        self._metrics_file = None
        self._tb = None

    # ---- setup helpers ----
    def _amp_dtype(self) -> torch.dtype | None:
        p = self.cfg.precision
        if p == "fp32":
            return None
        if p == "bf16":
            if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
                raise ValueError("train.precision=bf16 but this GPU does not support bfloat16")
            return torch.bfloat16
        # auto: bf16 autocast on GPUs that have it; CPUs stay fp32 (bf16 autocast is opt-in there)
        return torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else None

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _wrap(self, model: nn.Module) -> nn.Module:
        self._ddp = self._fsdp = False
        if self.dist.world_size > 1 and self.cfg.fsdp:
            from torch.distributed.fsdp import fully_shard

            # shard each transformer block, then the root (embeddings, final norm, head)
            for block in getattr(model, "layers", []):
                fully_shard(block)
            fully_shard(model)
            self._fsdp = True
        elif self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DDP(model, device_ids=ids)
            self._ddp = True
        if self.cfg.compile:
            model = torch.compile(model)
        return model

    def _resume_path(self, resume: bool | str | Path) -> Path | None:
        if resume is False or resume is None:
            return None
        if resume is True or str(resume) == "latest":
            path = latest_checkpoint(self.out_dir)
            if path is None and self.dist.is_main:
                print(f"train: no checkpoint in {self.out_dir / CKPT_DIR} to resume from; starting fresh")
            return path
        path = Path(resume)
        if not (path / STATE_FILE).exists():
            raise FileNotFoundError(f"{path}: not a training checkpoint (no {STATE_FILE})")
        return path

    # ---- one optimizer step ----
    def train_step(self, micro_batches: list[Any], lr: float | None = None) -> dict[str, Any]:
        """Forward/backward over this process's micro-batches, clip, step. Returns the loss as a
        tensor (this rank's mean; `fit` averages over ranks when it logs) and extra metrics."""
        if lr is not None:
            for g in self.optimizer.param_groups:
                g["lr"] = lr
        self.model.train()
        n = len(micro_batches)
        total = torch.zeros((), device=self.device)
        extras: dict[str, float] = {}
        for i, mb in enumerate(micro_batches):
            last = i == n - 1
            with self._grad_sync(last), self.autocast():
                out = self.loss_fn(self.model, _to_device(mb, self.device))
                loss, extra = out if isinstance(out, tuple) else (out, {})
            (loss / n).backward()
            total += loss.detach().float()
            for k, v in extra.items():
                extras[k] = extras.get(k, 0.0) + float(v) / n
        grad_norm = None
        if self.cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.cfg.grad_clip)
            if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
                grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": total / n, "grad_norm": grad_norm, **extras}

    def _grad_sync(self, sync: bool):
        # accumulate locally and all-reduce only on the last micro-batch of the step
        if self._ddp and not sync:
            return self.model.no_sync() if hasattr(self.model, "no_sync") else self.model._orig_mod.no_sync()
        if self._fsdp:
            self.raw_model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def _global_mean(self, x: torch.Tensor) -> float:
        if self.dist.world_size > 1:
            x = x.clone()
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
            x /= self.dist.world_size
        return float(x)

    # ---- the loop ----
    def progress(self) -> float:
        p = 0.0
        if self.cfg.max_steps:
            p = self.step / self.cfg.max_steps
        if self.cfg.time_budget:
            p = max(p, self.train_time / self.cfg.time_budget)
        return p

    def fit(self) -> dict[str, Any]:
        """Train until max_steps, the time budget or a signal; validate, checkpoint, return a summary."""
        cfg = self.cfg
        self._open_logs()
        bar = self._progress_bar()
        restore = self._install_signal_handlers()
        stop_reason = None
        step_time = 0.0
        last_ckpt_time = time.perf_counter()
        log_t, log_tokens = time.perf_counter(), self.tokens
        try:
            while True:
                stop_reason = self._agree_stop(step_time)
                if stop_reason:
                    break
                t0 = self.clock()
                lr = cfg.lr * lr_multiplier(cfg, self.step, self.progress())
                micro = self.batches.next_step(self.grad_accum, self.dist.rank, self.dist.world_size)
                if not micro:
                    stop_reason = "data_exhausted"
                    break
                stats = self.train_step(micro, lr)
                self.step += 1
                self.tokens += self.tokens_per_step
                if cfg.log_every and (self.step % cfg.log_every == 0 or self.step == 1):
                    loss = self._global_mean(stats["loss"])
                    now = time.perf_counter()
                    tok_s = (self.tokens - log_tokens) / max(now - log_t, 1e-9)
                    log_t, log_tokens = now, self.tokens
                    rec = {"step": self.step, "loss": loss, "lr": lr, "tokens": self.tokens, "tok_per_s": tok_s}
                    if self.flops_per_token and self.peak:
                        rec["mfu"] = self.flops_per_token * tok_s / (self.peak / self.dist.world_size)
                    if stats["grad_norm"] is not None:
                        rec["grad_norm"] = float(stats["grad_norm"])
                    rec.update({k: v for k, v in stats.items() if k not in ("loss", "grad_norm")})
                    self._log(rec)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
                step_time = self.clock() - t0
                self.train_time += step_time
                if bar is not None:
                    bar.update(1)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self.evaluate()
                due = cfg.ckpt_every and self.step % cfg.ckpt_every == 0
                due = due or (cfg.ckpt_every_s and time.perf_counter() - last_ckpt_time >= cfg.ckpt_every_s)
                if due:
                    self.save_checkpoint()
                    last_ckpt_time = time.perf_counter()
        finally:
            restore()
            if bar is not None:
                bar.close()
        if stop_reason != "signal" and self.eval_fn is not None and self.last_eval.get("step") != self.step:
            self.evaluate()
        path = self.save_checkpoint()
        self._close_logs()
        return {"step": self.step, "tokens": self.tokens, "train_time": self.train_time,
                "stop_reason": stop_reason, "checkpoint": str(path), **self.last_eval}

    def _agree_stop(self, step_time: float) -> str | None:
        """Every rank must stop at the same step (else the others hang in the next all-reduce)."""
        cfg = self.cfg
        flags = [
            cfg.max_steps is not None and self.step >= cfg.max_steps,
            # stop before a step that would overrun the budget, not after
            cfg.time_budget is not None and self.train_time + step_time > cfg.time_budget,
            self._stop_signal is not None,
        ]
        if self.dist.world_size > 1:
            t = torch.tensor(flags, dtype=torch.int32, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flags = [bool(v) for v in t.tolist()]
        for reason, flag in zip(("max_steps", "time_budget", "signal"), flags):
            if flag:
                return reason
        return None

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        self.raw_model.eval()
        with self.autocast():
            metrics = dict(self.eval_fn(self.raw_model))
        self.raw_model.train()
        self.last_eval = {"step": self.step, **metrics}
        self._log({"step": self.step, "tokens": self.tokens, **metrics})
        if self.dist.is_main:
            print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in self.last_eval.items()))
        return metrics

    # ---- signals ----
    def _install_signal_handlers(self) -> Callable[[], None]:
        """SIGINT/SIGTERM set a flag; the loop checkpoints and returns. A second Ctrl-C aborts."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signum
            if self.dist.is_main:
                print(f"\ntrain: got {signal.Signals(signum).name}; saving a checkpoint, then stopping")

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return restore

    # ---- logging ----
    def _progress_bar(self):
        if not (self.dist.is_main and self.cfg.progress):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True)

    def _open_logs(self) -> None:
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "metrics.jsonl"
        if path.exists():
            # resuming: drop records past the checkpoint (that run's lost steps are redone)
            kept = [ln for ln in path.read_text().splitlines() if _record_step(ln) <= self.step]
            path.write_text("".join(ln + "\n" for ln in kept))
        self._metrics_file = open(path, "a")  # noqa: SIM115 (open for the whole run; closed in _close_logs)
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:
                print("train: tensorboard is not installed (pip install tensorboard); logging to metrics.jsonl only")

    def _log(self, rec: dict) -> None:
        if self._metrics_file is None:
            return
        rec = {"time": round(time.time(), 3), **rec}
        self._metrics_file.write(json.dumps(rec) + "\n")
        self._metrics_file.flush()
        if self._tb is not None:
            for k, v in rec.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, rec["step"])

    def _close_logs(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # ---- checkpoints ----
    def _full_state_dicts(self) -> tuple[dict, dict]:
        """(model, optimizer) state dicts, whole and on CPU, keyed by parameter name (so they load
        into any wrapping and any number of processes)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(self.raw_model, self.optimizer, options=opts)

    def save_checkpoint(self) -> Path:
        """checkpoints/step_NNNNNNN: the model as a native folder (+ tokenizer) and trainer_state.pt
        (optimizer, counters, RNG states of every rank, data position). Written atomically; keeps
        the newest `keep_checkpoints`."""
        model_sd, optim_sd = self._full_state_dicts()
        rng = _rng_state()
        rngs = [None] * self.dist.world_size
        if self.dist.world_size > 1:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        final = self.out_dir / CKPT_DIR / f"step_{self.step:07d}"
        if self.dist.is_main:
            state = {
                "step": self.step, "tokens": self.tokens, "train_time": self.train_time,
                "optimizer": optim_sd, "rng": rngs, "data": self._data_state(),
                "world_size": self.dist.world_size, "config": asdict(self.cfg), "last_eval": self.last_eval,
            }
            meta = {**self.meta, "step": self.step, "tokens": self.tokens, **self.last_eval}
            for stale in (final.parent.glob(".step_*") if final.parent.is_dir() else []):
                shutil.rmtree(stale, ignore_errors=True)  # a killed writer's hidden leftovers (one writer: us)
            with atomic_folder(final) as tmp:
                if self.save_model_fn is not None:
                    self.save_model_fn(tmp, self.raw_model, model_sd)
                else:
                    write_model_weights(tmp, self.raw_model, model_sd, self.tokenizer, meta)
                torch.save(state, tmp / STATE_FILE)
            for old in list_checkpoints(self.out_dir)[: -max(1, self.cfg.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)
        if self.dist.world_size > 1:
            dist.barrier()  # nobody reads or overwrites a checkpoint before it is in place
        return final

    def _data_state(self) -> dict | None:
        fn = getattr(self.batches, "state_dict", None)
        return fn() if fn else None

    def _load_weights(self, path: Path) -> None:
        sd = load_file(str(path / WEIGHTS_FILE))
        config = getattr(self.raw_model, "config", None)
        if getattr(config, "tie_embeddings", False) and "lm_head.weight" not in sd and "embed.weight" in sd:
            sd["lm_head.weight"] = sd["embed.weight"]
        missing, unexpected = self.raw_model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: checkpoint does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def _load_state(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        set_optimizer_state_dict(
            self.raw_model, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
        )
        self.step, self.tokens, self.train_time = state["step"], state["tokens"], state["train_time"]
        self.last_eval = state.get("last_eval") or {}
        rngs = state["rng"]
        _set_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world_size else rngs[0])
        if state.get("data") is not None and hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(state["data"])
        if self.dist.is_main:
            print(f"train: resumed from {path} (step {self.step}, {self.tokens:,} tokens)")


def _record_step(line: str) -> float:
    """A metrics line's step; a torn last line (killed mid-write) counts as past any checkpoint."""
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return math.inf


class _IterableSource:
    """Adapts a plain iterator of micro-batches (no saved position: a resume restarts it)."""

    def __init__(self, iterable: Iterable[Any]):
        self.it: Iterator[Any] = iter(iterable)

    def next_step(self, n_micro: int, rank: int = 0, world_size: int = 1) -> list[Any]:
        # an exhausted iterator ends training (a short last step is dropped: it would weigh more)
        batch = [b for _, b in zip(range(n_micro), self.it)]
        return batch if len(batch) == n_micro else []
