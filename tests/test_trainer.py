"""The trainer core: schedules, configs, exact resume, time budget, crash-safe checkpoints, DDP."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.training.loader import load
from engine.training.model import GPT, ModelConfig
from engine.training.model.checkpoint import load_model_folder
from engine.training.tokenizer import Tokenizer
from engine.training.train import trainer as trainer_mod
from engine.training.train.config import TrainConfig, load_config, parse_duration
from engine.training.train.trainer import Trainer, latest_checkpoint, list_checkpoints, lr_multiplier

VOCAB, SEQ = 320, 16  # vocab >= a trained byte-level BPE's 260 (the kill tests load with the tokenizer)


class Windows:
    """A seeded random-token batch source with a saved position (like RandomWindows)."""

    def __init__(self, micro_batch: int = 2, seed: int = 0):
        self.rng, self.B = np.random.default_rng(seed), micro_batch

    def next_step(self, n_micro, rank=0, world_size=1):
        data = torch.from_numpy(self.rng.integers(0, VOCAB, size=(n_micro * world_size * self.B, SEQ + 1)))
        out = []
        for m in range(n_micro):
            lo = (m * world_size + rank) * self.B
            out.append({"x": data[lo : lo + self.B, :-1], "y": data[lo : lo + self.B, 1:]})
        return out

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, s):
        self.rng.bit_generator.state = s["rng"]


def tiny_model(seed: int = 0, dropout: float = 0.1) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=2, d_model=32, max_seq_len=SEQ, dropout=dropout))


def cfg(**kw) -> TrainConfig:
    base = {"lr": 3e-3, "warmup_steps": 2, "micro_batch_size": 2, "seq_len": SEQ, "log_every": 1, "progress": False,
                "peak_flops": 1e12, "threads": None,
            "device": "cpu"}  # the CPU path (gloo for the two-process test); tests/test_cuda.py has CUDA's
    return TrainConfig(**{**base, **kw})


@pytest.fixture(autouse=True)
def one_thread():
    # tiny matmuls gain nothing from a thread pool, and on a busy machine its waits dominate
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def losses(out_dir: Path) -> list[float]:
    recs = [json.loads(ln) for ln in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


# ---- schedule and config ----------------------------------------------------------------------------
def test_lr_schedule_shapes():
    c = cfg(max_steps=100, warmup_steps=10, schedule="wsd", decay_frac=0.2, min_lr_ratio=0.1)
    assert lr_multiplier(c, 0, 0.0) == pytest.approx(0.1) and lr_multiplier(c, 9, 0.09) == 1.0
    assert lr_multiplier(c, 50, 0.5) == 1.0 and lr_multiplier(c, 80, 0.8) == 1.0
    assert lr_multiplier(c, 90, 0.9) == pytest.approx(0.55) and lr_multiplier(c, 100, 1.0) == pytest.approx(0.1)
    mults = [lr_multiplier(c, s, s / 100) for s in range(10, 100)]
    assert all(a >= b for a, b in itertools.pairwise(mults))  # never rises after warmup
    cos = cfg(max_steps=100, warmup_steps=0, schedule="cosine", min_lr_ratio=0.0)
    assert lr_multiplier(cos, 0, 0.0) == 1.0 and lr_multiplier(cos, 50, 0.5) == pytest.approx(0.5)
    assert lr_multiplier(cos, 99, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_multiplier(cfg(schedule="constant", warmup_steps=0), 7, 0.9) == 1.0


def test_config_presets_overrides_and_errors(tmp_path):
    from engine.training.train.pretrain import PretrainConfig

    c = load_config(PretrainConfig, "tiny", ["model.n_layer=6", "train.lr=1e-2", "train.time_budget=5m",
                                              "data.paths=[a.txt, b.jsonl]"])
    assert c.model.n_layer == 6 and c.train.lr == 0.01 and c.train.time_budget == 300.0
    assert c.data.paths == ["a.txt", "b.jsonl"] and c.model.d_ff == 4 * c.model.d_model
    with pytest.raises(ValueError, match=r"unknown config field 'model.n_layr' \(did you mean 'n_layer'"):
        load_config(PretrainConfig, "tiny", ["model.n_layr=3"])
    with pytest.raises(ValueError, match="train.max_steps: expected an integer"):
        load_config(PretrainConfig, "tiny", ["train.max_steps=lots"])
    (tmp_path / "c.yaml").write_text("train:\n  max_steps: 7\n  bogus: 1\n")
    with pytest.raises(ValueError, match="unknown config field 'train.bogus'"):
        load_config(PretrainConfig, tmp_path / "c.yaml")
    with pytest.raises(FileNotFoundError, match="no such config file or preset"):
        load_config(PretrainConfig, "no-such-preset")
    for preset in ("tiny", "small", "gpt2-124m"):  # every shipped pre-training preset builds
        p = load_config(PretrainConfig, preset)
        assert p.model.n_layer > 0 and (p.train.max_steps or p.train.time_budget)
    assert [parse_duration(v) for v in ("110s", "5m", "1.5h", 90, "none")] == [110, 300, 5400, 90, None]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


# ---- exact resume ------------------------------------------------------------------------------------
class InterruptAt(Windows):
    """Sends this process SIGINT while serving step `at` (like Ctrl-C mid-run)."""

    def __init__(self, at: int, **kw):
        super().__init__(**kw)
        self.at, self.served = at, 0

    def next_step(self, n_micro, rank=0, world_size=1):
        self.served += 1
        if self.served == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().next_step(n_micro, rank, world_size)


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    c = cfg(max_steps=10, batch_tokens=4 * SEQ, schedule="wsd", decay_frac=0.5)  # 2 accumulation steps
    ref = Trainer(tiny_model(), c, tmp_path / "ref", batches=Windows()).fit()
    assert ref["stop_reason"] == "max_steps"
    run = tmp_path / "run"
    first = Trainer(tiny_model(), c, run, batches=InterruptAt(4)).fit()
    assert first["stop_reason"] == "signal" and first["step"] == 4  # finished the step, saved, stopped
    torch.manual_seed(123)  # a resumed process starts with other RNG states; the checkpoint restores them
    resumed = Trainer(tiny_model(seed=99), c, run, batches=Windows(seed=42), resume=True).fit()
    assert resumed["step"] == 10
    a, b = losses(tmp_path / "ref"), losses(run)
    assert len(a) == len(b) == 10
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-6
    sd_ref = load_model_folder(tmp_path / "ref" / "checkpoints" / "step_0000010").state_dict()
    sd_run = load_model_folder(run / "checkpoints" / "step_0000010").state_dict()
    assert all(torch.allclose(sd_ref[k], sd_run[k], atol=1e-6) for k in sd_ref)


def test_time_budget_stops_training(tmp_path):
    ticks = iter(range(10**6))
    clock = lambda: next(ticks) * 0.1
    t = Trainer(tiny_model(), cfg(time_budget="1s", schedule="wsd"), tmp_path, batches=Windows(), clock=clock)
    r = t.fit()
    assert r["stop_reason"] == "time_budget" and r["train_time"] <= 1.0 + 1e-9 and 8 <= r["step"] <= 10
    lrs = [json.loads(ln)["lr"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] <= 0.5 * 3e-3 + 1e-12  # the decay phase followed the clock


# ---- crash-safe checkpoints ----------------------------------------------------------------------------
def tiny_tokenizer() -> Tokenizer:
    return Tokenizer.train(["a tiny corpus for a tiny tokenizer"] * 3, vocab_size=270)


def test_failure_mid_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    t = Trainer(tiny_model(), cfg(max_steps=2, ckpt_every=1), tmp_path, batches=Windows(), tokenizer=tiny_tokenizer())
    t.fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000001", "step_0000002"]
    real_save = torch.save

    def dying_save(obj, path, *a, **k):
        real_save(obj, path, *a, **k)
        Path(path).write_bytes(b"half")  # a torn file ...
        raise OSError("disk full")  # ... and the process goes down mid-checkpoint

    monkeypatch.setattr(trainer_mod.torch, "save", dying_save)
    t2 = Trainer(tiny_model(), cfg(max_steps=4), tmp_path, batches=Windows(), resume=True, tokenizer=tiny_tokenizer())
    with pytest.raises(OSError, match="disk full"):
        t2.fit()
    monkeypatch.undo()
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_0000002"
    assert load(latest).model.config.n_layer == 2  # the model folder loads
    r = Trainer(tiny_model(), cfg(max_steps=3), tmp_path, batches=Windows(), resume=True).fit()
    assert r["step"] == 3


KILL_SCRIPT = """
import sys, time, torch
sys.path.insert(0, {tests!r})
from test_trainer import Windows, tiny_model, tiny_tokenizer, cfg
from engine.training.train import trainer as T
real = T.save_file
def slow_save(*a, **k):
    real(*a, **k)
    print("WRITING", flush=True)
    time.sleep(30)  # the parent kills us here, inside a checkpoint write
T.save_file = slow_save
T.Trainer(tiny_model(), cfg(max_steps=3, ckpt_every=1), {out!r}, batches=Windows(), tokenizer=tiny_tokenizer()).fit()
"""


def test_sigkill_during_checkpoint_never_leaves_a_broken_latest(tmp_path):
    # first a complete checkpoint, then a process killed with SIGKILL halfway through the next
    Trainer(tiny_model(), cfg(max_steps=1), tmp_path, batches=Windows(), tokenizer=tiny_tokenizer()).fit()
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path))
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "WRITING"
    finally:
        p.kill()
        p.wait()
    assert any(c.name.startswith(".") for c in (tmp_path / "checkpoints").iterdir())  # the torn write is hidden
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and load(latest).model is not None
    assert Trainer(tiny_model(), cfg(max_steps=2), tmp_path, batches=Windows(), resume=True).fit()["step"] == 2


# ---- optimizer groups ----------------------------------------------------------------------------------
def test_no_weight_decay_on_norms_biases_embeddings():
    m = GPT(ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, d_model=32, max_seq_len=SEQ, family="gpt2"))
    opt = trainer_mod.build_optimizer(m, cfg(max_steps=1, weight_decay=0.1), torch.device("cpu"))
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    names = {n for n, p in m.named_parameters() if id(p) in decayed}
    assert names and all(n.endswith("weight") and "norm" not in n and "embed" not in n for n in names)
    assert sum(len(g["params"]) for g in opt.param_groups) == len({id(p) for p in m.parameters()})


# ---- DDP: 2 processes == 1 process with the same global batch ----------------------------------------------
DDP_SCRIPT = """
import sys, json
sys.path.insert(0, {tests!r})
from test_trainer import Windows, tiny_model, cfg
from engine.training.train.trainer import Trainer
fsdp = {fsdp!r}
c = cfg(max_steps=3, batch_tokens=4 * 16, fsdp=fsdp)  # 2 ranks x 1 micro-batch of 2 x 16
Trainer(tiny_model(dropout=0.0), c, {out!r}, batches=Windows()).fit()
"""


@pytest.mark.parametrize("fsdp", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, fsdp):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    single = tmp_path / "single"
    Trainer(tiny_model(dropout=0.0), cfg(max_steps=3, batch_tokens=4 * SEQ), single, batches=Windows()).fit()
    multi = tmp_path / "multi"
    script = tmp_path / "worker.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(multi), fsdp=fsdp))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000 + int(fsdp)), str(script)],
        check=False, capture_output=True, text=True, env=env, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = losses(single), losses(multi)
    assert len(a) == len(b) == 3
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5, (a, b)
    # the multi-process checkpoint is one whole model, loadable like any other
    m1 = load_model_folder(single / "checkpoints" / "step_0000003").state_dict()
    m2 = load_model_folder(multi / "checkpoints" / "step_0000003").state_dict()
    assert all(torch.allclose(m1[k], m2[k], atol=1e-5) for k in m1)
    assert math.isfinite(b[-1])


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    """torchrun --nproc_per_node 2 on a one-GPU machine: say so, instead of CUDA's 'invalid device ordinal'."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="nproc_per_node"):
        trainer_mod.setup_distributed("auto")
