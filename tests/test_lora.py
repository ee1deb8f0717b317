"""LoRA: adapters leave the model unchanged at step 0 and train alone; merging them gives the
adapter model's logits with the base model's state dict; an SFT run with `lora` set trains,
saves an ordinary (merged) model that differs from the base only in the targeted matrices, and
resumes exactly from its adapter checkpoints."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from engine.training.loader import load
from engine.training.model import GPT, ModelConfig
from engine.training.model.lora import (
    VALID_TARGETS,
    LoRAConfig,
    LoRALinear,
    apply_lora,
    has_lora,
    lora_state_dict,
    merge_lora,
)
from engine.training.train.config import from_dict
from tests.tiny_chat_model import tiny_loaded

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "base"
    tiny_loaded(folder)
    return folder


def _tokens(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 24), generator=torch.Generator().manual_seed(seed))


def _train_adapters(model: GPT, steps: int = 4) -> None:
    x = _tokens(model.config.vocab_size, 1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    for _ in range(steps):
        model(x[:, :-1], x[:, 1:]).backward()
        opt.step()
        opt.zero_grad()
    model.eval()


# ---- (a) apply ------------------------------------------------------------------------------------------
def test_apply_keeps_logits_and_trains_only_adapters(tiny_folder):
    model = load(tiny_folder).model
    x = _tokens(model.config.vocab_size)
    with torch.no_grad():
        before = model(x)
    total = model.num_params()
    cfg = LoRAConfig(rank=4, alpha=8)
    n = apply_lora(model, cfg)
    c = model.config
    per_block = sum(cfg.rank * (c.d_model + out) for out in (c.n_head * c.head_dim, c.n_kv_head * c.head_dim,
                                                           c.n_kv_head * c.head_dim, c.d_model))
    assert n == c.n_layer * per_block and n < total * 0.1
    assert model.num_params() == total + n
    with torch.no_grad():
        assert torch.equal(model(x), before)  # B = 0: exactly the base model
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"layers.{i}.attn.{t}.lora_{ab}" for i in range(c.n_layer) for t in "qkvo" for ab in "AB"}
    assert isinstance(model.layers[0].attn.q, LoRALinear) and not isinstance(model.layers[0].mlp.up, LoRALinear)
    # the base keys are unchanged; the adapters come on top
    assert set(model.state_dict()) - set(lora_state_dict(model)) == set(GPT(c).state_dict())
    loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
    assert model.layers[0].attn.q.lora_A.grad.abs().sum() == 0  # B = 0 at step 0: A's gradient is 0 ...
    assert model.layers[0].attn.q.lora_B.grad.abs().sum() > 0  # ... and B's is not


# ---- (b) merge ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_merge_gives_the_adapter_models_logits(tiny_folder, dtype):
    model = load(tiny_folder).model.to(dtype)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoRAConfig(rank=4, alpha=8, targets=["q", "v", "up_proj", "down"]))
    _train_adapters(model)
    assert all(v.abs().sum() > 0 for k, v in lora_state_dict(model).items() if k.endswith("lora_B"))
    x = _tokens(model.config.vocab_size)
    with torch.no_grad():
        adapted = model(x)
    assert merge_lora(model) is model and not has_lora(model)
    with torch.no_grad():
        merged = model(x)
    # fp64: the same function to rounding; fp32: two summation orders differ by up to ~5e-6 of logits that
    # reach ~10 in this peaked model, so the bound is relative there
    tol = 1e-5 if dtype == torch.float64 else 2e-5 * float(adapted.abs().max())
    assert float((merged - adapted).abs().max()) <= tol
    sd = model.state_dict()
    assert list(sd) == list(base_sd) and all(sd[k].shape == base_sd[k].shape for k in sd)
    changed = {k for k in sd if not torch.equal(sd[k], base_sd[k])}
    assert changed == {f"layers.{i}.{p}.weight" for i in range(model.config.n_layer)
                       for p in ("attn.q", "attn.v", "mlp.up", "mlp.down")}
    assert all(type(m).__name__ == "Linear" for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert all(p.requires_grad for p in model.parameters())  # an ordinary model again
    fresh = GPT(model.config).to(dtype)
    fresh.load_state_dict(sd)  # strict: nothing missing, nothing extra
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), merged)


def test_gpt2_family_biases_and_missing_gate():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=32, max_seq_len=32, family="gpt2")).double()
    base_keys = list(model.state_dict())
    # gpt2 has no gate projection: skipped, the others adapted; biases stay frozen and unchanged
    apply_lora(model, LoRAConfig(rank=2, targets=["gate", "up", "q"]))
    assert isinstance(model.layers[0].mlp.up, LoRALinear) and model.layers[0].mlp.up.bias is not None
    assert not model.layers[0].mlp.up.bias.requires_grad
    bias = model.layers[0].mlp.up.bias.clone()
    _train_adapters(model, steps=2)
    x = _tokens(64)
    with torch.no_grad():
        adapted = model(x)
    merge_lora(model)
    with torch.no_grad():
        assert float((model(x) - adapted).abs().max()) < 1e-9
    assert list(model.state_dict()) == base_keys and torch.equal(model.layers[0].mlp.up.bias, bias)


# ---- (c) and (d) SFT with LoRA ---------------------------------------------------------------------------
def _write_convs(path, n: int = 40):
    qs = ["Hello there, how are you?", "How are you?", "Hello, how are you today?", "Are you well?"]
    lines = [json.dumps({"messages": [{"role": "user", "content": qs[i % 4]},
                                      {"role": "assistant", "content": "I am fine, thank you for asking."}]})
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _sft_config(base, data, out, **train):
    from engine.training.train.sft import SFTConfig

    return from_dict(SFTConfig, {
        "model": str(base), "data": [str(data)], "out_dir": str(out), "val_fraction": 0.1,
        "lora": {"rank": 4, "alpha": 16},
        "train": {"lr": 1e-2, "max_steps": 12, "micro_batch_size": 4, "seq_len": 96, "warmup_steps": 0,
                  "schedule": "constant", "weight_decay": 0.0, "progress": False, "log_every": 1, **train},
    })


def test_sft_with_lora_saves_a_merged_model(tiny_folder, tmp_path):
    from engine.training.train.sft import run_sft

    data = _write_convs(tmp_path / "convs.jsonl")
    cfg = _sft_config(tiny_folder, data, tmp_path / "sft")
    assert cfg.lora == LoRAConfig(rank=4, alpha=16)
    summary = run_sft(cfg)
    assert summary["heldout_loss_after"] < summary["heldout_loss_before"] - 0.1
    assert summary["lora"]["trainable_params"] == sum(v.numel() for v in summary_lora_tensors(summary))
    losses = [json.loads(ln)["loss"] for ln in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(ln)]
    assert len(losses) == 12 and losses[-1] < losses[0]
    # out/model: an ordinary model, loadable, differing from the base only in q, k, v, o
    final = load(tmp_path / "sft" / "model")
    base = load(tiny_folder)
    assert final.source == "native" and final.model.config == base.model.config
    sd, base_sd = final.model.state_dict(), base.model.state_dict()
    assert list(sd) == list(base_sd)
    changed = {k for k in sd if not torch.equal(sd[k], base_sd[k])}
    assert changed == {f"layers.{i}.attn.{t}.weight" for i in range(base.model.config.n_layer) for t in "qkvo"}
    meta = json.loads((tmp_path / "sft" / "model" / "meta.json").read_text())
    assert meta["lora"]["rank"] == 4 and meta["lora"]["merged"] is True and meta["lora"]["targets"] == list("qkvo")
    # the config file of the run round-trips the lora settings
    from engine.training.train.config import load_config
    from engine.training.train.sft import SFTConfig

    assert load_config(SFTConfig, tmp_path / "sft" / "sft_config.yaml").lora == cfg.lora


def summary_lora_tensors(summary):
    """The adapter tensors of the run's final checkpoint (base + adapters, unmerged)."""
    sd = load_file(f"{summary['checkpoint']}/model.safetensors")
    assert any(k.endswith(".lora_A") for k in sd) and "layers.0.attn.q.weight" in sd
    return [v for k, v in sd.items() if k.endswith((".lora_A", ".lora_B"))]


def test_sft_with_lora_resumes_exactly(tiny_folder, tmp_path):
    from engine.training.train.sft import run_sft

    data = _write_convs(tmp_path / "convs.jsonl")
    out = tmp_path / "sft"
    run_sft(_sft_config(tiny_folder, data, out, max_steps=6, ckpt_every=3, keep_checkpoints=5))
    straight = load(out / "model").model.state_dict()
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step_0000003", "step_0000006"]
    # a run killed after step 3: its later files gone
    shutil.rmtree(ckpts[-1])
    shutil.rmtree(out / "model")
    summary = run_sft(_sft_config(tiny_folder, data, out, max_steps=6, ckpt_every=3, keep_checkpoints=5), resume=True)
    assert summary["steps"] == 6
    resumed = load(out / "model").model.state_dict()
    assert all(torch.allclose(resumed[k], straight[k], rtol=0, atol=0) for k in straight)
    assert not all(torch.equal(resumed[k], load(tiny_folder).model.state_dict()[k]) for k in straight)


# ---- (e) errors and the command line ---------------------------------------------------------------------
def test_bad_settings_are_clear_errors(tiny_folder):
    with pytest.raises(ValueError, match=r"unknown projection\(s\) \['qkv'\]; valid: q, k, v, o, gate, up, down"):
        LoRAConfig(targets=["q", "qkv"])
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="alpha must be positive"):
        LoRAConfig(alpha=0)
    with pytest.raises(ValueError, match="dropout"):
        LoRAConfig(dropout=1.0)
    assert LoRAConfig(targets=["q_proj, v_proj", "q"]).targets == ["q", "v"]
    assert set(VALID_TARGETS) == {"q", "k", "v", "o", "gate", "up", "down"}
    from engine.training.train.sft import SFTConfig

    with pytest.raises(ValueError, match=r"^lora: .*unknown projection\(s\) \['attn'\]"):
        from_dict(SFTConfig, {"lora": {"targets": ["attn"]}})
    with pytest.raises(ValueError, match="unknown config field 'lora.rnak'"):
        from_dict(SFTConfig, {"lora": {"rnak": 8}})
    model = load(tiny_folder).model
    apply_lora(model, LoRAConfig(rank=2))
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model, LoRAConfig(rank=2))
    gpt2 = GPT(ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=32, max_seq_len=32, family="gpt2"))
    with pytest.raises(ValueError, match="none of \\['gate'\\]"):
        apply_lora(gpt2, LoRAConfig(targets=["gate"]))


def test_lora_flags():
    from engine.training.train import sft

    parser = argparse.ArgumentParser()
    sft.register(parser.add_subparsers())
    args = parser.parse_args(["sft", "--model", "m", "--lora-rank", "8"])
    cfg = sft.config_from_args(sft.SFTConfig, args, sft.FLAGS)
    assert cfg.lora == LoRAConfig(rank=8)
    assert sft.config_from_args(sft.SFTConfig, parser.parse_args(["sft", "--model", "m"]), sft.FLAGS).lora is None
    args = parser.parse_args(["sft", "--model", "m", "--lora-rank", "4", "--lora-alpha", "4",
                              "--set", "lora.targets=[q, v, gate]"])
    assert sft.config_from_args(sft.SFTConfig, args, sft.FLAGS).lora == LoRAConfig(rank=4, alpha=4, targets=["q", "v", "gate"])
