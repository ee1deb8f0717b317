"""Hugging Face folders: export loads in transformers with equal logits; import round-trips."""

from __future__ import annotations

import json

import pytest
import torch

from engine.training.model import GPT
from engine.training.model.config import ModelConfig
from engine.training.model.hf import export_hf_folder, load_hf_folder
from engine.training.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = ["the quick brown fox jumps over the lazy dog 0123456789"] * 20 + ["hello world, how are you?"] * 20


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(TEXTS, vocab_size=300)


def tiny(family: str, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(family=family, vocab_size=300, n_layer=2, n_head=4, d_model=64, max_seq_len=64, **kw)
    model = GPT(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped or dropped one shows in the logits
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def ids(n: int = 2, t: int = 17) -> torch.Tensor:
    return torch.randint(0, 300, (n, t), generator=torch.Generator().manual_seed(1))


CASES = {
    "llama-tied": {"family": "llama"},
    "llama-gqa-untied": {"family": "llama", "n_kv_head": 2, "tie_embeddings": False, "rope_theta": 500.0},
    "llama-bias-headdim": {"family": "llama", "n_kv_head": 1, "head_dim": 32, "bias": True},
    "gpt2-tied": {"family": "gpt2"},
    "gpt2-untied-nobias": {"family": "gpt2", "tie_embeddings": False, "bias": False, "d_ff": 96},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_loads_in_transformers_with_equal_logits(case, tokenizer, tmp_path):
    kw = dict(CASES[case])
    model = tiny(kw.pop("family"), **kw)
    out = export_hf_folder(model, tokenizer, tmp_path / "hf")
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / f).exists(), f
    ref = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    expected = "LlamaForCausalLM" if model.config.family == "llama" else "GPT2LMHeadModel"
    assert type(ref).__name__ == expected
    x = ids()
    with torch.no_grad():
        ours, theirs = model(x), ref(x).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    # transformers reads the tokenizer folder too, and encodes as we do
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.encode("hello 42 world", add_special_tokens=False) == tokenizer.encode("hello 42 world")


@pytest.mark.parametrize("case", ["llama-gqa-untied", "gpt2-untied-nobias", "gpt2-tied"])
def test_import_round_trip(case, tokenizer, tmp_path):
    kw = dict(CASES[case])
    model = tiny(kw.pop("family"), **kw)
    export_hf_folder(model, tokenizer, tmp_path / "hf")
    back = load_hf_folder(tmp_path / "hf").eval()
    x = ids()
    with torch.no_grad():
        assert torch.equal(model(x), back(x))
    assert back.config.tie_embeddings == model.config.tie_embeddings


def test_import_sharded_folder_written_by_transformers(tmp_path):
    """A folder saved by transformers itself, in shards with an index, and with rope_theta."""
    cfg = transformers.LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=1234.0, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    ref.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ours = load_hf_folder(tmp_path / "hf").eval()
    assert ours.config.rope_theta == 1234.0 and ours.config.n_kv_head == 2 and ours.config.tie_embeddings
    x = ids()
    with torch.no_grad():
        assert (ours(x) - ref(x).logits).abs().max().item() <= 1e-4


def test_gpt2_with_gqa_has_no_hf_equivalent(tokenizer, tmp_path):
    model = GPT(ModelConfig(family="gpt2", vocab_size=300, n_layer=1, n_head=4, n_kv_head=2, d_model=64))
    with pytest.raises(ValueError, match="GPT-2 has no grouped-query attention"):
        export_hf_folder(model, tokenizer, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    mixed = GPT(
        ModelConfig(family="llama", vocab_size=300, n_layer=1, n_head=4, d_model=64, norm="layernorm")
    )
    with pytest.raises(ValueError, match="norm='layernorm'"):
        export_hf_folder(mixed, tokenizer, tmp_path / "hf")


def test_import_errors_name_the_file(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_folder(tmp_path)
    folder = export_hf_folder(tiny("llama"), tokenizer, tmp_path / "hf")
    # corrupt weights
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt"):
        load_hf_folder(folder)
    # missing weights
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors: weights file missing"):
        load_hf_folder(folder)
    # missing shard named by an index
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(FileNotFoundError, match="model-00001-of-00002.safetensors"):
        load_hf_folder(folder)
    # unsupported architecture
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match="config.json: unsupported architecture.*bert"):
        load_hf_folder(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_hf_folder(folder)


def test_import_wrong_vocab_size(tokenizer, tmp_path):
    folder = export_hf_folder(tiny("llama"), tokenizer, tmp_path / "hf")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vocab_size"] = 320
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ValueError, match=r"embed\.weight has shape \(300, 64\).*\(320, 64\).*wrong vocab size"
    ):
        load_hf_folder(folder)
