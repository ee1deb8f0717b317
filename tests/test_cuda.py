"""The CUDA paths: the same model, trainer and engine on a GPU. Skipped where there is none (CI);
run on a lent GPU machine with `pytest tests/test_cuda.py` (see BENCHMARKS.md, "GPU")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.training.model import GPT, ModelConfig
from engine.training.train.config import TrainConfig
from engine.training.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

VOCAB, SEQ = 320, 32


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 comparisons with the CPU need true fp32 matmuls (no TF32)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def tiny(family: str = "llama", seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(family=family, vocab_size=VOCAB, n_layer=2, n_head=4, d_model=64, max_seq_len=64,
                           **kw)).eval()


class Repeat:
    """The same seeded random batch every step: a loss that must fall."""

    def __init__(self, micro_batch: int = 8, seed: int = 0):
        rng = np.random.default_rng(seed)
        w = torch.from_numpy(rng.integers(0, VOCAB, size=(micro_batch, SEQ + 1)))
        self.batch = {"x": w[:, :-1], "y": w[:, 1:]}

    def next_step(self, n_micro, rank=0, world_size=1):
        return [self.batch] * n_micro


def train_cfg(**kw) -> TrainConfig:
    base = {"lr": 3e-3, "warmup_steps": 2, "micro_batch_size": 8, "seq_len": SEQ, "log_every": 1,
            "progress": False, "threads": None, "device": "cuda"}
    return TrainConfig(**{**base, **kw})


def losses(out: Path) -> list[float]:
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_forward_and_kv_cache_on_cuda_match_the_cpu(family):
    m = tiny(family)
    x = torch.randint(0, VOCAB, (2, 40))
    cpu = m(x)
    g = m.to("cuda")
    full = g(x.cuda())
    assert torch.allclose(full.cpu(), cpu, atol=1e-4)
    cache = g.new_kv_cache(2)
    parts = [g(x[:, :17].cuda(), kv_cache=cache)] + [g(x[:, t : t + 1].cuda(), kv_cache=cache) for t in range(17, 40)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # bf16: close, not equal
        bf = g(x.cuda()).float()
    assert ((bf - full).norm() / full.norm()).item() < 2e-2


def test_bf16_autocast_training_learns_on_cuda(tmp_path):
    trainer = Trainer(tiny(), train_cfg(max_steps=40), tmp_path, batches=Repeat())
    assert trainer.device.type == "cuda" and trainer.amp_dtype == torch.bfloat16  # precision auto -> bf16
    trainer.fit()
    got = losses(tmp_path)
    assert len(got) == 40 and all(np.isfinite(got))
    assert got[-1] < 0.5 * got[0], got
    # the saved checkpoint is fp32 and loads on the CPU
    from engine.training.model.checkpoint import load_model_folder

    ckpts = sorted((tmp_path / "checkpoints").iterdir())
    model = load_model_folder(ckpts[-1])
    assert next(model.parameters()).dtype == torch.float32 and next(model.parameters()).device.type == "cpu"


def test_compiled_training_matches_eager_on_cuda(tmp_path):
    runs = {}
    for compiled in (False, True):
        out = tmp_path / str(compiled)
        Trainer(tiny(), train_cfg(max_steps=5, precision="fp32", compile=compiled), out, batches=Repeat()).fit()
        runs[compiled] = losses(out)
    assert max(abs(a - b) for a, b in zip(runs[False], runs[True])) < 1e-3, runs


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP with NCCL needs two GPUs")
def test_ddp_with_nccl_matches_one_process(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    single = tmp_path / "single"
    Trainer(tiny(), train_cfg(max_steps=3, precision="fp32", micro_batch_size=4,
                              batch_tokens=8 * SEQ), single, batches=Repeat(4)).fit()
    script = tmp_path / "worker.py"
    script.write_text(
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_cuda import Repeat, tiny, train_cfg, SEQ\n"
        "from engine.training.train.trainer import Trainer\n"
        f"t = Trainer(tiny(), train_cfg(max_steps=3, precision='fp32', micro_batch_size=4, batch_tokens=8 * SEQ), "
        f"{str(tmp_path / 'multi')!r}, batches=Repeat(4))\n"
        "assert t.dist.world_size == 2 and t.device.type == 'cuda'\n"
        "import torch.distributed as dist; assert dist.get_backend() == 'nccl'\n"
        "t.fit()\n"
    )
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = losses(single), losses(tmp_path / "multi")
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)


def test_reward_stage_and_ppo_run_on_cuda(tmp_path):
    """The RLHF stages on a GPU: the reward model trains and is evaluated there, then PPO steps."""
    from test_ppo import _config, _tiny_models
    from test_reward import test_reward_stage_learns_a_ranking_then_normalises_and_saves as reward_stage

    from engine.training.train.ppo import train_ppo

    reward_stage(tmp_path / "rm")  # train_reward_model with train.device auto = cuda, held-out accuracy >= 0.9
    sft, rm = _tiny_models(tmp_path / "ppo")
    cfg = _config(sft, rm, 2, tmp_path / "ppo" / "out")
    cfg.train.device = "cuda"
    result = train_ppo(cfg)
    assert result["steps"] == 2
    recs = [json.loads(ln) for ln in (tmp_path / "ppo" / "out" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["kl"]) for r in recs if "kl" in r)
